//! The format-neutral table of contents: one flat list of entries in blob
//! order, each regular file with its chunks. eStargz and zstd:chunked both
//! parse into it; the filesystem builds its lower from it.
//!
//! Duplicate names are kept in order (a later entry replaces an earlier one
//! when the tree is built, as GNU tar extracts); the parser does not merge.

use std::collections::BTreeMap;

use crate::oci::Digest;

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

/// One compressed span holding (part of) a regular file.
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
    pub digest: Option<Digest>,
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Root-relative clean path (`usr/bin/sh`; `""` for the root).
    pub name: String,
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
    /// Symlink target, or the clean name of a hardlink's target entry.
    pub link_name: String,
    /// Device major (char/block).
    pub dev_major: u32,
    /// Device minor (char/block).
    pub dev_minor: u32,
    /// Extended attributes (raw bytes).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// `sha256` of the whole file (regular files).
    pub digest: Option<Digest>,
    /// Chunks of a regular file in file order, covering `[0, size)`.
    pub chunks: Vec<Chunk>,
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

#[cfg(test)]
mod tests {
    use super::clean_name;

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name("./usr/bin/").unwrap(), "usr/bin");
        assert_eq!(clean_name("/a//b/./c").unwrap(), "a/b/c");
        assert_eq!(clean_name("./").unwrap(), "");
        assert_eq!(clean_name("a/../b").unwrap(), "b");
        assert!(clean_name("../etc/passwd").is_err());
        assert!(clean_name("a/\0").is_err());
    }
}
