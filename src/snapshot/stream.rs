//! Streamed range fetches of a remote layer's chunks: one range request for
//! a run of chunks in blob order, and each chunk handed to the cache
//! ([`LedBatch::deliver`]) as soon as its compressed bytes have arrived and
//! verified, not when the whole range has. A reader waiting for the first
//! chunk of a long range goes on after one round trip plus that chunk.
//!
//! Used by every multi-chunk fetch (the landmark prefetch, the background
//! fetch, readahead) and by the **fetch window** of a read that misses
//! (`window.rs`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tracing::warn;

use super::remote::{ChunkFetchError, LayerHealth, RemoteContext};
use super::window::Item;
use crate::cache::LedBatch;
use crate::format::chunk::decode_verified;
use crate::format::{Chunk, Toc};
use crate::metrics::LayerFetch;
use crate::oci::Digest;
use crate::registry::Reference;

/// What the progress callback works through: the led items in blob order,
/// the next one to deliver, and the batch.
struct Stream<'a> {
    toc: &'a Toc,
    items: Vec<&'a Item>,
    start: u64,
    next: usize,
    batch: LedBatch,
    digest: &'a Digest,
    /// The layer whose removal stops the deliveries.
    stop: Option<&'a LayerHealth>,
}

impl<'a> Stream<'a> {
    fn chunk(&self, i: usize) -> Chunk {
        let item = self.items[i];
        let toc: &'a Toc = self.toc;
        toc.entries[item.entry].chunk(item.chunk)
    }

    /// Delivers every chunk wholly inside `prefix` (bytes from `start`).
    fn advance(&mut self, prefix: &[u8]) {
        if self.stop.is_some_and(LayerHealth::is_removed) {
            return;
        }
        while self.next < self.items.len() {
            let c = self.chunk(self.next);
            let (lo, hi) = (
                (c.offset - self.start) as usize,
                (c.end - self.start) as usize,
            );
            if hi > prefix.len() {
                return;
            }
            let item = self.items[self.next];
            self.next += 1;
            if !self.batch.leads(&item.key) {
                continue; // delivered by an earlier attempt of this range
            }
            let name = &self.toc.entries[item.entry].name;
            let layer = self.digest;
            // `item.key` is `c.digest`, which decode_verified checks.
            match decode_verified(self.toc.compression, &prefix[lo..hi], &c, name) {
                Ok(bytes) if c.digest.as_ref() == Some(&item.key) => {
                    self.batch.deliver_verified(&item.key, Bytes::from(bytes));
                }
                Ok(bytes) => {
                    let _ = self.batch.deliver(&item.key, Bytes::from(bytes), |m| {
                        ChunkFetchError::new(format!("layer {layer}: {m}"))
                    });
                }
                Err(e) => {
                    warn!(layer = %layer, error = %e, "chunk did not verify");
                    self.batch.fail_key(
                        &item.key,
                        ChunkFetchError::new(format!("layer {layer}: {e}")),
                    );
                }
            }
        }
    }
}

/// Fetches for reads under way (the reads' own chunks and their windows).
static DEMAND: AtomicUsize = AtomicUsize::new(0);

/// A fetch for a read, counted in [`DEMAND`] until dropped.
pub(super) struct Demand(());

impl Demand {
    pub(super) fn begin() -> Demand {
        DEMAND.fetch_add(1, Ordering::SeqCst);
        Demand(())
    }
}

impl Drop for Demand {
    fn drop(&mut self) {
        LAST_DEMAND.store(since_epoch(), Ordering::SeqCst);
        DEMAND.fetch_sub(1, Ordering::SeqCst);
    }
}

/// When the last fetch for a read ended, in nanoseconds after [`EPOCH`]
/// plus one (0: none yet).
static LAST_DEMAND: AtomicU64 = AtomicU64::new(0);

/// The daemon's reference instant for [`LAST_DEMAND`].
static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();

fn since_epoch() -> u64 {
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    u64::try_from(epoch.elapsed().as_nanos())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

fn since_last_demand() -> Option<Duration> {
    match LAST_DEMAND.load(Ordering::SeqCst) {
        0 => None,
        t => Some(Duration::from_nanos(since_epoch().saturating_sub(t))),
    }
}

/// How often [`demand_quiet`] looks again.
const IDLE_POLL: Duration = Duration::from_millis(5);

/// Longest [`demand_quiet`] waits: reads keep the link first, but a fetch for
/// a read that hangs on a registry that is gone (retrying, then failing) must
/// not stop every background pass of the daemon.
pub const DEMAND_YIELD_MAX: Duration = Duration::from_secs(1);

/// Returns once no fetch for a read is under way and the last one ended at
/// least `quiet()` ago (asked again at each look), or after
/// [`DEMAND_YIELD_MAX`] in all: the background
/// fetch waits here before each of its requests, so that it does not share
/// the link with a read that waits.
pub(super) async fn demand_quiet(quiet: impl Fn() -> Duration) {
    let deadline = tokio::time::Instant::now() + DEMAND_YIELD_MAX;
    while tokio::time::Instant::now() < deadline
        && link_busy(DEMAND.load(Ordering::SeqCst), since_last_demand(), quiet())
    {
        tokio::time::sleep(IDLE_POLL).await;
    }
}

/// The registry link's rate, bytes per second: the largest rate range
/// fetches long enough to tell (at least [`RATE_SAMPLE_BYTES`] after their
/// first bytes) got, each older one counting 10 % less per fetch since
/// (fetches that shared the link see part of it; a link that got slower
/// shows after a few); 0 until one. One figure for the daemon: a host
/// usually pulls from one registry, or mirrors of it.
static LINK_RATE: AtomicU64 = AtomicU64::new(0);

/// Smallest transfer [`LINK_RATE`] is measured on.
const RATE_SAMPLE_BYTES: u64 = 256 << 10;

fn link_rate_sample(bytes: u64, took: Duration) {
    if bytes >= RATE_SAMPLE_BYTES && !took.is_zero() {
        let rate = (bytes as f64 / took.as_secs_f64()) as u64;
        let _ = LINK_RATE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(next_rate(old, rate))
        });
        crate::metrics::global().set_link_rate(LINK_RATE.load(Ordering::Relaxed));
    }
}

