//! The client subcommands, one file each (`serve` stays in main.rs). They reach the
//! daemon only through its Control service and containerd only through `ctrd`.

pub mod bench;
pub mod commit;
pub mod convert;
pub mod inspect;
pub mod login;
pub mod optimize;
pub mod progress;
pub mod pull;
pub mod status;

use std::path::PathBuf;

use clap::Args;
use lazysnap::config::Config;
use lazysnap::registry::{ClientOptions, RegistryClient};

/// Flags every subcommand that talks to containerd or the daemon takes, as `ctr` does.
#[derive(Args, Debug, Clone)]
pub struct ClientFlags {
    /// containerd's socket.
    #[arg(
        short = 'a',
        long,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub address: PathBuf,
    /// containerd namespace.
    #[arg(
        short = 'n',
        long,
        env = "CONTAINERD_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// How to reach the lazysnap daemon.
    #[command(flatten)]
    pub daemon: DaemonFlags,
}

impl ClientFlags {
    /// The daemon's socket (see [`DaemonFlags::daemon_address`]).
    ///
    /// # Errors
    /// As [`DaemonFlags::daemon_address`].
    pub fn daemon_address(&self) -> anyhow::Result<PathBuf> {
        self.daemon.daemon_address()
    }
}

/// How a command that talks only to the lazysnap daemon reaches it.
#[derive(Args, Debug, Clone)]
pub struct DaemonFlags {
    /// The lazysnap daemon's socket (default: `address` of the config file).
    #[arg(long, env = "LAZYSNAP_ADDRESS")]
    pub lazysnap_address: Option<PathBuf>,
    /// Config file (for the default daemon socket).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl DaemonFlags {
    /// The daemon's socket: the flag, else the config file's `address`, else the default.
    ///
    /// # Errors
    /// A config file given with `--config` (or the default one, when it exists) that
    /// does not load: unknown keys and bad values are errors here as for `serve`.
    pub fn daemon_address(&self) -> anyhow::Result<PathBuf> {
        if let Some(a) = &self.lazysnap_address {
            if let Some(path) = &self.config {
                Config::load(Some(path))?;
            }
            return Ok(a.clone());
        }
        Ok(Config::load(self.config.as_deref())?.address)
    }
}

/// How to reach registries.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryFlags {
    /// Registries (`host[:port]`) reached over plain http (loopback always is).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure: Vec<String>,
    /// Reach every registry named on the command line over plain http.
    #[arg(long)]
    pub plain_http: bool,
    /// containerd's registry host configuration dir (hosts.toml mirrors).
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    pub hosts_dir: PathBuf,
}

impl RegistryFlags {
    /// A registry client; `hosts` are the registries of the command's arguments (made
    /// plain-http by `--plain-http`).
    ///
    /// # Errors
    /// TLS setup failures.
    pub fn client(&self, hosts: &[String]) -> anyhow::Result<RegistryClient> {
        let mut insecure = self.insecure.clone();
        if self.plain_http {
            insecure.extend(hosts.iter().cloned());
        }
        Ok(RegistryClient::new(ClientOptions {
            insecure_hosts: insecure,
            hosts_dir: Some(self.hosts_dir.clone()),
            ..ClientOptions::default()
        })?)
    }
}

/// `12.3 MB` (decimal units, as registries and docker print sizes).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
