//! The tree of a remote lower: a compact index over a layer's [`Toc`],
//! answering what a local layer dir answers (stat, listing, opaque marker,
//! symlinks, xattrs, hardlinks) with overlayfs semantics.
//!
//! Memory: one [`Node`] (36 bytes) per visible name plus a `u32` in the
//! children array; names are not copied but point into the TOC's entry
//! names (every name, synthesized parents and whiteout targets included, is
//! a substring of some entry's name). Children are sorted by name, so a
//! lookup is a binary search per path component.
//!
//! Building follows `tar -x` into an empty dir, in TOC order:
//! - **Later wins** (field case B21): a directory entry repeated keeps its
//!   children and takes the later metadata; any other repeated or replacing
//!   entry replaces the earlier one (a dir replaced by a file loses its
//!   subtree).
//! - **Missing parents are synthesized** (B27): mode 0755, owner 0:0, mtime
//!   0, and [`RemoteTree::is_implicit`] says so, so that the union takes a
//!   merged directory's metadata from a lower layer that has a real entry
//!   for it. A parent that is not a directory is replaced by one.
//! - **Whiteouts** (OCI): `dir/.wh.NAME` makes `NAME` a whiteout of this
//!   layer, `dir/.wh..wh..opq` makes `dir` opaque; the markers are never
//!   visible, other `.wh..wh.*` names are ignored.
//! - **Hidden**: the root entries `stargz.index.json`, `.prefetch.landmark`
//!   and `.no.prefetch.landmark` (eStargz's own files).
//! - **Hardlinks** resolve, when they are read, to the entry their target
//!   names at that point (a missing or directory target is skipped); all
//!   names share the target's `st_ino` and data, `st_nlink` = names visible.
//! - **`st_ino`** = TOC index + 1 of the entry holding the attributes (a
//!   hardlink's target, a whiteout's marker); synthesized directories get
//!   `entries + 1 + node index`. All are rebuilt identically from the TOC.
//! - Directories report size 4096 and `st_nlink` 2 + subdirectories;
//!   symlinks the target length (B12); `st_blocks` = ceil(size / 512);
//!   atime = ctime = mtime.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::FsError;
use super::backing::{EntryAttr, EntryKind, RawDirEnt, to_time};
use super::remote_file::{ChunkReader, RemoteFile};
use crate::format::{EntryKind as TocKind, Toc};

const NONE: u32 = u32::MAX;
const ROOT: u32 = 0;
/// eStargz's own files at the root of a layer, never shown.
const HIDDEN: [&str; 3] = [
    "stargz.index.json",
    ".prefetch.landmark",
    ".no.prefetch.landmark",
];
const WH_PREFIX: &str = ".wh.";
const WH_META_PREFIX: &str = ".wh..wh.";
const WH_OPAQUE: &str = ".wh..wh..opq";
const DIR_SIZE: u64 = 4096;

/// A name: bytes `off..off + len` of `toc.entries[src].name`.
#[derive(Debug, Clone, Copy)]
struct Name {
    src: u32,
    off: u32,
    len: u32,
}

/// One name of the tree.
#[derive(Debug, Clone)]
struct Node {
    name: Name,
    parent: u32,
    /// The TOC entry with the attributes, [`NONE`] for a synthesized dir.
    entry: u32,
    /// Children: `children[first..first + count]`, sorted by name.
    first: u32,
    count: u32,
    nlink: u32,
    kind: EntryKind,
    opaque: bool,
}

/// The index of one remote layer (see the module docs).
#[derive(Debug)]
pub(crate) struct RemoteTree {
    key: PathBuf,
    toc: Arc<Toc>,
    reader: Arc<dyn ChunkReader>,
    nodes: Vec<Node>,
    children: Vec<u32>,
    /// Data entry → nodes naming it, for groups of more than one name.
    groups: HashMap<u32, Vec<u32>>,
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(NONE)
}

fn kind_of(k: TocKind) -> EntryKind {
    match k {
        TocKind::Dir => EntryKind::Dir,
        TocKind::Reg | TocKind::Hardlink => EntryKind::File,
        TocKind::Symlink => EntryKind::Symlink,
        TocKind::Char => EntryKind::CharDev,
        TocKind::Block => EntryKind::BlockDev,
        TocKind::Fifo => EntryKind::Fifo,
    }
}

/// The tree while it is built: nodes, and `(parent, name) → node` for the
/// names currently in place.
struct Builder<'a> {
    toc: &'a Toc,
    nodes: Vec<Node>,
    map: HashMap<(u32, &'a str), u32>,
}

impl<'a> Builder<'a> {
    fn node(&mut self, name: Name, entry: u32, kind: EntryKind) -> u32 {
        self.nodes.push(Node {
            name,
            parent: ROOT,
            entry,
            first: 0,
            count: 0,
            nlink: 1,
            kind,
            opaque: false,
        });
        u32_of(self.nodes.len() - 1)
    }

