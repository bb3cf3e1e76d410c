//! Test helpers: hand-built TOCs and an in-memory [`ChunkReader`] that
//! counts its calls and can be told to fail.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::FsError;
use super::remote_file::ChunkReader;
use crate::cache::{CacheMismatch, ChunkCache};
use crate::format::{Chunk, Compression, Entry, EntryKind, Toc};
use crate::oci::Digest;

/// Chunk bytes per `(entry, chunk)`, served from memory.
#[derive(Debug, Default)]
pub(crate) struct FakeReader {
    data: Vec<Vec<Bytes>>,
    calls: AtomicUsize,
    fetched: Mutex<Vec<(usize, usize)>>,
    prefetched: Mutex<Vec<(usize, usize)>>,
    fail: Mutex<HashSet<(usize, usize)>>,
    short: Mutex<HashSet<(usize, usize)>>,
    /// The chunk cache offered through [`ChunkReader::cache`].
    cache: Option<Arc<ChunkCache>>,
}

impl FakeReader {
    /// `read_chunk` calls so far.
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The `(entry, chunk)`s read so far, in order.
    pub(crate) fn fetched(&self) -> Vec<(usize, usize)> {
        self.fetched.lock().unwrap().clone()
    }

    /// The readahead hints so far.
    pub(crate) fn prefetched(&self) -> Vec<(usize, usize)> {
        self.prefetched.lock().unwrap().clone()
    }

    /// Makes reads of `(entry, chunk)` fail.
    pub(crate) fn fail(&self, entry: usize, chunk: usize) {
        self.fail.lock().unwrap().insert((entry, chunk));
    }

    /// Makes `(entry, chunk)` come back one byte short.
    pub(crate) fn short(&self, entry: usize, chunk: usize) {
        self.short.lock().unwrap().insert((entry, chunk));
    }

    /// Clears failures.
    pub(crate) fn heal(&self) {
        self.fail.lock().unwrap().clear();
        self.short.lock().unwrap().clear();
    }
}

impl ChunkReader for FakeReader {
    fn read_chunk(&self, entry: usize, chunk: usize) -> Result<Bytes, FsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.fetched.lock().unwrap().push((entry, chunk));
        if self.fail.lock().unwrap().contains(&(entry, chunk)) {
            return Err(FsError::remote(format!(
                "injected failure of chunk {chunk} of entry {entry}"
            )));
        }
        let b = self
            .data
            .get(entry)
            .and_then(|c| c.get(chunk))
            .cloned()
            .ok_or_else(|| FsError::remote(format!("no chunk {entry}/{chunk}")))?;
        if self.short.lock().unwrap().contains(&(entry, chunk)) {
            return Ok(b.slice(..b.len() - 1));
        }
        Ok(b)
    }

    fn prefetch(&self, chunks: &[(usize, usize)]) {
        self.prefetched.lock().unwrap().extend_from_slice(chunks);
    }

    fn cache(&self) -> Option<&Arc<ChunkCache>> {
        self.cache.as_ref()
    }
}

/// Builds a [`Toc`] entry by entry (in blob order) with the chunk data.
#[derive(Debug)]
pub(crate) struct TocBuilder {
    chunk_size: usize,
    entries: Vec<Entry>,
    data: Vec<Vec<Bytes>>,
    blob_off: u64,
}

impl TocBuilder {
    /// Files are split into chunks of `chunk_size` bytes.
    pub(crate) fn new(chunk_size: usize) -> Self {
        TocBuilder {
            chunk_size,
            entries: Vec::new(),
            data: Vec::new(),
            blob_off: 0,
        }
    }

    fn push(&mut self, name: &str, kind: EntryKind, mode: u32) -> &mut Self {
        let mut e = Entry::new(name, kind);
        e.mode = mode;
        e.mtime = (1_700_000_000, 0);
        self.entries.push(e);
        self.data.push(Vec::new());
        self
    }

    /// A directory.
    pub(crate) fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.push(name, EntryKind::Dir, mode)
    }

    /// A regular file with `data`.
    pub(crate) fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.push(name, EntryKind::Reg, mode);
        let mut chunks = Vec::new();
        let mut bytes = Vec::new();
        for (k, piece) in data.chunks(self.chunk_size).enumerate() {
            let off = (k * self.chunk_size) as u64;
            chunks.push(Chunk {
                offset: self.blob_off,
                end: self.blob_off + piece.len() as u64,
                inner_offset: 0,
                file_offset: off,
                size: piece.len() as u64,
                digest: Some(Digest::sha256_of(piece)),
            });
            self.blob_off += piece.len() as u64;
            bytes.push(Bytes::copy_from_slice(piece));
        }
        let e = self.entries.last_mut().unwrap();
        e.size = data.len() as u64;
        e.set_digest((!data.is_empty()).then(|| Digest::sha256_of(data)));
        e.set_chunks(chunks);
        *self.data.last_mut().unwrap() = bytes;
        self
    }

    /// A symlink to `target`.
    pub(crate) fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.push(name, EntryKind::Symlink, 0o777);
        self.entries.last_mut().unwrap().set_link_name(target);
        self
    }

    /// A hardlink to the entry named `target`.
    pub(crate) fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.push(name, EntryKind::Hardlink, 0o644);
        self.entries.last_mut().unwrap().set_link_name(target);
        self
    }

    /// A device node or fifo.
    pub(crate) fn special(&mut self, name: &str, kind: EntryKind, maj: u32, min: u32) -> &mut Self {
        self.push(name, kind, 0o600);
        let e = self.entries.last_mut().unwrap();
        e.set_dev(maj, min);
        self
    }

    /// An empty regular file (a whiteout marker, a landmark …).
    pub(crate) fn empty(&mut self, name: &str) -> &mut Self {
        self.file(name, 0o644, b"")
    }

    /// Changes the last entry.
    pub(crate) fn with(&mut self, f: impl FnOnce(&mut Entry)) -> &mut Self {
        f(self.entries.last_mut().unwrap());
        self
    }

    /// The TOC and a reader over its chunks.
    pub(crate) fn build(&self) -> (Arc<Toc>, Arc<FakeReader>) {
        let toc = Toc {
            compression: Compression::Gzip,
            entries: self.entries.clone(),
        };
        let reader = FakeReader {
            data: self.data.clone(),
            ..FakeReader::default()
        };
        (Arc::new(toc), Arc::new(reader))
    }
}

impl TocBuilder {
    /// As [`TocBuilder::build`], with a chunk cache offered by the reader
    /// that holds every chunk of the TOC (stored on disk before returning).
    pub(crate) fn build_cached(&self, cache: Arc<ChunkCache>) -> (Arc<Toc>, Arc<FakeReader>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (e, chunks) in self.entries.iter().zip(&self.data) {
            for (c, bytes) in e.chunks().zip(chunks) {
                let key = c.digest.clone().unwrap();
                let b = bytes.clone();
                rt.block_on(cache.get_or_fetch(&key, async move { Ok::<_, CacheMismatch>(b) }))
                    .unwrap();
            }
        }
        rt.block_on(cache.flush());
        let toc = Toc {
            compression: Compression::Gzip,
            entries: self.entries.clone(),
        };
        let reader = FakeReader {
            data: self.data.clone(),
            cache: Some(cache),
            ..FakeReader::default()
        };
        (Arc::new(toc), Arc::new(reader))
    }
}

/// Deterministic test bytes.
pub(crate) fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}
