//! The inode table of one mount, and the inode-number scheme.
//!
//! FUSE node ids double as `st_ino` (fuser 0.18 puts `attr.ino` in the
//! entry's node id), so they are derived from what can be rebuilt after a
//! restart rather than from a counter:
//!
//! - an entry whose topmost backing is lower `k` (0-based, nearest first)
//!   with backing inode `i` gets `((k + 2) << 48) | fold48(i)`;
//! - an entry in the upper with backing inode `u` gets its *origin* if it was
//!   copied up (the number it had as a lower entry, kept in a persistent map
//!   under `work`, so `st_ino` does not change at copy-up, at forget or across
//!   a daemon restart), else `(1 << 48) | fold48(u)`;
//! - the root is 1.
//!
//! Hardlinks share a backing inode, hence a node. `fold48` keeps inode
//! numbers below 2^48 as they are and xor-folds larger ones (a collision is
//! then possible but needs two live inodes equal modulo the fold).
//!
//! A node id can be reused for a new identity (an upper inode number freed
//! and reallocated); the node then gets a new generation so the kernel
//! treats it as a new inode, and keeps its lookup count (the kernel forgets
//! both incarnations separately).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::FsError;
use super::union::{LayerId, UPPER};

/// The FUSE root node id.
pub const ROOT: u64 = 1;

const MASK48: u64 = (1 << 48) - 1;

/// The node id / `st_ino` of an entry whose topmost backing is `layer` with
/// backing inode `backing` (see the module docs; origins are applied by the caller).
pub fn derive_ino(layer: LayerId, backing: u64) -> u64 {
    let low = if backing <= MASK48 {
        backing
    } else {
        (backing ^ (backing >> 48)) & MASK48
    };
    ((u64::from(layer) + 1) << 48) | low
}

/// One known node.
#[derive(Debug, Clone)]
pub struct Node {
    /// The FUSE generation of this incarnation.
    pub generation: u64,
    /// Outstanding kernel lookups.
    pub lookups: u64,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Merged-view paths naming it (one for a directory; hardlinks may have
    /// several; empty once unlinked).
    pub paths: Vec<PathBuf>,
    /// Cached merge layers (see [`super::union::Hit::layers`]); `None` when
    /// stale and to be resolved again from the path.
    pub layers: Option<Vec<LayerId>>,
}

/// All nodes the kernel holds.
#[derive(Debug)]
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    next_generation: u64,
}

