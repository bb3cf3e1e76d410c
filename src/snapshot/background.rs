//! Prefetch and background fetch of a remote layer (issue: lazy pull, item 5).
//!
//! - **Prefetch**: the chunks stored before `.prefetch.landmark` (what an
//!   optimized image's start reads, FORMATS.md §1.5) are fetched with one
//!   range request right after the layer is resolved.
//! - **Background fetch**: then the rest of the layer, in blob order, in range
//!   requests of up to [`BATCH_BYTES`] of compressed data, paced to a byte
//!   rate, so a container stops depending on the registry. It yields to
//!   reads: a request starts only while no fetch for a read is under way
//!   and, for an optimized layer or on a slow link, once none has been for
//!   a quiet period (see [`quiet`]), or after waiting
//!   `stream::DEMAND_YIELD_MAX` for that (so a read stuck on a registry that
//!   is gone does not stop it). Chunks already cached are skipped; chunks in
//!   flight elsewhere (a read, or the pass of another snapshot of the same
//!   layer) are waited for and fetched here if that fetch fails, so a dead
//!   source of one snapshot does not stall the pass of another. A FUSE read
//!   never waits for this work, it only shares a fetch under way.
//!
//! The task is aborted when the snapshot is removed (cancel safe: the cache
//! ends the flights it led). Errors only end the task, with a log line: reads
//! fetch what they need themselves.
//!
//! Metrics: fetches count in the layer's `prefetch` and `background` series;
//! while the background fetch runs, `background_fetch_total_bytes` holds the
//! compressed bytes of the layer's chunks (one per digest, the spans
//! `[offset, end)` of the TOC) and `background_fetch_done_bytes` the part of
//! them found cached or fetched so far (prefetched chunks included; with
//! several passes over one layer, the furthest pass); they are equal when a
//! pass completes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::{debug, info};

use super::remote::{ChunkFetchError, RemoteContext, ResolvedLayer};
use super::window::Item;
use crate::format::EntryKind;
use crate::metrics::{FetchSource, LayerFetch};
use crate::oci::Digest;

/// Largest compressed span fetched by one background request.
pub const BATCH_BYTES: u64 = 4 << 20;

/// The verifiable chunks of `layer` in blob order, one per digest.
pub(super) fn items(layer: &ResolvedLayer) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (ei, e) in layer.toc.entries.iter().enumerate() {
        for (ci, c) in e.chunks().enumerate() {
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
    out.sort_by_key(|i| layer.toc.entries[i.entry].chunk(i.chunk).offset);
    out
}

/// The verifiable chunks of `layer` (see [`items`]) split into those before
/// the landmark (the prefetch) and the rest.
fn split(layer: &ResolvedLayer) -> (Vec<Item>, Vec<Item>) {
    let all = items(layer);
    match landmark(layer) {
        Some(mark) => all
            .into_iter()
            .partition(|i| layer.toc.entries[i.entry].chunk(i.chunk).end <= mark),
        None => (Vec::new(), all),
    }
}

/// How long a background pass waits after the last fetch for a read before
/// each of its requests, when it waits (see [`quiet`]); it never waits more
/// than `stream::DEMAND_YIELD_MAX` (1 s) in all, so reads that keep coming
/// slow the pass down but do not stop it.
const QUIET: Duration = Duration::from_millis(500);

/// Longest a background batch may hold the link for the pass to run between
/// a start's reads: a read that misses meanwhile queues behind it.
const BATCH_HOLD: Duration = Duration::from_millis(400);

/// The quiet period a background request waits for (`link_rate`: the
/// registry link's measured rate, bytes/s).
///
/// - An optimized layer (a landmark): [`QUIET`]. Its image's start is in the
///   landmark prefetch, and the few reads that still miss must not queue
///   behind a background batch.
/// - A plain layer on a link where a full batch takes at most
///   [`BATCH_HOLD`]: none. The pass runs between the start's reads, in blob
///   order, the order a start tends to read in, and fills their round
///   trips: python at 20 ms / 200 Mbit/s starts in 0.83 s against 1.08 s
///   without a pass.
/// - A plain layer on a slower link, or before the link was measured:
///   [`QUIET`]. There bytes cost more than round trips, and a pass between
///   reads lengthened the same start (100 ms / 20 Mbit/s: 5.5 s against
///   4.6 s without a pass). (With no read at all, nothing is waited for.)
fn quiet(optimized: bool, link_rate: Option<u64>) -> Duration {
    let slow = link_rate
        .is_none_or(|r| Duration::from_secs_f64(BATCH_BYTES as f64 / r as f64) > BATCH_HOLD);
    if optimized || slow {
        QUIET
    } else {
        Duration::ZERO
    }
}

/// Whether `layer` was written with a prefetch list (either landmark).
fn optimized(layer: &ResolvedLayer) -> bool {
    layer.toc.entries.iter().any(|e| {
        e.kind == EntryKind::Reg
            && (e.name == ".prefetch.landmark" || e.name == ".no.prefetch.landmark")
    })
}

/// Blob offset of `.prefetch.landmark`, when the layer has one.
fn landmark(layer: &ResolvedLayer) -> Option<u64> {
    layer
        .toc
        .entries
        .iter()
        .find(|e| e.name == ".prefetch.landmark" && e.kind == EntryKind::Reg)
        .and_then(|e| e.get_chunk(0))
        .map(|c| c.offset)
}

/// Layers whose landmark prefetch an in-order prefetch of their image
/// (`RemoteContext::prefetch_in_order`) has taken over, so that their own
/// Prepare does not start it beside the layers below. `mark`: `Some(true)`
/// adds `layer`, `Some(false)` removes it, `None` only asks; returns whether
/// it is (was) in the set.
pub(super) fn ordered(layer: &Digest, mark: Option<bool>) -> bool {
    static SET: OnceLock<Mutex<std::collections::HashSet<Digest>>> = OnceLock::new();
    let mut set = SET
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match mark {
        Some(true) => !set.insert(layer.clone()),
        Some(false) => set.remove(layer),
        None => set.contains(layer),
    }
}

/// Background passes running, per layer digest (several snapshots of one
/// layer, e.g. in two namespaces or through two references, each run one).
fn running() -> &'static Mutex<HashMap<Digest, usize>> {
    static RUNNING: OnceLock<Mutex<HashMap<Digest, usize>>> = OnceLock::new();
    RUNNING.get_or_init(Default::default)
}

