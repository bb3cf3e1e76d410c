//! [`UnionFs`]: the union filesystem as plain Rust methods returning
//! `Result<_, FsError>`, one per FUSE operation, called by the thin adapter.
//! This file holds the state and the read-only namespace operations; see
//! `ops_io.rs` (file and directory handles), `ops_ns.rs` (namespace
//! changes), `ops_attr.rs` (attributes and xattrs) and `copyup.rs`.
//!
//! Locking: `ns` is held shared by operations that resolve names and
//! exclusively by those that change the upper (including copy-up), so a
//! lookup never sees half a rename. File reads and writes on an open handle
//! take no namespace lock. The inode table has its own short-lived mutex;
//! `ns` is always taken first.
//!
//! No writeback cache is used: every write reaches the upper file before
//! the kernel acknowledges it, so after `syncfs` of the mount (or of the
//! upper's filesystem) a reader of the upper dir, such as the commit step,
//! sees a consistent tree.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::FsError;
use super::MountSpec;
use super::backing::{self, BPath, EntryAttr, EntryKind};
use super::inode::{InodeTable, Origins, ROOT, ino_of};
use super::lower::{Lower, LowerFile};
use super::record::Recorder;
use super::union::{LayerId, Stack, UPPER};

/// Attributes of a node as the kernel sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAttr {
    /// The node id, which is also `st_ino`.
    pub ino: u64,
    /// The backing attributes of the topmost entry.
    pub attr: EntryAttr,
    /// The link count in the merged view.
    pub nlink: u32,
}

/// A looked-up (or created) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its attributes.
    pub attr: NodeAttr,
    /// The generation of its node id.
    pub generation: u64,
}

/// Who asks (for owners of new entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    /// Caller uid.
    pub uid: u32,
    /// Caller gid.
    pub gid: u32,
}

/// Where a node is now.
#[derive(Debug, Clone)]
pub(crate) struct Loc {
    pub(crate) path: PathBuf,
    pub(crate) is_dir: bool,
    pub(crate) layers: Vec<LayerId>,
}

impl Loc {
    pub(crate) fn top(&self) -> LayerId {
        self.layers[0]
    }
}

/// An open file.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) ino: u64,
    /// The merged-view path it was opened by (for error messages).
    pub(crate) path: PathBuf,
    pub(crate) file: RwLock<Arc<LowerFile>>,
    pub(crate) writable: bool,
    /// Whether `file` is an upper file (it becomes one at copy-up).
    pub(crate) in_upper: std::sync::atomic::AtomicBool,
}

/// An open directory.
#[derive(Debug)]
pub(crate) struct DirHandle {
    pub(crate) ino: u64,
    pub(crate) snap: std::sync::OnceLock<Arc<Vec<DirSnapEnt>>>,
}

/// One entry of a directory snapshot taken at `opendir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSnapEnt {
    /// The name (`.` and `..` included).
    pub name: OsString,
    /// The kind.
    pub kind: EntryKind,
    /// The `st_ino` it has.
    pub ino: u64,
}

/// Filesystem statistics (of the upper's filesystem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Total blocks of `frsize`.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Max name length.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// The union filesystem of one mount.
#[derive(Debug)]
pub struct UnionFs {
    pub(crate) stack: Stack,
    pub(crate) work: PathBuf,
    pub(crate) origins: Origins,
    pub(crate) inodes: Mutex<InodeTable>,
    pub(crate) ns: RwLock<()>,
    pub(crate) handles: Mutex<HashMap<u64, Arc<Handle>>>,
    /// Open directories: their node, and the listing taken by the first
    /// readdir.
    pub(crate) dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    pub(crate) next_fh: AtomicU64,
    pub(crate) tmp_counter: AtomicU64,
    /// Access recording (opens and readlinks), see `record.rs`.
    pub(crate) recorder: Arc<Recorder>,
}

