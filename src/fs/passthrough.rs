//! The I/O mode of each open file: kernel FUSE passthrough (Linux ≥ 6.9:
//! reads, writes and mmap go straight to a backing file) or served by the
//! daemon through the page cache ("cached").
//!
//! The kernel's rules (fs/fuse/iomode.c), which decide the policy here:
//! - an inode open in cached mode takes no passthrough open, and an inode
//!   open in passthrough mode takes only passthrough opens on the same
//!   backing id (newer kernels: no other open at all); breaking either fails
//!   the caller's `open` with EIO;
//! - `FOPEN_KEEP_CACHE` must not come with `FOPEN_PASSTHROUGH` (EIO);
//! - `FOPEN_PASSTHROUGH | FOPEN_DIRECT_IO` sends reads and writes to the
//!   daemon and only mmap to the backing file;
//! - the kernel drops its count of an open before it sends RELEASE, so a
//!   mode counted here until RELEASE is never released too early.
//!
//! Decisions ([`IoModes::open`]), per inode incarnation (node id, generation):
//! - open in cached mode: cached;
//! - open in passthrough mode: passthrough on its backing; a handle whose
//!   bytes may differ from that backing (another file, not the same
//!   immutable lower content) gets passthrough + direct I/O, so its reads
//!   and writes are served from its own file;
//! - idle, with a file to pass through to: the backing is registered
//!   (`FUSE_DEV_IOC_BACKING_OPEN`); when the kernel refuses, cached (and
//!   when it refuses for good — EPERM, ENOTTY, EINVAL, EOPNOTSUPP — no
//!   passthrough is tried again on this mount);
//! - otherwise cached.
//!
//! The page cache of an inode is never stale when a cached open keeps it
//! (`FOPEN_KEEP_CACHE`): passthrough and direct-I/O writes bypass it, but
//! every passthrough open drops it (no `KEEP_CACHE`), and no cached open
//! coexists with a passthrough one.
//!
//! Generic over the backing handle `B` (fuser's `BackingId` in the adapter)
//! so that the rules are tested without a kernel.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Whether new mounts try passthrough at all (on by default).
static PASSTHROUGH_ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns kernel FUSE passthrough on or off for unions mounted from now on
/// (on by default; it is used only where the kernel offers it).
pub fn set_passthrough(enabled: bool) {
    PASSTHROUGH_ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether unions mounted now try passthrough (see [`set_passthrough`]).
pub(crate) fn passthrough_wanted() -> bool {
    PASSTHROUGH_ENABLED.load(Ordering::Relaxed)
}

/// The mode chosen for one open.
#[derive(Debug)]
pub(crate) enum Mode<B> {
    /// Served by the daemon through the page cache (`FOPEN_KEEP_CACHE`).
    Cached,
    /// Passthrough on this backing.
    Passthrough(Arc<B>),
    /// Passthrough + direct I/O on this backing: reads and writes go to the
    /// daemon, mmap to the backing.
    PassthroughDirect(Arc<B>),
}

/// Counters of one mount's opens by mode (for tests, logs and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Opens served in passthrough mode on their own file.
    pub passthrough: u64,
    /// Opens in passthrough + direct I/O mode (their inode was passed
    /// through to another file).
    pub passthrough_direct: u64,
    /// Opens served by the daemon through the page cache.
    pub cached: u64,
    /// Backing registrations the kernel refused.
    pub refused: u64,
    /// Handles open now (until their RELEASE).
    pub open: u64,
}

/// The identity of a backing file: (device, inode).
type FileKey = (u64, u64);

fn file_key(f: &File) -> Option<FileKey> {
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

#[derive(Debug)]
enum InodeIo<B> {
    Cached(u64),
    Passthrough {
        count: u64,
        backing: Arc<B>,
        key: Option<FileKey>,
    },
}

#[derive(Debug)]
struct State<B> {
    /// Open inodes by (node id, generation).
    inodes: HashMap<(u64, u64), InodeIo<B>>,
    /// Open handles: fh → inode.
    handles: HashMap<u64, (u64, u64)>,
}

/// The I/O modes of one mount's open files.
#[derive(Debug)]
pub(crate) struct IoModes<B> {
    enabled: AtomicBool,
    state: Mutex<State<B>>,
    passthrough: AtomicU64,
    passthrough_direct: AtomicU64,
    cached: AtomicU64,
    refused: AtomicU64,
}

/// Errors of `FUSE_DEV_IOC_BACKING_OPEN` that mean the kernel will never
/// pass through on this connection.
fn refused_for_good(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS)
    )
}

