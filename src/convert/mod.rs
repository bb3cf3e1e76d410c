//! `lazysnap convert`: rewrite an image's layers into a lazy format (eStargz, eStargz-zstd,
//! zstd:chunked), optionally with the files a recorded start read placed first.
//!
//! For each image manifest (one platform, or every platform of an index): each layer is
//! fetched (streamed to a spool file and verified), decompressed, checked against the
//! config's `diff_id`, and written by [`crate::format::writer`]; layers already in the
//! target format are copied unchanged (mounted across repositories when both sides are
//! on the same registry) unless a prioritized file list asks for a rewrite. The config
//! keeps history, annotations and every other field; only `rootfs.diff_ids` changes.
//! Output manifests and indexes are OCI (zstd layers have no Docker schema2 media type).
//! Blobs go first, then configs, then manifests, the tagged root last: a failed
//! conversion never leaves a tag pointing at an incomplete image.

mod error;
mod layer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::format::writer::{LayerFormat, WriterOptions};
use crate::format::zstd_chunked::annotations as zc;
use crate::image::media::{self, LayerCompression};
use crate::image::{Dest, Doc, Progress, Put, Source};
use crate::oci::Digest;
use crate::oci::labels::STARGZ_TOC_DIGEST;
use crate::registry::Platform;

pub use error::ConvertError;
pub use layer::convert_blob;

/// eStargz's uncompressed-size annotation (FORMATS.md §1.6).
pub const ESTARGZ_UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";

/// How to convert.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Target format, chunk size, prioritized files, compression level.
    pub writer: WriterOptions,
    /// Convert only this platform of an index (the output is then one manifest);
    /// `None`: every image manifest of an index.
    pub platform: Option<Platform>,
    /// Directory for downloaded and converted blobs (deleted as they are pushed).
    pub spool: PathBuf,
    /// Layers converted at once.
    pub jobs: usize,
}

/// What happened to one layer.
#[derive(Debug, Clone)]
pub struct LayerOutcome {
    /// The source layer.
    pub source: Digest,
    /// The layer in the output.
    pub target: Digest,
    /// Rewritten (`true`) or copied unchanged.
    pub converted: bool,
    /// How the blob reached the destination.
    pub put: Put,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Digest of the root written (manifest or index).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Per manifest converted: its new digest and its layers.
    pub manifests: Vec<(Digest, Vec<LayerOutcome>)>,
}

/// The lazy format a layer descriptor announces, if any: an eStargz TOC digest
/// annotation (gzip or zstd by media type), or the zstd:chunked manifest annotations
/// (either key set, FORMATS.md §2.3).
pub fn lazy_format_of(
    media_type: &str,
    annotations: &HashMap<String, String>,
) -> Option<LayerFormat> {
    let zstd = media::layer_compression(media_type) == Some(LayerCompression::Zstd);
    if annotations.contains_key(STARGZ_TOC_DIGEST) {
        return Some(if zstd {
            LayerFormat::EstargzZstd
        } else {
            LayerFormat::Estargz
        });
    }
    let chunked = annotations.contains_key(zc::MANIFEST_CHECKSUM)
        || annotations.contains_key(zc::LEGACY_MANIFEST_CHECKSUM);
    (chunked && zstd).then_some(LayerFormat::ZstdChunked)
}

/// Annotation keys a rewrite replaces (they describe the old blob's format).
const FORMAT_KEYS: &[&str] = &[
    STARGZ_TOC_DIGEST,
    ESTARGZ_UNCOMPRESSED_SIZE,
    zc::MANIFEST_CHECKSUM,
    zc::MANIFEST_POSITION,
    zc::TARSPLIT_POSITION,
    zc::LEGACY_MANIFEST_CHECKSUM,
    zc::LEGACY_MANIFEST_POSITION,
    zc::LEGACY_TARSPLIT_POSITION,
];

