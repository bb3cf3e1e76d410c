//! Remote layers: from a Prepare's remote-snapshot labels to a verified TOC
//! and a chunk reader for the union's remote lower.
//!
//! This is where registry, format and cache meet (DESIGN.md places the
//! composition "in one place"; it lives here, above `fs`, so that `fs` only
//! sees the [`ChunkReader`] trait):
//!
//! 1. the manifest: by the CRI label's manifest digest, else by resolving the
//!    reference for the host platform (and the layer must be in it);
//! 2. the layer descriptor's `containerd.io/snapshot/stargz/toc.digest`
//!    annotation, else its zstd:chunked `manifest-checksum`/`-position`
//!    annotations (one range request for the compressed TOC, checked
//!    before decompressing); neither ⇒ the layer is not lazily readable;
//! 3. one range request for the blob's tail (footer, and the TOC when it fits),
//!    a second for the TOC otherwise (FORMATS.md §1.8);
//! 4. the TOC JSON checked against the annotation before anything is mounted;
//! 5. chunks: range GET of the chunk's compressed span, decompressed and checked
//!    against its `chunkDigest`, cached under that digest (one fetch in flight
//!    per chunk); a mismatch is fetched once more, then the read fails (EIO).
//!
//! Every chunk fetch is counted in the layer's [`crate::metrics`] series
//! (`source` `read` here, `readahead` for a multi-chunk read's batch, and
//! `prefetch`/`background` in `background.rs`); a layer fetched whole counts
//! as `whole`. The handles are made once per layer, when its reader is made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::OnceCell;

use bytes::Bytes;
use tracing::debug;

use crate::cache::{CacheMismatch, ChunkCache};
use crate::format::estargz::{parse_toc, verify_toc};
use crate::format::{Compression, FormatError, Toc, zstd_chunked};
use crate::fs::{ChunkReader, FsError};
use crate::image::ImageError;
use crate::image::source::Source;
use crate::image::toc::{TocError, read_toc, toc_in_blob};
use crate::metrics::{FetchSource, LayerMetrics};
use crate::oci::Digest;
use crate::oci::labels::{RemoteLabels, STARGZ_TOC_DIGEST};
use crate::registry::{Platform, Reference, RegistryClient, RegistryError};

/// (image reference, layer digest) of a layer resolved ahead of its Prepare.
pub type AheadKey = (String, Digest);

/// How long a layer resolved ahead waits for its Prepare before it is
/// dropped (containerd prepares nothing for layers it already has, so an
/// image pulled again would otherwise keep every TOC in memory for good).
pub const AHEAD_KEEP: std::time::Duration = std::time::Duration::from_secs(300);

/// A TOC in use by a mounted remote layer (see [`RemoteContext::register_live`]).
#[derive(Debug)]
pub struct LiveToc {
    /// The anchor it was verified against (eStargz TOC digest or zstd:chunked
    /// manifest checksum).
    pub toc_digest: Digest,
    /// Blob offset of the TOC.
    pub toc_offset: u64,
    /// The parsed TOC, while some mounted layer still holds it.
    pub toc: std::sync::Weak<Toc>,
    /// Its exact JSON on disk (the mounted snapshot's copy).
    pub file: std::path::PathBuf,
}

/// The anchor annotation of a lazy layer descriptor: the eStargz TOC digest,
/// else the zstd:chunked manifest checksum.
fn anchor(annotations: &HashMap<String, String>) -> Option<&str> {
    use crate::format::zstd_chunked::annotations::{LEGACY_MANIFEST_CHECKSUM, MANIFEST_CHECKSUM};
    [
        STARGZ_TOC_DIGEST,
        MANIFEST_CHECKSUM,
        LEGACY_MANIFEST_CHECKSUM,
    ]
    .iter()
    .find_map(|k| annotations.get(*k))
    .map(String::as_str)
}

