//! File and directory handles of [`UnionFs`]: open/create, read/write,
//! fsync, fallocate, lseek, and directory snapshots for readdir.
//!
//! The backing file is opened without `O_DIRECT` (the kernel hands us its
//! own, unaligned buffers; field case B15) and without `O_APPEND` (the
//! kernel already turns an append into a write at the end of the file, and
//! `pwrite` on an `O_APPEND` fd would ignore the offset). Reads and writes
//! use `pread`/`pwrite`, so a handle has no file position of its own.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::FsError;
use super::backing::EntryKind;
use super::inode::{ROOT, ino_of};
use super::lower::LowerFile;
use super::ops::{Ctx, DirHandle, DirSnapEnt, Entry, Handle, UnionFs, lock};
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

thread_local! {
    /// The read buffer of each blocking thread, grown to the largest read
    /// seen (at most the mount's max_read, 1 MiB) and reused.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What an open handle offers for passthrough ([`UnionFs::passthrough_source`]).
#[derive(Debug)]
pub(crate) struct PassSource {
    /// The handle's inode: (node id, generation).
    pub(crate) node: (u64, u64),
    /// Its bytes are immutable lower bytes, the same as any backing of its
    /// inode.
    pub(crate) same_bytes: bool,
    /// Its file, when it may pass through.
    file: Option<Arc<LowerFile>>,
}

impl PassSource {
    /// The plain file to pass through to: the handle's own local file (a
    /// duplicate descriptor), or a remote file's whole local file (which
    /// may assemble it, see `remote_local.rs`).
    pub(crate) fn file(&self) -> Option<File> {
        match self.file.as_deref()? {
            LowerFile::Local(f) => f.try_clone().ok(),
            LowerFile::Remote(r) => r.local_file(),
        }
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
    fn add_handle(
        &self,
        ino: u64,
        path: &Path,
        file: LowerFile,
        writable: bool,
        in_upper: bool,
    ) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(
            fh,
            Arc::new(Handle {
                ino,
                path: path.to_path_buf(),
                file: RwLock::new(Arc::new(file)),
                writable,
                in_upper: AtomicBool::new(in_upper),
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
                h.in_upper.store(true, Ordering::Relaxed);
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
        Ok(self.add_handle(ino, &loc.path, file, write, loc.top() == UPPER))
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
        let fh = self.add_handle(entry.attr.ino, &path, LowerFile::Local(file), true, true);
        Ok((entry, fh))
    }

    /// `read`: up to `size` bytes at `offset` (short only at end of file).
    ///
    /// # Errors
    /// [`FsError::BadHandle`], [`FsError::Io`].
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        self.read_with(fh, offset, size, |r| r.map(<[u8]>::to_vec))
    }

    /// `read` without a copy or an allocation of its own: `reply` gets the
    /// bytes (up to `size` at `offset`, short only at end of file) — a slice
    /// of a remote chunk when they lie in one, else a per-thread buffer
    /// reused across reads — or the error ([`FsError::BadHandle`],
    /// [`FsError::Io`]).
    pub fn read_with<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(Result<&[u8], FsError>) -> R,
    ) -> R {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply(Err(e)),
        };
        let file = h
            .file
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let size = size as usize;
        if let LowerFile::Remote(r) = &*file {
            match r.read_shared(offset, size) {
                Ok(Some(bytes)) => return reply(Ok(&bytes)),
                Ok(None) => {}
                Err(e) => return reply(Err(e)),
            }
        }
        READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < size {
                buf.resize(size, 0);
            }
            match file.read_at(&mut buf[..size], offset, &h.path) {
                Ok(done) => reply(Ok(&buf[..done])),
                Err(e) => reply(Err(e)),
            }
        })
    }

    /// What handle `fh` offers for kernel passthrough (see `passthrough.rs`).
    /// Upper files always offer themselves; lower files (a local lower's
    /// file, or a remote file's assembled whole file) only in a read-only
    /// union: in a writable one a descriptor opened before a copy-up must go
    /// on to read the upper copy (field case B08), which a passthrough open
    /// of the lower file cannot.
    pub(crate) fn passthrough_source(&self, fh: u64) -> PassSource {
        let Ok(h) = self.handle(fh) else {
            return PassSource {
                node: (0, 0),
                same_bytes: false,
                file: None,
            };
        };
        let generation = lock(&self.inodes).get(h.ino).map_or(0, |n| n.generation);
        let file = h
            .file
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let upper = h.in_upper.load(Ordering::Relaxed);
        let lower_ok = !upper && !self.writable();
        PassSource {
            node: (h.ino, generation),
            same_bytes: lower_ok,
            file: (upper || lower_ok).then_some(file),
        }
    }

    /// `write`: all of `data` at `offset`.
    ///
    /// # Errors
    /// [`FsError::BadHandle`], [`FsError::Io`] (ENOSPC, EFBIG …).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let h = self.handle(fh)?;
        let file = h
            .file
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        file.local(&h.path)?
            .write_all_at(data, offset)
            .map_err(|e| FsError::io("write", &h.path, e))?;
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

    /// `opendir`: checks that `ino` is a directory. Its merged listing
    /// (with `.` and `..`) is taken by the first readdir and kept, so that
    /// readdir offsets (index + 1) stay stable while the directory changes;
    /// the kernel serves later opens from its own cache of the listing, so
    /// an open that never reaches readdir costs no listing.
    ///
    /// # Errors
    /// [`FsError::NotDir`], [`FsError::StaleInode`].
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let is_dir = {
            let t = lock(&self.inodes);
            t.get(ino).ok_or(FsError::StaleInode { ino })?.is_dir
        };
        if !is_dir {
            return Err(self
                .dir_loc(ino)
                .err()
                .unwrap_or(FsError::StaleInode { ino }));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let dir = DirHandle {
            ino,
            snap: OnceLock::new(),
        };
        lock(&self.dirs).insert(fh, Arc::new(dir));
        Ok(fh)
    }

    /// The listing of directory `ino` with `.` and `..`.
    fn list_dir(&self, ino: u64) -> Result<Vec<DirSnapEnt>, FsError> {
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
        Ok(snap)
    }

    /// The listing of the directory opened as `fh`, taken on the first call.
    ///
    /// # Errors
    /// [`FsError::BadHandle`]; the first call: [`FsError::NotDir`],
    /// [`FsError::Io`].
    pub fn readdir(&self, fh: u64) -> Result<Arc<Vec<DirSnapEnt>>, FsError> {
        let dir = lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle { fh })?;
        if let Some(s) = dir.snap.get() {
            return Ok(s.clone());
        }
        let snap = Arc::new(self.list_dir(dir.ino)?);
        Ok(dir.snap.get_or_init(|| snap).clone())
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