/// Converts the image at `src` and writes the result to `dst`.
///
/// # Errors
/// [`ConvertError`] naming the image and, for layer faults, the layer digest. Nothing is
/// tagged unless every blob and manifest below the root was written.
pub async fn convert(
    src: &Source,
    dst: &Dest,
    opts: &ConvertOptions,
    progress: Arc<dyn Progress>,
) -> Result<Outcome, ConvertError> {
    let root = src.root().await?;
    let c = Ctx {
        src: src.clone(),
        dst: dst.clone(),
        opts: opts.clone(),
        progress,
    };
    if !root.is_index() {
        let (bytes, layers) = c.manifest(&root).await?;
        let digest = dst.put_root(media::OCI_MANIFEST, &bytes).await?;
        return Ok(Outcome {
            digest: digest.clone(),
            media_type: media::OCI_MANIFEST.into(),
            manifests: vec![(digest, layers)],
        });
    }
    let mut index: Value = c.parse(&root.bytes, "index", &root.digest)?;
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(p) = &opts.platform {
        let pick = entries
            .iter()
            .find(|e| platform_matches(e, p) && is_manifest_desc(e))
            .ok_or_else(|| {
                c.malformed(
                    format!("index {}", root.digest),
                    format!("no manifest for platform {p}"),
                )
            })?;
        let doc = c.child(pick).await?;
        let (bytes, layers) = c.manifest(&doc).await?;
        let digest = dst.put_root(media::OCI_MANIFEST, &bytes).await?;
        return Ok(Outcome {
            digest: digest.clone(),
            media_type: media::OCI_MANIFEST.into(),
            manifests: vec![(digest, layers)],
        });
    }
    let mut out_entries = Vec::new();
    let mut manifests = Vec::new();
    for e in &entries {
        if !is_manifest_desc(e) {
            tracing::warn!(image = %src.name(), entry = %e, "index entry is not an image manifest; left out");
            continue;
        }
        let doc = c.child(e).await?;
        let (bytes, layers) = c.manifest(&doc).await?;
        let digest = dst.put_child_manifest(media::OCI_MANIFEST, &bytes).await?;
        let mut d = e.clone();
        d["mediaType"] = json!(media::OCI_MANIFEST);
        d["digest"] = json!(digest.to_string());
        d["size"] = json!(bytes.len());
        out_entries.push(d);
        manifests.push((digest, layers));
    }
    index["schemaVersion"] = json!(2);
    index["mediaType"] = json!(media::OCI_INDEX);
    index["manifests"] = Value::Array(out_entries);
    let bytes = serde_json::to_vec(&index).expect("JSON values serialize");
    let digest = dst.put_root(media::OCI_INDEX, &bytes).await?;
    Ok(Outcome {
        digest,
        media_type: media::OCI_INDEX.into(),
        manifests,
    })
}

fn is_manifest_desc(e: &Value) -> bool {
    e.get("mediaType")
        .and_then(Value::as_str)
        .is_some_and(media::is_manifest)
}

fn platform_matches(e: &Value, p: &Platform) -> bool {
    let Some(pl) = e.get("platform") else {
        return false;
    };
    let s = |k: &str| pl.get(k).and_then(Value::as_str);
    p.matches(
        s("os").unwrap_or(""),
        s("architecture").unwrap_or(""),
        s("variant"),
    )
}

#[derive(Clone)]
struct Ctx {
    src: Source,
    dst: Dest,
    opts: ConvertOptions,
    progress: Arc<dyn Progress>,
}

impl Ctx {
    fn malformed(&self, what: String, reason: String) -> ConvertError {
        ConvertError::Malformed {
            image: self.src.name(),
            what,
            reason,
        }
    }