/// What lazy pulling needs: the registry client, the chunk cache, the runtime
/// the blocking FUSE threads wait on, and the platform to resolve for.
#[derive(Debug)]
pub struct RemoteContext {
    /// Registry client (shared connections and tokens).
    pub client: RegistryClient,
    /// Chunk cache shared by all layers.
    pub cache: Arc<ChunkCache>,
    /// Runtime for network work started from blocking threads.
    pub rt: tokio::runtime::Handle,
    /// Platform to pick from an index when no manifest digest is labelled.
    pub platform: Platform,
    /// Layers being (or already) resolved ahead of their Prepare, by
    /// (reference, layer digest); an entry is dropped when its Prepare takes it.
    pub ahead: Mutex<HashMap<AheadKey, Arc<OnceCell<ResolvedLayer>>>>,
    /// Background fetch rate in bytes per second; `None` turns it off (the
    /// landmark prefetch still runs).
    pub background_rate: Option<u64>,
    /// Fetch window of a read that misses, in compressed bytes past the
    /// missed chunk (`snapshot/stream.rs`); 0 = the missed chunk alone.
    pub fetch_window: u64,
    /// Blob size up to which a layer is fetched whole, with its TOC, when it
    /// is resolved (`image::toc::read_toc`); 0 = never.
    pub whole_layer_limit: u64,
    /// TOCs of mounted remote layers, by layer digest: the same layer pulled
    /// again (another namespace, another tag, a re-pull) resolves from them,
    /// without a request, and shares the parsed TOC.
    pub live: Mutex<HashMap<Digest, LiveToc>>,
}

/// A layer whose TOC has been fetched and verified.
#[derive(Debug, Clone)]
pub struct ResolvedLayer {
    /// Image reference it was resolved through.
    pub reference: Reference,
    /// Compressed layer digest.
    pub digest: Digest,
    /// Layer media type.
    pub media_type: String,
    /// Blob size in bytes.
    pub size: u64,
    /// Digest of the TOC JSON (the manifest annotation).
    pub toc_digest: Digest,
    /// The exact TOC JSON bytes (kept on disk to reopen after a restart),
    /// shared by clones; empty in the copies that outlive the Prepare (the
    /// background fetch, a reopened layer), which do not need it: a large
    /// layer's JSON is tens of MB.
    pub toc_json: Bytes,
    /// Where the exact TOC JSON already is on disk, when `toc_json` is empty
    /// because the layer was resolved from a mounted one ([`LiveToc`]).
    pub toc_file: Option<std::path::PathBuf>,
    /// Blob offset of the TOC.
    pub toc_offset: u64,
    /// The parsed TOC.
    pub toc: Arc<Toc>,
}

/// Why a layer could not be served lazily.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The registry could not be reached or kept failing: Prepare fails
    /// (Unavailable), since a normal unpack would fail the same way.
    #[error("layer {layer} of {reference}: {source}")]
    Unavailable {
        /// The image reference.
        reference: String,
        /// The layer digest.
        layer: String,
        /// The registry's error (names the host).
        source: RegistryError,
    },
    /// The layer can't be read lazily (no TOC, bad footer or TOC, digest
    /// mismatch, not in the manifest): containerd unpacks it normally.
    #[error("layer {layer} of {reference} is not served lazily: {reason}")]
    NotLazy {
        /// The image reference.
        reference: String,
        /// The layer digest.
        layer: String,
        /// Why.
        reason: String,
    },
}

impl RemoteContext {
    /// Resolves the layer named by `labels` and fetches and verifies its TOC.
    ///
    /// # Errors
    /// [`RemoteError::Unavailable`] for network failures,
    /// [`RemoteError::NotLazy`] for everything that a normal unpack can still do.
    pub async fn resolve_layer(&self, labels: &RemoteLabels) -> Result<ResolvedLayer, RemoteError> {
        self.resolve_layer_with(labels, true).await
    }

    /// [`Self::resolve_layer`] that never reuses the TOC of a mounted layer:
    /// it reads the TOC again (from the cache's kept blob of a small layer,
    /// else from the registry). For a Prepare whose layer was resolved from a
    /// mounted one that went away before its TOC file could be linked.
    ///
    /// # Errors
    /// As [`Self::resolve_layer`].
    pub async fn resolve_layer_afresh(
        &self,
        labels: &RemoteLabels,
    ) -> Result<ResolvedLayer, RemoteError> {
        self.resolve_layer_with(labels, false).await
    }