/// One background pass counted in [`running`] until dropped (also when its
/// task is aborted).
struct Running(Digest);

impl Running {
    /// Counts a pass over `layer`; `true` when no other pass over it runs.
    fn enter(layer: &Digest) -> (Running, bool) {
        let mut map = running().lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(layer.clone()).or_insert(0);
        *n += 1;
        (Running(layer.clone()), *n == 1)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut map = running().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.0);
            }
        }
    }
}

impl RemoteContext {
    /// One batch of a background pass: the chunks nobody fetches are
    /// streamed in one range request; those another fetch has under way
    /// (a read, or another snapshot's pass over the same layer, maybe
    /// through a registry that is gone) are waited for, and fetched here
    /// when that fetch fails, so that another source's failure does not
    /// stop this pass.
    ///
    /// # Errors
    ///
    /// This pass's own fetch failed.
    async fn background_batch(
        &self,
        layer: &ResolvedLayer,
        batch: &[Item],
        counters: &LayerFetch,
    ) -> Result<(), ChunkFetchError> {
        let (r, d, toc) = (&layer.reference, &layer.digest, &layer.toc);
        self.fetch_batch(r, d, toc, batch, counters).await?;
        for item in batch {
            if !self.cache.contains(&item.key) {
                self.get_chunk(r, d, toc, item, counters).await?;
            }
        }
        Ok(())
    }

    /// The landmark prefetch of `layer` alone (see the module docs);
    /// chunks cached are skipped, chunks in flight elsewhere waited for
    /// (and fetched here if that fetch fails).
    pub async fn prefetch(&self, layer: &ResolvedLayer) {
        let (prefetch, _) = split(layer);
        if prefetch.is_empty() {
            return;
        }
        let _demand = super::stream::Demand::begin();
        let counters = crate::metrics::layer(&layer.digest.as_str());
        let fetch = counters.fetch(FetchSource::Prefetch);
        match self.background_batch(layer, &prefetch, fetch).await {
            Ok(()) => {
                info!(layer = %layer.digest, chunks = prefetch.len(), "prefetched the landmark region")
            }
            Err(e) => debug!(layer = %layer.digest, error = %e, "prefetch failed"),
        }
    }

