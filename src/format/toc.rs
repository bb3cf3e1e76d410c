//! The format-neutral table of contents: one flat list of entries in blob
//! order, each regular file with its chunks. eStargz and zstd:chunked both
//! parse into it; the filesystem builds its lower from it.
//!
//! Duplicate names are kept in order (a later entry replaces an earlier one
//! when the tree is built, as GNU tar extracts); the parser does not merge.
//!
//! **Memory** (issue 6; `cargo bench --bench toc_memory`): a mounted layer
//! keeps its whole TOC, so an [`Entry`] is kept small: 144 bytes inline
//! (64-bit), its name as one exact allocation, no allocation at all for an
//! absent link target, xattr map or digest, the chunk of a one-chunk file
//! inline (no chunk vector), and the file and chunk [`Digest`] of such a file
//! sharing one 88-byte allocation. A one-chunk regular file with a 45-byte
//! name costs 144 + 45 + 88 = 277 heap bytes; a directory 144 + its name.
//! Going much lower needs a different shape, not tighter fields: with a
//! materialized [`Chunk`] per file (the `&[Chunk]` that readers index) and a
//! [`Digest`] holding its 71-byte text, ~260 bytes is the floor.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::Path;

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

/// One compressed span holding (part of) a regular file (48 bytes).
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
    /// For a one-chunk file the parsers share the file's [`Digest`] here.
    pub digest: Option<Digest>,
}

/// One entry. 144 bytes inline on 64-bit targets (see the module docs for
/// what it costs on the heap).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Symlink target, or the clean name of a hardlink's target entry;
    /// empty for other kinds.
    pub link_name: LinkName,
    /// Device major (char/block).
    pub dev_major: u32,
    /// Device minor (char/block).
    pub dev_minor: u32,
    /// Extended attributes (raw bytes).
    pub xattrs: Xattrs,
    /// `sha256` of the whole file (regular files).
    pub digest: Option<Digest>,
    /// Chunks of a regular file in file order, covering `[0, size)`.
    pub chunks: Chunks,
}

/// A parsed, validated table of contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    /// How the payload members are compressed.
    pub compression: Compression,
    /// Entries in blob order.
    pub entries: Vec<Entry>,
}

/// What [`Name`] and [`LinkName`] share: they read as `str` (deref,
/// comparisons with `str`/`&str`/`String`, `Display`, `Debug` as a string,
/// `AsRef<str | OsStr | Path>`) and are made from `String` or `&str`.
macro_rules! str_like {
    ($t:ident) => {
        impl Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                self.as_str()
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
        impl AsRef<OsStr> for $t {
            fn as_ref(&self) -> &OsStr {
                OsStr::new(self.as_str())
            }
        }
        impl AsRef<Path> for $t {
            fn as_ref(&self) -> &Path {
                Path::new(self.as_str())
            }
        }
        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, o: &str) -> bool {
                self.as_str() == o
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, o: &&str) -> bool {
                self.as_str() == *o
            }
        }
        impl PartialEq<String> for $t {
            fn eq(&self, o: &String) -> bool {
                self.as_str() == o
            }
        }
        impl PartialEq<$t> for str {
            fn eq(&self, o: &$t) -> bool {
                self == o.as_str()
            }
        }
        impl PartialEq<$t> for &str {
            fn eq(&self, o: &$t) -> bool {
                *self == o.as_str()
            }
        }
        impl PartialEq<$t> for String {
            fn eq(&self, o: &$t) -> bool {
                self == o.as_str()
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> $t {
                $t::from(s.to_string())
            }
        }
    };
}

/// An entry's name: a `str` in one exact-size allocation (16 bytes inline,
/// against 24 for a `String`). Reads as `str` (see [`Entry::name`]).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Box<str>);

impl Name {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name(s.into_boxed_str())
    }
}

str_like!(Name);