    async fn resolve_layer_with(
        &self,
        labels: &RemoteLabels,
        reuse_live: bool,
    ) -> Result<ResolvedLayer, RemoteError> {
        let not_lazy = |reason: String| RemoteError::NotLazy {
            reference: labels.reference.clone(),
            layer: labels.layer_digest.to_string(),
            reason,
        };
        let unavailable = |source: RegistryError| RemoteError::Unavailable {
            reference: labels.reference.clone(),
            layer: labels.layer_digest.to_string(),
            source,
        };
        let net = |e: RegistryError| {
            if e.is_unavailable() {
                unavailable(e)
            } else {
                not_lazy(e.to_string())
            }
        };
        let reference: Reference = labels
            .reference
            .parse()
            .map_err(|e: RegistryError| not_lazy(e.to_string()))?;
        let manifest = match &labels.manifest_digest {
            Some(d) => self.client.fetch_manifest(&reference, d).await,
            None => self.client.resolve(&reference, &self.platform).await,
        }
        .map_err(net)?;
        let desc = manifest
            .manifest
            .layers()
            .iter()
            .find(|d| d.digest().to_string() == labels.layer_digest.as_str())
            .ok_or_else(|| {
                not_lazy(format!(
                    "the layer is not in manifest {} of the reference",
                    manifest.digest
                ))
            })?;
        let empty = HashMap::new();
        let annotations = desc.annotations().as_ref().unwrap_or(&empty);
        let size = desc.size();
        let digest = labels.layer_digest.clone();
        if let Some(layer) = reuse_live
            .then(|| {
                self.resolve_from_live(
                    &reference,
                    &digest,
                    desc.media_type().to_string(),
                    size,
                    annotations,
                )
            })
            .flatten()
        {
            debug!(layer = %digest, "TOC of a mounted layer reused");
            return Ok(layer);
        }
        let src = Source::Registry {
            client: self.client.clone(),
            reference: reference.clone(),
        };
        let in_cache = if size <= self.whole_layer_limit {
            self.cached_blob(&digest).await
        } else {
            None
        };
        let read = match &in_cache {
            Some(blob) => toc_in_blob(blob, annotations).await,
            None => read_toc(&src, &digest, size, annotations, self.whole_layer_limit).await,
        };
        let lt = match read {
            Ok(lt) => lt,
            Err(TocError::NotLazy(reason)) => return Err(not_lazy(reason)),
            Err(TocError::Read(ImageError::Registry { source, .. })) => return Err(net(*source)),
            Err(TocError::Read(e)) => return Err(not_lazy(e.to_string())),
        };
        debug!(layer = %digest, entries = lt.toc.entries.len(), kind = ?lt.kind, "TOC verified");
        let layer = ResolvedLayer {
            reference,
            digest,
            media_type: desc.media_type().to_string(),
            size,
            toc_digest: lt.toc_digest,
            toc_json: Bytes::from(lt.anchored),
            toc_file: None,
            toc_offset: lt.toc_offset,
            toc: Arc::new(lt.toc),
        };
        let counters = crate::metrics::layer(&layer.digest.as_str());
        for bytes in lt.fetched {
            counters.fetch(FetchSource::Toc).fetched(bytes);
        }
        if let Some(blob) = lt.blob {
            if in_cache.is_none() {
                self.keep_blob(&layer.digest, &blob);
            }
            let items = super::background::items(&layer);
            let n = self.deliver_blob(&layer.digest, &layer.toc, &items, &blob);
            debug!(layer = %layer.digest, bytes = blob.len(), chunks = n, "small layer fetched whole with its TOC");
        }
        Ok(layer)
    }