    fn parse(&self, bytes: &[u8], kind: &str, digest: &Digest) -> Result<Value, ConvertError> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.malformed(format!("{kind} {digest}"), e.to_string()))
    }

    async fn child(&self, desc: &Value) -> Result<Doc, ConvertError> {
        let digest: Digest = desc
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                self.malformed("index entry".into(), format!("no valid digest in {desc}"))
            })?;
        let mt = desc
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or(media::OCI_MANIFEST);
        Ok(self.src.manifest(&digest, mt).await?)
    }

    /// Converts one image manifest: returns the new manifest's bytes (its blobs and
    /// config are written) and what happened to each layer.
    async fn manifest(&self, doc: &Doc) -> Result<(Vec<u8>, Vec<LayerOutcome>), ConvertError> {
        let m = self.parse(&doc.bytes, "manifest", &doc.digest)?;
        let what = format!("manifest {}", doc.digest);
        let cfg_desc = m
            .get("config")
            .ok_or_else(|| self.malformed(what.clone(), "no config".into()))?;
        let cfg_digest: Digest = cfg_desc
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.malformed(what.clone(), "config without a valid digest".into()))?;
        let cfg_bytes = self.src.small_blob(&cfg_digest).await?;
        let mut cfg = self.parse(&cfg_bytes, "config", &cfg_digest)?;
        let layers = m
            .get("layers")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| self.malformed(what.clone(), "no layers array".into()))?;
        let diff_ids: Vec<Option<Digest>> = cfg
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|d| d.as_str().and_then(|s| s.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != layers.len() {
            return Err(self.malformed(
                format!("config {cfg_digest}"),
                format!("{} diff_ids for {} layers", diff_ids.len(), layers.len()),
            ));
        }
        let sem = Arc::new(Semaphore::new(self.opts.jobs.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for (i, (desc, diff_id)) in layers.into_iter().zip(diff_ids).enumerate() {
            let c = self.clone();
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore stays open");
                (i, c.layer(desc, diff_id).await)
            });
        }
        let mut results: Vec<Option<(Value, Digest, LayerOutcome)>> = Vec::new();
        results.resize_with(set.len(), || None);
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            // After the first failure the other layers are aborted: skip their Cancelled.
            let (i, r) = match joined {
                Ok(v) => v,
                Err(e) if e.is_cancelled() => continue,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
            match r {
                Ok(v) => results[i] = Some(v),
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                        set.abort_all();
                    }
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let results: Vec<_> = results
            .into_iter()
            .map(|r| r.expect("every layer finished"))
            .collect();
        cfg["rootfs"]["diff_ids"] = Value::Array(
            results
                .iter()
                .map(|(_, d, _)| json!(d.to_string()))
                .collect(),
        );
        let cfg_out = serde_json::to_vec(&cfg).expect("JSON values serialize");
        let (cfg_out_digest, _) = self.dst.put_blob_bytes(&cfg_out).await?;
        let mut out = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {
                "mediaType": media::OCI_CONFIG,
                "digest": cfg_out_digest.to_string(),
                "size": cfg_out.len(),
            },
            "layers": results.iter().map(|(d, _, _)| d.clone()).collect::<Vec<_>>(),
        });
        if let Some(a) = m.get("annotations") {
            out["annotations"] = a.clone();
        }
        let outcomes = results.into_iter().map(|(_, _, o)| o).collect();
        Ok((
            serde_json::to_vec(&out).expect("JSON values serialize"),
            outcomes,
        ))
    }

    /// One layer: copied or converted; returns its new descriptor, diff_id and outcome.
    async fn layer(
        &self,
        desc: Value,
        diff_id: Option<Digest>,
    ) -> Result<(Value, Digest, LayerOutcome), ConvertError> {
        let digest: Digest = desc
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                self.malformed(
                    "layer descriptor".into(),
                    format!("no valid digest in {desc}"),
                )
            })?;
        let fault = |reason: String| ConvertError::Layer {
            image: self.src.name(),
            layer: digest.clone(),
            reason,
        };
        let media_type = desc
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let size = desc.get("size").and_then(Value::as_u64).unwrap_or(0);
        let annotations: HashMap<String, String> = desc
            .get("annotations")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        let diff_id =
            diff_id.ok_or_else(|| fault("the config has no valid diff_id for it".into()))?;
        let compression = media::layer_compression(&media_type)
            .ok_or_else(|| fault(format!("unsupported layer media type {media_type:?}")))?;
        let already = lazy_format_of(&media_type, &annotations) == Some(self.opts.writer.format);
        if already && self.opts.writer.prioritized.is_none() {
            let task = self
                .progress
                .task(&format!("copy {}", short(&digest)), Some(size));
            let put = self
                .dst
                .copy_blob(&self.src, &digest, size, &self.opts.spool, &|n| task.set(n))
                .await?;
            task.finish(put_note(put));
            let outcome = LayerOutcome {
                source: digest.clone(),
                target: digest,
                converted: false,
                put,
            };
            // The manifest is OCI: a Docker layer type gets its OCI name (same bytes).
            let mut desc = desc;
            desc["mediaType"] = json!(media::oci_layer_type(&media_type));
            return Ok((desc, diff_id, outcome));
        }
        let task = self
            .progress
            .task(&format!("fetch {}", short(&digest)), Some(size));
        let blob = self
            .src
            .blob_file(&digest, &self.opts.spool, &|n| task.set(n))
            .await?;
        task.finish("fetched");
        let task = self
            .progress
            .task(&format!("convert {}", short(&digest)), None);
        let (path, d, wopts, spool) = (
            blob.path().to_path_buf(),
            digest.clone(),
            self.opts.writer.clone(),
            self.opts.spool.clone(),
        );
        let want = diff_id.clone();
        let converted = tokio::task::spawn_blocking(move || {
            layer::convert_blob(&path, &d, compression, Some(&want), &wopts, &spool)
        })
        .await
        .expect("conversion task panicked")
        .map_err(|f| match f {
            layer::LayerFault::Reason(r) => fault(r),
            layer::LayerFault::Format(e) => ConvertError::Format {
                image: self.src.name(),
                layer: digest.clone(),
                source: Box::new(e),
            },
        })?;
        drop(blob);
        let w = &converted.written;
        let big = match w.prioritized_too_large.as_slice() {
            [] => String::new(),
            files => format!(
                "; left out of the prefetch as larger than {} bytes: {}",
                self.opts.writer.prefetch_file_limit,
                files.join(", ")
            ),
        };
        task.finish(&format!(
            "{} entries, {} → {} bytes{big}",
            w.entries, size, w.size
        ));
        let task = self
            .progress
            .task(&format!("push {}", short(&w.digest)), Some(w.size));
        let put = self
            .dst
            .put_blob_file(&w.digest, w.size, &converted.blob, &|n| task.set(n))
            .await?;
        task.finish(put_note(put));
        let mut anns: serde_json::Map<String, Value> = annotations
            .into_iter()
            .filter(|(k, _)| !FORMAT_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        for (k, v) in &w.annotations {
            anns.insert(k.clone(), Value::String(v.clone()));
        }
        let new_desc = json!({
            "mediaType": w.media_type,
            "digest": w.digest.to_string(),
            "size": w.size,
            "annotations": anns,
        });
        let outcome = LayerOutcome {
            source: digest,
            target: w.digest.clone(),
            converted: true,
            put,
        };
        Ok((new_desc, w.diff_id.clone(), outcome))
    }
}

fn put_note(p: Put) -> &'static str {
    match p {
        Put::Existed => "exists",
        Put::Mounted => "mounted",
        Put::Uploaded => "pushed",
    }
}

/// `sha256:` and the first 12 hex digits, for progress labels.
pub fn short(d: &Digest) -> String {
    format!("sha256:{}", &d.hex()[..12])
}
