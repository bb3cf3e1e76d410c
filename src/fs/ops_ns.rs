//! Namespace changes of [`UnionFs`]: mknod, mkdir, symlink, link, unlink,
//! rmdir, rename. Each holds the namespace lock exclusively.

use std::ffi::OsStr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::sys::stat::{Mode, SFlag};

use super::FsError;
use super::backing::{self, EntryKind};
use super::inode::ino_of;
use super::ops::{Ctx, Entry, Loc, UnionFs, lock};
use super::union::{Hit, UPPER};
use super::upper;

/// `rename(2)` flags we support.
const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;

impl UnionFs {
    /// The owner of a new entry in `ploc`: the caller, with the directory's
    /// group when it is setgid (and then new directories are setgid too).
    pub(crate) fn new_owner(&self, ploc: &Loc, ctx: Ctx) -> Result<(u32, u32, bool), FsError> {
        let pattr = self.backing_attr(ploc)?;
        if pattr.perm & libc::S_ISGID != 0 {
            Ok((ctx.uid, pattr.gid, true))
        } else {
            Ok((ctx.uid, ctx.gid, false))
        }
    }

    /// Checks that `name` is free in `ploc` and returns its path.
    pub(crate) fn free_name(
        &self,
        ploc: &Loc,
        name: &OsStr,
    ) -> Result<std::path::PathBuf, FsError> {
        let path = ploc.path.join(name);
        self.require_upper(&path)?;
        if self.stack.lookup_in(&ploc.layers, &path)?.is_some() {
            return Err(FsError::Exists { path });
        }
        Ok(path)
    }

