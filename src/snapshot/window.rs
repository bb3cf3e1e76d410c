//! The **fetch window** of a read that misses: the missed chunk and the
//! chunks after it in the layer blob, up to `fetch_window` compressed bytes,
//! fetched with one range request (streamed, `stream.rs`). Files that a
//! start reads tend to sit next to each other in a layer (same directory,
//! tar order), so one round trip brings several of them; the cost is the
//! window's bytes on the link, which the reader does not wait for (its own
//! chunk comes first in the response).

use crate::format::Toc;
use crate::oci::Digest;

/// Most chunks one fetch window takes, whatever their size.
pub const WINDOW_MAX_CHUNKS: usize = 4096;

/// One chunk to fetch: its digest (the cache key), and where it is in the
/// TOC (`toc.entries[entry].chunk(chunk)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The chunk's digest.
    pub key: Digest,
    /// Index of its entry in the TOC.
    pub entry: usize,
    /// Index of the chunk in that entry.
    pub chunk: usize,
}

/// The chunks of a layer in blob order, as `(entry, chunk)` indices: the
/// order a fetch window walks. Chunks without a digest are left out (they
/// can't be verified, so they are never fetched).
pub fn blob_order(toc: &Toc) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (ei, e) in toc.entries.iter().enumerate() {
        for (ci, c) in e.chunks().enumerate() {
            if c.digest.is_some() {
                out.push((ei as u32, ci as u32));
            }
        }
    }
    out.sort_by_key(|&(e, c)| toc.entries[e as usize].chunk(c as usize).offset);
    out
}

/// The fetch window of a read that missed chunk `(entry, chunk)`: that
/// chunk, then the chunks after it in `order` (see [`blob_order`]) while
/// their compressed spans add up to at most `window` bytes past the missed
/// chunk, and at most [`WINDOW_MAX_CHUNKS`]. A `window` of 0 is the missed
/// chunk alone.
pub fn window_items(
    toc: &Toc,
    order: &[(u32, u32)],
    entry: usize,
    chunk: usize,
    window: u64,
) -> Vec<Item> {
    let item = |e: usize, c: usize| -> Option<Item> {
        let key = toc.entries.get(e)?.get_chunk(c)?.digest?;
        Some(Item {
            key,
            entry: e,
            chunk: c,
        })
    };
    let Some(first) = item(entry, chunk) else {
        return Vec::new();
    };
    let missed = &toc.entries[entry].chunk(chunk);
    let mut out = vec![first];
    if window == 0 {
        return out;
    }
    let at = order.partition_point(|&(e, c)| {
        toc.entries[e as usize].chunk(c as usize).offset <= missed.offset
    });
    let limit = missed.end.saturating_add(window);
    for &(e, c) in &order[at..] {
        let ch = &toc.entries[e as usize].chunk(c as usize);
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
    use crate::format::{Chunk, Compression, Entry, EntryKind};

    fn toc(spans: &[(u64, u64)]) -> Toc {
        let entries = spans
            .iter()
            .enumerate()
            .map(|(i, &(offset, end))| {
                let mut e = Entry::new(format!("f{i}"), EntryKind::Reg);
                e.size = 10;
                e.mode = 0o644;
                e.set_chunks(vec![Chunk {
                    offset,
                    end,
                    inner_offset: 0,
                    file_offset: 0,
                    size: 10,
                    digest: Some(Digest::sha256_of(format!("c{i}").as_bytes())),
                }]);
                e
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
