//! Copy-up policies of [`UnionFs`] (the namespace lock is held exclusively
//! by the caller):
//!
//! - **Parents first.** An entry is copied up only after its parent
//!   directories, each with its own mode, owner, xattrs and times; the
//!   parent's mtime/atime are restored after a child is copied into it, as
//!   overlayfs does.
//! - **Hardlink groups stay together** (field cases B06/B08, the preferred
//!   policy): copying up one name of a lower file with several links copies
//!   the data once and links every other visible name of that inode into the
//!   upper too, so a write through one name shows through all, and the
//!   committed layer holds one copy plus hardlinks. `st_ino` is kept (the
//!   origin map), and `st_nlink` stays the number of names sharing it.
//! - **Renamed lower directories are copied up whole** ([`UnionFs::materialize`]):
//!   recursively, without redirect xattrs; the directory becomes opaque and
//!   loses its (now useless) whiteouts, the old name gets a whiteout. A
//!   committed layer therefore holds the new directory in full.
//! - **Opaque on replace.** A directory created where a lower layer has any
//!   entry (or whiteout) of that name is marked `trusted.overlay.opaque=y`.

use std::path::{Path, PathBuf};

use super::FsError;
use super::backing::{self, BPath, EntryKind};
use super::inode::derive_ino;
use super::ops::{Loc, UnionFs, lock};
use super::union::{LayerId, UPPER};
use super::upper::{self, copy_entry, temp_path, timespec};

