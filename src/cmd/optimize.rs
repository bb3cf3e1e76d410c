//! The recording run of `lazysnap convert --optimize`: the source image is pulled into
//! containerd (namespace [`NAMESPACE`], snapshotter `lazysnap`, lazily where it can), a
//! snapshot is prepared over it, the daemon records the files opened on that snapshot's
//! mount while the image's entrypoint and cmd (or the given args) run once, up to a
//! timeout; the recorded paths, in first-access order, are the files to put first.
//!
//! The pulled image stays in the [`NAMESPACE`] namespace (a later run reuses it);
//! the container, task and snapshot are removed.

use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use lazysnap::ctrd::run::{ImageConfigProcess, RunSpec, prepare_run_snapshot, run_to_exit};
use lazysnap::ctrd::{self, Ctrd, PullOptions};
use lazysnap::image::Location;
use lazysnap::registry::Platform;
use lazysnap::service::control_client;

use super::{ClientFlags, RegistryFlags};

/// The containerd namespace of recording runs.
pub const NAMESPACE: &str = "lazysnap-optimize";
/// The snapshotter recording runs use.
const SNAPSHOTTER: &str = "lazysnap";

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Replaces the image's entrypoint and cmd.
    pub args: Option<Vec<String>>,
    /// Extra environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Longest run; then the task is killed (a server never exits by itself).
    pub timeout: Duration,
    /// Platform to pick from an index (default: this host's).
    pub platform: Option<Platform>,
}

/// Runs the image once and returns the paths its start opened, in order.
///
/// # Errors
/// A source that is not a registry reference; pull, run and daemon errors.
pub async fn record(
    client: &ClientFlags,
    registry: &RegistryFlags,
    src: &Location,
    o: &RunOptions,
) -> anyhow::Result<Vec<String>> {
    let Location::Registry(reference) = src else {
        bail!(
            "--optimize runs the image through containerd, which pulls it from a registry; \
             {src} is an OCI layout: convert it to a registry first, or give --record-in"
        );
    };
    let reg = registry.client(std::slice::from_ref(&reference.registry))?;
    let ctrd = Ctrd::connect(&client.address, NAMESPACE)
        .await
        .with_context(|| format!("connecting to containerd at {}", client.address.display()))?;
    let pulled = ctrd::pull(
        &ctrd,
        &reg,
        &PullOptions {
            reference: reference.clone(),
            snapshotter: SNAPSHOTTER.into(),
            platform: o.platform.clone().unwrap_or_else(Platform::host),
        },
        &mut |_| {},
    )
    .await
    .with_context(|| format!("pulling {reference} for the recording run"))?;
    let manifest = reg.fetch_manifest(reference, &pulled.manifest).await?;
    let cfg_digest = manifest.manifest.config().digest().to_string().parse()?;
    let cfg = reg.fetch_blob(reference, &cfg_digest).await?;
    let process = ImageConfigProcess::from_config_json(&cfg)?;
    let key =
        prepare_run_snapshot(&ctrd, SNAPSHOTTER, &pulled.chain_id, "lazysnap-optimize").await?;
    let daemon = client.daemon_address()?;
    let result = async {
        control_client::start_recording(&daemon, NAMESPACE, &key)
            .await
            .with_context(|| format!("asking the daemon at {} to record", daemon.display()))?;
        let out = tempfile::tempdir()?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let spec = RunSpec {
            id: format!("lazysnap-optimize-{nanos}"),
            image_config: process,
            args_override: o.args.clone(),
            env_extra: o.env.clone(),
            image: pulled.name.clone(),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: key.clone(),
            stdout: out.path().join("stdout"),
            stderr: out.path().join("stderr"),
            timeout: o.timeout,
        };
        let exit = run_to_exit(&ctrd, &spec).await;
        let list = control_client::stop_recording(&daemon, NAMESPACE, &key).await?;
        let exit = exit?;
        if exit.timed_out {
            eprintln!("recording run stopped after {:?} (timeout)", o.timeout);
        } else if exit.exit_status != Some(0) {
            let stderr = std::fs::read_to_string(&spec.stderr).unwrap_or_default();
            eprintln!(
                "recording run exited with {:?}; its stderr:\n{}",
                exit.exit_status,
                stderr.trim_end()
            );
        }
        anyhow::Ok(list)
    }
    .await;
    if let Err(e) = ctrd.remove_snapshot(SNAPSHOTTER, &key).await {
        eprintln!("warning: removing the recording snapshot {key}: {e}");
    }
    result
}
