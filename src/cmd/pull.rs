//! `lazysnap pull`: an image into containerd, unpacked on the snapshotter, lazily where
//! it can (as `ctr-remote images rpull`).

use clap::Args;
use lazysnap::ctrd::{self, Ctrd, LayerOutcome, PullOptions, ResolvedImage};
use lazysnap::registry::{Platform, Reference};
use lazysnap::service::control_client;

use super::{ClientFlags, RegistryFlags, human_bytes};

/// Arguments of `lazysnap pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    #[command(flatten)]
    client: ClientFlags,
    #[command(flatten)]
    registry: RegistryFlags,
    /// Snapshotter to unpack with.
    #[arg(long, default_value = "lazysnap")]
    snapshotter: String,
    /// Platform to pick from an index, `os/arch[/variant]` (default: this host's).
    #[arg(long)]
    platform: Option<String>,
    /// Image reference, e.g. `127.0.0.1:5000/test/python:esgz`.
    reference: String,
}

/// Pulls and prints one line per layer.
pub async fn run(a: PullArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let reference: Reference = a.reference.parse()?;
    let platform = match &a.platform {
        Some(p) => p.parse::<Platform>()?,
        None => Platform::host(),
    };
    let registry = a
        .registry
        .client(std::slice::from_ref(&reference.registry))?;
    let c = &a.client;
    let ctrd = Ctrd::connect(&c.address, &c.namespace).await?;
    let opts = PullOptions {
        reference,
        snapshotter: a.snapshotter,
        platform,
    };
    println!("{}: resolving", opts.reference);
    // As soon as the manifest is known, the daemon may start on the layers:
    // their TOCs and prefetch then overlap the config fetch and containerd's
    // calls. Only a hint: a daemon that is not there or not lazy is skipped.
    let daemon = if opts.snapshotter == "lazysnap" {
        Some(c.daemon_address()?)
    } else {
        None
    };
    let mut hinted = None;
    let mut on_resolved = |img: ResolvedImage<'_>| {
        let Some(daemon) = daemon.clone() else { return };
        let (name, manifest) = (img.name.to_string(), img.manifest.to_string());
        let layers: Vec<String> = img.layers.iter().map(|d| d.to_string()).collect();
        hinted = Some(tokio::spawn(async move {
            control_client::prepare_image(&daemon, &name, &manifest, &layers).await
        }));
    };
    let pulled = ctrd::pull_with(&ctrd, &registry, &opts, &mut on_resolved, &mut |p| {
        let what = match p.outcome {
            LayerOutcome::Present => "present".to_string(),
            LayerOutcome::Lazy => "lazy".to_string(),
            LayerOutcome::Unpacked => "unpacked by the snapshotter".to_string(),
            LayerOutcome::Fetched { bytes } => format!("fetched {}", human_bytes(bytes)),
        };
        let d = p.digest.as_str();
        let short = d.get(..19).unwrap_or(&d);
        println!("layer {}/{} {short}… {what}", p.index + 1, p.count);
    })
    .await;
    let hint = match hinted {
        Some(h) => h.await.ok(),
        None => None,
    };
    let unreachable = match &hint {
        Some(Err(e @ control_client::ControlClientError::Connect { .. })) => Some(e.to_string()),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "PrepareImage hint not taken");
            None
        }
        _ => None,
    };
    let pulled = match (pulled, unreachable) {
        (Ok(p), _) => p,
        (Err(e), Some(why)) => {
            return Err(anyhow::Error::new(e).context(format!(
                "pulling {} ({why}: is the lazysnap daemon running? `lazysnap status` tells)",
                opts.reference
            )));
        }
        (Err(e), None) => {
            return Err(anyhow::Error::new(e).context(format!("pulling {}", opts.reference)));
        }
    };
    println!(
        "{}: {} (top snapshot {}), done in {:.2}s",
        pulled.name,
        pulled.target,
        pulled.chain_id,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
