//! The fuser `Filesystem` impl: each callback decodes its arguments, hands
//! one [`UnionFs`] call to the tokio runtime's blocking pool (with the owned
//! reply), and turns the `Result` into a reply. No logic lives here; the
//! session threads never wait on I/O (lazy reads will wait on the network).
//!
//! Every operation handed to the pool is counted and timed (dispatch to
//! answer) in [`crate::metrics::fuse_op`], by `run`; it is an error when the
//! answer went through [`fail`].
//!
//! Locks: `getlk`/`setlk` and `flock` are not implemented, so the kernel
//! keeps POSIX and BSD locks locally on the FUSE inode, which is right for a
//! filesystem only one host serves (`flock` works inside containers).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents, PollFlags, PollNotifier,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use super::FsError;
use super::fuse_reply::{
    Modes, TTL, begin_op, ctx, fail, failed, file_attr, file_type, negative_attr, reply_created,
    reply_empty, reply_entry, reply_opened, reply_xattr, time_set,
};
use super::ops::UnionFs;
use super::ops_attr::SetAttr;
use super::passthrough::passthrough_wanted;

/// Largest read and write request (bytes): the kernel's default cap
/// (`fs.fuse.max_pages_limit` = 256 pages).
pub(super) const MAX_IO: u32 = 1 << 20;

/// The adapter between fuser and one [`UnionFs`].
#[derive(Debug)]
pub struct FuseAdapter {
    fs: Arc<UnionFs>,
    rt: tokio::runtime::Handle,
    /// The I/O mode of every open file (passthrough or cached).
    modes: Arc<Modes>,
}

impl FuseAdapter {
    /// Serves `fs`, running its calls on `rt`'s blocking pool; `modes`
    /// tracks its open files (shared with the mount handle for its stats).
    pub fn new(fs: Arc<UnionFs>, rt: tokio::runtime::Handle, modes: Arc<Modes>) -> Self {
        FuseAdapter { fs, rt, modes }
    }

