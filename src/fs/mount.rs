//! Mounting a union as a FUSE session, unmounting, and probing a mount point.
//!
//! Mount options: `allow_other`, `default_permissions` (the kernel checks
//! permissions against the caller, since the daemon acts as root), `dev`
//! and `suid` (no `nodev`/`nosuid` flags), source `<spec.fsname>`, type
//! `fuse.lazysnap`, `ro` when there is no upper. The session runs `N_THREADS` reader threads,
//! each with its own cloned `/dev/fuse` descriptor. After the handshake the
//! mount's readahead window is raised to [`READAHEAD_KB`] (see [`set_readahead`]).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{Config, Session, SessionACL};
use nix::mount::{MntFlags, MsFlags};

use super::FsError;
use super::fuse_adapter::FuseAdapter;
use super::fuse_reply::Modes;
use super::ops::UnionFs;
use super::passthrough::IoStats;
use super::record::Recorder;

/// Reader threads of one session.
const N_THREADS: usize = 3;

/// Readahead window of a mount, KiB (see [`set_readahead`]).
pub(super) const READAHEAD_KB: u32 = 1024;

/// One union to mount.
#[derive(Debug, Clone)]
pub struct MountSpec {
    /// Layer dirs in overlayfs format, nearest parent first (top of the stack first).
    pub lowers: Vec<PathBuf>,
    /// The writable upper dir; `None` mounts read-only (a View).
    pub upper: Option<PathBuf>,
    /// A scratch dir on the same filesystem as `upper` (copy-up temp files, the
    /// persistent inode map).
    pub work: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Source name shown in /proc/mounts (`fsname=`).
    pub fsname: String,
}

/// A live FUSE session. Dropping it leaves the mount in place and the session
/// served (the daemon never unmounts on shutdown); [`unmount`] or
/// [`MountHandle::unmount`] ends it.
#[derive(Debug)]
pub struct MountHandle {
    mountpoint: PathBuf,
    thread: Option<JoinHandle<io::Result<()>>>,
    recorder: Arc<Recorder>,
    modes: Arc<Modes>,
}

impl MountHandle {
    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The union's access recorder (shared with the serving session).
    pub fn recorder(&self) -> Arc<Recorder> {
        self.recorder.clone()
    }

    /// How the session's file opens were served so far: kernel passthrough,
    /// passthrough with direct I/O, or the daemon and the page cache.
    pub fn io_stats(&self) -> IoStats {
        self.modes.stats()
    }

    /// Starts recording accesses (see [`Recorder::start`]); `true` when a
    /// recording under way was discarded.
    pub fn start_recording(&self) -> bool {
        self.recorder.start()
    }

    /// Stops recording; the union paths in first-access order, `None` when
    /// not recording (see [`Recorder::stop`]).
    pub fn stop_recording(&self) -> Option<Vec<PathBuf>> {
        self.recorder.stop()
    }

    /// Unmounts (lazily when busy) and waits up to a few seconds for the
    /// session threads to finish.
    ///
    /// # Errors
    /// As [`unmount`].
    pub fn unmount(mut self) -> Result<(), FsError> {
        unmount(&self.mountpoint)?;
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        Ok(())
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        // Detach: the session keeps serving until the mount goes away.
        drop(self.thread.take());
    }
}

/// Whether a mount point is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountState {
    /// A FUSE mount that answers.
    Live,
    /// A FUSE mount whose daemon is gone (ENOTCONN).
    Dead,
    /// Nothing is mounted there.
    Absent,
}

fn mount_err(path: &Path, source: io::Error) -> FsError {
    FsError::Mount {
        path: path.to_path_buf(),
        source,
    }
}

/// Mounts `spec` and serves it on background threads; reads and writes are
/// handed to `rt`. Returns once the kernel has completed the FUSE handshake,
/// i.e. the mount is live.
///
/// The mount is made here (`/dev/fuse` + `mount(2)`) and the session wraps
/// the descriptor ([`Session::from_fd`]), so no fuser guard ever unmounts the
/// path behind our back (which would race with a remount at the same path).
///
/// # Errors
/// [`FsError::Mount`] when the mount point or a layer dir is unusable or the
/// kernel refuses the mount.
pub fn mount(spec: MountSpec, rt: tokio::runtime::Handle) -> Result<MountHandle, FsError> {
    let mp = spec.mountpoint.clone();
    let fs = UnionFs::new(&spec).map_err(|e| mount_err(&mp, io::Error::other(e.to_string())))?;
    let fd = kernel_mount(&spec)?;
    let mut config = Config::default();
    config.acl = SessionACL::All;
    config.n_threads = Some(N_THREADS);
    config.clone_fd = true;
    let recorder = fs.recorder().clone();
    let modes = Arc::new(Modes::new(false));
    let adapter = FuseAdapter::new(Arc::new(fs), rt, Arc::clone(&modes));
    let session = match Session::from_fd(adapter, fd, SessionACL::All, config) {
        Ok(s) => s,
        Err(e) => {
            let _ = unmount(&mp);
            return Err(mount_err(&mp, e));
        }
    };
    let thread = std::thread::Builder::new()
        .name("lazysnap-fuse".into())
        .spawn(move || session.run())
        .map_err(|e| mount_err(&mp, e))?;
    set_readahead(&mp);
    tracing::debug!(mountpoint = %mp.display(), passthrough = modes.enabled(), "union mounted");
    Ok(MountHandle {
        mountpoint: mp,
        thread: Some(thread),
        recorder,
        modes,
    })
}

