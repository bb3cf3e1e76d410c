//! The `lazysnap` command: `serve` runs the daemon; client subcommands reach
//! it only through its Control service.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use lazysnap::config::{Config, DEFAULT_ADDRESS};
use lazysnap::service::{self, LazyOptions, ServeOptions};

#[derive(Parser, Debug)]
#[command(
    name = "lazysnap",
    version,
    about = "containerd proxy snapshotter with lazy pulling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags every client subcommand takes, as `ctr` does.
#[derive(Args, Debug, Clone)]
struct ClientFlags {
    /// containerd's socket.
    #[arg(
        short = 'a',
        long,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    address: PathBuf,
    /// containerd namespace.
    #[arg(
        short = 'n',
        long,
        env = "CONTAINERD_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    /// The lazysnap daemon's socket (default: `address` of the config file).
    #[arg(long, env = "LAZYSNAP_ADDRESS")]
    lazysnap_address: Option<PathBuf>,
    /// Config file (for the default daemon socket).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: containerd's Snapshots service and lazysnap's Control
    /// service on one unix socket.
    Serve {
        /// Config file (default /etc/lazysnap/config.toml; absent = defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// State root (overrides the config's `root`).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Socket path (overrides the config's `address`).
        #[arg(long)]
        address: Option<PathBuf>,
        /// Log filter (overrides the config's `log_level`).
        #[arg(long)]
        log_level: Option<String>,
    },
    /// Print the daemon's status.
    Status {
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Pull an image into containerd, unpacked on the snapshotter, lazily
    /// where it can (as `ctr-remote images rpull`): layers the snapshotter
    /// serves remotely are not downloaded; the others are fetched whole and
    /// applied by containerd's Diff service.
    Pull {
        #[command(flatten)]
        client: ClientFlags,
        /// Snapshotter to unpack with.
        #[arg(long, default_value = "lazysnap")]
        snapshotter: String,
        /// Platform to pick from an index, `os/arch[/variant]` (default: this host's).
        #[arg(long)]
        platform: Option<String>,
        /// Reach the image's registry over plain http.
        #[arg(long)]
        plain_http: bool,
        /// Image reference, e.g. `127.0.0.1:5000/test/python:esgz`.
        reference: String,
    },
}

fn init_logs(level: &str) {
    use std::io::IsTerminal;
    // A bare level ("debug") applies to lazysnap itself; the HTTP/2 stack
    // stays at info so RPC lines are not buried in frame dumps. A full
    // filter ("lazysnap=debug,h2=trace") is taken as it is.
    let spec = if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        // fuser logs at ERROR every reply the kernel no longer wants (ENOENT
        // for a request interrupted when a container is killed): not an error.
        format!("info,fuser::reply=off,lazysnap={level}")
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(spec))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve {
            config,
            root,
            address,
            log_level,
        } => {
            let mut cfg = Config::load(config.as_deref())?;
            if let Some(r) = root {
                cfg.root = r;
            }
            if let Some(a) = address {
                cfg.address = a;
            }
            if let Some(l) = log_level {
                cfg.log_level = l;
            }
            let problems = cfg.validate();
            anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
            init_logs(&cfg.log_level);
            let lazy = cfg.lazy.then(|| LazyOptions {
                cache_budget: cfg.cache_budget,
                cache_memory: cfg.cache_memory,
                insecure_registries: cfg.insecure_registries.clone(),
                platform: cfg.platform.clone(),
                background_rate: cfg.background_fetch.then_some(cfg.background_rate),
                hosts_dir: (!cfg.hosts_dir.as_os_str().is_empty()).then(|| cfg.hosts_dir.clone()),
            });
            rt.block_on(service::serve(ServeOptions {
                root: cfg.root,
                address: cfg.address,
                lazy,
            }))?;
            // Exit without running destructors of FUSE sessions: mounts stay.
            std::process::exit(0);
        }
        Command::Status { client } => rt.block_on(status(client)),
        Command::Pull {
            client,
            snapshotter,
            platform,
            plain_http,
            reference,
        } => rt.block_on(pull(PullArgs {
            client,
            snapshotter,
            platform,
            plain_http,
            reference,
        })),
    }
}

fn daemon_address(c: &ClientFlags) -> anyhow::Result<PathBuf> {
    if let Some(a) = &c.lazysnap_address {
        return Ok(a.clone());
    }
    Ok(Config::load(c.config.as_deref())
        .map(|cfg| cfg.address)
        .unwrap_or_else(|_| PathBuf::from(DEFAULT_ADDRESS)))
}

async fn status(c: ClientFlags) -> anyhow::Result<()> {
    use lazysnap::service::proto::lazysnap::v1::{StatusRequest, control_client::ControlClient};
    let addr = daemon_address(&c)?;
    let ch = service::connect(&addr)
        .await
        .with_context(|| format!("connecting to the lazysnap daemon at {}", addr.display()))?;
    let st = ControlClient::new(ch)
        .status(StatusRequest {})
        .await
        .context("Status")?
        .into_inner();
    println!("version:   {}", st.version);
    println!("root:      {}", st.root);
    println!("uptime:    {}s", st.uptime_seconds);
    println!(
        "snapshots: {} active, {} view, {} committed",
        st.snapshots_active, st.snapshots_view, st.snapshots_committed
    );
    for m in st.mounts {
        println!("mount:     {} {} {}", m.state, m.mountpoint, m.key);
    }
    Ok(())
}

struct PullArgs {
    client: ClientFlags,
    snapshotter: String,
    platform: Option<String>,
    plain_http: bool,
    reference: String,
}

async fn pull(a: PullArgs) -> anyhow::Result<()> {
    use lazysnap::ctrd::{self, Ctrd, LayerOutcome, PullOptions};
    use lazysnap::registry::{ClientOptions, Platform, Reference, RegistryClient};
    let started = std::time::Instant::now();
    let reference: Reference = a.reference.parse()?;
    let platform = match &a.platform {
        Some(p) => p.parse::<Platform>()?,
        None => Platform::host(),
    };
    let registry = RegistryClient::new(ClientOptions {
        insecure_hosts: if a.plain_http {
            vec![reference.registry.clone()]
        } else {
            Vec::new()
        },
        ..ClientOptions::default()
    })?;
    let c = &a.client;
    let ctrd = Ctrd::connect(&c.address, &c.namespace).await?;
    let opts = PullOptions {
        reference,
        snapshotter: a.snapshotter,
        platform,
    };
    println!("{}: resolving", opts.reference);
    let pulled = ctrd::pull(&ctrd, &registry, &opts, &mut |p| {
        let what = match p.outcome {
            LayerOutcome::Present => "present".to_string(),
            LayerOutcome::Lazy => "lazy".to_string(),
            LayerOutcome::Unpacked => "unpacked by the snapshotter".to_string(),
            LayerOutcome::Fetched { bytes } => format!("fetched {}", human_bytes(bytes)),
        };
        let d = p.digest.as_str();
        let short = d.get(..19).unwrap_or(d);
        println!("layer {}/{} {short}… {what}", p.index + 1, p.count);
    })
    .await
    .with_context(|| format!("pulling {}", opts.reference))?;
    println!(
        "{}: {} (top snapshot {}), done in {:.2}s",
        pulled.name,
        pulled.target,
        pulled.chain_id,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn human_bytes(n: u64) -> String {
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
