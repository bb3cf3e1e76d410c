//! A read-only layer of the union. One instance per layer dir, shared by every
//! mount that stacks it (a process-wide registry keyed by path).
//!
//! Kinds: [`LowerKind::LocalDir`], a directory in overlayfs format on local
//! disk. A remote kind (a layer read through its TOC, bytes through the chunk
//! cache) will be added next to it; the union only uses the methods below, so
//! it does not care which kind answers.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::FsError;
use super::backing::{self, BPath, EntryAttr, RawDirEnt};

/// How a lower stores its tree.
#[derive(Debug)]
pub enum LowerKind {
    /// A local directory in overlayfs format.
    LocalDir,
}

/// One read-only layer. Immutable while mounted, so answers may be cached.
#[derive(Debug)]
pub struct Lower {
    root: PathBuf,
    kind: LowerKind,
    /// Inode → names of regular files with `nlink > 1`, built on first use.
    hardlinks: OnceLock<HashMap<u64, Vec<PathBuf>>>,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Lower>>> {
    static REG: OnceLock<Mutex<HashMap<PathBuf, Weak<Lower>>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Lower {
    /// The shared instance for the local layer dir `root`, created on first use.
    ///
    /// # Errors
    /// [`FsError::Io`] when `root` is not a readable directory.
    pub fn local(root: &Path) -> Result<Arc<Lower>, FsError> {
        let md = std::fs::metadata(root).map_err(FsError::io_at("open layer", root))?;
        if !md.is_dir() {
            return Err(FsError::io(
                "open layer",
                root,
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        reg.retain(|_, w| w.strong_count() > 0);
        if let Some(l) = reg.get(root).and_then(Weak::upgrade) {
            return Ok(l);
        }
        let l = Arc::new(Lower {
            root: root.to_path_buf(),
            kind: LowerKind::LocalDir,
            hardlinks: OnceLock::new(),
        });
        reg.insert(root.to_path_buf(), Arc::downgrade(&l));
        Ok(l)
    }

    /// The layer dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The kind of this lower.
    pub fn kind(&self) -> &LowerKind {
        &self.kind
    }

    /// The backing path of `rel` (relative merged-view path).
    pub fn backing_path(&self, rel: &Path) -> BPath {
        match self.kind {
            LowerKind::LocalDir => BPath::new(&self.root, rel),
        }
    }

    /// The entry at `rel`, `None` when absent (whiteouts are returned as such).
    ///
    /// # Errors
    /// [`FsError::Io`] when the layer cannot be read.
    pub fn stat(&self, rel: &Path) -> Result<Option<EntryAttr>, FsError> {
        match self.kind {
            LowerKind::LocalDir => backing::lstat(&self.backing_path(rel)),
        }
    }

    /// Whether the directory `rel` is opaque in this layer.
    ///
    /// # Errors
    /// [`FsError::Io`] when the marker cannot be read.
    pub fn is_opaque(&self, rel: &Path) -> Result<bool, FsError> {
        match self.kind {
            LowerKind::LocalDir => backing::is_opaque(&self.backing_path(rel)),
        }
    }

    /// The names in directory `rel` of this layer, whiteouts included.
    ///
    /// # Errors
    /// [`FsError::Io`] when the directory cannot be read.
    pub fn read_dir(&self, rel: &Path) -> Result<Vec<RawDirEnt>, FsError> {
        match self.kind {
            LowerKind::LocalDir => backing::read_dir(&self.backing_path(rel)),
        }
    }

    /// Opens the regular file `rel` for reading. (The remote kind will return
    /// a reader over the chunk cache instead of a `File`.)
    ///
    /// # Errors
    /// [`FsError::Io`] when the file cannot be opened.
    pub fn open(&self, rel: &Path) -> Result<File, FsError> {
        let p = self.backing_path(rel);
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&*p)
            .map_err(FsError::io_at("open lower", &p))
    }

    /// The target of the symlink `rel`.
    ///
    /// # Errors
    /// [`FsError::Io`] when it is not a readable symlink.
    pub fn read_link(&self, rel: &Path) -> Result<PathBuf, FsError> {
        let p = self.backing_path(rel);
        std::fs::read_link(&*p).map_err(FsError::io_at("readlink", &p))
    }

    /// The xattr names of `rel`, private overlay ones included.
    ///
    /// # Errors
    /// [`FsError::Io`] when listing fails.
    pub fn list_xattrs(&self, rel: &Path) -> Result<Vec<OsString>, FsError> {
        backing::list_xattrs(&self.backing_path(rel))
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
        backing::get_xattr(&self.backing_path(rel), name)
    }

    /// All paths (relative) in this layer of regular files with inode `ino`.
    /// The index is built by one walk of the layer on first use (lowers are
    /// immutable) and holds only files with more than one link.
    pub fn hardlink_names(&self, ino: u64) -> Vec<PathBuf> {
        let idx = self.hardlinks.get_or_init(|| {
            let mut idx: HashMap<u64, Vec<PathBuf>> = HashMap::new();
            walk_links(&self.root, Path::new(""), &mut idx);
            idx
        });
        idx.get(&ino).cloned().unwrap_or_default()
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
        let a = Lower::local(t.path()).unwrap();
        let b = Lower::local(t.path()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let ino = a.stat(Path::new("bin/tool")).unwrap().unwrap().ino;
        let mut names = a.hardlink_names(ino);
        names.sort();
        assert_eq!(
            names,
            vec![PathBuf::from("bin/tool"), PathBuf::from("bin/tool2")]
        );
        assert!(Lower::local(&t.path().join("bin/tool")).is_err());
    }
}
