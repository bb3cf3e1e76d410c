//! `lazysnap pull`: an image into containerd, unpacked on the snapshotter, lazily where
//! it can (as `ctr-remote images rpull`).

use anyhow::Context;
use clap::Args;
use lazysnap::ctrd::{self, Ctrd, LayerOutcome, PullOptions};
use lazysnap::registry::{Platform, Reference};

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
