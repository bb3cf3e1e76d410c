//! `lazysnap inspect REF|oci:DIR[:REF]`: an image's layers with their lazy format, read
//! with range requests only (the TOC, never whole layers).
//!
//! Per layer: digest, compressed size, media type, lazy format (`estargz`,
//! `estargz-zstd`, `zstd:chunked` or `-`), TOC digest, entry and chunk counts, and the
//! prefetch landmark (`prefetch` when `.prefetch.landmark` is present, `none` for
//! `.no.prefetch.landmark`, `-` without either). `--json` prints the same as one JSON
//! document (there the landmark is `null` without either); `--toc LAYER` prints that layer's TOC as JSON.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{Context, bail};
use clap::Args;
use lazysnap::format::Compression;
use lazysnap::format::zstd_chunked;
use lazysnap::image::toc::{LayerToc, TocError, TocKind, read_toc};
use lazysnap::image::{Doc, Location, Source, media};
use lazysnap::oci::Digest;
use serde_json::{Value, json};

use super::{RegistryFlags, human_bytes};

/// Arguments of `lazysnap inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    registry: RegistryFlags,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Print the TOC of this layer (1-based index, or digest) as JSON.
    #[arg(long, value_name = "LAYER")]
    toc: Option<String>,
    /// Only this platform of an index (`os/arch[/variant]`).
    #[arg(long)]
    platform: Option<String>,
    /// The image: a reference, or `oci:DIR[:REF]`.
    image: String,
}

/// Inspects and prints.
pub async fn run(a: InspectArgs) -> anyhow::Result<()> {
    let loc: Location = a.image.parse()?;
    let hosts: Vec<String> = match &loc {
        Location::Registry(r) => vec![r.registry.clone()],
        Location::Layout { .. } => vec![],
    };
    let client = a.registry.client(&hosts)?;
    let src = Source::open(&loc, &client)?;
    let root = src.root().await?;
    let mut manifests: Vec<(Option<String>, Doc)> = Vec::new();
    if root.is_index() {
        let index: Value = serde_json::from_slice(&root.bytes).context("parsing the index")?;
        for e in index
            .get("manifests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mt = e.get("mediaType").and_then(Value::as_str).unwrap_or("");
            if !media::is_manifest(mt) {
                continue;
            }
            let platform = e.get("platform").map(|p| {
                let s = |k| p.get(k).and_then(Value::as_str).unwrap_or("");
                let v = s("variant");
                if v.is_empty() {
                    format!("{}/{}", s("os"), s("architecture"))
                } else {
                    format!("{}/{}/{v}", s("os"), s("architecture"))
                }
            });
            if let (Some(want), Some(p)) = (&a.platform, &platform)
                && want != p
            {
                continue;
            }
            let d: Digest = e
                .get("digest")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .context("index entry without a valid digest")?;
            manifests.push((platform, src.manifest(&d, mt).await?));
        }
    } else {
        manifests.push((None, root.clone()));
    }
    let mut report = Vec::new();
    for (platform, doc) in &manifests {
        let m: Value = serde_json::from_slice(&doc.bytes)
            .with_context(|| format!("parsing manifest {}", doc.digest))?;
        let layers = m
            .get("layers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut rows = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let digest: Digest = l
                .get("digest")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .with_context(|| {
                    format!(
                        "layer {} of manifest {} has no valid digest",
                        i + 1,
                        doc.digest
                    )
                })?;
            let size = l.get("size").and_then(Value::as_u64).unwrap_or(0);
            let media_type = l
                .get("mediaType")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let annotations: HashMap<String, String> = l
                .get("annotations")
                .and_then(|a| serde_json::from_value(a.clone()).ok())
                .unwrap_or_default();
            let toc = match read_toc(&src, &digest, size, &annotations, 0).await {
                Ok(t) => Some(t),
                Err(TocError::NotLazy(_)) => None,
                Err(TocError::Read(e)) => {
                    return Err(e).with_context(|| format!("reading the TOC of layer {digest}"));
                }
            };
            if let Some(want) = &a.toc
                && (*want == (i + 1).to_string() || *want == digest.to_string())
            {
                let Some(t) = &toc else {
                    bail!("layer {digest} has no TOC (not eStargz or zstd:chunked)");
                };
                return print_toc(t);
            }
            rows.push(row(i, &digest, size, &media_type, toc.as_ref()));
        }
        report.push(json!({
            "manifest": doc.digest.to_string(),
            "mediaType": doc.media_type,
            "platform": platform,
            "layers": rows,
        }));
    }
    if a.toc.is_some() {
        bail!("no layer {} in {}", a.toc.unwrap_or_default(), src.name());
    }
    let out = json!({"image": src.name(), "digest": root.digest.to_string(), "mediaType": root.media_type, "manifests": report});
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{}  {} ({})", src.name(), root.digest, root.media_type);
    let mut plain_layers = 0;
    for m in out["manifests"].as_array().into_iter().flatten() {
        let plat = m["platform"]
            .as_str()
            .map(|p| format!(" {p}"))
            .unwrap_or_default();
        println!("manifest {}{plat}", m["manifest"].as_str().unwrap_or(""));
        println!(
            "  {:>2}  {:<19}  {:>9}  {:<46}  {:<12}  {:<19}  {:>7}  {:>7}  LANDMARK",
            "#", "DIGEST", "SIZE", "MEDIA TYPE", "FORMAT", "TOC DIGEST", "ENTRIES", "CHUNKS"
        );
        for l in m["layers"].as_array().into_iter().flatten() {
            let s = |k: &str| l[k].as_str().unwrap_or("-").to_string();
            if s("format") == "-" {
                plain_layers += 1;
            }
            let n = |k: &str| {
                l[k].as_u64()
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into())
            };
            let short = |d: String| d.get(..19).map(str::to_string).unwrap_or(d);
            println!(
                "  {:>2}  {:<19}  {:>9}  {:<46}  {:<12}  {:<19}  {:>7}  {:>7}  {}",
                l["index"].as_u64().unwrap_or(0),
                short(s("digest")),
                human_bytes(l["size"].as_u64().unwrap_or(0)),
                s("mediaType"),
                s("format"),
                short(s("tocDigest")),
                n("entries"),
                n("chunks"),
                s("landmark")
            );
        }
    }
    if plain_layers > 0 {
        println!(
            "{plain_layers} layer(s) have no TOC: they are pulled whole. \
             `lazysnap convert SRC DST` (or `--optimize`) makes an image that is pulled lazily."
        );
    }
    Ok(())
}

