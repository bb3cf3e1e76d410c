//! Streamed range fetches of a remote layer's chunks: one range request for
//! a run of chunks in blob order, and each chunk handed to the cache
//! ([`LedBatch::deliver`]) as soon as its compressed bytes have arrived and
//! verified, not when the whole range has. A reader waiting for the first
//! chunk of a long range goes on after one round trip plus that chunk.
//!
//! Used by every multi-chunk fetch (the landmark prefetch, the background
//! fetch, readahead) and by the **fetch window** of a read that misses
//! ([`RemoteContext::window_items`]): the missed chunk and the chunks after
//! it in the blob, up to `fetch_window` compressed bytes, in one request.
//! Files that a start reads tend to sit next to each other in the layer
//! (same directory, tar order), so one round trip brings several of them;
//! the cost is the window's bytes on the link, which the reader does not
//! wait for (its chunk comes first).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tracing::warn;

use super::background::Item;
use super::remote::{ChunkFetchError, RemoteContext};
use crate::cache::LedBatch;
use crate::format::chunk::decode_verified;
use crate::format::{Chunk, Toc};
use crate::metrics::LayerFetch;
use crate::oci::Digest;
use crate::registry::Reference;

/// Most chunks one fetch window takes, whatever their size.
pub const WINDOW_MAX_CHUNKS: usize = 4096;

/// What the progress callback works through: the led items in blob order,
/// the next one to deliver, and the batch.
struct Stream<'a> {
    toc: &'a Toc,
    items: Vec<&'a Item>,
    start: u64,
    next: usize,
    batch: LedBatch,
    digest: &'a Digest,
}

impl<'a> Stream<'a> {
    fn chunk(&self, i: usize) -> &'a Chunk {
        let item = self.items[i];
        let toc: &'a Toc = self.toc;
        &toc.entries[item.entry].chunks[item.chunk]
    }

    /// Delivers every chunk wholly inside `prefix` (bytes from `start`).
    fn advance(&mut self, prefix: &[u8]) {
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
            match decode_verified(self.toc.compression, &prefix[lo..hi], c, name) {
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
        DEMAND.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How often [`demand_idle`] looks again.
const IDLE_POLL: Duration = Duration::from_millis(5);

/// Returns once no fetch for a read is under way: the background fetch
/// waits here before each of its requests, so that it never shares the
/// link with a read that waits (it only uses the link when reads leave it
/// idle).
pub(super) async fn demand_idle() {
    while DEMAND.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(IDLE_POLL).await;
    }
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
        let c = &e.chunks[chunk];
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

    /// Fetches the chunks of `items` that `batch` leads, with one range
    /// request from the first to the last of them, delivering each as it
    /// arrives (see the module docs). The request is counted in `counters`.
    ///
    /// # Errors
    ///
    /// The registry's error (the chunks not delivered yet fail with it,
    /// so their waiters get it too); a chunk that does not verify fails on
    /// its own, without failing the call.
    pub(super) async fn stream_chunks(
        &self,
        reference: &Reference,
        digest: &Digest,
        toc: &Toc,
        items: &[Item],
        batch: LedBatch,
        counters: &LayerFetch,
    ) -> Result<(), ChunkFetchError> {
        let chunk_of = |i: &Item| -> &Chunk { &toc.entries[i.entry].chunks[i.chunk] };
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
        });
        let lock = || stream.lock().unwrap_or_else(|p| p.into_inner());
        let result = self
            .client
            .read_range_progressive(reference, digest, start, end, &|prefix: &[u8]| {
                lock().advance(prefix);
            })
            .await;
        let stream = stream.into_inner().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(span) => {
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
        self.stream_chunks(reference, digest, toc, items, batch, counters)
            .await
    }
}

