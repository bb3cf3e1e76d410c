//! The format-neutral table of contents: one flat list of entries in blob
//! order, each regular file with its chunks. eStargz and zstd:chunked both
//! parse into it; the filesystem builds its lower from it.
//!
//! Duplicate names are kept in order (a later entry replaces an earlier one
//! when the tree is built, as GNU tar extracts); the parser does not merge.
//!
//! **Memory** (issue 6; `cargo bench --bench toc_memory`): a mounted layer
//! keeps its whole TOC, so an [`Entry`] is kept small: 136 bytes inline
//! (64-bit), its name as one exact allocation, and nothing else on the heap
//! for most files: the file [`Digest`] is its 32-byte value, inline; the
//! chunk of a one-chunk file is stored as its blob span only (offset, end,
//! inner offset, size: its file offset is 0 and its digest the file's);
//! link target, device numbers and xattrs share one optional boxed record.
//! A one-chunk regular file with a 45-byte name costs 136 + 45 = 181 heap
//! bytes; a directory 136 + its name. Chunks are handed out by value
//! ([`Entry::chunks`], [`Entry::chunk`]), built on demand without
//! allocating.

mod chunks;
#[cfg(test)]
mod tests;
mod text;

use std::fmt;

use crate::oci::Digest;

pub use chunks::ChunkIter;
use chunks::ChunkStore;
pub use text::{LinkName, Name, Xattrs};

/// How the blob's members are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip members (RFC 1952).
    Gzip,
    /// zstd frames (RFC 8878).
    Zstd,
}

/// File type of an entry (TOC `type`, without `chunk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// `dir`
    Dir,
    /// `reg`
    Reg,
    /// `symlink`
    Symlink,
    /// `hardlink` (to `link_name`, another entry of the same layer)
    Hardlink,
    /// `char`
    Char,
    /// `block`
    Block,
    /// `fifo`
    Fifo,
}

/// One compressed span holding (part of) a regular file (80 bytes). An
/// [`Entry`] hands its chunks out by value ([`Entry::chunk`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Blob offset of the member (gzip header / zstd frame) holding it.
    pub offset: u64,
    /// Blob offset where that member's span ends (next payload member, or
    /// the TOC): fetch `[offset, end)`.
    pub end: u64,
    /// Bytes to skip in the decompressed stream before the chunk starts.
    pub inner_offset: u64,
    /// Offset of the chunk in the file.
    pub file_offset: u64,
    /// Uncompressed size of the chunk in bytes.
    pub size: u64,
    /// `sha256` of the chunk's uncompressed bytes; `None` only when the
    /// TOC gives no per-chunk digest (verification then uses the file's).
    /// For a one-chunk file the parsers put the file's digest here.
    pub digest: Option<Digest>,
}

/// One entry. 136 bytes inline on 64-bit targets (see the module docs for
/// what it costs on the heap). Made with [`Entry::new`]; the common
/// attributes are fields, the rest (link target, device numbers, xattrs,
/// file digest, chunks) go through accessors, which keep them compact.
#[derive(Clone)]
pub struct Entry {
    /// Root-relative clean path (`usr/bin/sh`; `""` for the root).
    pub name: Name,
    /// File type.
    pub kind: EntryKind,
    /// File size in bytes (regular files).
    pub size: u64,
    /// Permission and setuid/setgid/sticky bits (`& 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time: Unix seconds and nanoseconds.
    pub mtime: (i64, u32),
    /// Link target, device numbers, xattrs; `None` when all are empty.
    extra: Option<Box<Extra>>,
    /// The sha256 value of the file's digest.
    digest: Option<[u8; 32]>,
    /// The chunks (their digests too when not the file's).
    chunks: ChunkStore,
}

/// The fields few entries have.
#[derive(Clone, Default, PartialEq, Eq)]
struct Extra {
    link_name: LinkName,
    dev_major: u32,
    dev_minor: u32,
    xattrs: Xattrs,
}

static NO_EXTRA: Extra = Extra {
    link_name: LinkName::NONE,
    dev_major: 0,
    dev_minor: 0,
    xattrs: Xattrs::NONE,
};

impl Entry {
    /// An entry named `name` (root-relative, clean) of type `kind`, with
    /// every other attribute zero or empty: size 0, mode 0, uid/gid 0,
    /// mtime (0, 0), no link target, device 0:0, no xattrs, no digest, no
    /// chunks.
    pub fn new(name: impl Into<Name>, kind: EntryKind) -> Entry {
        Entry {
            name: name.into(),
            kind,
            size: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            extra: None,
            digest: None,
            chunks: ChunkStore::default(),
        }
    }

    fn extra(&self) -> &Extra {
        self.extra.as_deref().unwrap_or(&NO_EXTRA)
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_default()
    }

    /// Drops the extra record when it holds nothing.
    fn trim_extra(&mut self) {
        if self.extra.as_deref() == Some(&NO_EXTRA) {
            self.extra = None;
        }
    }

    /// Symlink target, or the clean name of a hardlink's target entry;
    /// empty for other kinds.
    pub fn link_name(&self) -> &LinkName {
        &self.extra().link_name
    }

