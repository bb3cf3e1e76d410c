//! Writing the upper dir in overlayfs format: copying one lower entry into
//! `work` with its data (holes kept) and metadata, ready to be renamed into
//! the upper, and the small helpers around that.
//!
//! Copy-up runs with the daemon's credentials (root), so it works on a
//! mode-0444 file owned by another uid (field case B09); modes are fixed
//! after the data is in, in the order chown → chmod (setuid/setgid survive,
//! since chown clears them) → xattrs (a chown drops `security.capability`)
//! → times. Everything is built in `work` and renamed into place, so a full
//! disk fails the copy-up with ENOSPC and leaves the lower intact.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, Whence};

use super::FsError;
use super::backing::{self, EntryAttr, EntryKind};
use super::lower::{Lower, LowerFile};

/// A fresh temp path in `work` for a copy-up or a new entry.
pub fn temp_path(work: &Path, counter: &AtomicU64) -> PathBuf {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    work.join(format!("lazysnap-tmp-{}-{n}", std::process::id()))
}

/// A `SystemTime` as a `TimeSpec` for `utimensat`.
pub fn timespec(t: SystemTime) -> TimeSpec {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => TimeSpec::from_duration(d),
        Err(e) => {
            let d = e.duration();
            let mut secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let mut nsecs = i64::from(d.subsec_nanos());
            if nsecs > 0 {
                secs -= 1;
                nsecs = 1_000_000_000 - nsecs;
            }
            TimeSpec::new(secs, nsecs)
        }
    }
}

/// Sets atime/mtime of `path` without following a symlink; `None` leaves one as is.
///
/// # Errors
/// [`FsError::Io`] when `utimensat` fails.
pub fn set_times(
    path: &Path,
    atime: Option<TimeSpec>,
    mtime: Option<TimeSpec>,
) -> Result<(), FsError> {
    utimensat(
        None,
        path,
        &atime.unwrap_or(TimeSpec::UTIME_OMIT),
        &mtime.unwrap_or(TimeSpec::UTIME_OMIT),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(FsError::nix_at("utimensat", path))
}

/// `lchown` of `path`.
///
/// # Errors
/// [`FsError::Io`] when it fails.
pub fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), FsError> {
    nix::unistd::fchownat(
        None,
        path,
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(FsError::nix_at("chown", path))
}

/// `chmod` of a non-symlink `path` to `perm` (`& 0o7777`).
///
/// # Errors
/// [`FsError::Io`] when it fails.
pub fn chmod(path: &Path, perm: u32) -> Result<(), FsError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm & 0o7777))
        .map_err(FsError::io_at("chmod", path))
}