impl InodeTable {
    /// A table holding the root.
    pub fn new(root_layers: Vec<LayerId>) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                generation: 0,
                lookups: 1,
                is_dir: true,
                paths: vec![PathBuf::new()],
                layers: Some(root_layers),
            },
        );
        InodeTable {
            nodes,
            next_generation: 1,
        }
    }

    /// The node `ino`.
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// Records a lookup of `ino` at `path` (counting it when `count`), and
    /// returns its generation.
    pub fn insert(
        &mut self,
        ino: u64,
        is_dir: bool,
        path: &Path,
        layers: Vec<LayerId>,
        count: bool,
    ) -> u64 {
        let next = &mut self.next_generation;
        let node = self.nodes.entry(ino).or_insert_with(|| {
            *next += 1;
            Node {
                generation: *next,
                lookups: 0,
                is_dir,
                paths: Vec::new(),
                layers: None,
            }
        });
        if node.is_dir != is_dir {
            // A new identity on a reused number. (A file whose known names
            // were all unlinked and that shows up under another name is a
            // hardlink we had not seen, or a reused upper inode number; both
            // are served right by keeping the node.)
            *next += 1;
            node.generation = *next;
            node.is_dir = is_dir;
            node.paths.clear();
        }
        if is_dir {
            node.paths.clear();
        }
        // Byte comparison: merged-view paths are built from components, so
        // equal paths have equal bytes (and `Path ==` parses components).
        if !node.paths.iter().any(|p| p.as_os_str() == path.as_os_str()) {
            // Most nodes have one name: no spare capacity (a Vec's first
            // push would reserve four).
            node.paths.reserve_exact(1);
            node.paths.push(path.to_path_buf());
        }
        node.layers = Some(layers);
        if let Some(l) = &mut node.layers {
            l.shrink_to_fit();
        }
        if count {
            node.lookups += 1;
        }
        node.generation
    }

    /// Drops `n` kernel lookups of `ino`, removing it at zero (never the root).
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                self.nodes.remove(&ino);
            }
        }
    }

    /// Sets the cached layers of `ino`.
    pub fn set_layers(&mut self, ino: u64, layers: Vec<LayerId>) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.layers = Some(layers);
        }
    }

    /// Forgets the name `path` (unlink, rmdir, replaced by rename).
    pub fn remove_path(&mut self, path: &Path) {
        for n in self.nodes.values_mut() {
            n.paths.retain(|p| p != path);
        }
    }

    /// Marks the cached layers of every node named `path` stale.
    pub fn invalidate(&mut self, path: &Path) {
        for n in self.nodes.values_mut() {
            if n.paths.iter().any(|p| p == path) {
                n.layers = None;
            }
        }
    }

    /// Marks the cached layers of `path` and everything below it stale.
    pub fn invalidate_subtree(&mut self, path: &Path) {
        for n in self.nodes.values_mut() {
            if n.paths.iter().any(|p| p.starts_with(path)) {
                n.layers = None;
            }
        }
    }

    /// Renames `old` (and everything below it) to `new`.
    pub fn rename_paths(&mut self, old: &Path, new: &Path) {
        for n in self.nodes.values_mut() {
            for p in &mut n.paths {
                if let Ok(rest) = p.strip_prefix(old) {
                    *p = if rest.as_os_str().is_empty() {
                        new.to_path_buf()
                    } else {
                        new.join(rest)
                    };
                    n.layers = None;
                }
            }
        }
    }

    /// Swaps the names `a` and `b` (and everything below them).
    pub fn exchange_paths(&mut self, a: &Path, b: &Path) {
        for n in self.nodes.values_mut() {
            for p in &mut n.paths {
                if let Ok(rest) = p.strip_prefix(a) {
                    *p = if rest.as_os_str().is_empty() {
                        b.to_path_buf()
                    } else {
                        b.join(rest)
                    };
                    n.layers = None;
                } else if let Ok(rest) = p.strip_prefix(b) {
                    *p = if rest.as_os_str().is_empty() {
                        a.to_path_buf()
                    } else {
                        a.join(rest)
                    };
                    n.layers = None;
                }
            }
        }
    }
}

/// The persistent map from upper backing inode to the `st_ino` it inherited
/// from its lower origin at copy-up. Stored as an append-only log of
/// little-endian `(upper_ino u64, st_ino u64)` records in
/// `<work>/lazysnap-inodes`; a record with `st_ino == 0` deletes the entry.
/// The log is compacted when a mount opens it.
#[derive(Debug)]
pub struct Origins {
    map: Mutex<HashMap<u64, u64>>,
    log: Mutex<Option<File>>,
    path: Option<PathBuf>,
}

impl Origins {
    /// The file name under `work`.
    pub const FILE: &'static str = "lazysnap-inodes";

    /// An empty, non-persistent map (read-only unions).
    pub fn in_memory() -> Self {
        Origins {
            map: Mutex::new(HashMap::new()),
            log: Mutex::new(None),
            path: None,
        }
    }

    /// Loads and compacts the map in `work`.
    ///
    /// # Errors
    /// [`FsError::Io`] when the log cannot be read or rewritten.
    pub fn open(work: &Path) -> Result<Self, FsError> {
        let path = work.join(Self::FILE);
        let mut map = HashMap::new();
        match File::open(&path) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)
                    .map_err(FsError::io_at("read inode map", &path))?;
                for rec in buf.chunks_exact(16) {
                    let (a, b) = rec.split_at(8);
                    let up = u64::from_le_bytes(a.try_into().unwrap_or_default());
                    let ino = u64::from_le_bytes(b.try_into().unwrap_or_default());
                    if ino == 0 {
                        map.remove(&up);
                    } else {
                        map.insert(up, ino);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(FsError::io("read inode map", &path, e)),
        }
        let tmp = work.join(format!("{}.tmp", Self::FILE));
        let mut out = Vec::with_capacity(map.len() * 16);
        for (up, ino) in &map {
            out.extend_from_slice(&up.to_le_bytes());
            out.extend_from_slice(&ino.to_le_bytes());
        }
        std::fs::write(&tmp, &out).map_err(FsError::io_at("write inode map", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(FsError::io_at("write inode map", &path))?;
        let log = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(FsError::io_at("open inode map", &path))?;
        Ok(Origins {
            map: Mutex::new(map),
            log: Mutex::new(Some(log)),
            path: Some(path),
        })
    }

    /// The origin `st_ino` of upper inode `upper_ino`.
    pub fn get(&self, upper_ino: u64) -> Option<u64> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&upper_ino)
            .copied()
    }