    /// `mknod`: a regular file, fifo, socket or device node. A 0/0
    /// character device is refused with EPERM, as kernel overlayfs does: in
    /// the overlay format it is a whiteout and would vanish.
    ///
    /// # Errors
    /// [`FsError::Exists`], [`FsError::ReadOnly`], [`FsError::Forbidden`], [`FsError::Io`].
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        ctx: Ctx,
    ) -> Result<Entry, FsError> {
        let _ns = self.write_ns();
        let ploc = self.dir_loc(parent)?;
        let path = self.free_name(&ploc, name)?;
        let fmt = mode & libc::S_IFMT;
        if fmt == libc::S_IFCHR && rdev == 0 {
            return Err(FsError::Forbidden {
                path,
                what: "0/0 character device (a whiteout in overlay format)",
            });
        }
        let (uid, gid, _) = self.new_owner(&ploc, ctx)?;
        let (dst, _) = self.prepare_create(&ploc, &path)?;
        if fmt == libc::S_IFREG || fmt == 0 {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dst)
                .map_err(FsError::io_at("mknod", &dst))?;
        } else {
            nix::sys::stat::mknod(
                &*dst,
                SFlag::from_bits_truncate(fmt),
                Mode::from_bits_truncate(0o600),
                rdev,
            )
            .map_err(FsError::nix_at("mknod", &dst))?;
        }
        upper::chown(&dst, Some(uid), Some(gid))?;
        upper::chmod(&dst, mode & 0o7777)?;
        self.lookup_locked(parent, name, true)
    }

    /// `mkdir`; opaque when it replaces anything of a lower.
    ///
    /// # Errors
    /// [`FsError::Exists`], [`FsError::ReadOnly`], [`FsError::Io`].
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, ctx: Ctx) -> Result<Entry, FsError> {
        let _ns = self.write_ns();
        let ploc = self.dir_loc(parent)?;
        let path = self.free_name(&ploc, name)?;
        let (uid, gid, sgid) = self.new_owner(&ploc, ctx)?;
        let (dst, opaque) = self.prepare_create(&ploc, &path)?;
        std::fs::create_dir(&dst).map_err(FsError::io_at("mkdir", &dst))?;
        upper::chown(&dst, Some(uid), Some(gid))?;
        let sgid_bit = if sgid { libc::S_ISGID } else { 0 };
        upper::chmod(&dst, (mode & 0o7777) | sgid_bit)?;
        if opaque {
            backing::set_opaque(&dst)?;
        }
        self.lookup_locked(parent, name, true)
    }

    /// `symlink`.
    ///
    /// # Errors
    /// [`FsError::Exists`], [`FsError::ReadOnly`], [`FsError::Io`].
    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        ctx: Ctx,
    ) -> Result<Entry, FsError> {
        let _ns = self.write_ns();
        let ploc = self.dir_loc(parent)?;
        let path = self.free_name(&ploc, name)?;
        let (uid, gid, _) = self.new_owner(&ploc, ctx)?;
        let (dst, _) = self.prepare_create(&ploc, &path)?;
        std::os::unix::fs::symlink(target, &dst).map_err(FsError::io_at("symlink", &dst))?;
        upper::chown(&dst, Some(uid), Some(gid))?;
        self.lookup_locked(parent, name, true)
    }

    /// `link`: copies the source (with its hardlink group) up first.
    ///
    /// # Errors
    /// [`FsError::Exists`], [`FsError::Forbidden`] for directories, [`FsError::Io`].
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Entry, FsError> {
        let _ns = self.write_ns();
        let loc = self.loc(ino)?;
        if loc.is_dir {
            return Err(FsError::Forbidden {
                path: loc.path,
                what: "hardlink to a directory",
            });
        }
        let ploc = self.dir_loc(newparent)?;
        let path = self.free_name(&ploc, newname)?;
        self.copy_up(&loc.path, true)?;
        let src = self.upper_path(&loc.path)?;
        let (dst, _) = self.prepare_create(&ploc, &path)?;
        std::fs::hard_link(&src, &dst).map_err(FsError::io_at("link", &dst))?;
        self.lookup_locked(newparent, newname, true)
    }

    /// The directory, path and merged-view hit of `name` in `parent`, for a
    /// deletion (the caller holds the namespace write lock).
    fn existing_child(
        &self,
        parent: u64,
        name: &OsStr,
    ) -> Result<(Loc, std::path::PathBuf, Hit), FsError> {
        let ploc = self.dir_loc(parent)?;
        let path = ploc.path.join(name);
        self.require_upper(&path)?;
        let hit = self
            .stack
            .lookup_in(&ploc.layers, &path)?
            .ok_or_else(|| FsError::NotFound { path: path.clone() })?;
        Ok((ploc, path, hit))
    }

    /// `unlink`: removes the upper entry and/or whites out the lower one.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::IsDir`], [`FsError::ReadOnly`].
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let _ns = self.write_ns();
        let (ploc, path, hit) = self.existing_child(parent, name)?;
        if hit.attr.kind == EntryKind::Dir {
            return Err(FsError::IsDir { path });
        }
        self.delete_name(&ploc, &path, &hit)
    }

    /// `rmdir`: ENOTEMPTY when the merged view has children.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::NotDir`], [`FsError::NotEmpty`].
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let _ns = self.write_ns();
        let (ploc, path, hit) = self.existing_child(parent, name)?;
        if hit.attr.kind != EntryKind::Dir {
            return Err(FsError::NotDir { path });
        }
        if !self.stack.list(&path, &hit.layers)?.is_empty() {
            return Err(FsError::NotEmpty { path });
        }
        self.delete_name(&ploc, &path, &hit)
    }

    /// `rename`, with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`. Entries from
    /// lowers are copied up first (a directory in full, see `copyup.rs`); the
    /// old name gets a whiteout when a lower still has it; a directory landing
    /// on a name a lower knows is made opaque.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::Exists`] (NOREPLACE),
    /// [`FsError::NotEmpty`], [`FsError::Invalid`] for other flags.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), FsError> {
        let _ns = self.write_ns();
        let sploc = self.dir_loc(parent)?;
        let dploc = self.dir_loc(newparent)?;
        let src = sploc.path.join(name);
        let dst = dploc.path.join(newname);
        self.require_upper(&src)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(FsError::Invalid {
                path: src,
                what: "rename flags",
            });
        }
        let shit = self
            .stack
            .lookup_in(&sploc.layers, &src)?
            .ok_or_else(|| FsError::NotFound { path: src.clone() })?;
        let dhit = self.stack.lookup_in(&dploc.layers, &dst)?;
        if let Some(d) = &dhit {
            let same = ino_of(&self.origins, d.top(), d.attr.ino)
                == ino_of(&self.origins, shit.top(), shit.attr.ino);
            if flags & RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists { path: dst });
            }
            if same && flags & RENAME_EXCHANGE == 0 {
                return Ok(()); // POSIX: two names of one file, nothing to do
            }
        }
        if flags & RENAME_EXCHANGE != 0 {
            let dhit = dhit.ok_or_else(|| FsError::NotFound { path: dst.clone() })?;
            return self.exchange(&sploc, &src, &shit, &dploc, &dst, &dhit);
        }
        let src_is_dir = shit.attr.kind == EntryKind::Dir;
        if let Some(d) = &dhit {
            if d.attr.kind == EntryKind::Dir {
                if !src_is_dir {
                    return Err(FsError::IsDir { path: dst });
                }
                if !self.stack.list(&dst, &d.layers)?.is_empty() {
                    return Err(FsError::NotEmpty { path: dst });
                }
            } else if src_is_dir {
                return Err(FsError::NotDir { path: dst });
            }
        }
        self.make_whole(&src, &shit)?;
        self.ensure_upper_dir(&dploc.path)?;
        let up_dst = self.upper_path(&dst)?;
        let up_src = self.upper_path(&src)?;
        if let Some(d) = &dhit
            && d.top() == UPPER
        {
            if d.attr.kind == EntryKind::Dir {
                upper::remove_upper_dir(&up_dst)?;
                self.origins.record(d.attr.ino, 0)?;
            } else if d.attr.nlink <= 1 {
                self.origins.record(d.attr.ino, 0)?;
            }
        }
        if backing::lstat(&up_dst)?.is_some_and(|a| a.kind == EntryKind::Whiteout) {
            std::fs::remove_file(&up_dst).map_err(FsError::io_at("unlink whiteout", &up_dst))?;
        }
        std::fs::rename(&up_src, &up_dst).map_err(FsError::io_at("rename", &up_dst))?;
        if src_is_dir
            && self.stack.lower_mentions(&dploc.layers, &dst)?
            && !backing::is_opaque(&up_dst)?
        {
            backing::set_opaque(&up_dst)?;
        }
        if self.stack.lower_has(&sploc.layers, &src)? {
            backing::make_whiteout(&up_src)?;
        }
        let mut t = lock(&self.inodes);
        t.remove_path(&dst);
        t.rename_paths(&src, &dst);
        t.invalidate(&sploc.path);
        t.invalidate(&dploc.path);
        Ok(())
    }

    fn exchange(
        &self,
        sploc: &Loc,
        src: &Path,
        shit: &super::union::Hit,
        dploc: &Loc,
        dst: &Path,
        dhit: &super::union::Hit,
    ) -> Result<(), FsError> {
        self.make_whole(src, shit)?;
        self.make_whole(dst, dhit)?;
        let up_src = self.upper_path(src)?;
        let up_dst = self.upper_path(dst)?;
        nix::fcntl::renameat2(
            None,
            &*up_src,
            None,
            &*up_dst,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(FsError::nix_at("rename exchange", &up_dst))?;
        // A directory that lands on a name a lower knows must hide it.
        for (ploc, path, up, is_dir) in [
            (sploc, src, &up_src, dhit.attr.kind == EntryKind::Dir),
            (dploc, dst, &up_dst, shit.attr.kind == EntryKind::Dir),
        ] {
            if is_dir && self.stack.lower_mentions(&ploc.layers, path)? && !backing::is_opaque(up)?
            {
                backing::set_opaque(up)?;
            }
        }
        let mut t = lock(&self.inodes);
        t.exchange_paths(src, dst);
        t.invalidate(&sploc.path);
        t.invalidate(&dploc.path);
        Ok(())
    }
}