    async fn fetch_prefetch(&self, layer: &ResolvedLayer, prefetch: &[Item]) {
        if prefetch.is_empty() || ordered(&layer.digest, None) {
            return;
        }
        let _demand = super::stream::Demand::begin();
        let counters = crate::metrics::layer(&layer.digest.as_str());
        let fetch = counters.fetch(FetchSource::Prefetch);
        let r = self.fetch_batch(&layer.reference, &layer.digest, &layer.toc, prefetch, fetch);
        match r.await {
            Ok(()) => {
                info!(layer = %layer.digest, chunks = prefetch.len(), "prefetched the landmark region")
            }
            Err(e) => debug!(layer = %layer.digest, error = %e, "prefetch failed"),
        }
    }

    /// Prefetches the landmark region, then (when `rate` is `Some`, bytes per
    /// second) fetches the rest of the layer in the background.
    pub async fn background(self: Arc<Self>, layer: ResolvedLayer, rate: Option<u64>) {
        let chunk_of = |i: &Item| layer.toc.entries[i.entry].chunk(i.chunk);
        let span = |i: &Item| {
            let c = &layer.toc.entries[i.entry].chunk(i.chunk);
            c.end - c.offset
        };
        let (prefetch, rest) = split(&layer);
        let optimized = optimized(&layer);
        let total_bytes: u64 = prefetch.iter().chain(&rest).map(span).sum();
        self.fetch_prefetch(&layer, &prefetch).await;
        let counters = crate::metrics::layer(&layer.digest.as_str());
        let Some(rate) = rate else { return };
        let (_running, fresh) = Running::enter(&layer.digest);
        let progress = crate::metrics::global().background_progress(&layer.digest.as_str());
        progress.start(total_bytes, fresh);
        let mut done: u64 = prefetch
            .iter()
            .filter(|i| self.cache.contains(&i.key))
            .map(span)
            .sum();
        progress.reached(done);
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
                    done += span(&item);
                    progress.reached(done);
                    continue;
                }
                let c = chunk_of(&item);
                batch_bytes += c.end - c.offset;
                batch.push(item);
            }
            if !batch.is_empty() && (batch_bytes >= BATCH_BYTES || last) {
                super::stream::demand_quiet(|| quiet(optimized, super::stream::link_rate())).await;
                if let Err(e) = self.background_batch(&layer, &batch, fetch).await {
                    debug!(layer = %layer.digest, error = %e, "background fetch stopped");
                    return;
                }
                fetched += batch.len() as u64;
                done += batch_bytes;
                progress.reached(done);
                let pause = Duration::from_secs_f64(batch_bytes as f64 / rate.max(1) as f64);
                batch.clear();
                batch_bytes = 0;
                tokio::time::sleep(pause).await;
            }
        }
        info!(layer = %layer.digest, chunks = total, fetched, "background fetch done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Compression, Entry, Toc};

    fn layer(names: &[&str]) -> ResolvedLayer {
        let entries = names
            .iter()
            .map(|n| Entry::new(*n, EntryKind::Reg))
            .collect();
        ResolvedLayer {
            reference: "127.0.0.1:5000/t/x:1".parse().unwrap(),
            digest: Digest::sha256_of(b"blob"),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".to_string(),
            size: 4,
            toc_digest: Digest::sha256_of(b"toc"),
            toc_json: bytes::Bytes::new(),
            toc_file: None,
            toc_offset: 0,
            toc: Arc::new(Toc {
                compression: Compression::Gzip,
                entries,
            }),
        }
    }

    #[test]
    fn the_pass_waits_for_quiet_on_optimized_layers_and_slow_links() {
        let mbit = |m: u64| Some(m * 1_000_000 / 8);
        assert_eq!(quiet(true, None), QUIET);
        assert_eq!(quiet(true, mbit(1000)), QUIET);
        // Plain layers: between the reads on a fast link…
        assert_eq!(quiet(false, mbit(200)), Duration::ZERO);
        // …not before the link's rate is known.
        assert_eq!(quiet(false, None), QUIET);
        // A 4 MiB batch at 20 Mbit/s holds the link 1.7 s.
        assert_eq!(quiet(false, mbit(20)), QUIET);
        assert_eq!(quiet(false, mbit(80)), QUIET);
    }

    #[test]
    fn a_layer_with_either_landmark_is_optimized() {
        assert!(optimized(&layer(&[
            "usr/bin/python3",
            ".prefetch.landmark",
            "etc/x"
        ])));
        assert!(optimized(&layer(&[".no.prefetch.landmark", "etc/x"])));
        assert!(!optimized(&layer(&["usr/bin/python3", "etc/x"])));
        assert!(!optimized(&layer(&["etc/.prefetch.landmark"])));
    }
}