    /// Records that `layer`'s TOC is in use by a mounted layer whose exact
    /// TOC JSON is `file`, so that the same layer resolves from it again
    /// (see [`Self::live`]). Entries whose TOC is no longer held go.
    pub fn register_live(&self, layer: &ResolvedLayer, file: std::path::PathBuf) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, l| l.toc.strong_count() > 0);
        live.insert(
            layer.digest.clone(),
            LiveToc {
                toc_digest: layer.toc_digest.clone(),
                toc_offset: layer.toc_offset,
                toc: Arc::downgrade(&layer.toc),
                file,
            },
        );
    }

    /// Layer `digest` resolved from the TOC of a mounted layer, when one is
    /// held and verified against the same anchor annotation, and its JSON
    /// file is still there.
    fn resolve_from_live(
        &self,
        reference: &Reference,
        digest: &Digest,
        media_type: String,
        size: u64,
        annotations: &HashMap<String, String>,
    ) -> Option<ResolvedLayer> {
        let anchor = anchor(annotations)?;
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let l = live.get(digest)?;
        if l.toc_digest.as_str() != anchor || !l.file.is_file() {
            return None;
        }
        Some(ResolvedLayer {
            reference: reference.clone(),
            digest: digest.clone(),
            media_type,
            size,
            toc_digest: l.toc_digest.clone(),
            toc_json: Bytes::new(),
            toc_file: Some(l.file.clone()),
            toc_offset: l.toc_offset,
            toc: l.toc.upgrade()?,
        })
    }

    /// The whole blob `digest` from the cache's disk tier, where a small
    /// layer's blob is kept ([`Self::keep_blob`]); verified against `digest`
    /// on its first open in this process. `None` when it is not there.
    async fn cached_blob(&self, digest: &Digest) -> Option<Bytes> {
        use std::io::Read;
        let (cache, d) = (self.cache.clone(), digest.clone());
        tokio::task::spawn_blocking(move || {
            let mut f = cache.open_file(&d)?;
            let mut v = Vec::new();
            f.read_to_end(&mut v).ok()?;
            Some(Bytes::from(v))
        })
        .await
        .ok()
        .flatten()
    }

    /// Keeps a small layer's whole blob (read with its TOC) in the cache's
    /// disk tier under the layer digest, in the background, so that the
    /// layer resolves without a request while it stays cached (an image
    /// pulled again). Counted against the cache budget like a chunk; dropped
    /// with the layer's chunks when its last snapshot is removed.
    fn keep_blob(&self, digest: &Digest, blob: &Bytes) {
        use std::io::Write;
        let (cache, d, b) = (self.cache.clone(), digest.clone(), blob.clone());
        self.rt.spawn_blocking(move || {
            cache.store_file(&d, b.len() as u64, &mut |w: &mut dyn Write| w.write_all(&b));
        });
    }

    /// The layer named by `labels`, resolved once however many ask; and, on
    /// the first layer of an image, every other labelled layer resolved ahead
    /// in the background (containerd 1.6 prepares layers one at a time, so
    /// their TOCs are fetched concurrently instead of one after the other),
    /// each followed at once by its landmark prefetch.
    ///
    /// # Errors
    /// As [`RemoteContext::resolve_layer`]; a failure is not remembered.
    pub async fn resolve_shared(
        self: &Arc<Self>,
        labels: &RemoteLabels,
    ) -> Result<ResolvedLayer, RemoteError> {
        let started = self.start_ahead(labels, Some(&labels.layer_digest)) > 0;
        let key = (labels.reference.clone(), labels.layer_digest.clone());
        let cell = self.cell(&key);
        if started {
            self.prefetch_in_order(labels);
        }
        let out = cell
            .get_or_try_init(|| self.resolve_layer(labels))
            .await
            .cloned();
        self.ahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        out
    }

    /// Starts resolving, in the background, every layer of `labels.layers`
    /// (but `skip`) that is not resolved or being resolved yet; returns how
    /// many it started.
    fn start_ahead(self: &Arc<Self>, labels: &RemoteLabels, skip: Option<&Digest>) -> usize {
        let mut started = 0;
        for d in &labels.layers {
            if Some(d) == skip {
                continue;
            }
            let key = (labels.reference.clone(), d.clone());
            let fresh = {
                let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
                if ahead.contains_key(&key) {
                    false
                } else {
                    ahead.insert(key.clone(), Arc::new(OnceCell::new()));
                    true
                }
            };
            if fresh {
                let (me, mut other) = (self.clone(), labels.clone());
                other.layer_digest = d.clone();
                tokio::spawn(async move {
                    let cell = me.cell(&key);
                    if let Err(e) = cell.get_or_try_init(|| me.resolve_layer(&other)).await {
                        debug!(layer = %other.layer_digest, error = %e, "resolve ahead failed; its Prepare retries");
                    }
                    tokio::time::sleep(AHEAD_KEEP).await;
                    let mut ahead = me.ahead.lock().unwrap_or_else(|p| p.into_inner());
                    if ahead.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                        ahead.remove(&key);
                        debug!(layer = %other.layer_digest, "no Prepare took the layer resolved ahead; dropped");
                    }
                });
                started += 1;
            }
        }
        started
    }

    /// An image about to be pulled (the Control service's `PrepareImage`):
    /// every layer of `labels.layers` (bottom first) is resolved in the
    /// background and prefetched in order, as the first Prepare of an image
    /// would start it, but before containerd's calls come. Returns how many
    /// layers this started. Must run inside the runtime.
    pub fn resolve_image_ahead(self: &Arc<Self>, labels: &RemoteLabels) -> usize {
        let started = self.start_ahead(labels, None);
        if started > 0 {
            self.prefetch_in_order(labels);
        }
        started
    }

    /// The landmark prefetch of every layer of `labels`' image, one layer
    /// after the other from the bottom, each as soon as it is resolved: a
    /// start reads the bottom layers first (the loader, libc), and layers
    /// fetched side by side would share the link and all arrive late. A
    /// layer's chunks that another fetch has under way are waited for
    /// before the next layer starts.
    fn prefetch_in_order(self: &Arc<Self>, labels: &RemoteLabels) {
        let layers: Vec<(RemoteLabels, Arc<OnceCell<ResolvedLayer>>)> = labels
            .layers
            .iter()
            .map(|d| {
                let mut l = labels.clone();
                l.layer_digest = d.clone();
                let cell = self.cell(&(labels.reference.clone(), d.clone()));
                (l, cell)
            })
            .collect();
        for (l, _) in &layers {
            super::background::ordered(&l.layer_digest, Some(true));
        }
        let me = self.clone();
        tokio::spawn(async move {
            for (l, cell) in layers {
                if let Ok(layer) = cell.get_or_try_init(|| me.resolve_layer(&l)).await {
                    me.prefetch(layer).await;
                }
                super::background::ordered(&l.layer_digest, Some(false));
            }
        });
    }

    fn cell(&self, key: &AheadKey) -> Arc<OnceCell<ResolvedLayer>> {
        self.ahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// The whole layer blob named by `labels` (verified against its digest)
    /// and its media type, for layers that cannot be read lazily.
    ///
    /// # Errors
    /// As [`RemoteContext::resolve_layer`].
    pub async fn fetch_whole(&self, labels: &RemoteLabels) -> Result<(Bytes, String), RemoteError> {
        let fail = |e: RegistryError| {
            if e.is_unavailable() {
                RemoteError::Unavailable {
                    reference: labels.reference.clone(),
                    layer: labels.layer_digest.to_string(),
                    source: e,
                }
            } else {
                RemoteError::NotLazy {
                    reference: labels.reference.clone(),
                    layer: labels.layer_digest.to_string(),
                    reason: e.to_string(),
                }
            }
        };
        let reference: Reference = labels.reference.parse().map_err(fail)?;
        let manifest = match &labels.manifest_digest {
            Some(d) => self.client.fetch_manifest(&reference, d).await,
            None => self.client.resolve(&reference, &self.platform).await,
        }
        .map_err(fail)?;
        let media_type = manifest
            .manifest
            .layers()
            .iter()
            .find(|d| d.digest().to_string() == labels.layer_digest.as_str())
            .map(|d| d.media_type().to_string())
            .ok_or_else(|| RemoteError::NotLazy {
                reference: labels.reference.clone(),
                layer: labels.layer_digest.to_string(),
                reason: format!("the layer is not in manifest {}", manifest.digest),
            })?;
        let counters = crate::metrics::layer(&labels.layer_digest.as_str());
        let counters = counters.fetch(FetchSource::Whole);
        let blob = self
            .client
            .fetch_blob(&reference, &labels.layer_digest)
            .await
            .inspect_err(|_| counters.failed())
            .map_err(fail)?;
        counters.fetched(blob.len() as u64);
        Ok((blob, media_type))
    }

    /// A chunk reader for `layer`, for the union's remote lower.
    ///
    /// The returned [`LayerHealth`] tells whether the layer's last chunk read
    /// failed (and why), for `Mounts` to refuse a union that can't be read.
    pub fn reader(
        self: &Arc<Self>,
        layer: &ResolvedLayer,
    ) -> (Arc<dyn ChunkReader>, Arc<LayerHealth>) {
        let health = Arc::new(LayerHealth::default());
        let reader = Arc::new(RemoteBlob {
            ctx: self.clone(),
            reference: layer.reference.clone(),
            digest: layer.digest.clone(),
            toc: layer.toc.clone(),
            order: OnceLock::new(),
            health: health.clone(),
            metrics: crate::metrics::layer(&layer.digest.as_str()),
        });
        (reader, health)
    }
}

