//! File and directory handles of [`UnionFs`]: open/create, read/write,
//! fsync, fallocate, lseek, and directory snapshots for readdir.
//!
//! The backing file is opened without `O_DIRECT` (the kernel hands us its
//! own, unaligned buffers; field case B15) and without `O_APPEND` (the
//! kernel already turns an append into a write at the end of the file, and
//! `pwrite` on an `O_APPEND` fd would ignore the offset). Reads and writes
//! use `pread`/`pwrite`, so a handle has no file position of its own.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::FsError;
use super::backing::EntryKind;
use super::inode::{ROOT, ino_of};
use super::lower::LowerFile;
use super::ops::{Ctx, DirSnapEnt, Entry, Handle, UnionFs, lock};
use super::union::UPPER;
use super::upper;

/// `lseek` SEEK_DATA / SEEK_HOLE in a remote file: all data, no holes.
fn remote_seek(size: u64, offset: i64, whence: i32, path: &Path) -> Result<i64, FsError> {
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    let err = |e| FsError::io("lseek", path, std::io::Error::from_raw_os_error(e));
    match whence {
        _ if offset < 0 => Err(err(libc::EINVAL)),
        _ if offset >= size => Err(err(libc::ENXIO)),
        libc::SEEK_DATA => Ok(offset),
        libc::SEEK_HOLE => Ok(size),
        _ => Err(err(libc::EINVAL)),
    }
}

/// Flags never passed to the backing open.
const STRIPPED: i32 =
    libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_DIRECT | libc::O_APPEND;

fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

