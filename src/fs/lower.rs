//! A read-only layer of the union. One instance per layer, shared by every
//! mount that stacks it (a process-wide registry keyed by the layer dir's path).
//!
//! Kinds ([`LowerKind`]): a local directory in overlayfs format, or a remote
//! layer read through its TOC (`remote.rs`), its file bytes through a
//! [`ChunkReader`] (the chunk cache). The union only uses the methods below,
//! so it does not care which kind answers.
//!
//! Registry: [`Lower::remote`] registers a remote lower under a key, the
//! path of the (empty) layer dir of its committed snapshot; from then on
//! [`Lower::open_at`] of that path (the union mounting `MountSpec.lowers`)
//! returns it instead of reading the dir. The registry holds weak
//! references only: the owner of the remote lower (the snapshot layer)
//! keeps the `Arc` alive for as long as the layer is to be served remotely,
//! each mount holds its own. Once every `Arc` is gone the entry expires
//! and `open_at` reads the dir again; [`Lower::unregister`] drops the entry
//! at once (mounts made before keep their instance).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::FsError;
use super::backing::{self, BPath, EntryAttr, RawDirEnt};
use super::remote::RemoteTree;
use super::remote_file::{ChunkReader, RemoteFile};
use crate::format::Toc;

/// How a lower stores its tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowerKind {
    /// A local directory in overlayfs format.
    LocalDir,
    /// A remote layer: a TOC index, file bytes through a [`ChunkReader`].
    Remote,
}

#[derive(Debug)]
enum Imp {
    Local {
        /// Inode → names of regular files with `nlink > 1`, built on first use.
        hardlinks: OnceLock<HashMap<u64, Vec<PathBuf>>>,
    },
    Remote(Box<RemoteTree>),
}

/// One read-only layer. Immutable while mounted, so answers may be cached.
#[derive(Debug)]
pub struct Lower {
    root: PathBuf,
    imp: Imp,
}

/// An open file of a layer: a local file (of a local lower, or of the
/// upper), or a remote lower's file read through its chunks.
#[derive(Debug)]
pub enum LowerFile {
    /// A file on local disk.
    Local(File),
    /// A regular file of a remote lower.
    Remote(RemoteFile),
}