/// Raises the readahead window of the mount at `mp` to [`READAHEAD_KB`]
/// through its bdi (`/sys/class/bdi/<major>:<minor>/read_ahead_kb`): the
/// FUSE handshake can only lower the kernel's default (128 KiB), and a
/// larger window turns a sequential reader into 1 MiB read requests (and
/// those into larger range requests on a remote lower). The kernel still
/// starts small and grows the window only for sequential access. Best
/// effort: failure is logged.
fn set_readahead(mp: &Path) {
    let Some(dev) = mount_dev(mp) else {
        tracing::debug!(mountpoint = %mp.display(), "no mountinfo line: readahead left as is");
        return;
    };
    let knob = PathBuf::from(format!("/sys/class/bdi/{dev}/read_ahead_kb"));
    if let Err(e) = std::fs::write(&knob, READAHEAD_KB.to_string()) {
        tracing::debug!(path = %knob.display(), error = %e, "readahead left as is");
    }
}

/// The `major:minor` of the mount at `mp`, from /proc/self/mountinfo (no
/// request to the filesystem, which may not be served yet).
pub(super) fn mount_dev(mp: &Path) -> Option<String> {
    let target = absolute(mp);
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    info.split(|b| *b == b'\n')
        .filter_map(|line| {
            let mut f = line.split(|b| *b == b' ');
            let dev = f.nth(2)?;
            let point = f.nth(1)?;
            (unescape(point) == target.as_os_str().as_bytes())
                .then(|| String::from_utf8_lossy(dev).into_owned())
        })
        .next_back()
}

/// Opens `/dev/fuse` and mounts it at `spec.mountpoint` with our options.
fn kernel_mount(spec: &MountSpec) -> Result<OwnedFd, FsError> {
    let mp = &spec.mountpoint;
    let root_mode = std::fs::metadata(mp).map_err(|e| mount_err(mp, e))?.mode() & libc::S_IFMT;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| mount_err(mp, e))?;
    let fd = OwnedFd::from(dev);
    let data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={},default_permissions,allow_other",
        fd.as_raw_fd(),
        nix::unistd::geteuid(),
        nix::unistd::getegid(),
    );
    let flags = if spec.upper.is_some() {
        MsFlags::empty()
    } else {
        MsFlags::MS_RDONLY
    };
    nix::mount::mount(
        Some(spec.fsname.as_str()),
        mp,
        Some("fuse.lazysnap"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| mount_err(mp, e.into()))?;
    Ok(fd)
}

/// Unmounts `mountpoint`, lazily (MNT_DETACH) when it is busy. Succeeds when
/// nothing is mounted there.
///
/// # Errors
/// [`FsError::Mount`] when neither a plain nor a lazy unmount works.
pub fn unmount(mountpoint: &Path) -> Result<(), FsError> {
    if mount_state(mountpoint) == MountState::Absent {
        return Ok(());
    }
    match nix::mount::umount2(mountpoint, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH)
            .map_err(|e| mount_err(mountpoint, e.into())),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT)
            if mount_state(mountpoint) == MountState::Absent =>
        {
            Ok(())
        }
        Err(e) => Err(mount_err(mountpoint, e.into())),
    }
}

/// Tells whether `mountpoint` is a live FUSE mount, a dead one or nothing:
/// Absent when /proc/self/mountinfo lists no mount there, Dead when `statfs`
/// fails (ENOTCONN once the daemon is gone), else Live.
pub fn mount_state(mountpoint: &Path) -> MountState {
    let target = absolute(mountpoint);
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return MountState::Absent;
    };
    let mounted = info.split(|b| *b == b'\n').any(|line| {
        line.split(|b| *b == b' ')
            .nth(4)
            .is_some_and(|mp| unescape(mp) == target.as_os_str().as_bytes())
    });
    if !mounted {
        return MountState::Absent;
    }
    // statfs always reaches the daemon (stat may be answered from the
    // kernel's attribute cache even after the connection is gone).
    match nix::sys::statvfs::statvfs(mountpoint) {
        Ok(_) => MountState::Live,
        Err(_) => MountState::Dead,
    }
}

/// The absolute, symlink-free form of `p`, canonicalizing only the parent
/// (the mount point itself may be dead and not stat-able).
fn absolute(p: &Path) -> PathBuf {
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            parent
                .canonicalize()
                .map(|d| d.join(name))
                .unwrap_or_else(|_| p.to_path_buf())
        }
        _ => p.to_path_buf(),
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(br"/a\040b"), b"/a b".to_vec());
        assert_eq!(unescape(br"/plain"), b"/plain".to_vec());
    }

    #[test]
    fn a_plain_dir_is_absent_and_unmount_is_ok() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(mount_state(t.path()), MountState::Absent);
        unmount(t.path()).unwrap();
    }
}