    /// `(name, Name)` of bytes `off..off + len` of entry `src`'s name.
    fn name(&self, src: usize, off: usize, len: usize) -> (&'a str, Name) {
        let full: &'a str = &self.toc.entries[src].name;
        (
            &full[off..off + len],
            Name {
                src: u32_of(src),
                off: u32_of(off),
                len: u32_of(len),
            },
        )
    }

    /// The directory `path` (a prefix of entry `src`'s name), synthesizing
    /// missing or non-directory components.
    fn ensure_dir(&mut self, src: usize, path_len: usize) -> u32 {
        let mut cur = ROOT;
        let full: &'a str = &self.toc.entries[src].name;
        let mut off = 0;
        while off < path_len {
            let len = full[off..path_len].find('/').unwrap_or(path_len - off);
            let (s, name) = self.name(src, off, len);
            cur = match self.map.get(&(cur, s)) {
                Some(&c) if self.nodes[c as usize].kind == EntryKind::Dir => c,
                _ => {
                    let d = self.node(name, NONE, EntryKind::Dir);
                    self.map.insert((cur, s), d);
                    d
                }
            };
            off += len + 1;
        }
        cur
    }

    /// The node at a clean path, if it resolves through directories.
    fn find(&self, path: &str) -> Option<u32> {
        let mut cur = ROOT;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            if self.nodes[cur as usize].kind != EntryKind::Dir {
                return None;
            }
            cur = *self.map.get(&(cur, c))?;
        }
        Some(cur)
    }

    fn add(&mut self, i: usize) {
        let e = &self.toc.entries[i];
        let full: &'a str = &e.name;
        if full.is_empty() {
            if e.kind == TocKind::Dir {
                self.nodes[ROOT as usize].entry = u32_of(i);
            }
            return;
        }
        let (plen, boff) = match full.rfind('/') {
            Some(p) => (p, p + 1),
            None => (0, 0),
        };
        let base = &full[boff..];
        if plen == 0 && boff == 0 && HIDDEN.contains(&base) {
            return;
        }
        let parent = self.ensure_dir(i, plen);
        if base == WH_OPAQUE {
            self.nodes[parent as usize].opaque = true;
            return;
        }
        if base.starts_with(WH_META_PREFIX) {
            return;
        }
        if let Some(target) = base.strip_prefix(WH_PREFIX) {
            if !target.is_empty() {
                let (s, name) = self.name(i, boff + WH_PREFIX.len(), target.len());
                let w = self.node(name, u32_of(i), EntryKind::Whiteout);
                self.map.insert((parent, s), w);
            }
            return;
        }
        let (s, name) = self.name(i, boff, base.len());
        let (entry, kind) = match e.kind {
            TocKind::Dir => {
                if let Some(&d) = self.map.get(&(parent, s))
                    && self.nodes[d as usize].kind == EntryKind::Dir
                {
                    self.nodes[d as usize].entry = u32_of(i);
                    return;
                }
                (u32_of(i), EntryKind::Dir)
            }
            TocKind::Hardlink => match self.find(e.link_name()) {
                Some(t)
                    if !matches!(
                        self.nodes[t as usize].kind,
                        EntryKind::Dir | EntryKind::Whiteout
                    ) =>
                {
                    (self.nodes[t as usize].entry, self.nodes[t as usize].kind)
                }
                _ => {
                    tracing::warn!(
                        name = full,
                        target = e.link_name().as_str(),
                        "hardlink target missing, skipped"
                    );
                    return;
                }
            },
            k => (u32_of(i), kind_of(k)),
        };
        let n = self.node(name, entry, kind);
        self.map.insert((parent, s), n);
    }

    /// Sorted children arrays, link counts and hardlink groups.
    fn finish(mut self) -> (Vec<Node>, Vec<u32>, HashMap<u32, Vec<u32>>) {
        let mut pairs: Vec<(u32, &str, u32)> =
            self.map.iter().map(|(&(p, s), &c)| (p, s, c)).collect();
        pairs.sort_unstable_by(|a, b| (a.0, a.1.as_bytes()).cmp(&(b.0, b.1.as_bytes())));
        let children: Vec<u32> = pairs.iter().map(|p| p.2).collect();
        for &(p, _, c) in &pairs {
            self.nodes[c as usize].parent = p;
        }
        let mut i = 0;
        while i < pairs.len() {
            let p = pairs[i].0 as usize;
            let j = i + pairs[i..].iter().take_while(|q| q.0 as usize == p).count();
            self.nodes[p].first = u32_of(i);
            self.nodes[p].count = u32_of(j - i);
            i = j;
        }
        // Walk what is reachable: dir link counts, hardlink groups.
        let mut groups: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut stack = vec![ROOT];
        while let Some(d) = stack.pop() {
            let n = &self.nodes[d as usize];
            let kids = &children[n.first as usize..(n.first + n.count) as usize];
            let mut subdirs = 0;
            for &c in kids {
                let cn = &self.nodes[c as usize];
                match cn.kind {
                    EntryKind::Dir => {
                        subdirs += 1;
                        stack.push(c);
                    }
                    EntryKind::Whiteout => {}
                    _ => groups.entry(cn.entry).or_default().push(c),
                }
            }
            self.nodes[d as usize].nlink = 2 + subdirs;
        }
        groups.retain(|_, v| v.len() > 1);
        groups.shrink_to_fit();
        self.nodes.shrink_to_fit();
        for g in groups.values() {
            for &c in g {
                self.nodes[c as usize].nlink = u32_of(g.len());
            }
        }
        (self.nodes, children, groups)
    }
}