fn row(i: usize, digest: &Digest, size: u64, media_type: &str, toc: Option<&LayerToc>) -> Value {
    let mut r = json!({"index": i + 1, "digest": digest.to_string(), "size": size, "mediaType": media_type, "format": "-"});
    if let Some(t) = toc {
        let format = match t.kind {
            TocKind::Estargz(Compression::Gzip) => "estargz",
            TocKind::Estargz(Compression::Zstd) => "estargz-zstd",
            TocKind::ZstdChunked => "zstd:chunked",
        };
        let has = |n: &str| t.toc.entries.iter().any(|e| e.name == n);
        // `null` (shown as `-`) without either: not an optimized eStargz layer
        // (zstd:chunked has no landmark).
        let landmark = if has(".prefetch.landmark") {
            json!("prefetch")
        } else if has(".no.prefetch.landmark") {
            json!("none")
        } else {
            Value::Null
        };
        r["format"] = json!(format);
        r["tocDigest"] = json!(t.toc_digest.to_string());
        r["entries"] = json!(t.toc.entries.len());
        r["chunks"] = json!(t.toc.entries.iter().map(|e| e.chunk_count()).sum::<usize>());
        r["landmark"] = landmark;
    }
    r
}

/// Prints the TOC JSON as the blob holds it (pretty-printed).
fn print_toc(t: &LayerToc) -> anyhow::Result<()> {
    let json_bytes = match t.kind {
        TocKind::ZstdChunked => zstd_chunked::decompress_manifest(&t.anchored, 512 << 20)?,
        TocKind::Estargz(_) => t.anchored.clone(),
    };
    let v: Value = serde_json::from_slice(&json_bytes).context("the TOC is not JSON")?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &v)?;
    writeln!(out)?;
    Ok(())
}
