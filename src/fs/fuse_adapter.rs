//! The fuser `Filesystem` impl: each callback decodes its arguments, hands
//! one [`UnionFs`] call to the tokio runtime's blocking pool (with the owned
//! reply), and turns the `Result` into a reply. No logic lives here; the
//! session threads never wait on I/O (lazy reads will wait on the network).
//!
//! Locks: `getlk`/`setlk` and `flock` are not implemented, so the kernel
//! keeps POSIX and BSD locks locally on the FUSE inode, which is right for a
//! filesystem only one host serves (`flock` works inside containers).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents, PollFlags,
    PollNotifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyPoll,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::FsError;
use super::backing::EntryKind;
use super::ops::{Ctx, NodeAttr, UnionFs};
use super::ops_attr::{SetAttr, TimeSet};

/// How long the kernel may cache entries and attributes. Long: lowers are
/// immutable and the upper changes only through this filesystem.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// The adapter between fuser and one [`UnionFs`].
#[derive(Debug)]
pub struct FuseAdapter {
    fs: Arc<UnionFs>,
    rt: tokio::runtime::Handle,
}

impl FuseAdapter {
    /// Serves `fs`, running its calls on `rt`'s blocking pool.
    pub fn new(fs: Arc<UnionFs>, rt: tokio::runtime::Handle) -> Self {
        FuseAdapter { fs, rt }
    }

    fn run<F: FnOnce(&UnionFs) + Send + 'static>(&self, f: F) {
        let fs = Arc::clone(&self.fs);
        drop(self.rt.spawn_blocking(move || f(&fs)));
    }
}

/// Reduces an error to its errno, logging the full error once.
fn fail(op: &'static str, e: &FsError) -> Errno {
    let errno = e.errno();
    if errno == Errno::EIO {
        tracing::warn!(op, error = %e, "union fs operation failed");
    } else {
        tracing::debug!(op, error = %e, "union fs operation failed");
    }
    errno
}

fn file_type(k: EntryKind) -> FileType {
    match k {
        EntryKind::Dir => FileType::Directory,
        EntryKind::File => FileType::RegularFile,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::Socket => FileType::Socket,
        EntryKind::CharDev | EntryKind::Whiteout => FileType::CharDevice,
        EntryKind::BlockDev => FileType::BlockDevice,
    }
}

fn file_attr(a: &NodeAttr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.attr.size,
        blocks: a.attr.blocks,
        atime: a.attr.atime,
        mtime: a.attr.mtime,
        ctime: a.attr.ctime,
        crtime: a.attr.ctime,
        kind: file_type(a.attr.kind),
        perm: u16::try_from(a.attr.perm & 0o7777).unwrap_or(0),
        nlink: a.nlink,
        uid: a.attr.uid,
        gid: a.attr.gid,
        rdev: u32::try_from(a.attr.rdev).unwrap_or(0),
        blksize: a.attr.blksize,
        flags: 0,
    }
}

/// The attributes of a negative entry (fuser takes the node id from `ino`).
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(t),
    }
}

fn reply_entry(op: &'static str, r: Result<super::ops::Entry, FsError>, reply: ReplyEntry) {
    match r {
        Ok(e) => reply.entry(&TTL, &file_attr(&e.attr), Generation(e.generation)),
        Err(e) => reply.error(fail(op, &e)),
    }
}

fn reply_empty(op: &'static str, r: Result<(), FsError>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fail(op, &e)),
    }
}

fn reply_xattr(op: &'static str, r: Result<Vec<u8>, FsError>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(Errno::ERANGE),
        Err(e) => reply.error(fail(op, &e)),
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
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.run(move |fs| match fs.lookup(parent.0, &name) {
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
        self.run(move |fs| match fs.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(fail("getattr", &e)),
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
        self.run(move |fs| match fs.setattr(ino.0, s) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(fail("setattr", &e)),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(move |fs| match fs.readlink(ino.0) {
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
        self.run(move |fs| {
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
        self.run(move |fs| reply_entry("mkdir", fs.mkdir(parent.0, &name, mode, c), reply));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.run(move |fs| reply_empty("unlink", fs.unlink(parent.0, &name), reply));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.run(move |fs| reply_empty("rmdir", fs.rmdir(parent.0, &name), reply));
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
        self.run(move |fs| reply_entry("symlink", fs.symlink(parent.0, &name, &target, c), reply));
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
        self.run(move |fs| {
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
        self.run(move |fs| reply_entry("link", fs.link(ino.0, newparent.0, &newname), reply));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.run(move |fs| match fs.open(ino.0, flags.0) {
            // Keep the page cache across opens: file data changes only
            // through the kernel (no writeback cache, lowers immutable).
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
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
        self.run(move |fs| match fs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(fail("read", &e)),
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
        self.run(move |fs| match fs.write(fh.0, offset, &data) {
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
        self.run(move |fs| {
            fs.release(fh.0);
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
        self.run(move |fs| reply_empty("fsync", fs.fsync(fh.0, datasync), reply));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.run(move |fs| match fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
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
        self.run(move |fs| match fs.readdir(fh.0) {
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
        self.run(move |fs| {
            let snap = match fs.readdir(fh.0) {
                Ok(s) => s,
                Err(e) => return reply.error(fail("readdirplus", &e)),
            };
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            for (i, e) in snap.iter().enumerate().skip(start) {
                let off = i as u64 + 1;
                if e.name == "." || e.name == ".." {
                    // The kernel does not link dot entries (no lookup count).
                    let Ok(mut a) = fs.getattr(ino.0, None) else {
                        continue;
                    };
                    a.ino = e.ino;
                    if reply.add(
                        INodeNo(e.ino),
                        off,
                        &e.name,
                        &TTL,
                        &file_attr(&a),
                        Generation(0),
                    ) {
                        break;
                    }
                    continue;
                }
                let Ok(ent) = fs.lookup(ino.0, &e.name) else {
                    continue; // gone since opendir
                };
                let full = reply.add(
                    INodeNo(ent.attr.ino),
                    off,
                    &e.name,
                    &TTL,
                    &file_attr(&ent.attr),
                    Generation(ent.generation),
                );
                if full {
                    fs.forget(ent.attr.ino, 1); // not sent: not counted
                    break;
                }
            }
            reply.ok();
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
        self.run(move |fs| reply_empty("fsyncdir", fs.fsyncdir(ino.0), reply));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(move |fs| match fs.statfs() {
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
        self.run(move |fs| {
            reply_empty("setxattr", fs.setxattr(ino.0, &name, &value, flags), reply)
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.to_owned();
        self.run(move |fs| reply_xattr("getxattr", fs.getxattr(ino.0, &name), size, reply));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.run(move |fs| reply_xattr("listxattr", fs.listxattr(ino.0), size, reply));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.run(move |fs| reply_empty("removexattr", fs.removexattr(ino.0, &name), reply));
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.run(move |fs| reply_empty("access", fs.access(ino.0, mask.bits()), reply));
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
        self.run(move |fs| match fs.create(parent.0, &name, mode, flags, c) {
            Ok((e, fh)) => reply.created(
                &TTL,
                &file_attr(&e.attr),
                Generation(e.generation),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(fail("create", &e)),
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
        self.run(move |fs| {
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
        self.run(move |fs| match fs.lseek(fh.0, offset, whence) {
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
