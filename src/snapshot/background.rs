//! Prefetch and background fetch of a remote layer (issue: lazy pull, item 5).
//!
//! - **Prefetch**: the chunks stored before `.prefetch.landmark` (what an
//!   optimized image's start reads, FORMATS.md §1.5) are fetched with one
//!   range request right after the layer is resolved.
//! - **Background fetch**: then the rest of the layer, in blob order, in range
//!   requests of up to [`BATCH_BYTES`] of compressed data, paced to a byte
//!   rate, so a container stops depending on the registry. Chunks already
//!   cached or in flight (a FUSE read) are skipped; a FUSE read never waits
//!   for this work, it only shares a fetch that is already under way.
//!
//! The task is aborted when the snapshot is removed (cancel safe: the cache
//! ends the flights it led). Errors only end the task, with a log line: reads
//! fetch what they need themselves.
//!
//! Metrics: fetches count in the layer's `prefetch` and `background` series;
//! while the background fetch runs, `background_fetch_total_bytes` holds the
//! compressed bytes of the layer's chunks (one per digest, the spans
//! `[offset, end)` of the TOC) and `background_fetch_done_bytes` the part of
//! them found cached or fetched so far in this pass (prefetched chunks
//! included); they are equal when the pass completes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, info};

use super::remote::{ChunkFetchError, RemoteContext, ResolvedLayer};
use crate::format::chunk::decode_verified;
use crate::format::{Chunk, EntryKind, Toc};
use crate::metrics::{FetchSource, LayerFetch};
use crate::oci::Digest;
use crate::registry::Reference;

/// Largest compressed span fetched by one background request.
pub const BATCH_BYTES: u64 = 4 << 20;

/// One chunk to fetch: its digest, its span, and where to find it in the TOC.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub(super) key: Digest,
    pub(super) entry: usize,
    pub(super) chunk: usize,
}

/// The verifiable chunks of `layer` in blob order, one per digest.
fn items(layer: &ResolvedLayer) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (ei, e) in layer.toc.entries.iter().enumerate() {
        for (ci, c) in e.chunks.iter().enumerate() {
            if let Some(d) = &c.digest
                && seen.insert(d.clone())
            {
                out.push(Item {
                    key: d.clone(),
                    entry: ei,
                    chunk: ci,
                });
            }
        }
    }
    out.sort_by_key(|i| layer.toc.entries[i.entry].chunks[i.chunk].offset);
    out
}

/// Blob offset of `.prefetch.landmark`, when the layer has one.
fn landmark(layer: &ResolvedLayer) -> Option<u64> {
    layer
        .toc
        .entries
        .iter()
        .find(|e| e.name == ".prefetch.landmark" && e.kind == EntryKind::Reg)
        .and_then(|e| e.chunks.first())
        .map(|c| c.offset)
}

impl RemoteContext {
    /// Fetches `batch` (chunks of the blob `digest` of `reference`, in one
    /// range request from the first to the last) and stores each chunk in the
    /// cache. Chunks cached or in flight elsewhere are not fetched again. The
    /// range request is counted in `counters`.
    pub(super) async fn fetch_batch(
        &self,
        reference: &Reference,
        digest: &Digest,
        toc: &Toc,
        batch: &[Item],
        counters: &LayerFetch,
    ) -> Result<(), ChunkFetchError> {
        let chunk_of = |i: &Item| -> &Chunk { &toc.entries[i.entry].chunks[i.chunk] };
        let keys: Vec<Digest> = batch.iter().map(|i| i.key.clone()).collect();
        self.cache
            .get_or_fetch_many(&keys, |missing: Vec<Digest>| {
                let want: Vec<&Item> = batch.iter().filter(|i| missing.contains(&i.key)).collect();
                async move {
                    let start = want.iter().map(|i| chunk_of(i).offset).min().unwrap_or(0);
                    let end = want.iter().map(|i| chunk_of(i).end).max().unwrap_or(0);
                    let span = self
                        .client
                        .read_range(reference, digest, start, end)
                        .await
                        .inspect_err(|_| counters.failed())
                        .map_err(|e| ChunkFetchError::new(format!("layer {digest}: {e}")))?;
                    counters.fetched(span.len() as u64);
                    let mut out = Vec::with_capacity(missing.len());
                    for key in &missing {
                        let item = want
                            .iter()
                            .find(|i| &i.key == key)
                            .expect("missing keys come from the batch");
                        let c = chunk_of(item);
                        let slice = &span[(c.offset - start) as usize..(c.end - start) as usize];
                        let name = &toc.entries[item.entry].name;
                        let bytes = decode_verified(toc.compression, slice, c, name)
                            .map_err(|e| ChunkFetchError::new(format!("layer {digest}: {e}")))?;
                        out.push(Bytes::from(bytes));
                    }
                    Ok(out)
                }
            })
            .await
            .map(|_| ())
    }

