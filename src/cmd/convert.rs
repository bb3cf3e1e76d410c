//! `lazysnap convert SRC DST`: an image rewritten into a lazy format, from and to
//! registry references or OCI image layouts (`oci:DIR[:REF]`).
//!
//! `--optimize` first runs the image once (through containerd, on a lazysnap mount that
//! records the files the start opens, see [`super::optimize`]) and writes every layer
//! with those files first and `.prefetch.landmark` after them; `--record-in` reuses a
//! recorded list, `--record-out` saves it (one path a line).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lazysnap::convert::{self, ConvertOptions};
use lazysnap::format::writer::{
    DEFAULT_CHUNK_SIZE, DEFAULT_PREFETCH_FILE_LIMIT, LayerFormat, WriterOptions,
};
use lazysnap::image::{Dest, Location, Source};
use lazysnap::registry::Platform;

use super::{ClientFlags, RegistryFlags, optimize, progress};

/// Arguments of `lazysnap convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    #[command(flatten)]
    client: ClientFlags,
    #[command(flatten)]
    registry: RegistryFlags,
    /// Target layer format: estargz, estargz-zstd or zstd-chunked.
    #[arg(long, default_value = "estargz")]
    format: LayerFormat,
    /// Largest chunk of a file in bytes, at least 1 (files above it are split).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE, value_parser = clap::value_parser!(u64).range(1..))]
    chunk_size: u64,
    /// Convert only this platform of an index (`os/arch[/variant]`); default: all.
    #[arg(long)]
    platform: Option<String>,
    /// Run the image once and put the files its start reads first in every layer.
    #[arg(long)]
    optimize: bool,
    /// With --optimize: how long the recording run may take before it is stopped (s).
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// With --optimize: extra environment (`KEY=VALUE`) for the recording run.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// With --optimize: files read at start but larger than this (bytes) are not put in the
    /// prefetch region (it holds whole files); their reads fetch what they need.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_PREFETCH_FILE_LIMIT)]
    prefetch_file_limit: u64,
    /// Use this access list (one path a line) instead of recording one.
    #[arg(long, value_name = "FILE")]
    record_in: Option<PathBuf>,
    /// Save the recorded access list here.
    #[arg(long, value_name = "FILE")]
    record_out: Option<PathBuf>,
    /// Layers converted at once (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Directory for temporary blobs (default: $TMPDIR or /var/tmp).
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// Source image: a reference or `oci:DIR[:REF]`.
    src: String,
    /// Destination image: a reference or `oci:DIR[:REF]`.
    dst: String,
    /// With --optimize: the command to run instead of the image's entrypoint and cmd.
    #[arg(last = true)]
    args: Vec<String>,
}

/// Converts and prints the result's digest.
pub async fn run(a: ConvertArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let src_loc: Location = a.src.parse()?;
    let dst_loc: Location = a.dst.parse()?;
    let hosts: Vec<String> = [&src_loc, &dst_loc]
        .iter()
        .filter_map(|l| match l {
            Location::Registry(r) => Some(r.registry.clone()),
            Location::Layout { .. } => None,
        })
        .collect();
    let client = a.registry.client(&hosts)?;
    let src = Source::open(&src_loc, &client)?;
    let dst = Dest::open(&dst_loc, &client)?;
    let platform = a
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()?;
    let prioritized = if let Some(path) = &a.record_in {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Some(
            text.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>(),
        )
    } else if a.optimize {
        let list = optimize::record(
            &a.client,
            &a.registry,
            &src_loc,
            &optimize::RunOptions {
                args: (!a.args.is_empty()).then(|| a.args.clone()),
                env: a.env.clone(),
                timeout: Duration::from_secs(a.timeout),
                platform: platform.clone(),
            },
        )
        .await?;
        eprintln!("recorded {} files read by the start", list.len());
        Some(list)
    } else {
        None
    };
    if let (Some(out), Some(list)) = (&a.record_out, &prioritized) {
        let mut text = list.join("\n");
        text.push('\n');
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    let spool_root = a.tmp.clone().unwrap_or_else(|| {
        std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"))
    });
    let spool = tempfile::Builder::new()
        .prefix("lazysnap-convert-")
        .tempdir_in(&spool_root)
        .with_context(|| format!("creating a temporary dir in {}", spool_root.display()))?;
    let opts = ConvertOptions {
        writer: WriterOptions {
            format: a.format,
            chunk_size: a.chunk_size,
            prioritized,
            prefetch_file_limit: a.prefetch_file_limit,
            ..WriterOptions::new(a.format)
        },
        platform,
        spool: spool.path().to_path_buf(),
        jobs: a.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
    };
    let out = convert::convert(&src, &dst, &opts, progress::for_stderr())
        .await
        .with_context(|| format!("converting {} to {}", src.name(), dst.name()))?;
    let (converted, copied): (Vec<_>, Vec<_>) = out
        .manifests
        .iter()
        .flat_map(|(_, l)| l)
        .partition(|l| l.converted);
    println!(
        "{}: {} ({}), {} layers converted, {} copied, in {:.2}s",
        dst.name(),
        out.digest,
        out.media_type,
        converted.len(),
        copied.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