/// Reopens a layer from its stored TOC (after a restart), checking it
/// against the TOC digest again. What is stored tells the format: a zstd
/// frame is a zstd:chunked compressed TOC (its digest is the manifest
/// checksum, over the compressed bytes); anything else is eStargz TOC JSON.
///
/// # Errors
/// [`FormatError`] when the stored bytes no longer verify or parse.
pub fn reopen_toc(
    json: &[u8],
    toc_digest: &Digest,
    toc_offset: u64,
    compression: Compression,
) -> Result<Toc, FormatError> {
    if zstd_chunked::is_zstd_frame(json) {
        return zstd_chunked::open_toc(json, toc_digest, toc_offset);
    }
    verify_toc(json, toc_digest)?;
    parse_toc(json, toc_offset, compression)
}

/// Why one chunk fetch failed; shared by every reader waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ChunkFetchError(String);

impl ChunkFetchError {
    /// An error with this message.
    pub fn new(msg: String) -> Self {
        ChunkFetchError(msg)
    }
}

impl From<CacheMismatch> for ChunkFetchError {
    fn from(m: CacheMismatch) -> Self {
        ChunkFetchError(m.to_string())
    }
}

/// Reads chunks of one remote layer through the cache.
#[derive(Debug)]
struct RemoteBlob {
    ctx: Arc<RemoteContext>,
    reference: Reference,
    digest: Digest,
    toc: Arc<Toc>,
    /// The layer's chunks in blob order, for fetch windows; made at the
    /// first miss (8 bytes per chunk).
    order: OnceLock<Vec<(u32, u32)>>,
    health: Arc<LayerHealth>,
    metrics: LayerMetrics,
}