impl RemoteTree {
    /// Indexes `toc` (see the module docs).
    ///
    /// # Errors
    /// [`FsError::Invalid`] when the TOC has more entries than the index can address.
    pub(crate) fn build(
        key: &Path,
        toc: Arc<Toc>,
        reader: Arc<dyn ChunkReader>,
    ) -> Result<Self, FsError> {
        if toc.entries.len() >= (NONE / 2) as usize
            || toc.entries.iter().any(|e| e.name.len() >= NONE as usize)
        {
            return Err(FsError::Invalid {
                path: key.to_path_buf(),
                what: "TOC (too many entries)",
            });
        }
        let (nodes, children, groups) = {
            let mut b = Builder {
                toc: &toc,
                nodes: Vec::new(),
                map: HashMap::new(),
            };
            let root_name = Name {
                src: 0,
                off: 0,
                len: 0,
            };
            b.node(root_name, NONE, EntryKind::Dir);
            for i in 0..toc.entries.len() {
                b.add(i);
            }
            b.finish()
        };
        Ok(RemoteTree {
            key: key.to_path_buf(),
            toc,
            reader,
            nodes,
            children,
            groups,
        })
    }

    fn name(&self, n: &Node) -> &str {
        if n.name.len == 0 {
            return "";
        }
        let full = &self.toc.entries[n.name.src as usize].name;
        &full[n.name.off as usize..(n.name.off + n.name.len) as usize]
    }

    fn kids(&self, n: &Node) -> &[u32] {
        &self.children[n.first as usize..(n.first + n.count) as usize]
    }

    /// The node at merged-view path `rel`.
    fn find(&self, rel: &Path) -> Option<u32> {
        let mut cur = ROOT;
        for comp in rel.components() {
            let Component::Normal(c) = comp else {
                continue;
            };
            let n = &self.nodes[cur as usize];
            if n.kind != EntryKind::Dir {
                return None;
            }
            let kids = self.kids(n);
            let k = kids
                .binary_search_by(|&k| {
                    self.name(&self.nodes[k as usize])
                        .as_bytes()
                        .cmp(c.as_bytes())
                })
                .ok()?;
            cur = kids[k];
        }
        Some(cur)
    }

    /// The node at `rel`.
    fn get(&self, rel: &Path) -> Option<&Node> {
        self.find(rel).map(|k| &self.nodes[k as usize])
    }

    fn ino(&self, k: u32) -> u64 {
        match self.nodes[k as usize].entry {
            NONE => (self.toc.entries.len() + 1) as u64 + u64::from(k),
            e => u64::from(e) + 1,
        }
    }

    fn attr(&self, k: u32) -> EntryAttr {
        let n = &self.nodes[k as usize];
        let e = self.toc.entries.get(n.entry as usize);
        let size = match (n.kind, e) {
            (EntryKind::Dir, _) => DIR_SIZE,
            (EntryKind::File, Some(e)) => e.size,
            (EntryKind::Symlink, Some(e)) => e.link_name().len() as u64,
            _ => 0,
        };
        let mtime = e.map_or(SystemTime::UNIX_EPOCH, |e| {
            to_time(e.mtime.0, i64::from(e.mtime.1))
        });
        let (perm, uid, gid) = match (n.kind, e) {
            (EntryKind::Whiteout, Some(e)) => (0, e.uid, e.gid),
            // Linux ignores a symlink's mode and shows 0777 (as unpacked layers do).
            (EntryKind::Symlink, Some(e)) => (0o777, e.uid, e.gid),
            (_, Some(e)) => (e.mode & 0o7777, e.uid, e.gid),
            (_, None) => (0o755, 0, 0),
        };
        let rdev = match (n.kind, e) {
            (EntryKind::CharDev | EntryKind::BlockDev, Some(e)) => {
                libc::makedev(e.dev_major(), e.dev_minor())
            }
            _ => 0,
        };
        EntryAttr {
            kind: n.kind,
            perm,
            uid,
            gid,
            nlink: u64::from(n.nlink),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            rdev,
            ino: self.ino(k),
            blksize: 4096,
        }
    }