    /// Sets the link target (see [`Entry::link_name`]).
    pub fn set_link_name(&mut self, target: impl Into<LinkName>) {
        self.extra_mut().link_name = target.into();
        self.trim_extra();
    }

    /// Device major (char/block; 0 otherwise).
    pub fn dev_major(&self) -> u32 {
        self.extra().dev_major
    }

    /// Device minor (char/block; 0 otherwise).
    pub fn dev_minor(&self) -> u32 {
        self.extra().dev_minor
    }

    /// Sets the device numbers (char/block).
    pub fn set_dev(&mut self, major: u32, minor: u32) {
        let x = self.extra_mut();
        (x.dev_major, x.dev_minor) = (major, minor);
        self.trim_extra();
    }

    /// Extended attributes (raw bytes), name → value.
    pub fn xattrs(&self) -> &Xattrs {
        &self.extra().xattrs
    }

    /// The extended attributes, to change in place.
    pub fn xattrs_mut(&mut self) -> &mut Xattrs {
        &mut self.extra_mut().xattrs
    }

    /// Replaces the extended attributes.
    pub fn set_xattrs(&mut self, xattrs: impl Into<Xattrs>) {
        self.extra_mut().xattrs = xattrs.into();
        self.trim_extra();
    }

    /// `sha256` of the whole file (regular files), by value (32 bytes, no
    /// allocation).
    pub fn digest(&self) -> Option<Digest> {
        self.digest.map(Digest::from_sha256)
    }

    /// Sets the file digest; the chunks keep their own digests.
    pub fn set_digest(&mut self, digest: Option<Digest>) {
        let raw = digest.map(|d| *d.sha256());
        if self.chunks.len() == 1 {
            // A compactly stored chunk reads the file's digest: keep the
            // chunk's own by storing it again beside the new file digest.
            let c = self.chunk(0);
            self.chunks = ChunkStore::new(vec![c], raw.as_ref());
        }
        self.digest = raw;
    }

    /// Sets the chunks of a regular file: in file order, covering
    /// `[0, size)` (the parsers check that). With [`Entry::set_digest`],
    /// in either order.
    pub fn set_chunks(&mut self, chunks: Vec<Chunk>) {
        self.chunks = ChunkStore::new(chunks, self.digest.as_ref());
    }

    /// The chunks in file order, by value.
    pub fn chunks(&self) -> ChunkIter<'_> {
        ChunkIter::new(self, self.chunks.len())
    }

    /// How many chunks the file has (0 for other kinds and empty files).
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Chunk `k` (in file order), or `None` past the last.
    pub fn get_chunk(&self, k: usize) -> Option<Chunk> {
        self.chunks.get(k, self.digest.as_ref())
    }

    /// Chunk `k` (in file order).
    ///
    /// # Panics
    /// When `k >= self.chunk_count()`, as indexing a slice would.
    pub fn chunk(&self, k: usize) -> Chunk {
        match self.get_chunk(k) {
            Some(c) => c,
            None => panic!(
                "chunk {k} of {:?}, which has {}",
                self.name,
                self.chunk_count()
            ),
        }
    }

    /// The index of the chunk holding byte `pos` of the file: the last
    /// chunk starting at or before `pos`, when it reaches past `pos`;
    /// `None` when no chunk covers `pos`.
    pub fn chunk_at(&self, pos: u64) -> Option<usize> {
        self.chunks.index_at(pos)
    }
}

impl PartialEq for Entry {
    /// Attribute by attribute, chunks by value (however stored).
    fn eq(&self, o: &Entry) -> bool {
        self.name == o.name
            && self.kind == o.kind
            && self.size == o.size
            && (self.mode, self.uid, self.gid, self.mtime) == (o.mode, o.uid, o.gid, o.mtime)
            && self.extra() == o.extra()
            && self.digest == o.digest
            && self.chunks().eq(o.chunks())
    }
}

impl Eq for Entry {}

impl fmt::Debug for Entry {
    /// As a struct of every attribute, the chunks as a list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("size", &self.size)
            .field("mode", &self.mode)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mtime", &self.mtime)
            .field("link_name", self.link_name())
            .field("dev_major", &self.dev_major())
            .field("dev_minor", &self.dev_minor())
            .field("xattrs", self.xattrs())
            .field("digest", &self.digest())
            .field("chunks", &self.chunks())
            .finish()
    }
}

/// A parsed, validated table of contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    /// How the payload members are compressed.
    pub compression: Compression,
    /// Entries in blob order.
    pub entries: Vec<Entry>,
}

/// Cleans a tar name to a root-relative path: drops `./` and leading `/`,
/// collapses `//` and `.`, resolves `..` without leaving the root.
///
/// # Errors
/// A message when `..` would climb above the root or the name holds a NUL.
pub fn clean_name(raw: &str) -> Result<String, String> {
    if raw.contains('\0') {
        return Err(format!("name {raw:?} contains NUL"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("name {raw:?} climbs above the root"));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}
