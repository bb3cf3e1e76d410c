//! How an [`Entry`] holds its chunks, and the iterator that hands them out
//! by value.

use std::iter::FusedIterator;
use std::ops::Range;

use super::{Chunk, Entry};

/// A regular file's chunks as stored in its [`Entry`].
#[derive(Clone)]
pub(super) enum ChunkStore {
    /// The one chunk of a file whose chunk starts at file offset 0 and has
    /// the file's digest (most files): 32 bytes, no allocation.
    One {
        offset: u64,
        end: u64,
        inner_offset: u64,
        size: u64,
    },
    /// Any other count, or one chunk that does not fit `One`: one
    /// exact-size allocation (none when empty).
    Many(Box<[Chunk]>),
}

impl Default for ChunkStore {
    fn default() -> ChunkStore {
        ChunkStore::Many(Box::default())
    }
}

impl ChunkStore {
    /// Stores `chunks` of a file whose digest is `file_digest`.
    pub(super) fn new(mut chunks: Vec<Chunk>, file_digest: Option<&[u8; 32]>) -> ChunkStore {
        match chunks.as_slice() {
            [c] if c.file_offset == 0 && c.digest.as_ref().map(|d| d.sha256()) == file_digest => {
                ChunkStore::One {
                    offset: c.offset,
                    end: c.end,
                    inner_offset: c.inner_offset,
                    size: c.size,
                }
            }
            _ => {
                chunks.shrink_to_fit();
                ChunkStore::Many(chunks.into_boxed_slice())
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            ChunkStore::One { .. } => 1,
            ChunkStore::Many(cs) => cs.len(),
        }
    }

    /// Chunk `k` of a file whose digest is `file_digest`.
    pub(super) fn get(&self, k: usize, file_digest: Option<&[u8; 32]>) -> Option<Chunk> {
        match self {
            &ChunkStore::One {
                offset,
                end,
                inner_offset,
                size,
            } => (k == 0).then(|| Chunk {
                offset,
                end,
                inner_offset,
                file_offset: 0,
                size,
                digest: file_digest.map(|d| crate::oci::Digest::from_sha256(*d)),
            }),
            ChunkStore::Many(cs) => cs.get(k).cloned(),
        }
    }

    /// `(file_offset, size)` of chunk `k`, without building the chunk.
    fn extent(&self, k: usize) -> (u64, u64) {
        match self {
            ChunkStore::One { size, .. } => (0, *size),
            ChunkStore::Many(cs) => (cs[k].file_offset, cs[k].size),
        }
    }

    /// The index of the chunk whose file range holds byte `pos`: the last
    /// chunk starting at or before `pos`, if it reaches past `pos`.
    pub(super) fn index_at(&self, pos: u64) -> Option<usize> {
        let k = match self {
            ChunkStore::One { .. } => 1,
            ChunkStore::Many(cs) => cs.partition_point(|c| c.file_offset <= pos),
        }
        .checked_sub(1)?;
        let (file_offset, size) = self.extent(k);
        (file_offset <= pos && file_offset + size > pos).then_some(k)
    }
}

/// The chunks of an [`Entry`] in file order, by value (see
/// [`Entry::chunks`]): double-ended, of exact size, cheap to clone. The
/// default iterator yields nothing.
#[derive(Clone, Default)]
pub struct ChunkIter<'a> {
    entry: Option<&'a Entry>,
    range: Range<usize>,
}

impl<'a> ChunkIter<'a> {
    pub(super) fn new(entry: &'a Entry, len: usize) -> ChunkIter<'a> {
        ChunkIter {
            entry: Some(entry),
            range: 0..len,
        }
    }

    fn at(&self, k: Option<usize>) -> Option<Chunk> {
        self.entry?.get_chunk(k?)
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        let k = self.range.next();
        self.at(k)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }

    fn nth(&mut self, n: usize) -> Option<Chunk> {
        let k = self.range.nth(n);
        self.at(k)
    }
}

impl DoubleEndedIterator for ChunkIter<'_> {
    fn next_back(&mut self) -> Option<Chunk> {
        let k = self.range.next_back();
        self.at(k)
    }
}

impl ExactSizeIterator for ChunkIter<'_> {}

impl FusedIterator for ChunkIter<'_> {}

impl std::fmt::Debug for ChunkIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}