    /// Runs `f` on the blocking pool; `f` answers the request. The answer
    /// is recorded as operation `op`, with the time since the dispatch and
    /// whether it went through [`fail`] (`metrics::fuse_op`).
    fn run<F: FnOnce(&UnionFs) + Send + 'static>(&self, op: &'static str, f: F) {
        let fs = Arc::clone(&self.fs);
        let start = Instant::now();
        drop(self.rt.spawn_blocking(move || {
            begin_op();
            f(&fs);
            crate::metrics::fuse_op(op, start.elapsed(), !failed());
        }));
    }

    /// Runs `f` right here, on the session's reader thread, for the
    /// operations that never wait on the network or copy data: lookups,
    /// attributes, listings, xattrs, links, statfs, access and release
    /// (they read the TOC index and the local upper only). Handing each of
    /// them to the blocking pool cost a thread wake-up and a switch per
    /// request, which a start that makes hundreds of them pays in full;
    /// the session has several reader threads, so one slow local call does
    /// not stop the others. Recorded as [`Self::run`] records.
    fn run_inline<F: FnOnce(&UnionFs)>(&self, op: &'static str, f: F) {
        let start = Instant::now();
        begin_op();
        f(&self.fs);
        crate::metrics::fuse_op(op, start.elapsed(), !failed());
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            let _ = config.add_capabilities(flag);
        }
        let _ = config.set_max_background(64);
        // Large requests: 1 MiB writes and reads (max_pages follows), and as
        // much readahead as the kernel offers here (mount.rs raises the
        // window afterwards through the bdi).
        let _ = config.set_max_write(MAX_IO);
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        // Passthrough (Linux ≥ 6.9): backing files on a plain filesystem
        // (stack depth 1, so this mount could itself be an overlay lower).
        let passthrough = passthrough_wanted()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.modes.set_enabled(passthrough);
        tracing::debug!(passthrough, "FUSE session initialized");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.run_inline("lookup", move |fs| match fs.lookup(parent.0, &name) {
            // A negative entry (node id 0) the kernel may cache: names appear
            // only through this filesystem, and the kernel drops the negative
            // dentry when it creates one.
            Err(FsError::NotFound { .. }) => reply.entry(&TTL, &negative_attr(), Generation(0)),
            r => reply_entry("lookup", r, reply),
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run_inline("getattr", move |fs| {
            match fs.getattr(ino.0, fh.map(|f| f.0)) {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => reply.error(fail("getattr", &e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            fh: fh.map(|f| f.0),
        };
        self.run("setattr", move |fs| match fs.setattr(ino.0, s) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(fail("setattr", &e)),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run_inline("readlink", move |fs| match fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(fail("readlink", &e)),
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (name, c) = (name.to_owned(), ctx(req));
        self.run("mknod", move |fs| {
            reply_entry(
                "mknod",
                fs.mknod(parent.0, &name, mode, rdev.into(), c),
                reply,
            );
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (name, c) = (name.to_owned(), ctx(req));
        self.run("mkdir", move |fs| {
            reply_entry("mkdir", fs.mkdir(parent.0, &name, mode, c), reply)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.run("unlink", move |fs| {
            reply_empty("unlink", fs.unlink(parent.0, &name), reply)
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.run("rmdir", move |fs| {
            reply_empty("rmdir", fs.rmdir(parent.0, &name), reply)
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target, c) = (link_name.to_owned(), target.to_owned(), ctx(req));
        self.run("symlink", move |fs| {
            reply_entry("symlink", fs.symlink(parent.0, &name, &target, c), reply)
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.run("rename", move |fs| {
            let r = fs.rename(parent.0, &name, newparent.0, &newname, flags.bits());
            reply_empty("rename", r, reply);
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = newname.to_owned();
        self.run("link", move |fs| {
            reply_entry("link", fs.link(ino.0, newparent.0, &newname), reply)
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let modes = Arc::clone(&self.modes);
        self.run("open", move |fs| match fs.open(ino.0, flags.0) {
            Ok(fh) => reply_opened(fs, &modes, fh, reply),
            Err(e) => reply.error(fail("open", &e)),
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run("read", move |fs| {
            fs.read_with(fh.0, offset, size, |r| match r {
                Ok(d) => reply.data(d),
                Err(e) => reply.error(fail("read", &e)),
            });
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.run("write", move |fs| match fs.write(fh.0, offset, &data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail("write", &e)),
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes reach the backing file synchronously: nothing to flush.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let modes = Arc::clone(&self.modes);
        self.run_inline("release", move |fs| {
            fs.release(fh.0);
            modes.release(fh.0);
            reply.ok();
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run("fsync", move |fs| {
            reply_empty("fsync", fs.fsync(fh.0, datasync), reply)
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.run_inline("opendir", move |fs| match fs.opendir(ino.0) {
            // The kernel may keep listings across opens (FOPEN_CACHE_DIR):
            // directories change only through this filesystem, and each
            // change through it resets the cache of that directory.
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(fail("opendir", &e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.run_inline("readdir", move |fs| match fs.readdir(fh.0) {
            Ok(snap) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, e) in snap.iter().enumerate().skip(start) {
                    if reply.add(INodeNo(e.ino), i as u64 + 1, file_type(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(fail("readdir", &e)),
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.run_inline("readdirplus", move |fs| {
            let snap = match fs.readdir(fh.0) {
                Ok(s) => s,
                Err(e) => return reply.error(fail("readdirplus", &e)),
            };
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            // `.` and `..` come first; the kernel does not link them (no
            // lookup count).
            let dots = snap.iter().take_while(|e| e.name == "." || e.name == "..");
            let n_dots = dots.clone().count();
            for (i, e) in dots.enumerate().skip(start) {
                let Ok(mut a) = fs.getattr(ino.0, None) else {
                    continue;
                };
                a.ino = e.ino;
                let attr = file_attr(&a);
                if reply.add(
                    INodeNo(e.ino),
                    i as u64 + 1,
                    &e.name,
                    &TTL,
                    &attr,
                    Generation(0),
                ) {
                    return reply.ok();
                }
            }
            let first = start.max(n_dots);
            let mut off = first as u64;
            let names = snap.iter().skip(first).map(|e| e.name.as_os_str());
            let listed = fs.lookup_many(ino.0, names, |name, r| {
                off += 1;
                let Ok(ent) = r else {
                    return true; // gone since the listing
                };
                let (node, attr) = (INodeNo(ent.attr.ino), file_attr(&ent.attr));
                if reply.add(node, off, name, &TTL, &attr, Generation(ent.generation)) {
                    fs.forget(ent.attr.ino, 1); // not sent: not counted
                    return false;
                }
                true
            });
            match listed {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fail("readdirplus", &e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run("fsyncdir", move |fs| {
            reply_empty("fsyncdir", fs.fsyncdir(ino.0), reply)
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run_inline("statfs", move |fs| match fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(fail("statfs", &e)),
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.run("setxattr", move |fs| {
            reply_empty("setxattr", fs.setxattr(ino.0, &name, &value, flags), reply)
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.to_owned();
        self.run_inline("getxattr", move |fs| {
            reply_xattr("getxattr", fs.getxattr(ino.0, &name), size, reply)
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.run_inline("listxattr", move |fs| {
            reply_xattr("listxattr", fs.listxattr(ino.0), size, reply)
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.run("removexattr", move |fs| {
            reply_empty("removexattr", fs.removexattr(ino.0, &name), reply)
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.run_inline("access", move |fs| {
            reply_empty("access", fs.access(ino.0, mask.bits()), reply)
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (name, c) = (name.to_owned(), ctx(req));
        let modes = Arc::clone(&self.modes);
        self.run("create", move |fs| {
            match fs.create(parent.0, &name, mode, flags, c) {
                Ok((e, fh)) => reply_created(fs, &modes, &e, fh, reply),
                Err(e) => reply.error(fail("create", &e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.run("fallocate", move |fs| {
            reply_empty("fallocate", fs.fallocate(fh.0, offset, length, mode), reply)
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.run_inline("lseek", move |fs| match fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(fail("lseek", &e)),
        });
    }

    /// No ioctls are defined on regular files of a union: ENOTTY, as ext4
    /// answers unknown ones (shells probe terminals with TCGETS).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    /// ENOSYS tells the kernel to treat files as always ready (regular-file
    /// semantics) and stop asking.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }
}