    fn missing(&self, op: &'static str, rel: &Path, errno: i32) -> FsError {
        FsError::io(
            op,
            self.key.join(rel),
            std::io::Error::from_raw_os_error(errno),
        )
    }

    /// The entry at `rel`, whiteouts included.
    pub(crate) fn stat(&self, rel: &Path) -> Option<EntryAttr> {
        self.find(rel).map(|k| self.attr(k))
    }

    /// Whether `rel` is a directory this layer has no entry for.
    pub(crate) fn is_implicit(&self, rel: &Path) -> bool {
        self.get(rel)
            .is_some_and(|n| n.kind == EntryKind::Dir && n.entry == NONE)
    }

    /// Whether the directory `rel` is opaque in this layer.
    pub(crate) fn is_opaque(&self, rel: &Path) -> bool {
        self.get(rel).is_some_and(|n| n.opaque)
    }

    /// The names in directory `rel` (empty when it is not a directory here).
    pub(crate) fn read_dir(&self, rel: &Path) -> Vec<RawDirEnt> {
        let Some(d) = self.get(rel).filter(|n| n.kind == EntryKind::Dir) else {
            return Vec::new();
        };
        self.kids(d)
            .iter()
            .map(|&k| {
                let n = &self.nodes[k as usize];
                RawDirEnt {
                    name: OsString::from(self.name(n)),
                    kind: n.kind,
                    ino: self.ino(k),
                }
            })
            .collect()
    }

    /// The target of the symlink `rel`.
    pub(crate) fn read_link(&self, rel: &Path) -> Result<PathBuf, FsError> {
        match self.get(rel) {
            Some(n) if n.kind == EntryKind::Symlink => Ok(PathBuf::from(
                self.toc.entries[n.entry as usize].link_name(),
            )),
            Some(_) => Err(self.missing("readlink", rel, libc::EINVAL)),
            None => Err(self.missing("readlink", rel, libc::ENOENT)),
        }
    }

    fn xattrs(
        &self,
        rel: &Path,
    ) -> Result<Option<&std::collections::BTreeMap<String, Vec<u8>>>, FsError> {
        let n = self
            .get(rel)
            .ok_or_else(|| self.missing("listxattr", rel, libc::ENOENT))?;
        Ok(self
            .toc
            .entries
            .get(n.entry as usize)
            .map(|e| &**e.xattrs()))
    }

    /// The xattr names of `rel`.
    pub(crate) fn list_xattrs(&self, rel: &Path) -> Result<Vec<OsString>, FsError> {
        Ok(self
            .xattrs(rel)?
            .map(|x| x.keys().map(OsString::from).collect())
            .unwrap_or_default())
    }

    /// One xattr value of `rel`.
    pub(crate) fn get_xattr(&self, rel: &Path, name: &OsStr) -> Result<Option<Vec<u8>>, FsError> {
        let Some(name) = name.to_str() else {
            return Ok(None);
        };
        Ok(self.xattrs(rel)?.and_then(|x| x.get(name).cloned()))
    }

    fn path_of(&self, mut k: u32) -> PathBuf {
        let mut parts = Vec::new();
        while k != ROOT {
            let n = &self.nodes[k as usize];
            parts.push(self.name(n));
            k = n.parent;
        }
        parts.iter().rev().collect()
    }

    /// The paths of the regular files with `st_ino` `ino` when there are
    /// several (a hardlink group).
    pub(crate) fn hardlink_names(&self, ino: u64) -> Vec<PathBuf> {
        let Some(entry) = ino.checked_sub(1).and_then(|e| u32::try_from(e).ok()) else {
            return Vec::new();
        };
        self.groups
            .get(&entry)
            .into_iter()
            .flatten()
            .filter(|&&k| self.nodes[k as usize].kind == EntryKind::File)
            .map(|&k| self.path_of(k))
            .collect()
    }

    /// Opens the regular file `rel`.
    pub(crate) fn open(&self, rel: &Path) -> Result<RemoteFile, FsError> {
        let Some(k) = self.find(rel) else {
            return Err(self.missing("open", rel, libc::ENOENT));
        };
        let n = &self.nodes[k as usize];
        match n.kind {
            EntryKind::File => Ok(RemoteFile::new(
                self.toc.clone(),
                self.reader.clone(),
                n.entry as usize,
                self.attr(k),
                self.key.join(rel),
            )),
            EntryKind::Dir => Err(self.missing("open", rel, libc::EISDIR)),
            _ => Err(self.missing("open", rel, libc::ELOOP)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nodes_stay_small() {
        assert!(std::mem::size_of::<super::Node>() <= 36);
    }
}