/// The xattrs of a lower entry worth copying (all but `trusted.overlay.*`).
///
/// # Errors
/// [`FsError::Io`] when they cannot be read.
pub fn copyable_xattrs(lower: &Lower, rel: &Path) -> Result<Vec<(OsString, Vec<u8>)>, FsError> {
    let mut out = Vec::new();
    for name in lower.list_xattrs(rel)? {
        if backing::is_overlay_xattr(std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str())) {
            continue;
        }
        if let Some(v) = lower.get_xattr(rel, &name)? {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// Applies owner, mode, xattrs and times of `attr` to `dst`, in that order.
///
/// # Errors
/// [`FsError::Io`] when a step fails (xattrs the upper fs does not support are skipped).
pub fn apply_meta(
    dst: &Path,
    attr: &EntryAttr,
    xattrs: &[(OsString, Vec<u8>)],
) -> Result<(), FsError> {
    chown(dst, Some(attr.uid), Some(attr.gid))?;
    if attr.kind != EntryKind::Symlink {
        chmod(dst, attr.perm)?;
    }
    for (name, value) in xattrs {
        match backing::set_xattr(dst, name, value, 0) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => return Err(e),
        }
    }
    set_times(dst, Some(timespec(attr.atime)), Some(timespec(attr.mtime)))
}

/// Copies `size` bytes of `src` into `dst`, keeping holes (SEEK_DATA/SEEK_HOLE).
///
/// # Errors
/// [`FsError::Io`] on a read or write failure (ENOSPC included).
pub fn copy_data(src: &File, dst: &File, size: u64, dst_path: &Path) -> Result<(), FsError> {
    let fd = src.as_raw_fd();
    let mut pos: i64 = 0;
    let end = i64::try_from(size).unwrap_or(i64::MAX);
    while pos < end {
        let data = match nix::unistd::lseek(fd, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(nix::errno::Errno::EINVAL) => pos, // no hole support: copy all
            Err(e) => return Err(FsError::io("seek data", dst_path, e.into())),
        };
        let hole = match nix::unistd::lseek(fd, data, Whence::SeekHole) {
            Ok(h) => h.min(end),
            Err(_) => end,
        };
        copy_range(src, dst, data, hole, dst_path)?;
        pos = hole;
    }
    dst.set_len(size)
        .map_err(FsError::io_at("copy-up", dst_path))
}

fn copy_range(src: &File, dst: &File, from: i64, to: i64, dst_path: &Path) -> Result<(), FsError> {
    let mut off_in = from;
    let mut off_out = from;
    while off_in < to {
        let len = usize::try_from(to - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        // SAFETY: both descriptors are open for the duration of the call and
        // the offsets point at live i64s.
        let r = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                len,
                0,
            )
        };
        let r = if r < 0 {
            Err(nix::errno::Errno::last())
        } else {
            Ok(r)
        };
        match r {
            Ok(0) => break,
            Ok(_) => {}
            Err(
                nix::errno::Errno::EXDEV
                | nix::errno::Errno::EINVAL
                | nix::errno::Errno::ENOSYS
                | nix::errno::Errno::EOPNOTSUPP,
            ) => return copy_range_rw(src, dst, off_in, to, dst_path),
            Err(e) => return Err(FsError::io("copy-up", dst_path, e.into())),
        }
    }
    Ok(())
}

fn copy_range_rw(
    src: &File,
    dst: &File,
    from: i64,
    to: i64,
    dst_path: &Path,
) -> Result<(), FsError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = u64::try_from(from).unwrap_or(0);
    let to = u64::try_from(to).unwrap_or(0);
    while off < to {
        let want = usize::try_from(to - off)
            .unwrap_or(buf.len())
            .min(buf.len());
        let n = src
            .read_at(&mut buf[..want], off)
            .map_err(FsError::io_at("copy-up read", dst_path))?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], off)
            .map_err(FsError::io_at("copy-up", dst_path))?;
        off += n as u64;
    }
    Ok(())
}

/// Creates at `tmp` a copy of the lower entry `rel` (attributes `attr`):
/// a directory (empty), a file (with its data unless `with_data` is false),
/// a symlink or a special file, with all metadata.
///
/// # Errors
/// [`FsError::Io`] when reading the lower or writing `work` fails; the
/// partial copy is removed.
pub fn copy_entry(
    lower: &Lower,
    rel: &Path,
    attr: &EntryAttr,
    tmp: &Path,
    with_data: bool,
) -> Result<(), FsError> {
    let res = copy_entry_inner(lower, rel, attr, tmp, with_data);
    if res.is_err() {
        let _ = if attr.kind == EntryKind::Dir {
            std::fs::remove_dir(tmp)
        } else {
            std::fs::remove_file(tmp)
        };
    }
    res
}