/// [`LINK_RATE`] after a fetch at `rate` when it was `old`.
fn next_rate(old: u64, rate: u64) -> u64 {
    rate.max(old / 10 * 9)
}

/// The registry link's rate, bytes per second, when measured (see
/// [`LINK_RATE`]).
pub(super) fn link_rate() -> Option<u64> {
    match LINK_RATE.load(Ordering::Relaxed) {
        0 => None,
        r => Some(r),
    }
}

/// Whether a background request should wait: `in_flight` fetches for reads
/// are under way, or the last one ended `since_last` ago, less than `quiet`.
fn link_busy(in_flight: usize, since_last: Option<Duration>, quiet: Duration) -> bool {
    in_flight > 0 || since_last.is_some_and(|d| d < quiet)
}

impl RemoteContext {
    /// The verified bytes of one chunk, by one range request of its
    /// compressed span; a chunk whose bytes do not verify is fetched once
    /// more. Counted in `counters`.
    ///
    /// # Errors
    ///
    /// The registry's error, or the second verification failure.
    pub(super) async fn fetch_chunk(
        &self,
        reference: &Reference,
        digest: &Digest,
        toc: &Toc,
        entry: usize,
        chunk: usize,
        counters: &LayerFetch,
    ) -> Result<Bytes, ChunkFetchError> {
        let e = &toc.entries[entry];
        let c = &e.chunk(chunk);
        let mut last = None;
        for _ in 0..2 {
            let span = self
                .client
                .read_range(reference, digest, c.offset, c.end)
                .await
                .inspect_err(|_| counters.failed())
                .map_err(|err| ChunkFetchError::new(format!("layer {digest}: {err}")))?;
            counters.fetched(span.len() as u64);
            match decode_verified(toc.compression, &span, c, &e.name) {
                Ok(b) => return Ok(Bytes::from(b)),
                Err(err) => {
                    warn!(layer = %digest, error = %err, "chunk did not verify");
                    last = Some(err);
                }
            }
        }
        Err(ChunkFetchError::new(format!(
            "layer {digest}: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// Chunk `item` of this layer through the cache, never failed by another
    /// source's fetch: the cache may hand this call to a flight that another
    /// layer (same chunk digest, other blob or registry) leads; when that
    /// flight fails, or this call's own did, the chunk is fetched once more
    /// from this layer's source, outside the flights, and given to the cache
    /// when nobody else is fetching it.
    ///
    /// # Errors
    ///
    /// This layer's own fetch failed ([`Self::fetch_chunk`]).
    pub(super) async fn get_chunk(
        &self,
        reference: &Reference,
        digest: &Digest,
        toc: &Toc,
        item: &Item,
        counters: &LayerFetch,
    ) -> Result<Bytes, ChunkFetchError> {
        let fetch = || self.fetch_chunk(reference, digest, toc, item.entry, item.chunk, counters);
        if let Ok(bytes) = self.cache.get_or_fetch(&item.key, fetch()).await {
            return Ok(bytes);
        }
        let bytes = fetch().await?;
        let mut led = self.cache.lead(std::slice::from_ref(&item.key));
        led.deliver(&item.key, bytes.clone(), |m| {
            ChunkFetchError::new(format!("layer {digest}: {m}"))
        })
        .map_err(|m| ChunkFetchError::new(format!("layer {digest}: {m}")))?;
        Ok(bytes)
    }

    /// Fetches the chunks of `items` that `batch` leads, with one range
    /// request from the first to the last of them, delivering each as it
    /// arrives (see the module docs). The request is counted in `counters`.
    /// Once `stop`'s snapshot is removed, nothing more is delivered (the
    /// flights not delivered end, their waiters fetch for themselves).
    ///
    /// # Errors
    ///
    /// The registry's error (the chunks not delivered yet fail with it,
    /// so their waiters get it too); a chunk that does not verify fails on
    /// its own, without failing the call.
    #[allow(clippy::too_many_arguments)] // the layer (3), what to fetch (2), accounting, stop
    pub(super) async fn stream_chunks(
        &self,
        reference: &Reference,
        digest: &Digest,
        toc: &Toc,
        items: &[Item],
        batch: LedBatch,
        counters: &LayerFetch,
        stop: Option<&LayerHealth>,
    ) -> Result<(), ChunkFetchError> {
        let chunk_of = |i: &Item| -> Chunk { toc.entries[i.entry].chunk(i.chunk) };
        let mut led: Vec<&Item> = items.iter().filter(|i| batch.leads(&i.key)).collect();
        if led.is_empty() {
            return Ok(());
        }
        led.sort_by_key(|i| chunk_of(i).offset);
        let start = chunk_of(led[0]).offset;
        let end = led.iter().map(|i| chunk_of(i).end).max().unwrap_or(start);
        let stream = Mutex::new(Stream {
            toc,
            items: led,
            start,
            next: 0,
            batch,
            digest,
            stop,
        });
        let lock = || stream.lock().unwrap_or_else(|p| p.into_inner());
        // When the first bytes came, and how many: the rest measures the link.
        let first: std::sync::OnceLock<(tokio::time::Instant, usize)> = std::sync::OnceLock::new();
        let result = self
            .client
            .read_range_progressive(reference, digest, start, end, &|prefix: &[u8]| {
                first.get_or_init(|| (tokio::time::Instant::now(), prefix.len()));
                lock().advance(prefix);
            })
            .await;
        let stream = stream.into_inner().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(span) => {
                if let Some(&(t, n)) = first.get() {
                    link_rate_sample(span.len().saturating_sub(n) as u64, t.elapsed());
                }
                counters.fetched(span.len() as u64);
                let mut stream = stream;
                stream.advance(&span);
                Ok(())
            }
            Err(e) => {
                counters.failed();
                let err = ChunkFetchError::new(format!("layer {digest}: {e}"));
                stream.batch.fail(err.clone());
                Err(err)
            }
        }
    }

    /// Hands the cache every chunk of `items` that is not cached or in
    /// flight, from `blob`, the layer's whole blob already in hand (a small
    /// layer read whole with its TOC, `image::toc::read_toc`); each chunk is
    /// verified against its digest as a fetched one is. Returns how many
    /// chunks were delivered; one that does not verify fails on its own
    /// (its readers fetch it again).
    pub(super) fn deliver_blob(
        &self,
        digest: &Digest,
        toc: &Toc,
        items: &[Item],
        blob: &[u8],
    ) -> usize {
        let keys: Vec<Digest> = items.iter().map(|i| i.key.clone()).collect();
        let batch = self.cache.lead(&keys);
        let mut led: Vec<&Item> = items.iter().filter(|i| batch.leads(&i.key)).collect();
        let n = led.len();
        led.sort_by_key(|i| toc.entries[i.entry].chunk(i.chunk).offset);
        let mut stream = Stream {
            toc,
            items: led,
            start: 0,
            next: 0,
            batch,
            digest,
            stop: None,
        };
        stream.advance(blob);
        // Chunks past the blob's end (a TOC that lies) fail when the batch drops.
        n
    }

    /// Leads the flights of `items` not cached or in flight and streams
    /// them ([`Self::stream_chunks`]).
    ///
    /// # Errors
    ///
    /// As [`Self::stream_chunks`].
    pub(super) async fn fetch_batch(
        &self,
        reference: &Reference,
        digest: &Digest,
        toc: &Toc,
        items: &[Item],
        counters: &LayerFetch,
    ) -> Result<(), ChunkFetchError> {
        let keys: Vec<Digest> = items.iter().map(|i| i.key.clone()).collect();
        let batch = self.cache.lead(&keys);
        self.stream_chunks(reference, digest, toc, items, batch, counters, None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_rate_is_the_largest_recent_one() {
        assert_eq!(next_rate(0, 1000), 1000);
        // A fetch that shared the link does not lower it at once…
        assert_eq!(next_rate(1000, 500), 900);
        assert_eq!(next_rate(900, 500), 810);
        // …a slower link shows after a few fetches, a faster one at once.
        let mut r = 25_000_000;
        for _ in 0..25 {
            r = next_rate(r, 2_500_000);
        }
        assert_eq!(r, 2_500_000);
        assert_eq!(next_rate(r, 25_000_000), 25_000_000);
    }

    #[test]
    fn background_waits_for_reads_and_then_for_the_quiet_period() {
        let ms = Duration::from_millis;
        // A read's fetch under way: wait, whatever the quiet period.
        assert!(link_busy(1, None, Duration::ZERO));
        assert!(link_busy(2, Some(ms(900)), ms(500)));
        // No quiet period (a layer without a landmark): go as soon as none is.
        assert!(!link_busy(0, Some(Duration::ZERO), Duration::ZERO));
        // An optimized layer's pass: not before 500 ms after the last read's fetch.
        assert!(link_busy(0, Some(ms(100)), ms(500)));
        assert!(!link_busy(0, Some(ms(500)), ms(500)));
        // No read fetched anything yet.
        assert!(!link_busy(0, None, ms(500)));
    }
}
