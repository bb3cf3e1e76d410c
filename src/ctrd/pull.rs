//! [`pull()`]: what containerd 1.6's client pull with unpack (`client.Pull`
//! and `WithPullUnpack`, as `ctr-remote images rpull` runs it) does, done over
//! containerd's gRPC API with lazysnap's own registry client
//! (FORMATS.md §4.4–4.6):
//!
//! 1. a lease (expiring after an hour) holds everything written until the
//!    image exists; it is deleted at the end, also on failure;
//! 2. resolve the reference, fetch the image config, compute chain IDs;
//! 3. write config, manifest (and index) into the content store with the
//!    GC labels containerd's fetch handlers set;
//! 4. per layer, bottom up: `Stat(chainID)` — present ⇒ next; else `Prepare`
//!    with the remote-snapshot labels. AlreadyExists ⇒ the snapshotter
//!    serves the layer lazily (or unpacked it itself). Mounts ⇒ it cannot: fetch the blob (verified),
//!    write it to the content store, `Diff.Apply` it, `Commit(chainID)`;
//!    `Remove(key)` on failure. Unlike containerd 1.6, a layer fetched
//!    whole does not make the layers above it whole too;
//! 5. label the config with the top snapshot (`gc.ref.snapshot.<snapshotter>`);
//! 6. create (or update) the image.
//!
//! When the reference resolves through an index, the index is stored too
//! (its bytes as the registry client resolved them) and the image targets it,
//! as containerd's own pull does.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::types::Descriptor;
use serde::Deserialize;
use tonic::Code;
use tracing::{debug, warn};

use super::plan::{
    self, GC_REF_SNAPSHOT, LayerLabels, UNCOMPRESSED, chain_ids, distribution_source,
    index_gc_labels, manifest_gc_labels, unpack_key,
};
use super::{Ctrd, CtrdError};
use crate::oci::Digest;
use crate::oci::labels::REMOTE;
use crate::registry::manifest::OCI_INDEX;
use crate::registry::{Platform, Reference, RegistryClient};

/// How long the pull's lease lives if it is never deleted.
pub const LEASE_EXPIRY: Duration = Duration::from_secs(3600);
/// Prepare attempts per layer when a lazily served snapshot is not found
/// right after (containerd's unpacker tries 3 times too).
const PREPARE_TRIES: usize = 3;

/// What to pull, and where to unpack it.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The image (its full form names the image in containerd).
    pub reference: Reference,
    /// The snapshotter to unpack with, e.g. `lazysnap`.
    pub snapshotter: String,
    /// The platform to pick from an index.
    pub platform: Platform,
}

/// How one layer came to be unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerOutcome {
    /// Its snapshot existed already.
    Present,
    /// The snapshotter serves it lazily (Prepare answered AlreadyExists, and
    /// the snapshot carries `containerd.io/snapshot/remote`).
    Lazy,
    /// The snapshotter unpacked it itself (Prepare answered AlreadyExists
    /// with a local snapshot: lazysnap fetches a layer it cannot serve
    /// lazily whole rather than let containerd do it).
    Unpacked,
    /// Fetched whole (this many compressed bytes) and applied by containerd's Diff service.
    Fetched {
        /// The blob's size.
        bytes: u64,
    },
}

/// One layer done, for progress output.
#[derive(Debug, Clone, Copy)]
pub struct LayerProgress<'a> {
    /// 0-based, bottom layer first.
    pub index: usize,
    /// How many layers the image has.
    pub count: usize,
    /// The layer's digest.
    pub digest: &'a Digest,
    /// What happened.
    pub outcome: LayerOutcome,
}