impl UnionFs {
    /// Makes the merged directory `path` exist in the upper (parents first)
    /// and returns its upper path.
    pub(crate) fn ensure_upper_dir(&self, path: &Path) -> Result<BPath, FsError> {
        let upper = self.upper_path(path)?;
        let hit = self.stack.resolve(path)?;
        if hit.attr.kind != EntryKind::Dir {
            return Err(FsError::NotDir {
                path: path.to_path_buf(),
            });
        }
        if hit.top() == UPPER {
            return Ok(upper);
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        self.ensure_upper_dir(parent)?;
        let meta = self.stack.meta_layer(&hit.layers, path);
        self.copy_into_upper(hit.top(), meta, path, &hit.attr, true, None)?;
        lock(&self.inodes).invalidate(path);
        Ok(upper)
    }

    /// Copies the lower entry `rel` of `layer` into the upper through a temp
    /// file in `work` (its data and xattrs from layer `src`: `layer`, or for
    /// a directory implicit there the layer with its metadata), restores
    /// the parent's times and records the origin.
    fn copy_into_upper(
        &self,
        layer: LayerId,
        src: LayerId,
        rel: &Path,
        attr: &backing::EntryAttr,
        with_data: bool,
        prepared: Option<Prepared>,
    ) -> Result<(), FsError> {
        let lower = self.stack.lower(src).ok_or_else(|| FsError::Invalid {
            path: rel.to_path_buf(),
            what: "copy-up from the upper",
        })?;
        let dst = self.upper_path(rel)?;
        let parent_times = self.parent_times(rel)?;
        let tmp = match prepared {
            Some(p) if with_data && p.layer == layer && p.ino == attr.ino => p.take(),
            _ => {
                let tmp = temp_path(&self.work, &self.tmp_counter);
                copy_entry(lower, rel, attr, &tmp, with_data)?;
                tmp
            }
        };
        if let Err(e) = std::fs::rename(&tmp, &dst) {
            let _ = if attr.kind == EntryKind::Dir {
                std::fs::remove_dir(&tmp)
            } else {
                std::fs::remove_file(&tmp)
            };
            return Err(FsError::io("copy-up rename", &*dst, e));
        }
        parent_times.restore()?;
        let up = backing::lstat(&dst)?.ok_or_else(|| FsError::NotFound {
            path: rel.to_path_buf(),
        })?;
        self.origins.record(up.ino, derive_ino(layer, attr.ino))
    }

    /// Copies up the merged entry `path` if it is not in the upper yet: a
    /// directory alone (see [`UnionFs::ensure_upper_dir`]), a file with its
    /// hardlink group. `with_data: false` skips the data (it is about to be
    /// truncated to zero).
    pub(crate) fn copy_up(&self, path: &Path, with_data: bool) -> Result<(), FsError> {
        self.copy_up_with(path, with_data, None)
    }

    /// [`UnionFs::copy_up`] using a copy made by [`UnionFs::prepare_copy_up`]
    /// when it is still of the same lower entry.
    pub(crate) fn copy_up_with(
        &self,
        path: &Path,
        with_data: bool,
        prepared: Option<Prepared>,
    ) -> Result<(), FsError> {
        let hit = self.stack.resolve(path)?;
        if hit.top() == UPPER {
            return Ok(());
        }
        if hit.attr.kind == EntryKind::Dir {
            self.ensure_upper_dir(path)?;
            return Ok(());
        }
        let layer = hit.top();
        let group = if hit.attr.kind == EntryKind::File && hit.attr.nlink > 1 {
            self.visible_group(layer, hit.attr.ino)?
        } else {
            Vec::new()
        };
        self.ensure_upper_dir(path.parent().unwrap_or(Path::new("")))?;
        self.copy_into_upper(layer, layer, path, &hit.attr, with_data, prepared)?;
        let first = self.upper_path(path)?;
        for other in group.iter().filter(|p| p.as_path() != path) {
            self.ensure_upper_dir(other.parent().unwrap_or(Path::new("")))?;
            let dst = self.upper_path(other)?;
            let times = self.parent_times(other)?;
            std::fs::hard_link(&first, &dst).map_err(FsError::io_at("copy-up link", &dst))?;
            times.restore()?;
        }
        // Earlier read-only handles of this file go on reading the upper copy,
        // so they see writes made from now on (B08).
        let ino = derive_ino(layer, hit.attr.ino);
        self.repoint_handles(ino, &first);
        let mut t = lock(&self.inodes);
        t.set_layers(ino, vec![UPPER]);
        t.invalidate(path);
        for p in &group {
            t.invalidate(p);
        }
        Ok(())
    }

    /// Copies the data of node `ino` into `work` if it is a non-empty lower
    /// file, holding the namespace lock only to find it (lowers are
    /// immutable). A caller then takes the lock exclusively and passes the
    /// result to [`UnionFs::copy_up_with`], so a slow copy (a large or lazily
    /// fetched file) does not stall every other operation of the mount.
    ///
    /// # Errors
    /// [`FsError::Io`] when the copy fails (ENOSPC included).
    pub(crate) fn prepare_copy_up(&self, ino: u64) -> Result<Option<Prepared>, FsError> {
        let (lower, path, attr, layer) = {
            let _ns = self.read_ns();
            let Ok(loc) = self.loc(ino) else {
                return Ok(None);
            };
            if loc.is_dir || loc.top() == UPPER || self.stack.upper.is_none() {
                return Ok(None);
            }
            let attr = self.backing_attr(&loc)?;
            let Some(lower) = self.stack.lower(loc.top()) else {
                return Ok(None);
            };
            if attr.kind != EntryKind::File || attr.size == 0 {
                return Ok(None);
            }
            (lower.clone(), loc.path.clone(), attr, loc.top())
        };
        let tmp = temp_path(&self.work, &self.tmp_counter);
        copy_entry(&lower, &path, &attr, &tmp, true)?;
        Ok(Some(Prepared {
            layer,
            ino: attr.ino,
            tmp: Some(tmp),
        }))
    }

    /// Makes the merged directory `path` whole in the upper: every child
    /// copied up recursively, whiteouts inside removed, marked opaque. Used
    /// before a directory that has lower contents is renamed.
    pub(crate) fn materialize(&self, path: &Path) -> Result<(), FsError> {
        let up = self.ensure_upper_dir(path)?;
        let hit = self.stack.resolve(path)?;
        if !hit.has_lower() {
            return Ok(());
        }
        for e in self.stack.list(path, &hit.layers)? {
            let child = path.join(&e.name);
            if e.kind == EntryKind::Dir {
                self.materialize(&child)?;
            } else if e.layer != UPPER {
                self.copy_up(&child, true)?;
            }
        }
        let times = backing::lstat(&up)?;
        upper::remove_whiteouts(&up)?;
        backing::set_opaque(&up)?;
        if let Some(a) = times {
            upper::set_times(&up, Some(timespec(a.atime)), Some(timespec(a.mtime)))?;
        }
        lock(&self.inodes).invalidate_subtree(path);
        Ok(())
    }

    /// Copies up whatever `path` (resolved as `hit`) needs before it can be
    /// renamed in the upper.
    pub(crate) fn make_whole(&self, path: &Path, hit: &super::union::Hit) -> Result<(), FsError> {
        if hit.attr.kind == EntryKind::Dir {
            if hit.has_lower() {
                self.materialize(path)?;
            }
            Ok(())
        } else {
            self.copy_up(path, true)
        }
    }

    /// Readies the upper for a new entry `path` in directory `ploc`: the
    /// parent copied up, a whiteout of that name removed. Returns the upper
    /// path and whether a directory created there must be opaque.
    pub(crate) fn prepare_create(&self, ploc: &Loc, path: &Path) -> Result<(BPath, bool), FsError> {
        self.ensure_upper_dir(&ploc.path)?;
        let dst = self.upper_path(path)?;
        let mut opaque = self.stack.lower_mentions(&ploc.layers, path)?;
        if let Some(a) = backing::lstat(&dst)? {
            if a.kind == EntryKind::Whiteout {
                std::fs::remove_file(&*dst).map_err(FsError::io_at("unlink whiteout", &dst))?;
                opaque = true;
            } else {
                return Err(FsError::Exists {
                    path: path.to_path_buf(),
                });
            }
        }
        Ok((dst, opaque))
    }

    /// Deletes the merged name `path` of directory `ploc` from the upper
    /// side: removes its upper entry if any, then adds a whiteout when a
    /// lower still has it.
    pub(crate) fn delete_name(
        &self,
        ploc: &Loc,
        path: &Path,
        hit: &super::union::Hit,
    ) -> Result<(), FsError> {
        let up = self.upper_path(path)?;
        if hit.top() == UPPER {
            if hit.attr.kind == EntryKind::Dir {
                upper::remove_upper_dir(&up)?;
                self.origins.record(hit.attr.ino, 0)?;
            } else {
                std::fs::remove_file(&up).map_err(FsError::io_at("unlink", &up))?;
                if hit.attr.nlink <= 1 {
                    self.origins.record(hit.attr.ino, 0)?;
                }
            }
        }
        if self.stack.lower_has(&ploc.layers, path)? {
            self.ensure_upper_dir(&ploc.path)?;
            backing::make_whiteout(&up)?;
        }
        lock(&self.inodes).remove_path(path);
        Ok(())
    }
}

/// A lower file copied into `work` ahead of its copy-up; removed on drop
/// unless a copy-up took it.
#[derive(Debug)]
pub(crate) struct Prepared {
    layer: LayerId,
    ino: u64,
    tmp: Option<PathBuf>,
}

impl Prepared {
    fn take(mut self) -> PathBuf {
        self.tmp.take().unwrap_or_default()
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(t) = self.tmp.take() {
            let _ = std::fs::remove_file(t);
        }
    }
}

/// The times of an upper directory, to put back after a copy-up into it
/// changed them.
struct ParentTimes {
    dir: BPath,
    attr: Option<backing::EntryAttr>,
}

impl UnionFs {
    /// The times of the upper parent of merged path `rel`.
    fn parent_times(&self, rel: &Path) -> Result<ParentTimes, FsError> {
        let dir = self.upper_path(rel.parent().unwrap_or(Path::new("")))?;
        let attr = backing::lstat(&dir)?;
        Ok(ParentTimes { dir, attr })
    }
}

impl ParentTimes {
    fn restore(&self) -> Result<(), FsError> {
        match &self.attr {
            Some(a) => {
                upper::set_times(&self.dir, Some(timespec(a.atime)), Some(timespec(a.mtime)))
            }
            None => Ok(()),
        }
    }
}