    /// Records that upper inode `upper_ino` shows as `st_ino` (0 deletes).
    ///
    /// # Errors
    /// [`FsError::Io`] when the log cannot be appended.
    pub fn record(&self, upper_ino: u64, st_ino: u64) -> Result<(), FsError> {
        {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if st_ino == 0 {
                if map.remove(&upper_ino).is_none() {
                    return Ok(());
                }
            } else {
                map.insert(upper_ino, st_ino);
            }
        }
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = log.as_mut() {
            let mut rec = [0u8; 16];
            rec[..8].copy_from_slice(&upper_ino.to_le_bytes());
            rec[8..].copy_from_slice(&st_ino.to_le_bytes());
            let path = self.path.clone().unwrap_or_default();
            f.write_all(&rec)
                .map_err(FsError::io_at("append inode map", &path))?;
        }
        Ok(())
    }
}

/// The `st_ino` of an entry whose topmost backing is `layer` / `backing`.
pub fn ino_of(origins: &Origins, layer: LayerId, backing: u64) -> u64 {
    if layer == UPPER {
        origins
            .get(backing)
            .unwrap_or_else(|| derive_ino(UPPER, backing))
    } else {
        derive_ino(layer, backing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_numbers_separate_layers_and_skip_root() {
        assert_eq!(derive_ino(UPPER, 5), (1 << 48) | 5);
        assert_eq!(derive_ino(1, 5), (2 << 48) | 5);
        assert_ne!(derive_ino(1, 5), derive_ino(2, 5));
        assert_ne!(derive_ino(UPPER, 1), ROOT);
        let big = u64::MAX - 3;
        assert!(derive_ino(3, big) >> 48 == 4);
    }

    #[test]
    fn origins_persist_and_compact() {
        let t = tempfile::tempdir().unwrap();
        {
            let o = Origins::open(t.path()).unwrap();
            o.record(10, 111).unwrap();
            o.record(11, 222).unwrap();
            o.record(10, 0).unwrap();
        }
        let o = Origins::open(t.path()).unwrap();
        assert_eq!(o.get(10), None);
        assert_eq!(o.get(11), Some(222));
        assert_eq!(
            std::fs::metadata(t.path().join(Origins::FILE))
                .unwrap()
                .len(),
            16
        );
        assert_eq!(ino_of(&o, UPPER, 11), 222);
        assert_eq!(ino_of(&o, UPPER, 12), derive_ino(UPPER, 12));
    }

    #[test]
    fn table_tracks_paths_and_reuse() {
        let mut t = InodeTable::new(vec![1]);
        let g1 = t.insert(42, false, Path::new("a"), vec![1], true);
        t.insert(42, false, Path::new("b"), vec![1], true);
        assert_eq!(t.get(42).unwrap().paths.len(), 2);
        assert_eq!(t.get(42).unwrap().lookups, 2);
        t.remove_path(Path::new("a"));
        t.remove_path(Path::new("b"));
        let g2 = t.insert(42, false, Path::new("c"), vec![0], true);
        assert_eq!(g1, g2);
        let g3 = t.insert(42, true, Path::new("c"), vec![0], true);
        assert_ne!(
            g1, g3,
            "a reused number of another kind is a new incarnation"
        );
        assert_eq!(t.get(42).unwrap().lookups, 4);
        t.insert(7, true, Path::new("d"), vec![0], true);
        t.insert(8, false, Path::new("d/x"), vec![0], true);
        t.rename_paths(Path::new("d"), Path::new("e"));
        assert_eq!(t.get(8).unwrap().paths, vec![PathBuf::from("e/x")]);
        assert!(t.get(8).unwrap().layers.is_none());
        t.forget(8, 1);
        assert!(t.get(8).is_none());
        t.forget(ROOT, 100);
        assert!(t.get(ROOT).is_some());
    }
}