/// What a pull made.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image's name in containerd.
    pub name: String,
    /// The image's target (index or manifest) digest.
    pub target: Digest,
    /// The platform manifest's digest.
    pub manifest: Digest,
    /// The top layer's chain ID (the snapshot a container is prepared on).
    pub chain_id: String,
    /// Each layer's digest and outcome, bottom first.
    pub layers: Vec<(Digest, LayerOutcome)>,
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Pulls `opts.reference` into containerd's namespace of `ctrd`, unpacked
/// on `opts.snapshotter`, lazily where the snapshotter can. `progress` is
/// called once per layer.
///
/// # Errors
///
/// [`CtrdError::Registry`] naming the manifest or blob, [`CtrdError::Rpc`]
/// naming the containerd RPC and what it was about, [`CtrdError::BadImage`],
/// [`CtrdError::DiffIdMismatch`].
pub async fn pull(
    ctrd: &Ctrd,
    registry: &RegistryClient,
    opts: &PullOptions,
    progress: &mut dyn FnMut(LayerProgress<'_>),
) -> Result<Pulled, CtrdError> {
    pull_with(ctrd, registry, opts, &mut |_| {}, progress).await
}

/// The image a pull resolved, before anything else is fetched: what
/// [`pull_with`] hands its `resolved` callback.
#[derive(Debug, Clone, Copy)]
pub struct ResolvedImage<'a> {
    /// The reference, full form, as the layers' Prepare labels carry it.
    pub name: &'a str,
    /// The platform manifest's digest.
    pub manifest: &'a Digest,
    /// Its layer descriptors' digests, bottom layer first.
    pub layers: &'a [Digest],
}