/// The chunks of a layer in blob order, as `(entry, chunk)` indices: the
/// order a fetch window walks. Chunks without a digest are left out (they
/// can't be verified, so they are never fetched).
pub(super) fn blob_order(toc: &Toc) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (ei, e) in toc.entries.iter().enumerate() {
        for (ci, c) in e.chunks.iter().enumerate() {
            if c.digest.is_some() {
                out.push((ei as u32, ci as u32));
            }
        }
    }
    out.sort_by_key(|&(e, c)| toc.entries[e as usize].chunks[c as usize].offset);
    out
}

/// The fetch window of a read that missed chunk `(entry, chunk)`: that
/// chunk, then the chunks after it in `order` (see [`blob_order`]) while
/// their compressed spans add up to at most `window` bytes past the missed
/// chunk, and at most [`WINDOW_MAX_CHUNKS`]. A `window` of 0 is the missed
/// chunk alone.
pub(super) fn window_items(
    toc: &Toc,
    order: &[(u32, u32)],
    entry: usize,
    chunk: usize,
    window: u64,
) -> Vec<Item> {
    let item = |e: usize, c: usize| -> Option<Item> {
        let key = toc.entries.get(e)?.chunks.get(c)?.digest.clone()?;
        Some(Item {
            key,
            entry: e,
            chunk: c,
        })
    };
    let Some(first) = item(entry, chunk) else {
        return Vec::new();
    };
    let missed = &toc.entries[entry].chunks[chunk];
    let mut out = vec![first];
    if window == 0 {
        return out;
    }
    let at = order.partition_point(|&(e, c)| {
        toc.entries[e as usize].chunks[c as usize].offset <= missed.offset
    });
    let limit = missed.end.saturating_add(window);
    for &(e, c) in &order[at..] {
        let ch = &toc.entries[e as usize].chunks[c as usize];
        if ch.end > limit || out.len() >= WINDOW_MAX_CHUNKS {
            break;
        }
        if let Some(i) = item(e as usize, c as usize) {
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Compression, Entry, EntryKind};

    fn toc(spans: &[(u64, u64)]) -> Toc {
        let entries = spans
            .iter()
            .enumerate()
            .map(|(i, &(offset, end))| Entry {
                name: format!("f{i}").into(),
                kind: EntryKind::Reg,
                size: 10,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: (0, 0),
                link_name: Default::default(),
                dev_major: 0,
                dev_minor: 0,
                xattrs: Default::default(),
                digest: None,
                chunks: vec![Chunk {
                    offset,
                    end,
                    inner_offset: 0,
                    file_offset: 0,
                    size: 10,
                    digest: Some(Digest::sha256_of(format!("c{i}").as_bytes())),
                }]
                .into(),
            })
            .collect();
        Toc {
            compression: Compression::Gzip,
            entries,
        }
    }

    #[test]
    fn a_window_takes_the_next_chunks_in_blob_order_up_to_its_bytes() {
        // Entries listed out of blob order: f2 sits first in the blob.
        let t = toc(&[(100, 200), (200, 300), (0, 100), (300, 1000), (1000, 1100)]);
        let order = blob_order(&t);
        assert_eq!(order, vec![(2, 0), (0, 0), (1, 0), (3, 0), (4, 0)]);
        let names = |w: &[Item]| -> Vec<usize> { w.iter().map(|i| i.entry).collect() };
        assert_eq!(names(&window_items(&t, &order, 2, 0, 0)), vec![2]);
        // 250 bytes past f2's end (100): f0 and f1 fit (up to 300), f3 not.
        assert_eq!(names(&window_items(&t, &order, 2, 0, 250)), vec![2, 0, 1]);
        assert_eq!(
            names(&window_items(&t, &order, 0, 0, 10_000)),
            vec![0, 1, 3, 4]
        );
        // The last chunk has nothing after it; an unknown chunk nothing at all.
        assert_eq!(names(&window_items(&t, &order, 4, 0, 10_000)), vec![4]);
        assert!(window_items(&t, &order, 9, 0, 10_000).is_empty());
    }
}
