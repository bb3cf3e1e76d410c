//! Reading the regular files of a remote lower: [`ChunkReader`] (the bytes,
//! implemented over the registry and the chunk cache outside this module)
//! and [`RemoteFile`] (one open file: maps byte ranges to chunks).
//!
//! Policies:
//! - A read maps `[offset, offset + len)` to the chunks covering it (binary
//!   search on `file_offset`), asks the reader for each in turn and copies
//!   the slices into the caller's buffer; the chunk bytes themselves are
//!   shared (`Bytes`), so nothing is allocated per read, and a read within
//!   one chunk is answered with a slice of it, without a copy
//!   ([`RemoteFile::read_shared`]).
//! - **Whole files.** A file whose chunks are all in the chunk cache can be
//!   assembled there into one plain file (`remote_local.rs`), which the
//!   union hands to the kernel for passthrough.
//! - **Never wrong bytes.** A reader error, a chunk whose length is not the
//!   TOC's, or a range no chunk covers fails the whole read with
//!   [`FsError::Remote`] (EIO; the cause is in the error, which the FUSE
//!   adapter logs once); a read never
//!   returns part of its bytes from a failed chunk.
//! - **Readahead.** When a read reaches the end of a chunk and more follow,
//!   the next [`READAHEAD_CHUNKS`] are handed to [`ChunkReader::prefetch`].
//! - Reads run on the async runtime's blocking pool (the FUSE adapter's
//!   `run`), never on a FUSE session thread, so waiting on the network here
//!   stalls only this request.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::FsError;
use super::backing::EntryAttr;
use crate::cache::ChunkCache;
use crate::format::{Chunk, ChunkIter, Entry, Toc};

/// Chunks handed to [`ChunkReader::prefetch`] when a read reaches a chunk's end.
pub const READAHEAD_CHUNKS: usize = 2;

/// Blocking access to the verified uncompressed bytes of a remote layer's chunks.
pub trait ChunkReader: Send + Sync + std::fmt::Debug {
    /// Bytes of chunk `chunk` (index into `toc.entries[entry].chunks`).
    /// Called from the union's blocking threads; may wait on the network.
    /// Must return verified bytes only.
    ///
    /// # Errors
    /// Any failure to get the verified bytes; the read that asked fails with EIO.
    fn read_chunk(&self, entry: usize, chunk: usize) -> Result<Bytes, FsError>;

    /// Optional hint: the caller will read these `(entry, chunk)`s next
    /// (readahead); default no-op.
    fn prefetch(&self, _chunks: &[(usize, usize)]) {}

    /// The chunk cache that holds this layer's chunks under their digests,
    /// if any: a file whose chunks are all there is assembled into a whole
    /// file in it (see [`RemoteFile::local_file`]). Default: none.
    fn cache(&self) -> Option<&Arc<ChunkCache>> {
        None
    }
}

/// An open regular file of a remote lower.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    pub(super) toc: Arc<Toc>,
    pub(super) reader: Arc<dyn ChunkReader>,
    /// The TOC entry holding the data (a hardlink's target).
    pub(super) entry: usize,
    pub(super) attr: EntryAttr,
    /// `<layer key>/<path>`, for error messages.
    pub(super) path: PathBuf,
}

/// A read failure of a remote file: [`FsError::Remote`] (EIO), the cause in the message.
fn eio(op: &'static str, path: &Path, what: String) -> FsError {
    FsError::remote(format!("{op} {}: {what}", path.display()))
}

impl RemoteFile {
    pub(crate) fn new(
        toc: Arc<Toc>,
        reader: Arc<dyn ChunkReader>,
        entry: usize,
        attr: EntryAttr,
        path: PathBuf,
    ) -> Self {
        RemoteFile {
            toc,
            reader,
            entry,
            attr,
            path,
        }
    }

    /// The attributes of the file in its layer.
    pub fn attr(&self) -> &EntryAttr {
        &self.attr
    }

    /// The file size.
    pub fn size(&self) -> u64 {
        self.attr.size
    }