    /// Prefetches the landmark region, then (when `rate` is `Some`, bytes per
    /// second) fetches the rest of the layer in the background.
    pub async fn background(self: Arc<Self>, layer: ResolvedLayer, rate: Option<u64>) {
        let all = items(&layer);
        let chunk_of = |i: &Item| layer.toc.entries[i.entry].chunks[i.chunk].clone();
        let span = |i: &Item| {
            let c = &layer.toc.entries[i.entry].chunks[i.chunk];
            c.end - c.offset
        };
        let total_bytes: u64 = all.iter().map(span).sum();
        let (prefetch, rest): (Vec<Item>, Vec<Item>) = match landmark(&layer) {
            Some(mark) => all.into_iter().partition(|i| chunk_of(i).end <= mark),
            None => (Vec::new(), all),
        };
        let counters = crate::metrics::layer(layer.digest.as_str());
        if !prefetch.is_empty() {
            let fetch = counters.fetch(FetchSource::Prefetch);
            match self
                .fetch_batch(
                    &layer.reference,
                    &layer.digest,
                    &layer.toc,
                    &prefetch,
                    fetch,
                )
                .await
            {
                Ok(()) => {
                    info!(layer = %layer.digest, chunks = prefetch.len(), "prefetched the landmark region")
                }
                Err(e) => debug!(layer = %layer.digest, error = %e, "prefetch failed"),
            }
        }
        let Some(rate) = rate else { return };
        let progress = crate::metrics::global().background_progress(layer.digest.as_str());
        progress.start(total_bytes);
        let cached: u64 = prefetch
            .iter()
            .filter(|i| self.cache.contains(&i.key))
            .map(span)
            .sum();
        progress.advance(cached);
        let fetch = counters.fetch(FetchSource::Background);
        let mut fetched = 0u64;
        let mut batch: Vec<Item> = Vec::new();
        let mut batch_bytes = 0u64;
        let total = rest.len();
        for item in rest.into_iter().chain(std::iter::once(Item {
            key: layer.digest.clone(),
            entry: usize::MAX,
            chunk: 0,
        })) {
            let last = item.entry == usize::MAX;
            if !last {
                if self.cache.contains(&item.key) {
                    progress.advance(span(&item));
                    continue;
                }
                let c = chunk_of(&item);
                batch_bytes += c.end - c.offset;
                batch.push(item);
            }
            if !batch.is_empty() && (batch_bytes >= BATCH_BYTES || last) {
                if let Err(e) = self
                    .fetch_batch(&layer.reference, &layer.digest, &layer.toc, &batch, fetch)
                    .await
                {
                    debug!(layer = %layer.digest, error = %e, "background fetch stopped");
                    return;
                }
                fetched += batch.len() as u64;
                progress.advance(batch_bytes);
                let pause = Duration::from_secs_f64(batch_bytes as f64 / rate.max(1) as f64);
                batch.clear();
                batch_bytes = 0;
                tokio::time::sleep(pause).await;
            }
        }
        info!(layer = %layer.digest, chunks = total, fetched, "background fetch done");
    }
}