fn open_backing(path: &Path, flags: i32) -> Result<File, FsError> {
    let mut f = (flags & !STRIPPED) | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    if f & libc::O_ACCMODE == libc::O_RDONLY && flags & libc::O_TRUNC != 0 {
        f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
    }
    let fd = nix::fcntl::open(path, OFlag::from_bits_truncate(f), Mode::empty())
        .map_err(FsError::nix_at("open", path))?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

impl UnionFs {
    fn add_handle(&self, ino: u64, path: &Path, file: LowerFile, writable: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(
            fh,
            Arc::new(Handle {
                ino,
                path: path.to_path_buf(),
                file: RwLock::new(Arc::new(file)),
                writable,
            }),
        );
        fh
    }

    /// Some open handle of node `ino`.
    pub(crate) fn any_handle(&self, ino: u64) -> Option<u64> {
        lock(&self.handles)
            .iter()
            .find(|(_, h)| h.ino == ino)
            .map(|(fh, _)| *fh)
    }

    pub(crate) fn handle(&self, fh: u64) -> Result<Arc<Handle>, FsError> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle { fh })
    }

    pub(crate) fn handle_file(&self, fh: u64) -> Result<Arc<LowerFile>, FsError> {
        Ok(self.handle_file_path(fh)?.0)
    }

    /// The backing file of `fh` and the merged path it was opened by.
    pub(crate) fn handle_file_path(&self, fh: u64) -> Result<(Arc<LowerFile>, PathBuf), FsError> {
        let h = self.handle(fh)?;
        let f = h
            .file
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Ok((f, h.path.clone()))
    }

    /// Points read-only handles of `ino` that still read a lower at the
    /// upper copy, so they see writes made after the copy-up.
    pub(crate) fn repoint_handles(&self, ino: u64, upper_path: &Path) {
        let hs: Vec<Arc<Handle>> = lock(&self.handles)
            .values()
            .filter(|h| h.ino == ino && !h.writable)
            .cloned()
            .collect();
        for h in hs {
            if let Ok(f) = open_backing(upper_path, libc::O_RDONLY) {
                *h.file
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Arc::new(LowerFile::Local(f));
            }
        }
    }

    /// `open`: copies up first when opened for writing (or `O_TRUNC`).
    ///
    /// # Errors
    /// [`FsError::ReadOnly`] for writes to a View, [`FsError::Io`].
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64, FsError> {
        let write = wants_write(flags);
        let with_data = flags & libc::O_TRUNC == 0;
        let (loc, _guard_w, _guard_r);
        if write {
            let prepared = if with_data {
                self.prepare_copy_up(ino)?
            } else {
                None
            };
            _guard_w = Some(self.write_ns());
            let l = self.loc(ino)?;
            self.require_upper(&l.path)?;
            self.copy_up_with(&l.path, with_data, prepared)?;
            loc = self.loc(ino)?;
        } else {
            _guard_r = Some(self.read_ns());
            loc = self.loc(ino)?;
        }
        let file = match self.stack.lower(loc.top()) {
            Some(l) => l.open(&loc.path)?,
            None => LowerFile::Local(open_backing(&self.upper_path(&loc.path)?, flags)?),
        };
        self.recorder.note(&loc.path);
        Ok(self.add_handle(ino, &loc.path, file, write))
    }

    /// `create`: a new regular file in the upper, opened.
    ///
    /// # Errors
    /// [`FsError::Exists`], [`FsError::ReadOnly`], [`FsError::Io`].
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        ctx: Ctx,
    ) -> Result<(Entry, u64), FsError> {
        let _ns = self.write_ns();
        let ploc = self.dir_loc(parent)?;
        let path = self.free_name(&ploc, name)?;
        let (uid, gid, _) = self.new_owner(&ploc, ctx)?;
        let (dst, _) = self.prepare_create(&ploc, &path)?;
        let f =
            (flags & !STRIPPED) | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        let fd = nix::fcntl::open(
            &*dst,
            OFlag::from_bits_truncate(f),
            Mode::from_bits_truncate(0o600),
        )
        .map_err(FsError::nix_at("create", &dst))?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        upper::chown(&dst, Some(uid), Some(gid))?;
        upper::chmod(&dst, mode & 0o7777)?;
        let entry = self.lookup_locked(parent, name, true)?;
        let fh = self.add_handle(entry.attr.ino, &path, LowerFile::Local(file), true);
        Ok((entry, fh))
    }

    /// `read`: up to `size` bytes at `offset` (short only at end of file).
    ///
    /// # Errors
    /// [`FsError::BadHandle`], [`FsError::Io`].
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let (file, path) = self.handle_file_path(fh)?;
        let mut buf = vec![0u8; size as usize];
        let done = file.read_at(&mut buf, offset, &path)?;
        buf.truncate(done);
        Ok(buf)
    }

    /// `write`: all of `data` at `offset`.
    ///
    /// # Errors
    /// [`FsError::BadHandle`], [`FsError::Io`] (ENOSPC, EFBIG …).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let (file, path) = self.handle_file_path(fh)?;
        file.local(&path)?
            .write_all_at(data, offset)
            .map_err(|e| FsError::io("write", path, e))?;
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    /// `release`: closes the handle.
    pub fn release(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    /// `fsync` / `fdatasync` of the backing file.
    ///
    /// # Errors
    /// [`FsError::BadHandle`], [`FsError::Io`].
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<(), FsError> {
        let (file, path) = self.handle_file_path(fh)?;
        let LowerFile::Local(file) = &*file else {
            return Ok(()); // nothing to sync in a remote lower file
        };
        let r = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        r.map_err(|e| FsError::io("fsync", path, e))
    }

    /// `fallocate` with the caller's mode bits.
    ///
    /// # Errors
    /// [`FsError::BadHandle`], [`FsError::Io`].
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<(), FsError> {
        let (file, path) = self.handle_file_path(fh)?;
        let file = file.local(&path)?;
        let off = i64::try_from(offset).unwrap_or(i64::MAX);
        let len = i64::try_from(length).unwrap_or(i64::MAX);
        // SAFETY: plain syscall on a descriptor we own.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
        if r < 0 {
            return Err(FsError::io(
                "fallocate",
                path,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// `lseek` (the kernel asks only for SEEK_DATA / SEEK_HOLE).
    ///
    /// # Errors
    /// [`FsError::Io`] (ENXIO past the last data).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64, FsError> {
        let (file, path) = self.handle_file_path(fh)?;
        let file = match &*file {
            LowerFile::Local(f) => f,
            LowerFile::Remote(r) => return remote_seek(r.size(), offset, whence, &path),
        };
        // SAFETY: plain syscall on a descriptor we own; its offset is unused
        // by our reads and writes (pread/pwrite).
        let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
        if r < 0 {
            return Err(FsError::io("lseek", path, std::io::Error::last_os_error()));
        }
        Ok(r)
    }

    /// `opendir`: snapshots the merged listing (with `.` and `..`) so that
    /// readdir offsets (index + 1) stay stable while the directory changes.
    ///
    /// # Errors
    /// [`FsError::NotDir`], [`FsError::Io`].
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let _ns = self.read_ns();
        let loc = self.dir_loc(ino)?;
        let parent_ino = match loc.path.parent() {
            None => ROOT,
            Some(p) if p.as_os_str().is_empty() => ROOT,
            Some(p) => {
                let hit = self.stack.resolve(p)?;
                ino_of(&self.origins, hit.top(), hit.attr.ino)
            }
        };
        let mut snap = vec![
            DirSnapEnt {
                name: ".".into(),
                kind: EntryKind::Dir,
                ino,
            },
            DirSnapEnt {
                name: "..".into(),
                kind: EntryKind::Dir,
                ino: parent_ino,
            },
        ];
        for e in self.stack.list(&loc.path, &loc.layers)? {
            snap.push(DirSnapEnt {
                ino: ino_of(&self.origins, e.layer, e.ino),
                name: e.name,
                kind: e.kind,
            });
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, Arc::new(snap));
        Ok(fh)
    }

    /// The snapshot taken by `opendir`.
    ///
    /// # Errors
    /// [`FsError::BadHandle`].
    pub fn readdir(&self, fh: u64) -> Result<Arc<Vec<DirSnapEnt>>, FsError> {
        lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle { fh })
    }

    /// `releasedir`.
    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    /// `fsyncdir`: syncs the directory's upper copy, if any.
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn fsyncdir(&self, ino: u64) -> Result<(), FsError> {
        let _ns = self.read_ns();
        let loc = self.dir_loc(ino)?;
        if loc.top() == UPPER {
            let p = self.upper_path(&loc.path)?;
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(FsError::io_at("fsyncdir", &p))?;
        }
        Ok(())
    }
}
