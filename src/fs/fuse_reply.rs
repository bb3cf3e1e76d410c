//! Conversions and replies shared by the fuser adapter (`fuse_adapter.rs`):
//! attributes, errnos, and the open/create replies that choose the I/O mode
//! of a new handle (kernel passthrough or the page cache, `passthrough.rs`).

use std::cell::Cell;
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, ReplyCreate,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr, Request, TimeOrNow,
};

use super::FsError;
use super::backing::EntryKind;
use super::ops::{Ctx, Entry, NodeAttr, UnionFs};
use super::ops_attr::TimeSet;
use super::passthrough::{IoModes, Mode};

/// How long the kernel may cache entries and attributes. Long: lowers are
/// immutable and the upper changes only through this filesystem.
pub(super) const TTL: Duration = Duration::from_secs(24 * 3600);

/// Flags of every file open: writes reach the backing file before they are
/// acknowledged and `flush` has nothing to do, so the kernel need not send it.
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

/// The I/O modes of one mount, with fuser's backing ids.
pub(super) type Modes = IoModes<BackingId>;

thread_local! {
    /// Whether the operation running on this thread answered through
    /// [`fail`] (for the metrics of `FuseAdapter::run`).
    static FAILED: Cell<bool> = const { Cell::new(false) };
}

/// Starts an operation on this thread: [`failed`] is false until [`fail`].
pub(super) fn begin_op() {
    FAILED.set(false);
}

/// Whether the operation begun last on this thread answered an error.
pub(super) fn failed() -> bool {
    FAILED.get()
}

/// Reduces an error to its errno, logging the full error once, and marks
/// the operation running on this thread as failed.
pub(super) fn fail(op: &'static str, e: &FsError) -> Errno {
    FAILED.set(true);
    let errno = e.errno();
    if errno == Errno::EIO {
        tracing::warn!(op, error = %e, "union fs operation failed");
    } else {
        tracing::debug!(op, error = %e, "union fs operation failed");
    }
    errno
}

pub(super) fn file_type(k: EntryKind) -> FileType {
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

pub(super) fn file_attr(a: &NodeAttr) -> FileAttr {
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
pub(super) fn negative_attr() -> FileAttr {
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

pub(super) fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
    }
}

pub(super) fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(t),
    }
}

/// Replies with an entry or an errno.
pub(super) fn reply_entry(op: &'static str, r: Result<Entry, FsError>, reply: ReplyEntry) {
    match r {
        Ok(e) => reply.entry(&TTL, &file_attr(&e.attr), Generation(e.generation)),
        Err(e) => reply.error(fail(op, &e)),
    }
}

/// Replies ok or an errno.
pub(super) fn reply_empty(op: &'static str, r: Result<(), FsError>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fail(op, &e)),
    }
}

/// Replies with an xattr value (or its size when `size` is 0).
pub(super) fn reply_xattr(
    op: &'static str,
    r: Result<Vec<u8>, FsError>,
    size: u32,
    reply: ReplyXattr,
) {
    match r {
        Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(Errno::ERANGE),
        Err(e) => reply.error(fail(op, &e)),
    }
}

/// Chooses the I/O mode of the new handle `fh` (see `passthrough.rs`).
fn mode_of(
    fs: &UnionFs,
    modes: &Modes,
    fh: u64,
    register: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
) -> Mode<BackingId> {
    let src = fs.passthrough_source(fh);
    modes.open(src.node, fh, src.same_bytes, || src.file(), register)
}

/// Answers an `open` that returned handle `fh`.
pub(super) fn reply_opened(fs: &UnionFs, modes: &Modes, fh: u64, reply: ReplyOpen) {
    let mode = mode_of(fs, modes, fh, |f| reply.open_backing(f));
    let fh = FileHandle(fh);
    match mode {
        // Keep the page cache across opens: file data changes only through
        // the kernel (no writeback cache, lowers immutable), and passthrough
        // opens, which bypass it, drop it first.
        Mode::Cached => reply.opened(fh, OPEN_FLAGS | FopenFlags::FOPEN_KEEP_CACHE),
        Mode::Passthrough(b) => reply.opened_passthrough(fh, OPEN_FLAGS, &b),
        Mode::PassthroughDirect(b) => {
            reply.opened_passthrough(fh, OPEN_FLAGS | FopenFlags::FOPEN_DIRECT_IO, &b);
        }
    }
}

/// Answers a `create` that made `entry` and opened it as handle `fh`.
pub(super) fn reply_created(
    fs: &UnionFs,
    modes: &Modes,
    entry: &Entry,
    fh: u64,
    reply: ReplyCreate,
) {
    let mode = mode_of(fs, modes, fh, |f| reply.open_backing(f));
    let (attr, generation, fh) = (
        file_attr(&entry.attr),
        Generation(entry.generation),
        FileHandle(fh),
    );
    match mode {
        Mode::Cached => reply.created(
            &TTL,
            &attr,
            generation,
            fh,
            OPEN_FLAGS | FopenFlags::FOPEN_KEEP_CACHE,
        ),
        Mode::Passthrough(b) => {
            reply.created_passthrough(&TTL, &attr, generation, fh, OPEN_FLAGS, &b)
        }
        Mode::PassthroughDirect(b) => reply.created_passthrough(
            &TTL,
            &attr,
            generation,
            fh,
            OPEN_FLAGS | FopenFlags::FOPEN_DIRECT_IO,
            &b,
        ),
    }
}