/// [`pull`], calling `resolved` as soon as the platform manifest is known
/// (before the config is fetched and any layer is prepared), e.g. to let the
/// snapshotter start resolving the layers ahead.
///
/// # Errors
/// As [`pull`].
pub async fn pull_with(
    ctrd: &Ctrd,
    registry: &RegistryClient,
    opts: &PullOptions,
    resolved: &mut dyn FnMut(ResolvedImage<'_>),
    progress: &mut dyn FnMut(LayerProgress<'_>),
) -> Result<Pulled, CtrdError> {
    let lease = ctrd.create_lease(LEASE_EXPIRY).await?;
    let result = Puller {
        ctrd: ctrd.with_lease(&lease)?,
        registry,
        opts,
        name: opts.reference.to_string(),
    }
    .run(resolved, progress)
    .await;
    if let Err(e) = ctrd.delete_lease(&lease).await {
        // It expires by itself (containerd.io/gc.expire).
        warn!(lease, "{e}");
    }
    result
}

struct Puller<'a> {
    ctrd: Ctrd,
    registry: &'a RegistryClient,
    opts: &'a PullOptions,
    name: String,
}

impl Puller<'_> {
    fn r(&self) -> &Reference {
        &self.opts.reference
    }

    fn registry_err(
        &self,
        what: String,
    ) -> impl FnOnce(crate::registry::RegistryError) -> CtrdError {
        move |source| CtrdError::Registry {
            what,
            source: Box::new(source),
        }
    }

    fn source_label(&self) -> (String, String) {
        distribution_source(&self.r().registry, &self.r().repository)
    }

    async fn run(
        &self,
        on_resolved: &mut dyn FnMut(ResolvedImage<'_>),
        progress: &mut dyn FnMut(LayerProgress<'_>),
    ) -> Result<Pulled, CtrdError> {
        let r = self.r();
        let resolved = self
            .registry
            .resolve(r, &self.opts.platform)
            .await
            .map_err(self.registry_err("resolving the reference".to_string()))?;
        let manifest = &resolved.manifest;
        let layers = manifest
            .layers()
            .iter()
            .map(|l| to_digest(&self.name, l.digest()))
            .collect::<Result<Vec<_>, _>>()?;
        on_resolved(ResolvedImage {
            name: &self.name,
            manifest: &resolved.digest,
            layers: &layers,
        });
        let config_digest = to_digest(&self.name, manifest.config().digest())?;
        let config_bytes = self
            .registry
            .fetch_blob(r, &config_digest)
            .await
            .map_err(self.registry_err(format!("image config {config_digest}")))?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| self.bad(format!("config: {e}")))?;
        let diff_ids = config.rootfs.diff_ids;
        if diff_ids.len() != layers.len() {
            return Err(self.bad(format!(
                "{} layers in the manifest, {} diff IDs in the config",
                layers.len(),
                diff_ids.len()
            )));
        }
        let chain = chain_ids(&diff_ids);

        // Content: config, manifest, index (children first; the lease holds them).
        let (src_k, src_v) = self.source_label();
        let mut labels = HashMap::from([(src_k.clone(), src_v.clone())]);
        self.ctrd
            .write_blob(
                &format!("config-{config_digest}"),
                &config_digest,
                &config_bytes,
                labels.clone(),
            )
            .await?;
        labels.extend(manifest_gc_labels(&config_digest, &layers));
        self.ctrd
            .write_blob(
                &format!("manifest-{}", resolved.digest),
                &resolved.digest,
                &resolved.bytes,
                labels,
            )
            .await?;
        let mut target = Descriptor {
            media_type: resolved.media_type.clone(),
            digest: resolved.digest.to_string(),
            size: resolved.bytes.len() as i64,
            annotations: HashMap::new(),
        };
        if let Some(index) = &resolved.index
            && let Some(t) = self
                .write_index(index, resolved.index_bytes.as_ref(), &resolved.digest)
                .await?
        {
            target = t;
        }

        // Layers, bottom up.
        let mut outcomes = Vec::with_capacity(layers.len());
        for (i, desc) in manifest.layers().iter().enumerate() {
            let labels = LayerLabels {
                reference: &self.name,
                manifest: &resolved.digest,
                chain_id: &chain[i],
                layers: &layers[i..],
                annotations: desc.annotations().as_ref(),
            }
            .to_map();
            let layer = Layer {
                digest: &layers[i],
                media_type: desc.media_type().to_string(),
                size: desc.size(),
                diff_id: &diff_ids[i],
                chain_id: &chain[i],
                parent: if i == 0 { "" } else { &chain[i - 1] },
            };
            let outcome = self.unpack(&layer, labels).await?;
            progress(LayerProgress {
                index: i,
                count: layers.len(),
                digest: &layers[i],
                outcome,
            });
            outcomes.push((layers[i].clone(), outcome));
        }

        // The config keeps the snapshot chain from GC once the lease is gone.
        let top = chain.last().cloned().unwrap_or_default();
        if !top.is_empty() {
            let key = format!("{GC_REF_SNAPSHOT}.{}", self.opts.snapshotter);
            self.ctrd
                .update_labels(&config_digest, HashMap::from([(key, top.clone())]))
                .await?;
        }
        let target_digest = target
            .digest
            .parse()
            .map_err(|e| self.bad(format!("{e}")))?;
        self.ctrd
            .create_or_update_image(&self.name, target, HashMap::new())
            .await?;
        Ok(Pulled {
            name: self.name.clone(),
            target: target_digest,
            manifest: resolved.digest,
            chain_id: top,
            layers: outcomes,
        })
    }

    fn bad(&self, reason: String) -> CtrdError {
        CtrdError::BadImage {
            reference: self.name.clone(),
            reason,
        }
    }

    /// Writes the index the manifest was picked from (its bytes as the
    /// registry client resolved them); returns its descriptor.
    async fn write_index(
        &self,
        index: &Digest,
        served: Option<&(String, Vec<u8>)>,
        manifest: &Digest,
    ) -> Result<Option<Descriptor>, CtrdError> {
        let Some((_, bytes)) = served else {
            debug!(%index, "no index bytes; the image targets the manifest");
            return Ok(None);
        };
        let bytes = bytes::Bytes::from(bytes.clone());
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            media_type: Option<String>,
        }
        let media_type = serde_json::from_slice::<Probe>(&bytes)
            .ok()
            .and_then(|p| p.media_type)
            .unwrap_or_else(|| OCI_INDEX.to_string());
        let mut labels = index_gc_labels(std::slice::from_ref(manifest));
        labels.extend([self.source_label()]);
        self.ctrd
            .write_blob(&format!("index-{index}"), index, &bytes, labels)
            .await?;
        Ok(Some(Descriptor {
            media_type,
            digest: index.to_string(),
            size: bytes.len() as i64,
            annotations: HashMap::new(),
        }))
    }

    /// One layer: present, lazy, or fetched and applied.
    async fn unpack(
        &self,
        layer: &Layer<'_>,
        labels: HashMap<String, String>,
    ) -> Result<LayerOutcome, CtrdError> {
        let sn = &self.opts.snapshotter;
        if self.ctrd.stat_snapshot(sn, layer.chain_id).await?.is_some() {
            return Ok(LayerOutcome::Present);
        }
        for attempt in 1..=PREPARE_TRIES {
            let key = unpack_key(
                layer.chain_id,
                std::time::SystemTime::now(),
                plan::random3(),
            );
            match self
                .ctrd
                .prepare_snapshot(sn, &key, layer.parent, labels.clone())
                .await
            {
                Ok(mounts) => {
                    let result = self.apply(layer, &key, mounts, labels).await;
                    if result.is_err()
                        && let Err(e) = self.ctrd.remove_snapshot(sn, &key).await
                    {
                        warn!(key, "cleaning up after a failed unpack: {e}");
                    }
                    return result;
                }
                Err(e) if e.code() == Some(Code::AlreadyExists) => {
                    if let Some(info) = self.ctrd.stat_snapshot(sn, layer.chain_id).await? {
                        return Ok(if info.labels.contains_key(REMOTE) {
                            LayerOutcome::Lazy
                        } else {
                            LayerOutcome::Unpacked
                        });
                    }
                    debug!(
                        attempt,
                        chain_id = layer.chain_id,
                        "AlreadyExists, but Stat finds nothing; preparing again"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Err(CtrdError::rpc(
            "Snapshots.Stat",
            layer.chain_id,
            tonic::Status::not_found(format!(
                "layer {}: Prepare said AlreadyExists {PREPARE_TRIES} times, but the snapshot is not there",
                layer.digest
            )),
        ))
    }

    /// The layer is not served lazily: fetch it whole, put it in the
    /// content store, apply it onto `mounts` and commit the snapshot.
    async fn apply(
        &self,
        layer: &Layer<'_>,
        key: &str,
        mounts: Vec<containerd_client::types::Mount>,
        labels: HashMap<String, String>,
    ) -> Result<LayerOutcome, CtrdError> {
        let blob = self
            .registry
            .fetch_blob(self.r(), layer.digest)
            .await
            .map_err(self.registry_err(format!("layer {}", layer.digest)))?;
        let content_labels = HashMap::from([
            (UNCOMPRESSED.to_string(), layer.diff_id.to_string()),
            self.source_label(),
        ]);
        self.ctrd
            .write_blob(
                &format!("layer-{}", layer.digest),
                layer.digest,
                &blob,
                content_labels,
            )
            .await?;
        let desc = Descriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.to_string(),
            size: i64::try_from(layer.size).unwrap_or(i64::MAX),
            annotations: HashMap::new(),
        };
        let applied = self.ctrd.apply_diff(desc, mounts).await?;
        if applied.digest != layer.diff_id {
            return Err(CtrdError::DiffIdMismatch {
                layer: layer.digest.clone(),
                expected: layer.diff_id.to_string(),
                actual: applied.digest,
            });
        }
        match self
            .ctrd
            .commit_snapshot(&self.opts.snapshotter, layer.chain_id, key, labels)
            .await
        {
            Ok(()) => {}
            // Someone else committed the same chain meanwhile: theirs is as good.
            Err(e) if e.code() == Some(Code::AlreadyExists) => {
                let _ = self.ctrd.remove_snapshot(&self.opts.snapshotter, key).await;
            }
            Err(e) => return Err(e),
        }
        Ok(LayerOutcome::Fetched {
            bytes: blob.len() as u64,
        })
    }
}

struct Layer<'a> {
    digest: &'a Digest,
    media_type: String,
    size: u64,
    diff_id: &'a str,
    chain_id: &'a str,
    parent: &'a str,
}

fn to_digest(reference: &str, d: &oci_spec::image::Digest) -> Result<Digest, CtrdError> {
    d.to_string().parse().map_err(|e| CtrdError::BadImage {
        reference: reference.to_string(),
        reason: format!("digest {d}: {e}"),
    })
}