impl<B> IoModes<B> {
    /// A tracker; passthrough is tried only when `enabled` (the kernel
    /// agreed to it at init).
    pub(crate) fn new(enabled: bool) -> Self {
        IoModes {
            enabled: AtomicBool::new(enabled),
            state: Mutex::new(State {
                inodes: HashMap::new(),
                handles: HashMap::new(),
            }),
            passthrough: AtomicU64::new(0),
            passthrough_direct: AtomicU64::new(0),
            cached: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Turns passthrough on or off (at init, once the kernel answered).
    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Whether passthrough may be tried.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chooses the mode of handle `fh` just opened on inode `node`
    /// (node id, generation) and counts it until [`IoModes::release`].
    ///
    /// `same_bytes`: the handle's bytes are those of any backing its inode
    /// may have (immutable lower content). `file` gives the file the handle
    /// may pass through to, if any; it is called only when needed (an idle
    /// inode with passthrough on, or a passthrough inode and not
    /// `same_bytes`). `register` makes the kernel backing for that file; it
    /// is called at most once, with the tracker locked, for an idle inode.
    pub(crate) fn open(
        &self,
        node: (u64, u64),
        fh: u64,
        same_bytes: bool,
        file: impl FnOnce() -> Option<File>,
        register: impl FnOnce(&File) -> io::Result<B>,
    ) -> Mode<B> {
        let mut st = self.lock();
        st.handles.insert(fh, node);
        let mode = match st.inodes.get_mut(&node) {
            Some(InodeIo::Cached(n)) => {
                *n += 1;
                Mode::Cached
            }
            Some(InodeIo::Passthrough {
                count,
                backing,
                key,
            }) => {
                *count += 1;
                if same_bytes
                    || file()
                        .as_ref()
                        .and_then(file_key)
                        .is_some_and(|k| Some(k) == *key)
                {
                    Mode::Passthrough(backing.clone())
                } else {
                    Mode::PassthroughDirect(backing.clone())
                }
            }
            None => {
                let f = if self.enabled() { file() } else { None };
                let registered = match f {
                    Some(f) => match register(&f) {
                        Ok(b) => Some((Arc::new(b), file_key(&f))),
                        Err(e) => {
                            self.refused.fetch_add(1, Ordering::Relaxed);
                            if refused_for_good(&e) {
                                self.set_enabled(false);
                                tracing::info!(error = %e, "kernel refuses FUSE passthrough; serving files through the daemon");
                            } else {
                                tracing::debug!(error = %e, "passthrough refused for one file");
                            }
                            None
                        }
                    },
                    None => None,
                };
                match registered {
                    Some((backing, key)) => {
                        st.inodes.insert(
                            node,
                            InodeIo::Passthrough {
                                count: 1,
                                backing: backing.clone(),
                                key,
                            },
                        );
                        Mode::Passthrough(backing)
                    }
                    None => {
                        st.inodes.insert(node, InodeIo::Cached(1));
                        Mode::Cached
                    }
                }
            }
        };
        let counter = match mode {
            Mode::Cached => &self.cached,
            Mode::Passthrough(_) => &self.passthrough,
            Mode::PassthroughDirect(_) => &self.passthrough_direct,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        mode
    }

    /// Forgets handle `fh` (RELEASE); the inode's backing is dropped with
    /// its last handle.
    pub(crate) fn release(&self, fh: u64) {
        let mut st = self.lock();
        let Some(node) = st.handles.remove(&fh) else {
            return;
        };
        let last = match st.inodes.get_mut(&node) {
            Some(InodeIo::Cached(n)) | Some(InodeIo::Passthrough { count: n, .. }) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if last {
            // Dropping the last Arc closes the backing id (after the unlock
            // would be nicer, but the ioctl is quick and never blocks).
            st.inodes.remove(&node);
        }
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> IoStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IoStats {
            passthrough: get(&self.passthrough),
            passthrough_direct: get(&self.passthrough_direct),
            cached: get(&self.cached),
            refused: get(&self.refused),
            open: self.lock().handles.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake backing id that counts live instances.
    #[derive(Debug)]
    struct Fake(u32, Arc<AtomicU64>);

    impl Drop for Fake {
        fn drop(&mut self) {
            self.1.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A `file` argument: a duplicate of `f`, if any.
    fn dup(f: Option<&File>) -> impl FnOnce() -> Option<File> + '_ {
        move || f.and_then(|f| f.try_clone().ok())
    }

    fn id(m: &Mode<Fake>) -> (&'static str, u32) {
        match m {
            Mode::Cached => ("cached", 0),
            Mode::Passthrough(b) => ("pt", b.0),
            Mode::PassthroughDirect(b) => ("ptd", b.0),
        }
    }

    #[test]
    fn modes_follow_the_kernel_rules() {
        let t = tempfile::tempdir().unwrap();
        let a = File::create(t.path().join("a")).unwrap();
        let b = File::create(t.path().join("b")).unwrap();
        let live = Arc::new(AtomicU64::new(0));
        let next = AtomicU64::new(1);
        let reg = |_f: &File| -> io::Result<Fake> {
            live.fetch_add(1, Ordering::SeqCst);
            Ok(Fake(
                next.fetch_add(1, Ordering::SeqCst) as u32,
                live.clone(),
            ))
        };
        let m = IoModes::new(true);
        // Idle + file: passthrough; same inode again: the same backing.
        assert_eq!(
            id(&m.open((1, 0), 10, false, dup(Some(&a)), reg)),
            ("pt", 1)
        );
        assert_eq!(
            id(&m.open((1, 0), 11, false, dup(Some(&a)), reg)),
            ("pt", 1)
        );
        // Another file on that inode: its I/O through the daemon.
        assert_eq!(
            id(&m.open((1, 0), 12, false, dup(Some(&b)), reg)),
            ("ptd", 1)
        );
        assert_eq!(id(&m.open((1, 0), 13, false, dup(None), reg)), ("ptd", 1));
        // Immutable lower bytes: the existing backing serves them.
        assert_eq!(id(&m.open((1, 0), 14, true, dup(None), reg)), ("pt", 1));
        // Idle without a file: cached, and it stays cached while open.
        assert_eq!(
            id(&m.open((2, 0), 20, false, dup(None), reg)),
            ("cached", 0)
        );
        assert_eq!(
            id(&m.open((2, 0), 21, false, dup(Some(&b)), reg)),
            ("cached", 0)
        );
        // A new incarnation of node 1 is independent.
        assert_eq!(
            id(&m.open((1, 7), 30, false, dup(Some(&b)), reg)),
            ("pt", 2)
        );
        assert_eq!(live.load(Ordering::SeqCst), 2);
        for fh in [10, 11, 12, 13] {
            m.release(fh);
        }
        assert_eq!(
            live.load(Ordering::SeqCst),
            2,
            "fh 14 still holds backing 1"
        );
        m.release(14);
        assert_eq!(
            live.load(Ordering::SeqCst),
            1,
            "backing 1 closed with its last handle"
        );
        m.release(14); // twice: ignored
        m.release(20);
        m.release(21);
        // Node 2 is idle again: now it may pass through.
        assert_eq!(
            id(&m.open((2, 0), 22, false, dup(Some(&b)), reg)),
            ("pt", 3)
        );
        assert_eq!(
            m.stats(),
            IoStats {
                passthrough: 5,
                passthrough_direct: 2,
                cached: 2,
                refused: 0,
                open: 2,
            }
        );
    }

    #[test]
    fn refusals_fall_back_to_cached_and_stop_for_good_on_eperm() {
        let t = tempfile::tempdir().unwrap();
        let a = File::create(t.path().join("a")).unwrap();
        let m: IoModes<Fake> = IoModes::new(true);
        let busy =
            |_f: &File| -> io::Result<Fake> { Err(io::Error::from_raw_os_error(libc::ELOOP)) };
        assert_eq!(
            id(&m.open((1, 0), 1, false, dup(Some(&a)), busy)),
            ("cached", 0)
        );
        assert!(m.enabled(), "one file refused, not the connection");
        let eperm =
            |_f: &File| -> io::Result<Fake> { Err(io::Error::from_raw_os_error(libc::EPERM)) };
        assert_eq!(
            id(&m.open((2, 0), 2, false, dup(Some(&a)), eperm)),
            ("cached", 0)
        );
        assert!(!m.enabled());
        let never = |_f: &File| -> io::Result<Fake> { panic!("not asked again") };
        assert_eq!(
            id(&m.open((3, 0), 3, false, dup(Some(&a)), never)),
            ("cached", 0)
        );
        assert_eq!(m.stats().refused, 2);
    }
}