fn copy_entry_inner(
    lower: &Lower,
    rel: &Path,
    attr: &EntryAttr,
    tmp: &Path,
    with_data: bool,
) -> Result<(), FsError> {
    let xattrs = copyable_xattrs(lower, rel)?;
    match attr.kind {
        EntryKind::Dir => {
            std::fs::create_dir(tmp).map_err(FsError::io_at("copy-up mkdir", tmp))?;
        }
        EntryKind::File => {
            let dst = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(tmp)
                .map_err(FsError::io_at("copy-up create", tmp))?;
            if with_data && attr.size > 0 {
                match lower.open(rel)? {
                    LowerFile::Local(src) => copy_data(&src, &dst, attr.size, tmp)?,
                    LowerFile::Remote(src) => src.copy_to(&dst, tmp)?,
                }
            }
        }
        EntryKind::Symlink => {
            let target = lower.read_link(rel)?;
            std::os::unix::fs::symlink(&target, tmp)
                .map_err(FsError::io_at("copy-up symlink", tmp))?;
        }
        EntryKind::Fifo | EntryKind::Socket | EntryKind::CharDev | EntryKind::BlockDev => {
            let kind = SFlag::from_bits_truncate(attr.kind.mode_bits());
            nix::sys::stat::mknod(tmp, kind, Mode::from_bits_truncate(0o600), attr.rdev)
                .map_err(FsError::nix_at("copy-up mknod", tmp))?;
        }
        EntryKind::Whiteout => {
            return Err(FsError::Invalid {
                path: rel.to_path_buf(),
                what: "copy-up of a whiteout",
            });
        }
    }
    apply_meta(tmp, attr, &xattrs)
}

/// Removes every whiteout directly inside the upper dir `dir`.
///
/// # Errors
/// [`FsError::Io`] when listing or unlinking fails.
pub fn remove_whiteouts(dir: &Path) -> Result<(), FsError> {
    for e in backing::read_dir(dir)? {
        if e.kind == EntryKind::Whiteout {
            let p = dir.join(&e.name);
            std::fs::remove_file(&p).map_err(FsError::io_at("unlink whiteout", &p))?;
        }
    }
    Ok(())
}

/// Removes an upper directory that holds nothing but whiteouts and such
/// directories (what is left of a directory empty in the merged view).
///
/// # Errors
/// [`FsError::Io`] when a removal fails.
pub fn remove_upper_dir(dir: &Path) -> Result<(), FsError> {
    for e in backing::read_dir(dir)? {
        let p = dir.join(&e.name);
        if e.kind == EntryKind::Dir {
            remove_upper_dir(&p)?;
        } else {
            std::fs::remove_file(&p).map_err(FsError::io_at("unlink", &p))?;
        }
    }
    std::fs::remove_dir(dir).map_err(FsError::io_at("rmdir", dir))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn copy_entry_keeps_holes_modes_owner_xattrs_times() {
        let t = tempfile::tempdir().unwrap();
        let l = t.path().join("l");
        std::fs::create_dir(&l).unwrap();
        let f = File::create(l.join("sparse")).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", 64 << 20).unwrap();
        drop(f);
        chown(&l.join("sparse"), Some(1000), Some(1000)).unwrap();
        chmod(&l.join("sparse"), 0o4444).unwrap();
        backing::set_xattr(&l.join("sparse"), "user.tag".as_ref(), b"\x00\x01", 0).unwrap();
        backing::set_xattr(&l.join("sparse"), "trusted.overlay.x".as_ref(), b"y", 0).unwrap();
        let lower = Lower::open_at(&l).unwrap();
        let attr = lower.stat(Path::new("sparse")).unwrap().unwrap();
        let tmp = t.path().join("tmp");
        copy_entry(&lower, Path::new("sparse"), &attr, &tmp, true).unwrap();
        let md = std::fs::symlink_metadata(&tmp).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o4444);
        assert_eq!((md.uid(), md.gid()), (1000, 1000));
        assert_eq!(md.len(), (64 << 20) + 4);
        assert!(md.blocks() < 1024, "holes kept: {} blocks", md.blocks());
        assert_eq!(
            md.mtime(),
            std::fs::metadata(l.join("sparse")).unwrap().mtime()
        );
        let data = std::fs::read(&tmp).unwrap();
        assert_eq!(&data[..4], b"head");
        assert_eq!(&data[64 << 20..], b"tail");
        assert_eq!(
            backing::get_xattr(&tmp, "user.tag".as_ref()).unwrap(),
            Some(b"\x00\x01".to_vec())
        );
        assert_eq!(
            backing::get_xattr(&tmp, "trusted.overlay.x".as_ref()).unwrap(),
            None
        );
    }
}