    pub(super) fn chunks(&self) -> ChunkIter<'_> {
        self.toc
            .entries
            .get(self.entry)
            .map_or_else(ChunkIter::default, Entry::chunks)
    }

    /// Chunk `k` of the file (panics past the last, as indexing would).
    fn chunk(&self, k: usize) -> Chunk {
        self.toc.entries[self.entry].chunk(k)
    }

    /// The verified bytes of chunk `k`, exactly `size` of them.
    pub(super) fn chunk_bytes(&self, k: usize, c: &Chunk) -> Result<Bytes, FsError> {
        let data = self.reader.read_chunk(self.entry, k).map_err(|e| {
            eio(
                "read remote chunk",
                &self.path,
                format!("chunk {k} of entry {}: {e}", self.entry),
            )
        })?;
        if data.len() as u64 != c.size {
            return Err(eio(
                "read remote chunk",
                &self.path,
                format!(
                    "chunk {k} of entry {} has {} bytes, the TOC says {}",
                    self.entry,
                    data.len(),
                    c.size
                ),
            ));
        }
        Ok(data)
    }

    /// The index of the chunk holding byte `pos`.
    fn chunk_at(&self, pos: u64) -> Result<usize, FsError> {
        match self
            .toc
            .entries
            .get(self.entry)
            .and_then(|e| e.chunk_at(pos))
        {
            Some(k) => Ok(k),
            None => Err(eio(
                "read remote file",
                &self.path,
                format!("no chunk of entry {} covers offset {pos}", self.entry),
            )),
        }
    }

    /// The chunks `(first, last)` covering `[offset, end)`, `end > offset`.
    fn span(&self, offset: u64, end: u64) -> Result<(usize, usize), FsError> {
        Ok((self.chunk_at(offset)?, self.chunk_at(end - 1)?))
    }

    /// Readahead after a read that ended at `end`, in chunk `k`: when it
    /// reached the chunk's end, the next [`READAHEAD_CHUNKS`] chunks.
    fn read_ahead(&self, k: usize, end: u64) {
        let n = self.chunks().len();
        if k + 1 < n && self.chunk(k).file_offset + self.chunk(k).size == end {
            let next: Vec<(usize, usize)> = (k + 1..n.min(k + 1 + READAHEAD_CHUNKS))
                .map(|c| (self.entry, c))
                .collect();
            self.reader.prefetch(&next);
        }
    }

    /// Reads up to `len` bytes at `offset` when they lie in one chunk:
    /// that chunk's shared bytes (no copy); `None` when the range spans
    /// several chunks (use [`RemoteFile::read_at`]). Empty at end of file.
    ///
    /// # Errors
    /// As [`RemoteFile::read_at`].
    pub fn read_shared(&self, offset: u64, len: usize) -> Result<Option<Bytes>, FsError> {
        let size = self.attr.size;
        if offset >= size || len == 0 {
            return Ok(Some(Bytes::new()));
        }
        let end = size.min(offset.saturating_add(len as u64));
        let (first, last) = self.span(offset, end)?;
        if first != last {
            return Ok(None);
        }
        let c = &self.chunk(first);
        let data = self.chunk_bytes(first, c)?;
        self.read_ahead(first, end);
        Ok(Some(data.slice(
            usize_of(offset - c.file_offset)..usize_of(end - c.file_offset),
        )))
    }

    /// Reads up to `buf.len()` bytes at `offset` (short only at end of file).
    ///
    /// # Errors
    /// [`FsError::Remote`] (EIO) when a chunk cannot be read
    /// or does not match the TOC; `buf` may then hold part of the data but
    /// no byte of it is reported as read.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, FsError> {
        let size = self.attr.size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let end = size.min(offset.saturating_add(buf.len() as u64));
        let (first, last) = self.span(offset, end)?;
        if last > first {
            // A read that needs several chunks asks for them together first,
            // so that the reader can fetch the missing ones with one request.
            let wanted: Vec<(usize, usize)> = (first..=last).map(|c| (self.entry, c)).collect();
            self.reader.prefetch(&wanted);
        }
        let mut pos = offset;
        let mut k = 0;
        while pos < end {
            k = self.chunk_at(pos)?;
            let c = &self.chunk(k);
            let data = self.chunk_bytes(k, c)?;
            let to = end.min(c.file_offset + c.size);
            let src = &data[usize_of(pos - c.file_offset)..usize_of(to - c.file_offset)];
            buf[usize_of(pos - offset)..usize_of(to - offset)].copy_from_slice(src);
            pos = to;
        }
        self.read_ahead(k, end);
        Ok(usize_of(end - offset))
    }

    /// Writes the whole file into `dst` (a fresh copy-up temp file at
    /// `dst_path`): every chunk at its offset, then the size. All chunks are
    /// first handed to [`ChunkReader::prefetch`].
    ///
    /// # Errors
    /// As [`RemoteFile::read_at`] (also when the chunks leave a gap), or the
    /// write error (ENOSPC …).
    pub fn copy_to(&self, dst: &File, dst_path: &Path) -> Result<(), FsError> {
        let chunks = self.chunks();
        let all: Vec<(usize, usize)> = (0..chunks.len()).map(|k| (self.entry, k)).collect();
        self.reader.prefetch(&all);
        let mut next = 0u64;
        for (k, c) in chunks.enumerate() {
            if c.size == 0 {
                continue;
            }
            if c.file_offset != next {
                return Err(eio(
                    "copy-up remote file",
                    &self.path,
                    format!("chunk {k} of entry {} does not start at {next}", self.entry),
                ));
            }
            let data = self.chunk_bytes(k, &c)?;
            dst.write_all_at(&data, c.file_offset)
                .map_err(FsError::io_at("copy-up", dst_path))?;
            next = c.file_offset + c.size;
        }
        if next < self.attr.size {
            return Err(eio(
                "copy-up remote file",
                &self.path,
                format!(
                    "chunks of entry {} end at {next}, the file at {}",
                    self.entry, self.attr.size
                ),
            ));
        }
        dst.set_len(self.attr.size)
            .map_err(FsError::io_at("copy-up", dst_path))
    }
}

/// A file offset known to fit the buffer being filled.
fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