/// Whether a remote layer can currently be read: the error of its last
/// chunk read when that failed, cleared by the next read that succeeds; and
/// whether its snapshot has been removed (fetches under way for its reads
/// then stop handing chunks to the cache, field case B25).
#[derive(Debug, Default)]
pub struct LayerHealth(Mutex<Option<String>>, std::sync::atomic::AtomicBool);

impl LayerHealth {
    /// Marks the layer's snapshot removed.
    pub fn mark_removed(&self) {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the layer's snapshot has been removed.
    pub fn is_removed(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The last read's error, when it failed.
    pub fn failure(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, failure: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = failure;
    }
}

impl RemoteBlob {
    /// Starts the fetch window of a read that missed `key` (chunk `chunk`
    /// of entry `entry`): leads the flights of it and of the chunks after
    /// it (`stream::window_items`) and streams them in the background, so
    /// that the read waits for its own chunk only. Called for a chunk not
    /// cached; nothing happens when the window is off or someone else
    /// fetches the chunk.
    fn start_window(&self, entry: usize, chunk: usize, key: &Digest) {
        if self.ctx.fetch_window == 0 {
            return;
        }
        let order = self
            .order
            .get_or_init(|| super::window::blob_order(&self.toc));
        let items =
            super::window::window_items(&self.toc, order, entry, chunk, self.ctx.fetch_window);
        let keys: Vec<Digest> = items.iter().map(|i| i.key.clone()).collect();
        let batch = self.ctx.cache.lead(&keys);
        if !batch.leads(key) {
            return; // dropping the batch hands the others back at once
        }
        let (ctx, reference, digest, toc) = (
            self.ctx.clone(),
            self.reference.clone(),
            self.digest.clone(),
            self.toc.clone(),
        );
        let counters = self.metrics.fetch(FetchSource::Read).clone();
        let demand = super::stream::Demand::begin();
        let health = self.health.clone();
        self.ctx.rt.spawn(async move {
            let _demand = demand;
            let fetch = ctx.stream_chunks(
                &reference,
                &digest,
                &toc,
                &items,
                batch,
                &counters,
                Some(&health),
            );
            if let Err(e) = fetch.await {
                debug!(layer = %digest, error = %e, "fetch window failed");
            }
        });
    }
}

impl ChunkReader for RemoteBlob {
    /// Readahead and multi-chunk reads: the chunks not cached yet are fetched
    /// with one range request in the background, each handed over as it
    /// arrives; the reads that follow join that fetch instead of making
    /// their own (one flight per chunk).
    fn prefetch(&self, chunks: &[(usize, usize)]) {
        let mut items: Vec<super::window::Item> = chunks
            .iter()
            .filter_map(|&(entry, chunk)| {
                let key = self.toc.entries.get(entry)?.get_chunk(chunk)?.digest?;
                (!self.ctx.cache.contains(&key)).then_some(super::window::Item {
                    key,
                    entry,
                    chunk,
                })
            })
            .collect();
        if items.is_empty() {
            return;
        }
        items.sort_by_key(|i| self.toc.entries[i.entry].chunk(i.chunk).offset);
        let (ctx, reference, digest, toc) = (
            self.ctx.clone(),
            self.reference.clone(),
            self.digest.clone(),
            self.toc.clone(),
        );
        let counters = self.metrics.fetch(FetchSource::Readahead).clone();
        let health = self.health.clone();
        self.ctx.rt.spawn(async move {
            let keys: Vec<Digest> = items.iter().map(|i| i.key.clone()).collect();
            let led = ctx.cache.lead(&keys);
            let batch = ctx.stream_chunks(
                &reference,
                &digest,
                &toc,
                &items,
                led,
                &counters,
                Some(&health),
            );
            if let Err(e) = batch.await {
                debug!(layer = %digest, error = %e, "readahead failed; reads fetch for themselves");
            }
        });
    }

    /// Whole files assembled from cached chunks live in the same cache.
    fn cache(&self) -> Option<&Arc<ChunkCache>> {
        Some(&self.ctx.cache)
    }

    fn read_chunk(&self, entry: usize, chunk: usize) -> Result<Bytes, FsError> {
        let e = self
            .toc
            .entries
            .get(entry)
            .ok_or_else(|| FsError::remote(format!("no TOC entry {entry}")))?;
        let c = e
            .get_chunk(chunk)
            .ok_or_else(|| FsError::remote(format!("{}: no chunk {chunk}", e.name)))?;
        let Some(key) = c.digest.clone() else {
            return Err(FsError::remote(format!(
                "{}: chunk without digest cannot be verified",
                e.name
            )));
        };
        // One cache lookup decides: a cached chunk is no fetch for a read
        // (no window, not counted as demand).
        let missing = !self.ctx.cache.contains(&key);
        if missing {
            self.start_window(entry, chunk, &key);
        }
        let item = super::window::Item { key, entry, chunk };
        let counters = self.metrics.fetch(FetchSource::Read);
        // A failed flight (the window's, or another layer's with the same
        // chunk digest) is retried from this layer's source (`get_chunk`).
        let out = self
            .ctx
            .rt
            .block_on(async {
                let _demand = missing.then(super::stream::Demand::begin);
                self.ctx
                    .get_chunk(&self.reference, &self.digest, &self.toc, &item, counters)
                    .await
            })
            .map_err(|err| format!("{}: {err}", e.name));
        self.health.record(out.as_ref().err().cloned());
        out.map_err(FsError::remote)
    }
}