impl LowerFile {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at end of file.
    ///
    /// # Errors
    /// [`FsError::Io`]: the OS error of a local file; EIO for a remote
    /// chunk that cannot be read (see [`RemoteFile::read_at`]).
    pub fn read_at(&self, buf: &mut [u8], offset: u64, path: &Path) -> Result<usize, FsError> {
        match self {
            LowerFile::Local(f) => {
                let mut done = 0;
                while done < buf.len() {
                    match f.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(FsError::io("read", path, e)),
                    }
                }
                Ok(done)
            }
            LowerFile::Remote(r) => r.read_at(buf, offset),
        }
    }

    /// The local file, for calls only a local file supports.
    ///
    /// # Errors
    /// [`FsError::Io`] (EBADF) for a remote file (handles of remote files
    /// are read-only: opening for write copies up first).
    pub fn local(&self, path: &Path) -> Result<&File, FsError> {
        match self {
            LowerFile::Local(f) => Ok(f),
            LowerFile::Remote(_) => Err(FsError::io(
                "write to lower file",
                path,
                std::io::Error::from_raw_os_error(libc::EBADF),
            )),
        }
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Lower>>> {
    static REG: OnceLock<Mutex<HashMap<PathBuf, Weak<Lower>>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock_registry() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Weak<Lower>>> {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|_, w| w.strong_count() > 0);
    reg
}

impl Lower {
    /// The shared instance for the layer at `root`: the remote lower
    /// registered under that path if there is one, else the local layer
    /// dir `root`, created on first use.
    ///
    /// # Errors
    /// [`FsError::Io`] when nothing is registered and `root` is not a
    /// readable directory.
    pub fn open_at(root: &Path) -> Result<Arc<Lower>, FsError> {
        if let Some(l) = lock_registry().get(root).and_then(Weak::upgrade) {
            return Ok(l);
        }
        let md = std::fs::metadata(root).map_err(FsError::io_at("open layer", root))?;
        if !md.is_dir() {
            return Err(FsError::io(
                "open layer",
                root,
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let mut reg = lock_registry();
        if let Some(l) = reg.get(root).and_then(Weak::upgrade) {
            return Ok(l);
        }
        let l = Arc::new(Lower {
            root: root.to_path_buf(),
            imp: Imp::Local {
                hardlinks: OnceLock::new(),
            },
        });
        reg.insert(root.to_path_buf(), Arc::downgrade(&l));
        Ok(l)
    }

    /// Builds the remote lower of a layer from its TOC and registers it
    /// under `key` (replacing what was registered there), so that
    /// [`Lower::open_at`] of `key` returns it while the caller holds it.
    ///
    /// # Errors
    /// [`FsError::Invalid`] when the TOC cannot be indexed.
    pub fn remote(
        key: &Path,
        toc: Arc<Toc>,
        reader: Arc<dyn ChunkReader>,
    ) -> Result<Arc<Lower>, FsError> {
        let tree = RemoteTree::build(key, toc, reader)?;
        let l = Arc::new(Lower {
            root: key.to_path_buf(),
            imp: Imp::Remote(Box::new(tree)),
        });
        lock_registry().insert(key.to_path_buf(), Arc::downgrade(&l));
        Ok(l)
    }

    /// Forgets the lower registered under `key` (mounts keep their instance).
    pub fn unregister(key: &Path) {
        lock_registry().remove(key);
    }

    /// The layer dir (for a remote lower, its registry key).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The kind of this lower.
    pub fn kind(&self) -> LowerKind {
        match self.imp {
            Imp::Local { .. } => LowerKind::LocalDir,
            Imp::Remote(_) => LowerKind::Remote,
        }
    }

    /// The backing path of `rel` in a local layer dir.
    fn backing_path(&self, rel: &Path) -> BPath {
        BPath::new(&self.root, rel)
    }

    /// The entry at `rel`, `None` when absent (whiteouts are returned as such).
    ///
    /// # Errors
    /// [`FsError::Io`] when the layer cannot be read.
    pub fn stat(&self, rel: &Path) -> Result<Option<EntryAttr>, FsError> {
        match &self.imp {
            Imp::Local { .. } => backing::lstat(&self.backing_path(rel)),
            Imp::Remote(t) => Ok(t.stat(rel)),
        }
    }

    /// Whether `rel` is a directory this layer holds only because entries
    /// below it need it (a remote layer without an entry for a parent, field
    /// case B27): its metadata is made up, so the union takes a merged
    /// directory's metadata from a layer below that has a real entry.
    pub fn is_implicit(&self, rel: &Path) -> bool {
        match &self.imp {
            // lazysnap's own unpack marks the parents a layer did not name.
            Imp::Local { .. } => backing::get_xattr(
                &self.backing_path(rel),
                std::ffi::OsStr::new(super::apply::IMPLICIT_XATTR),
            )
            .ok()
            .flatten()
            .is_some(),
            Imp::Remote(t) => t.is_implicit(rel),
        }
    }

    /// Whether the directory `rel` is opaque in this layer.
    ///
    /// # Errors
    /// [`FsError::Io`] when the marker cannot be read.
    pub fn is_opaque(&self, rel: &Path) -> Result<bool, FsError> {
        match &self.imp {
            Imp::Local { .. } => backing::is_opaque(&self.backing_path(rel)),
            Imp::Remote(t) => Ok(t.is_opaque(rel)),
        }
    }

    /// The names in directory `rel` of this layer, whiteouts included.
    ///
    /// # Errors
    /// [`FsError::Io`] when the directory cannot be read.
    pub fn read_dir(&self, rel: &Path) -> Result<Vec<RawDirEnt>, FsError> {
        match &self.imp {
            Imp::Local { .. } => backing::read_dir(&self.backing_path(rel)),
            Imp::Remote(t) => Ok(t.read_dir(rel)),
        }
    }

    /// Opens the regular file `rel` for reading.
    ///
    /// # Errors
    /// [`FsError::Io`] when the file cannot be opened.
    pub fn open(&self, rel: &Path) -> Result<LowerFile, FsError> {
        match &self.imp {
            Imp::Local { .. } => {
                let p = self.backing_path(rel);
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&*p)
                    .map(LowerFile::Local)
                    .map_err(FsError::io_at("open lower", &p))
            }
            Imp::Remote(t) => t.open(rel).map(LowerFile::Remote),
        }
    }

    /// The target of the symlink `rel`.
    ///
    /// # Errors
    /// [`FsError::Io`] when it is not a readable symlink.
    pub fn read_link(&self, rel: &Path) -> Result<PathBuf, FsError> {
        match &self.imp {
            Imp::Local { .. } => {
                let p = self.backing_path(rel);
                std::fs::read_link(&*p).map_err(FsError::io_at("readlink", &p))
            }
            Imp::Remote(t) => t.read_link(rel),
        }
    }

    /// The xattr names of `rel`, private overlay ones included.
    ///
    /// # Errors
    /// [`FsError::Io`] when listing fails.
    pub fn list_xattrs(&self, rel: &Path) -> Result<Vec<OsString>, FsError> {
        match &self.imp {
            Imp::Local { .. } => backing::list_xattrs(&self.backing_path(rel)),
            Imp::Remote(t) => t.list_xattrs(rel),
        }
    }

    /// One xattr value of `rel`.
    ///
    /// # Errors
    /// [`FsError::Io`] when reading fails.
    pub fn get_xattr(
        &self,
        rel: &Path,
        name: &std::ffi::OsStr,
    ) -> Result<Option<Vec<u8>>, FsError> {
        match &self.imp {
            Imp::Local { .. } => backing::get_xattr(&self.backing_path(rel), name),
            Imp::Remote(t) => t.get_xattr(rel, name),
        }
    }

    /// All paths (relative) in this layer of regular files with inode `ino`.
    /// For a local dir the index is built by one walk of the layer on first
    /// use (lowers are immutable) and holds only files with more than one
    /// link; a remote lower indexes its groups when built.
    pub fn hardlink_names(&self, ino: u64) -> Vec<PathBuf> {
        match &self.imp {
            Imp::Local { hardlinks } => {
                let idx = hardlinks.get_or_init(|| {
                    let mut idx: HashMap<u64, Vec<PathBuf>> = HashMap::new();
                    walk_links(&self.root, Path::new(""), &mut idx);
                    idx
                });
                idx.get(&ino).cloned().unwrap_or_default()
            }
            Imp::Remote(t) => t.hardlink_names(ino),
        }
    }
}

fn walk_links(root: &Path, rel: &Path, idx: &mut HashMap<u64, Vec<PathBuf>>) {
    let Ok(rd) = std::fs::read_dir(&*BPath::new(root, rel)) else {
        return;
    };
    for ent in rd.flatten() {
        let Ok(md) = ent.metadata() else { continue };
        let child = rel.join(ent.file_name());
        if md.is_dir() {
            walk_links(root, &child, idx);
        } else if md.is_file() && md.nlink() > 1 {
            idx.entry(md.ino()).or_default().push(child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_are_shared_per_path_and_index_hardlinks() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("bin")).unwrap();
        std::fs::write(t.path().join("bin/tool"), b"x").unwrap();
        std::fs::hard_link(t.path().join("bin/tool"), t.path().join("bin/tool2")).unwrap();
        let a = Lower::open_at(t.path()).unwrap();
        let b = Lower::open_at(t.path()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let ino = a.stat(Path::new("bin/tool")).unwrap().unwrap().ino;
        let mut names = a.hardlink_names(ino);
        names.sort();
        assert_eq!(
            names,
            vec![PathBuf::from("bin/tool"), PathBuf::from("bin/tool2")]
        );
        assert!(Lower::open_at(&t.path().join("bin/tool")).is_err());
    }
}
