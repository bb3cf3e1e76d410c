//! System calls on a local directory in overlayfs format, shared by the
//! local-dir lower and the upper: `lstat` into an [`EntryAttr`], directory
//! listings with whiteout detection, the opaque marker and xattrs.
//!
//! Overlayfs format: a whiteout is a character device 0/0 named like the
//! entry it deletes; an opaque directory carries `trusted.overlay.opaque=y`.
//! Nothing under `trusted.overlay.` is ever shown in the merged view.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::FsError;

/// The xattr marking an opaque directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The prefix of overlayfs' private xattrs, hidden in the merged view.
pub const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";

/// Absolute paths at least this long are reached through a directory fd.
const LONG_PATH: usize = 3800;
/// The most bytes of relative path one `openat` step (or the rest) takes.
const STEP: usize = 3000;

/// The backing path of a merged-view path in one layer dir, usable in path
/// system calls even when `layer dir + path` exceeds `PATH_MAX` (a union
/// path close to `PATH_MAX` plus the layer's own prefix): then it names
/// `/proc/self/fd/<fd>/<rest>`, with `fd` an `O_PATH` descriptor of an
/// ancestor directory held by this value, and `<rest>` at least the last
/// component (so `l*` calls still act on the entry itself).
#[derive(Debug)]
pub struct BPath {
    path: PathBuf,
    _dir: Option<OwnedFd>,
}

impl BPath {
    /// `root/rel`.
    pub fn new(root: &Path, rel: &Path) -> BPath {
        let full = root.join(rel);
        if full.as_os_str().len() < LONG_PATH {
            return BPath {
                path: full,
                _dir: None,
            };
        }
        Self::long(root, rel).unwrap_or(BPath {
            path: full,
            _dir: None,
        })
    }

    fn long(root: &Path, rel: &Path) -> Option<BPath> {
        use nix::fcntl::{OFlag, open, openat};
        use nix::sys::stat::Mode;
        let comps: Vec<&OsStr> = rel.components().map(|c| c.as_os_str()).collect();
        let mut split = comps.len();
        let mut rest_len = 0;
        while split > 0 {
            let l = comps[split - 1].len() + 1;
            if rest_len + l > STEP && split < comps.len() {
                break;
            }
            rest_len += l;
            split -= 1;
        }
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        // SAFETY: `open` returned a fresh descriptor that nothing else owns.
        let mut fd = unsafe { OwnedFd::from_raw_fd(open(root, flags, Mode::empty()).ok()?) };
        let mut chunk = PathBuf::new();
        for c in &comps[..split] {
            if !chunk.as_os_str().is_empty() && chunk.as_os_str().len() + c.len() + 1 > STEP {
                let next = openat(Some(fd.as_raw_fd()), &chunk, flags, Mode::empty()).ok()?;
                // SAFETY: as above.
                fd = unsafe { OwnedFd::from_raw_fd(next) };
                chunk = PathBuf::new();
            }
            chunk.push(c);
        }
        if !chunk.as_os_str().is_empty() {
            let next = openat(Some(fd.as_raw_fd()), &chunk, flags, Mode::empty()).ok()?;
            // SAFETY: as above.
            fd = unsafe { OwnedFd::from_raw_fd(next) };
        }
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        path.extend(&comps[split..]);
        Some(BPath {
            path,
            _dir: Some(fd),
        })
    }
}

impl Deref for BPath {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for BPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// What kind of entry a layer holds at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
    /// A character device other than 0/0.
    CharDev,
    /// A block device.
    BlockDev,
    /// A whiteout (character device 0/0): the name is deleted from the layers below.
    Whiteout,
}

impl EntryKind {
    /// The `S_IFMT` bits of this kind (a whiteout is a character device).
    pub fn mode_bits(self) -> u32 {
        match self {
            EntryKind::Dir => libc::S_IFDIR,
            EntryKind::File => libc::S_IFREG,
            EntryKind::Symlink => libc::S_IFLNK,
            EntryKind::Fifo => libc::S_IFIFO,
            EntryKind::Socket => libc::S_IFSOCK,
            EntryKind::CharDev | EntryKind::Whiteout => libc::S_IFCHR,
            EntryKind::BlockDev => libc::S_IFBLK,
        }
    }
}