/// A link target: 8 bytes inline and no allocation when empty (every entry
/// but symlinks and hardlinks); reads as `str` like [`Name`].
#[derive(Clone, Default)]
pub struct LinkName(Option<Box<Box<str>>>);

impl LinkName {
    /// The target as a string slice (`""` when there is none).
    pub fn as_str(&self) -> &str {
        self.0.as_deref().map_or("", |s| s)
    }
}

impl From<String> for LinkName {
    fn from(s: String) -> LinkName {
        LinkName((!s.is_empty()).then(|| Box::new(s.into_boxed_str())))
    }
}

impl PartialEq for LinkName {
    fn eq(&self, o: &LinkName) -> bool {
        self.as_str() == o.as_str()
    }
}

impl Eq for LinkName {}

impl PartialOrd for LinkName {
    fn partial_cmp(&self, o: &LinkName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for LinkName {
    fn cmp(&self, o: &LinkName) -> std::cmp::Ordering {
        self.as_str().cmp(o.as_str())
    }
}

impl std::hash::Hash for LinkName {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

str_like!(LinkName);

/// Extended attributes, name → raw value: 8 bytes inline and no allocation
/// when there are none (most entries). Derefs to the map (an empty one when
/// there are none); mutable access creates the map.
#[derive(Clone, Default)]
// The box is the point: 8 bytes inline for the many entries without xattrs,
// against 24 for a bare (even empty) map.
#[allow(clippy::box_collection)]
pub struct Xattrs(Option<Box<BTreeMap<String, Vec<u8>>>>);

static NO_XATTRS: BTreeMap<String, Vec<u8>> = BTreeMap::new();

impl Deref for Xattrs {
    type Target = BTreeMap<String, Vec<u8>>;
    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&NO_XATTRS)
    }
}

impl DerefMut for Xattrs {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.get_or_insert_default()
    }
}

impl From<BTreeMap<String, Vec<u8>>> for Xattrs {
    fn from(m: BTreeMap<String, Vec<u8>>) -> Xattrs {
        Xattrs((!m.is_empty()).then(|| Box::new(m)))
    }
}