/// Locks a mutex, ignoring poisoning (state stays consistent per operation).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl UnionFs {
    /// Opens the layers of `spec` (sharing lower instances) and the upper.
    /// A View of nothing (no lowers, no upper) serves an empty read-only
    /// directory, `<work>/empty`.
    ///
    /// # Errors
    /// [`FsError::Io`] when a layer dir, the upper or `work` is unusable.
    pub fn new(spec: &MountSpec) -> Result<Self, FsError> {
        let mut lowers = spec
            .lowers
            .iter()
            .map(|l| Lower::open_at(l))
            .collect::<Result<Vec<_>, _>>()?;
        let origins = match &spec.upper {
            Some(upper) => {
                std::fs::create_dir_all(upper).map_err(FsError::io_at("open upper", upper))?;
                std::fs::create_dir_all(&spec.work)
                    .map_err(FsError::io_at("open work", &spec.work))?;
                clean_work(&spec.work);
                Origins::open(&spec.work)?
            }
            None => Origins::in_memory(),
        };
        if spec.upper.is_none() && lowers.is_empty() {
            // A View of nothing: serve an empty read-only directory.
            let empty = spec.work.join("empty");
            std::fs::create_dir_all(&empty).map_err(FsError::io_at("open work", &empty))?;
            lowers.push(Lower::open_at(&empty)?);
        }
        let stack = Stack {
            upper: spec.upper.clone(),
            lowers,
        };
        let root_layers = stack.root_layers()?;
        Ok(UnionFs {
            stack,
            work: spec.work.clone(),
            origins,
            inodes: Mutex::new(InodeTable::new(root_layers)),
            ns: RwLock::new(()),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            tmp_counter: AtomicU64::new(0),
            recorder: Arc::new(Recorder::new()),
        })
    }

    pub(crate) fn read_ns(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.ns
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn write_ns(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.ns
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The access recorder of this union (see [`Recorder`]).
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    /// Whether the union has an upper.
    pub fn writable(&self) -> bool {
        self.stack.upper.is_some()
    }

    pub(crate) fn require_upper(&self, path: &Path) -> Result<&Path, FsError> {
        self.stack
            .upper
            .as_deref()
            .ok_or_else(|| FsError::ReadOnly {
                path: path.to_path_buf(),
            })
    }

    /// The upper backing path of merged path `rel`.
    pub(crate) fn upper_path(&self, rel: &Path) -> Result<BPath, FsError> {
        Ok(BPath::new(self.require_upper(rel)?, rel))
    }

    /// Where node `ino` is, resolving its layers again when stale.
    pub(crate) fn loc(&self, ino: u64) -> Result<Loc, FsError> {
        let (path, is_dir, layers) = {
            let t = lock(&self.inodes);
            let n = t.get(ino).ok_or(FsError::StaleInode { ino })?;
            let path = n.paths.first().ok_or(FsError::StaleInode { ino })?.clone();
            (path, n.is_dir, n.layers.clone())
        };
        let layers = match layers {
            Some(l) if !l.is_empty() => l,
            _ => {
                let hit = self.stack.resolve(&path)?;
                lock(&self.inodes).set_layers(ino, hit.layers.clone());
                hit.layers
            }
        };
        Ok(Loc {
            path,
            is_dir,
            layers,
        })
    }

    /// The location of a directory node.
    pub(crate) fn dir_loc(&self, ino: u64) -> Result<Loc, FsError> {
        let loc = self.loc(ino)?;
        if !loc.is_dir {
            return Err(FsError::NotDir { path: loc.path });
        }
        Ok(loc)
    }

    /// The backing attributes of `loc`'s topmost entry.
    pub(crate) fn backing_attr(&self, loc: &Loc) -> Result<EntryAttr, FsError> {
        let attr = if loc.is_dir {
            self.stack.dir_attr(&loc.layers, &loc.path)?
        } else {
            self.stack.stat(loc.top(), &loc.path)?
        };
        attr.filter(|a| a.kind != EntryKind::Whiteout)
            .ok_or_else(|| FsError::NotFound {
                path: loc.path.clone(),
            })
    }

    /// The layer holding the metadata (xattrs) of the node at `loc`: its
    /// topmost, except for a directory implicit there (see `union.rs`).
    pub(crate) fn meta_layer(&self, loc: &Loc) -> LayerId {
        if loc.is_dir {
            self.stack.meta_layer(&loc.layers, &loc.path)
        } else {
            loc.top()
        }
    }

    /// The attributes of node `ino` at `loc`.
    pub(crate) fn node_attr(&self, ino: u64, loc: &Loc) -> Result<NodeAttr, FsError> {
        let attr = self.backing_attr(loc)?;
        Ok(NodeAttr {
            ino,
            attr,
            nlink: self.nlink(loc, &attr)?,
        })
    }

    /// The merged-view link count. Directories: the backing count when one
    /// layer holds them, else 1 as overlayfs reports for merged directories
    /// (counting subdirectories of every layer on each stat is not worth it;
    /// `find` and friends take 1 as "unknown"). Lower files with several
    /// links: the number of names of that inode visible in the merged view
    /// (so `st_nlink` always equals the number of names sharing `st_ino`).
    pub(crate) fn nlink(&self, loc: &Loc, attr: &EntryAttr) -> Result<u32, FsError> {
        let n = if loc.is_dir {
            if loc.layers.len() > 1 { 1 } else { attr.nlink }
        } else if loc.top() != UPPER && attr.kind == EntryKind::File && attr.nlink > 1 {
            self.visible_group(loc.top(), attr.ino)?.len() as u64
        } else {
            attr.nlink
        };
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// The merged-view names of the lower file `(layer, ino)`.
    pub(crate) fn visible_group(&self, layer: LayerId, ino: u64) -> Result<Vec<PathBuf>, FsError> {
        let Some(lower) = self.stack.lower(layer) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for p in lower.hardlink_names(ino) {
            match self.stack.resolve(&p) {
                Ok(hit) if hit.top() == layer && hit.attr.ino == ino => out.push(p),
                Ok(_) | Err(FsError::NotFound { .. } | FsError::NotDir { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Looks up `name` in directory `parent` (namespace lock held by the
    /// caller); `count` adds a kernel lookup reference.
    pub(crate) fn lookup_locked(
        &self,
        parent: u64,
        name: &OsStr,
        count: bool,
    ) -> Result<Entry, FsError> {
        let ploc = self.dir_loc(parent)?;
        self.lookup_at(&ploc, name, count)
    }

    /// As [`UnionFs::lookup_locked`], in the directory at `ploc`.
    fn lookup_at(&self, ploc: &Loc, name: &OsStr, count: bool) -> Result<Entry, FsError> {
        let path = ploc.path.join(name);
        let hit = self
            .stack
            .lookup_in(&ploc.layers, &path)?
            .ok_or_else(|| FsError::NotFound { path: path.clone() })?;
        let ino = ino_of(&self.origins, hit.top(), hit.attr.ino);
        let is_dir = hit.attr.kind == EntryKind::Dir;
        let loc = Loc {
            path,
            is_dir,
            layers: hit.layers,
        };
        let nlink = self.nlink(&loc, &hit.attr)?;
        let generation = lock(&self.inodes).insert(ino, is_dir, &loc.path, loc.layers, count);
        Ok(Entry {
            attr: NodeAttr {
                ino,
                attr: hit.attr,
                nlink,
            },
            generation,
        })
    }

    /// `lookup`: the entry `name` of directory `parent`, counted.
    ///
    /// # Errors
    /// [`FsError::NotFound`] when the merged view has no such name.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry, FsError> {
        let _ns = self.read_ns();
        self.lookup_locked(parent, name, true)
    }

    /// `lookup` of each of `names` in directory `parent` (for readdirplus),
    /// under one namespace lock and one resolution of `parent`: `each` gets
    /// every name with its result, in order, and returns false to stop.
    ///
    /// # Errors
    /// [`FsError::StaleInode`] / [`FsError::NotDir`] when `parent` is not a
    /// known directory (then `each` is not called).
    pub fn lookup_many<'a>(
        &self,
        parent: u64,
        names: impl IntoIterator<Item = &'a OsStr>,
        mut each: impl FnMut(&'a OsStr, Result<Entry, FsError>) -> bool,
    ) -> Result<(), FsError> {
        let _ns = self.read_ns();
        let ploc = self.dir_loc(parent)?;
        for name in names {
            if !each(name, self.lookup_at(&ploc, name, true)) {
                break;
            }
        }
        Ok(())
    }

    /// `forget`: drops `n` kernel references of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        lock(&self.inodes).forget(ino, n);
    }

    /// `getattr`, by open handle when given (works after unlink).
    ///
    /// # Errors
    /// [`FsError::StaleInode`] for an unknown or unlinked node without a handle.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<NodeAttr, FsError> {
        let _ns = self.read_ns();
        match self.loc(ino) {
            Ok(loc) => self.node_attr(ino, &loc),
            Err(e @ FsError::StaleInode { .. }) => self.attr_by_handle(ino, fh).ok_or(e),
            Err(e) => Err(e),
        }
    }

    fn attr_by_handle(&self, ino: u64, fh: Option<u64>) -> Option<NodeAttr> {
        let handles = lock(&self.handles);
        let h = match fh.and_then(|fh| handles.get(&fh)) {
            Some(h) => h.clone(),
            None => handles.values().find(|h| h.ino == ino)?.clone(),
        };
        drop(handles);
        let file = h.file.read().ok()?.clone();
        let f = match &*file {
            LowerFile::Local(f) => f,
            LowerFile::Remote(r) => {
                return Some(NodeAttr {
                    ino,
                    attr: *r.attr(),
                    nlink: u32::try_from(r.attr().nlink).unwrap_or(u32::MAX),
                });
            }
        };
        let md = f.metadata().ok()?;
        let attr = EntryAttr::from_metadata(&md);
        Some(NodeAttr {
            ino,
            attr,
            nlink: u32::try_from(md.nlink()).unwrap_or(u32::MAX),
        })
    }

    /// `readlink`.
    ///
    /// # Errors
    /// [`FsError::Io`] (EINVAL) when the node is not a symlink.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let _ns = self.read_ns();
        let loc = self.loc(ino)?;
        let target = match self.stack.lower(loc.top()) {
            Some(l) => l.read_link(&loc.path)?,
            None => {
                let p = self.upper_path(&loc.path)?;
                std::fs::read_link(&*p).map_err(FsError::io_at("readlink", &p))?
            }
        };
        self.recorder.note(&loc.path);
        Ok(target.as_os_str().as_bytes().to_vec())
    }

    /// `statfs`: the upper's filesystem (the first lower's for a View).
    ///
    /// # Errors
    /// [`FsError::Io`] when `statvfs` fails.
    pub fn statfs(&self) -> Result<FsStats, FsError> {
        let path = match (&self.stack.upper, self.stack.lowers.first()) {
            (Some(u), _) => u.clone(),
            (None, Some(l)) => l.root().to_path_buf(),
            (None, None) => PathBuf::from("/"),
        };
        let s = nix::sys::statvfs::statvfs(&path).map_err(FsError::nix_at("statvfs", &path))?;
        Ok(FsStats {
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
            bsize: u32::try_from(s.block_size()).unwrap_or(4096),
            namelen: u32::try_from(s.name_max()).unwrap_or(255),
            frsize: u32::try_from(s.fragment_size()).unwrap_or(4096),
        })
    }

    /// `access`: existence, and EROFS for write access to a View. (With
    /// `default_permissions` the kernel checks permissions itself.)
    ///
    /// # Errors
    /// [`FsError::StaleInode`], [`FsError::ReadOnly`].
    pub fn access(&self, ino: u64, mask: i32) -> Result<(), FsError> {
        let _ns = self.read_ns();
        let loc = self.loc(ino)?;
        if mask & libc::W_OK != 0 {
            self.require_upper(&loc.path)?;
        }
        Ok(())
    }

    /// `getxattr`; `trusted.overlay.*` is hidden.
    ///
    /// # Errors
    /// [`FsError::NoXattr`] when absent.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, FsError> {
        let _ns = self.read_ns();
        let loc = self.loc(ino)?;
        let missing = || FsError::NoXattr {
            path: loc.path.clone(),
            name: name.to_os_string(),
        };
        if backing::is_overlay_xattr(name.as_bytes()) {
            return Err(missing());
        }
        let v = match self.stack.lower(self.meta_layer(&loc)) {
            Some(l) => l.get_xattr(&loc.path, name)?,
            None => backing::get_xattr(&self.upper_path(&loc.path)?, name)?,
        };
        v.ok_or_else(missing)
    }

    /// `listxattr`: the names, NUL-separated, without `trusted.overlay.*`.
    ///
    /// # Errors
    /// [`FsError::Io`] when listing fails.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let _ns = self.read_ns();
        let loc = self.loc(ino)?;
        let names = match self.stack.lower(self.meta_layer(&loc)) {
            Some(l) => l.list_xattrs(&loc.path)?,
            None => backing::list_xattrs(&self.upper_path(&loc.path)?)?,
        };
        let mut out = Vec::new();
        for n in names {
            if !backing::is_overlay_xattr(n.as_bytes()) {
                out.extend_from_slice(n.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    /// The attributes of the root (for tests and health checks).
    ///
    /// # Errors
    /// As [`UnionFs::getattr`].
    pub fn root_attr(&self) -> Result<NodeAttr, FsError> {
        self.getattr(ROOT, None)
    }
}

/// Removes temp files a previous session left in `work`.
fn clean_work(work: &Path) {
    let Ok(rd) = std::fs::read_dir(work) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().as_bytes().starts_with(b"lazysnap-tmp-") {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}
