//! The benchmark's images in the registry: each image's gzip form (built once by
//! `scripts/images.sh build` or `scripts/benchimg/build.sh` into an OCI layout in a
//! cache outside the clone) pushed as `bench/<name>:gzip`, and its eStargz forms
//! converted by `lazysnap convert` (plain, and `--optimize`d) as `:esgz` / `:esgz-opt`.
//!
//! Conversions are kept as OCI layouts in `<store>/conv/<binary id>/` and reused while
//! the lazysnap binary is the same; the file list an `--optimize` recording run made is
//! kept in `<store>/records/` and given to later conversions with `--record-in`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::process::Command;

use super::env::{BenchEnv, output};
use super::plan::{ImageSpec, Layout, Variant};

/// Where the built and converted images are kept.
#[derive(Debug, Clone)]
pub struct Store {
    /// Root of the benchmark's image cache (`LAZYSNAP_BENCH_IMAGE_CACHE`).
    pub root: PathBuf,
    repo: PathBuf,
    bin: PathBuf,
}

/// The default image cache.
pub const DEFAULT_STORE: &str = "/var/cache/lazysnap-bench-images";

impl Store {
    /// A store at `root` for images built with the scripts of `repo` and converted by `bin`.
    pub fn new(root: &Path, repo: &Path, bin: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
            repo: repo.to_path_buf(),
            bin: bin.to_path_buf(),
        }
    }

    /// The OCI layout holding `layout`'s images (built now if needed).
    async fn layout(&self, layout: Layout) -> anyhow::Result<PathBuf> {
        let (script, args): (&str, &[&str]) = match layout {
            Layout::Test => ("scripts/images.sh", &["build"]),
            Layout::Bench => ("scripts/benchimg/build.sh", &[]),
        };
        let mut c = Command::new(self.repo.join(script));
        c.args(args)
            .env("LAZYSNAP_BENCH_IMAGE_CACHE", &self.root)
            .stderr(std::process::Stdio::inherit());
        let out = output(&mut c, script).await?;
        let path = out.lines().last().context("no layout path printed")?.trim();
        Ok(PathBuf::from(path))
    }

    /// Identifies the lazysnap binary (size and modification time), so that a rebuilt
    /// converter converts again.
    fn binary_id(&self) -> anyhow::Result<String> {
        let m = std::fs::metadata(&self.bin)?;
        let mtime = m
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(format!("{}-{}", m.len(), mtime.as_secs()))
    }
}

/// The reference of `image`'s `variant` behind `host` (a registry or a shaper).
pub fn reference(host: &str, image: &ImageSpec, variant: Variant) -> String {
    format!("{host}/bench/{}:{}", image.name, variant.tag())
}

/// The cache key of a layout: the name of the directory above `oci` (the builder's hash).
fn layout_key(layout: &Path) -> String {
    layout.parent().and_then(|p| p.file_name()).map_or_else(
        || "layout".to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Pushes every image in `variants` to the environment's registry. Returns the
/// (image, variant) pairs that are there; a conversion that fails is reported and left
/// out (its contenders are skipped).
///
/// # Errors
/// Building or pushing the gzip images fails.
pub async fn prepare(
    store: &Store,
    env: &BenchEnv,
    images: &[ImageSpec],
    variants: &BTreeSet<Variant>,
) -> anyhow::Result<BTreeSet<(&'static str, Variant)>> {
    let conv_root = store.root.join("conv");
    let bin_id = store.binary_id()?;
    // conversions by other builds of lazysnap are stale
    if let Ok(rd) = std::fs::read_dir(&conv_root) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy() != bin_id {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let mut ready = BTreeSet::new();
    for image in images {
        let layout = store.layout(image.layout).await?;
        let gzip = reference(&env.registry, image, Variant::Gzip);
        skopeo_copy(&format!("oci:{}:{}", layout.display(), image.tag), &gzip).await?;
        ready.insert((image.name, Variant::Gzip));
        let key = layout_key(&layout);
        for &v in variants.iter().filter(|v| **v != Variant::Gzip) {
            let dir = conv_root
                .join(&bin_id)
                .join(format!("{key}-{}-{}", image.name, v.tag()));
            let done = dir.join("done");
            if !done.exists() {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)?;
                let records = store.root.join("records");
                std::fs::create_dir_all(&records)?;
                let list = records.join(format!("{key}-{}.txt", image.name));
                eprintln!("bench: converting {} to {}", image.name, v.tag());
                if let Err(e) = convert(store, env, &gzip, &dir, image, v, &list).await {
                    eprintln!(
                        "bench: {e:#}; contenders on {}:{} are skipped",
                        image.name,
                        v.tag()
                    );
                    continue;
                }
                std::fs::write(&done, "")?;
            }
            let src = format!("oci:{}:{}", dir.join("oci").display(), v.tag());
            skopeo_copy(&src, &reference(&env.registry, image, v)).await?;
            ready.insert((image.name, v));
        }
    }
    env.clean().await?;
    Ok(ready)
}

/// `lazysnap convert` of `src` into the layout `dir/oci`.
async fn convert(
    store: &Store,
    env: &BenchEnv,
    src: &str,
    dir: &Path,
    image: &ImageSpec,
    variant: Variant,
    list: &Path,
) -> anyhow::Result<()> {
    let mut c = Command::new(&store.bin);
    c.arg("convert")
        .arg("-a")
        .arg(&env.containerd)
        .arg("--lazysnap-address")
        .arg(&env.lazysnap_sock)
        .arg("--tmp")
        .arg(dir);
    if variant == Variant::EsgzOpt {
        if list.exists() {
            c.arg("--record-in").arg(list);
        } else {
            c.arg("--optimize").arg("--record-out").arg(list);
        }
    }
    let dst = format!("oci:{}:{}", dir.join("oci").display(), variant.tag());
    c.arg(src).arg(&dst);
    if variant == Variant::EsgzOpt && !list.exists() {
        c.arg("--").args(image.args);
    }
    output(&mut c, &format!("lazysnap convert {src} {dst}")).await?;
    Ok(())
}

/// `skopeo copy` to the (plain http) registry reference `dst`.
async fn skopeo_copy(src: &str, dst: &str) -> anyhow::Result<()> {
    let mut c = Command::new("skopeo");
    c.args(["copy", "-q", "--dest-tls-verify=false", src])
        .arg(format!("docker://{dst}"));
    // docker-registry now and then drops a push ("unexpected EOF"): try again
    let mut last = None;
    for _ in 0..3 {
        match output(&mut c, &format!("skopeo copy {src} {dst}")).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("three tries"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::bench::plan;

    #[test]
    fn references_and_layout_keys() {
        let py = plan::image("python").unwrap();
        assert_eq!(
            reference("127.0.0.1:4000", &py, Variant::EsgzOpt),
            "127.0.0.1:4000/bench/python:esgz-opt"
        );
        assert_eq!(
            layout_key(Path::new(
                "/var/cache/lazysnap-test-images/1896c1c64003ae83/oci"
            )),
            "1896c1c64003ae83"
        );
    }
}