impl FromIterator<(String, Vec<u8>)> for Xattrs {
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(it: I) -> Xattrs {
        Xattrs::from(it.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl PartialEq for Xattrs {
    fn eq(&self, o: &Xattrs) -> bool {
        **self == **o
    }
}

impl Eq for Xattrs {}

impl fmt::Debug for Xattrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A regular file's chunks: derefs to `[Chunk]`. One chunk (most files) is
/// held inline, without an allocation; more are one exact-size allocation.
#[derive(Clone)]
pub struct Chunks(ChunkRepr);

#[derive(Clone)]
enum ChunkRepr {
    One(Chunk),
    Many(Box<[Chunk]>),
}

impl Default for Chunks {
    fn default() -> Chunks {
        Chunks(ChunkRepr::Many(Box::default()))
    }
}

impl Deref for Chunks {
    type Target = [Chunk];
    fn deref(&self) -> &[Chunk] {
        match &self.0 {
            ChunkRepr::One(c) => std::slice::from_ref(c),
            ChunkRepr::Many(cs) => cs,
        }
    }
}

impl DerefMut for Chunks {
    fn deref_mut(&mut self) -> &mut [Chunk] {
        match &mut self.0 {
            ChunkRepr::One(c) => std::slice::from_mut(c),
            ChunkRepr::Many(cs) => cs,
        }
    }
}

impl From<Vec<Chunk>> for Chunks {
    fn from(mut v: Vec<Chunk>) -> Chunks {
        match v.len() {
            1 => Chunks(ChunkRepr::One(v.remove(0))),
            _ => Chunks(ChunkRepr::Many(v.into_boxed_slice())),
        }
    }
}

impl FromIterator<Chunk> for Chunks {
    fn from_iter<I: IntoIterator<Item = Chunk>>(it: I) -> Chunks {
        Chunks::from(it.into_iter().collect::<Vec<_>>())
    }
}

impl<'a> IntoIterator for &'a Chunks {
    type Item = &'a Chunk;
    type IntoIter = std::slice::Iter<'a, Chunk>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl PartialEq for Chunks {
    fn eq(&self, o: &Chunks) -> bool {
        **self == **o
    }
}

impl Eq for Chunks {}

impl fmt::Debug for Chunks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
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
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    fn chunk(file_offset: u64, size: u64) -> Chunk {
        Chunk {
            offset: 100 + file_offset,
            end: 200 + file_offset,
            inner_offset: 0,
            file_offset,
            size,
            digest: Some(Digest::sha256_of(&file_offset.to_le_bytes())),
        }
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn entries_stay_small() {
        use std::mem::size_of;
        assert_eq!(size_of::<Entry>(), 144);
        assert_eq!(size_of::<Chunk>(), 48);
        assert_eq!(size_of::<Chunks>(), 56);
        assert_eq!(size_of::<Name>(), 16);
        assert_eq!(size_of::<LinkName>(), 8);
        assert_eq!(size_of::<Xattrs>(), 8);
    }

    #[test]
    fn names_and_link_names_read_as_str() {
        let n = Name::from("usr/bin/sh");
        assert_eq!(n, "usr/bin/sh");
        assert_eq!(n, *"usr/bin/sh");
        assert_eq!(n, "usr/bin/sh".to_string());
        assert_eq!("usr/bin/sh", n);
        assert_eq!(n.as_str().len(), 10);
        assert!(n.starts_with("usr/"));
        assert_eq!(format!("{n} {n:?}"), "usr/bin/sh \"usr/bin/sh\"");
        assert_eq!(PathBuf::from(&n), PathBuf::from("usr/bin/sh"));
        let none = LinkName::default();
        assert_eq!(none.as_str(), "");
        assert_eq!(none, LinkName::from(String::new()));
        assert!(none.0.is_none(), "an empty target allocates nothing");
        let l = LinkName::from("../lib/libc.so");
        assert_eq!(l, "../lib/libc.so");
        assert_eq!(l.len(), 14);
        assert!(l > none);
        assert_eq!(format!("{l:?}"), "\"../lib/libc.so\"");
    }

    #[test]
    fn xattrs_allocate_only_when_present() {
        let mut x = Xattrs::default();
        assert!(x.is_empty() && x.0.is_none());
        assert_eq!(x, Xattrs::from(BTreeMap::new()));
        x.insert("user.a".into(), vec![1, 2]);
        assert_eq!(x["user.a"], [1, 2]);
        assert_eq!(x.keys().collect::<Vec<_>>(), ["user.a"]);
        let y: Xattrs = [("user.a".to_string(), vec![1, 2])].into_iter().collect();
        assert_eq!(x, y);
        x.clear();
        assert_eq!(x, Xattrs::default(), "an emptied map equals none");
        assert_eq!(format!("{y:?}"), r#"{"user.a": [1, 2]}"#);
    }

    #[test]
    fn chunks_deref_to_a_slice_in_any_count() {
        for n in 0..4u64 {
            let v: Vec<Chunk> = (0..n).map(|k| chunk(k * 10, 10)).collect();
            let mut c = Chunks::from(v.clone());
            assert_eq!(&c[..], &v[..], "{n} chunks");
            assert_eq!(format!("{c:?}"), format!("{v:?}"));
            assert_eq!(c.iter().count() as u64, n);
            assert_eq!((&c).into_iter().map(|c| c.size).sum::<u64>(), n * 10);
            if let Some(first) = c.first_mut() {
                first.end = 7;
            }
            assert_eq!(c.first().map(|c| c.end), (n > 0).then_some(7));
        }
        assert_eq!(Chunks::default().len(), 0);
        assert_eq!(
            Chunks::from(vec![chunk(0, 1)]),
            [chunk(0, 1)].into_iter().collect::<Chunks>()
        );
        assert_ne!(Chunks::from(vec![chunk(0, 1)]), Chunks::default());
    }

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