/// The attributes of one entry in one layer, independent of how the layer
/// stores them (a local dir now, a TOC later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryAttr {
    /// The kind.
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`& 0o7777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count in the layer.
    pub nlink: u64,
    /// Size in bytes (a symlink's target length).
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    /// Access time.
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Status change time.
    pub ctime: SystemTime,
    /// Device number of a device node.
    pub rdev: u64,
    /// The inode number in the layer (identity of hardlinks within it).
    pub ino: u64,
    /// Preferred I/O size.
    pub blksize: u32,
}

/// The kind of a file type, or `None` for a character device (a whiteout
/// when its rdev is 0/0, which the file type alone does not tell).
fn kind_of(ft: fs::FileType) -> Option<EntryKind> {
    Some(if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_socket() {
        EntryKind::Socket
    } else if ft.is_char_device() {
        return None;
    } else {
        EntryKind::BlockDev
    })
}

impl EntryAttr {
    /// Converts `lstat` metadata.
    pub fn from_metadata(md: &fs::Metadata) -> Self {
        let kind = match kind_of(md.file_type()) {
            Some(k) => k,
            None if md.rdev() == 0 => EntryKind::Whiteout,
            None => EntryKind::CharDev,
        };
        EntryAttr {
            kind,
            perm: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            nlink: md.nlink(),
            size: md.size(),
            blocks: md.blocks(),
            atime: to_time(md.atime(), md.atime_nsec()),
            mtime: to_time(md.mtime(), md.mtime_nsec()),
            ctime: to_time(md.ctime(), md.ctime_nsec()),
            rdev: md.rdev(),
            ino: md.ino(),
            blksize: u32::try_from(md.blksize()).unwrap_or(4096),
        }
    }
}

pub(crate) fn to_time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = u32::try_from(nsecs).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs.into())
    }
}

/// One name in one layer's directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDirEnt {
    /// The name.
    pub name: OsString,
    /// The kind (whiteouts detected).
    pub kind: EntryKind,
    /// The inode number in the layer.
    pub ino: u64,
}

/// `lstat` of `path`; `None` when it does not exist (or a parent is not a dir).
///
/// # Errors
/// [`FsError::Io`] for any other failure.
pub fn lstat(path: &Path) -> Result<Option<EntryAttr>, FsError> {
    match fs::symlink_metadata(path) {
        Ok(md) => Ok(Some(EntryAttr::from_metadata(&md))),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(FsError::io("lstat", path, e)),
    }
}

/// Whether an error means "no such entry" (including a non-dir parent).
pub fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

/// Lists `dir` (without `.` and `..`), detecting whiteouts.
///
/// # Errors
/// [`FsError::Io`] when the directory cannot be read.
pub fn read_dir(dir: &Path) -> Result<Vec<RawDirEnt>, FsError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if is_missing(&e) => return Ok(out),
        Err(e) => return Err(FsError::io("readdir", dir, e)),
    };
    for ent in rd {
        let ent = ent.map_err(FsError::io_at("readdir", dir))?;
        let ft = ent.file_type().map_err(FsError::io_at("readdir", dir))?;
        let kind = match kind_of(ft) {
            Some(k) => k,
            // Only a char device can be a whiteout; look at its rdev.
            None => match lstat(&ent.path())? {
                Some(a) => a.kind,
                None => continue,
            },
        };
        out.push(RawDirEnt {
            name: ent.file_name(),
            kind,
            ino: ent.ino(),
        });
    }
    Ok(out)
}

fn cpath(path: &Path) -> Result<CString, FsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| FsError::Invalid {
        path: path.to_path_buf(),
        what: "path with NUL",
    })
}

fn cname(path: &Path, name: &OsStr) -> Result<CString, FsError> {
    CString::new(name.as_bytes()).map_err(|_| FsError::Invalid {
        path: path.to_path_buf(),
        what: "xattr name with NUL",
    })
}

/// Whether an xattr name is private to the layer format: overlayfs' own
/// (`trusted.overlay.*`) or lazysnap's (`trusted.lazysnap.*`, e.g. the
/// implicit-parent marker of its unpack). Never shown in the merged view.
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(OVERLAY_XATTR_PREFIX) || name.starts_with(b"trusted.lazysnap.")
}

/// `lgetxattr`: the value, or `None` when the attribute is absent.
///
/// # Errors
/// [`FsError::Io`] for failures other than ENODATA.
pub fn get_xattr(path: &Path, name: &OsStr) -> Result<Option<Vec<u8>>, FsError> {
    let p = cpath(path)?;
    let n = cname(path, name)?;
    loop {
        // SAFETY: p and n are valid NUL-terminated strings; a null buffer of
        // size 0 asks for the value's size.
        let size = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA) => Ok(None),
                Some(libc::ENOTSUP) if !path.exists() => Ok(None),
                _ => Err(FsError::io("getxattr", path, e)),
            };
        }
        let mut buf = vec![0u8; size.unsigned_abs()];
        // SAFETY: buf is writable for buf.len() bytes.
        let got =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => continue, // grew in between
                Some(libc::ENODATA) => return Ok(None),
                _ => return Err(FsError::io("getxattr", path, e)),
            }
        }
        buf.truncate(got.unsigned_abs());
        return Ok(Some(buf));
    }
}

/// `llistxattr`: all attribute names, including private ones.
///
/// # Errors
/// [`FsError::Io`] when listing fails.
pub fn list_xattrs(path: &Path) -> Result<Vec<OsString>, FsError> {
    let p = cpath(path)?;
    loop {
        // SAFETY: p is a valid C string; a null buffer of size 0 asks for the size.
        let size = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                return Ok(Vec::new());
            }
            return Err(FsError::io("listxattr", path, e));
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size.unsigned_abs()];
        // SAFETY: buf is writable for buf.len() bytes.
        let got = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(FsError::io("listxattr", path, e));
        }
        buf.truncate(got.unsigned_abs());
        return Ok(buf
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| OsString::from_vec(n.to_vec()))
            .collect());
    }
}

/// `lsetxattr` with `flags` (`XATTR_CREATE` / `XATTR_REPLACE`).
///
/// # Errors
/// [`FsError::Io`] when the kernel refuses.
pub fn set_xattr(path: &Path, name: &OsStr, value: &[u8], flags: i32) -> Result<(), FsError> {
    let p = cpath(path)?;
    let n = cname(path, name)?;
    // SAFETY: p and n are valid C strings; value is readable for its length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r < 0 {
        return Err(FsError::io("setxattr", path, io::Error::last_os_error()));
    }
    Ok(())
}

/// `lremovexattr`.
///
/// # Errors
/// [`FsError::Io`] (ENODATA when absent).
pub fn remove_xattr(path: &Path, name: &OsStr) -> Result<(), FsError> {
    let p = cpath(path)?;
    let n = cname(path, name)?;
    // SAFETY: p and n are valid C strings.
    let r = unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
    if r < 0 {
        return Err(FsError::io("removexattr", path, io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether the directory at `path` is opaque (`trusted.overlay.opaque=y`).
///
/// # Errors
/// [`FsError::Io`] when the xattr cannot be read.
pub fn is_opaque(path: &Path) -> Result<bool, FsError> {
    Ok(get_xattr(path, OsStr::new(OPAQUE_XATTR))?.is_some_and(|v| v == b"y"))
}

/// Marks the directory at `path` opaque.
///
/// # Errors
/// [`FsError::Io`] when the xattr cannot be set (e.g. no `trusted.*` support).
pub fn set_opaque(path: &Path) -> Result<(), FsError> {
    set_xattr(path, OsStr::new(OPAQUE_XATTR), b"y", 0)
}

/// Creates a whiteout (character device 0/0, mode 0) at `path`.
///
/// # Errors
/// [`FsError::Io`] when `mknod` fails.
pub fn make_whiteout(path: &Path) -> Result<(), FsError> {
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .map_err(FsError::nix_at("mknod whiteout", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_and_opaque_dirs_are_detected() {
        let t = tempfile::tempdir().unwrap();
        make_whiteout(&t.path().join("gone")).unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        set_opaque(&t.path().join("d")).unwrap();
        fs::write(t.path().join("f"), b"x").unwrap();
        let mut ents = read_dir(t.path()).unwrap();
        ents.sort_by(|a, b| a.name.cmp(&b.name));
        let kinds: Vec<_> = ents.iter().map(|e| (e.name.clone(), e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("d".into(), EntryKind::Dir),
                ("f".into(), EntryKind::File),
                ("gone".into(), EntryKind::Whiteout),
            ]
        );
        assert!(is_opaque(&t.path().join("d")).unwrap());
        assert!(!is_opaque(t.path()).unwrap());
        assert_eq!(lstat(&t.path().join("f/x")).unwrap(), None);
        assert_eq!(lstat(&t.path().join("f")).unwrap().unwrap().size, 1);
    }

    #[test]
    fn long_backing_paths_go_through_a_dir_fd() {
        let t = tempfile::tempdir().unwrap();
        let mut rel = PathBuf::new();
        for i in 0..40 {
            rel.push(format!("{i:02}{}", "d".repeat(200)));
        }
        let mut dir = t.path().to_path_buf();
        for c in rel.components() {
            dir.push(c);
            // Build it step by step through BPath (the full path is too long).
            let rel_now = dir.strip_prefix(t.path()).unwrap();
            fs::create_dir(&*BPath::new(t.path(), rel_now)).unwrap();
        }
        let f = rel.join("leaf");
        let b = BPath::new(t.path(), &f);
        assert!(b.as_os_str().len() < 4096);
        fs::write(&*b, b"deep").unwrap();
        set_xattr(&b, OsStr::new("user.x"), b"1", 0).unwrap();
        assert_eq!(lstat(&b).unwrap().unwrap().size, 4);
        assert_eq!(
            get_xattr(&b, OsStr::new("user.x")).unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(read_dir(&BPath::new(t.path(), &rel)).unwrap().len(), 1);
    }
}
