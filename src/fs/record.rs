//! Access recording: which files of a union a workload touches, in the order
//! it first touches them (for `lazysnap convert --optimize` and `commit`,
//! whose layer writers put, per layer, the recorded paths that layer contains
//! first, so a lazily pulled image can prefetch them).
//!
//! What is recorded, once a [`Recorder`] is started:
//! - the union path of every **regular file opened** (`open(2)` in any mode;
//!   `execve(2)` reaches a FUSE filesystem as an open too), and
//! - the union path of every **symlink read** (`readlink`, which is also
//!   how the kernel follows a symlink while walking a path).
//!
//! Directories, device nodes, FIFOs and sockets are never recorded (opening
//! them does not reach this filesystem's `open`), nor are files created
//! through the union (`create` is not an access to existing content).
//!
//! Paths are union paths relative to the root, without a leading `/`
//! (`bin/sh`, `etc/os-release`), each recorded once at its first access.
//! A file renamed while recording shows under the name it was opened by.
//!
//! The kernel caches symlink targets (`FUSE_CACHE_SYMLINKS`), so a symlink
//! read *before* recording started may not be read again: start recording
//! on a freshly mounted union to see every access. Opens are not cached and
//! always reach the union.
//!
//! Cost when not recording: one relaxed atomic load per open or readlink.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The accesses recorded so far: the set for de-duplication, the list for order.
#[derive(Debug, Default)]
struct Recording {
    seen: HashSet<PathBuf>,
    order: Vec<PathBuf>,
}

/// Records first accesses of one union (see the module docs). Shared
/// between the union (which calls [`Recorder::note`]) and whoever starts and
/// stops it (the mount's owner).
#[derive(Debug, Default)]
pub struct Recorder {
    /// Mirrors `state.is_some()`, read without the lock on every access.
    on: AtomicBool,
    state: Mutex<Option<Recording>>,
}

impl Recorder {
    /// A recorder that is not recording.
    pub fn new() -> Self {
        Recorder::default()
    }

    /// Starts recording with an empty list. Returns `true` when a recording
    /// was already under way: it is discarded and recording starts over.
    pub fn start(&self) -> bool {
        let mut st = self.lock();
        let was = st.replace(Recording::default()).is_some();
        self.on.store(true, Ordering::Release);
        was
    }

    /// Stops recording and returns the recorded paths in first-access order
    /// (no duplicates); `None` when no recording was under way.
    pub fn stop(&self) -> Option<Vec<PathBuf>> {
        let mut st = self.lock();
        self.on.store(false, Ordering::Release);
        st.take().map(|r| r.order)
    }

    /// Whether a recording is under way.
    pub fn is_recording(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// Notes an access of union path `path` (relative to the root): appended
    /// when recording and not seen yet. Cheap when not recording.
    pub(crate) fn note(&self, path: &Path) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        let mut st = self.lock();
        if let Some(r) = st.as_mut()
            && !r.seen.contains(path)
        {
            r.seen.insert(path.to_path_buf());
            r.order.push(path.to_path_buf());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Recording>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn nothing_is_noted_while_off() {
        let r = Recorder::new();
        r.note(Path::new("bin/sh"));
        assert!(!r.is_recording());
        assert_eq!(r.stop(), None);
    }

    #[test]
    fn first_accesses_in_order_without_duplicates() {
        let r = Recorder::new();
        assert!(!r.start());
        assert!(r.is_recording());
        for s in [
            "bin/sh",
            "bin/busybox",
            "bin/sh",
            "etc/os-release",
            "bin/busybox",
        ] {
            r.note(Path::new(s));
        }
        assert_eq!(
            r.stop(),
            Some(vec![p("bin/sh"), p("bin/busybox"), p("etc/os-release")])
        );
        assert!(!r.is_recording());
        r.note(Path::new("etc/passwd"));
        assert_eq!(r.stop(), None);
    }

    #[test]
    fn start_again_discards_the_previous_recording() {
        let r = Recorder::new();
        r.start();
        r.note(Path::new("a"));
        assert!(r.start());
        r.note(Path::new("b"));
        r.note(Path::new("a"));
        assert_eq!(r.stop(), Some(vec![p("b"), p("a")]));
    }

    /// Through a real FUSE mount (needs root and /dev/fuse): opens and
    /// symlink reads are recorded, directory listings and stats are not.
    #[test]
    fn a_mounted_union_records_opens_and_readlinks() {
        use crate::fs::{MountSpec, mount, unmount};
        let t = tempfile::tempdir().unwrap();
        let (lower, upper, work, mnt) = (
            t.path().join("l"),
            t.path().join("u"),
            t.path().join("w"),
            t.path().join("m"),
        );
        for d in [&lower.join("bin"), &lower.join("etc"), &mnt] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(lower.join("bin/busybox"), b"#!").unwrap();
        std::os::unix::fs::symlink("busybox", lower.join("bin/sh")).unwrap();
        std::fs::write(lower.join("etc/os-release"), b"ID=x\n").unwrap();
        std::fs::write(lower.join("etc/hostname"), b"h\n").unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let spec = MountSpec {
            lowers: vec![lower],
            upper: Some(upper),
            work,
            mountpoint: mnt.clone(),
            fsname: "lazysnap-record-test".into(),
        };
        let handle = mount(spec, rt.handle().clone()).unwrap();
        std::fs::read_dir(mnt.join("etc")).unwrap().for_each(drop);
        std::fs::metadata(mnt.join("etc/hostname")).unwrap();
        assert!(!handle.start_recording());
        std::fs::read(mnt.join("bin/sh")).unwrap();
        std::fs::read(mnt.join("etc/os-release")).unwrap();
        std::fs::read(mnt.join("bin/busybox")).unwrap();
        std::fs::write(mnt.join("etc/new"), b"created, not recorded").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("etc/hostname"))
            .unwrap();
        let got = handle.stop_recording();
        unmount(&mnt).unwrap();
        drop(handle);
        rt.shutdown_background();
        assert_eq!(
            got,
            Some(vec![
                p("bin/sh"),
                p("bin/busybox"),
                p("etc/os-release"),
                p("etc/hostname")
            ])
        );
    }

    #[test]
    fn concurrent_notes_keep_one_entry_each() {
        let r = std::sync::Arc::new(Recorder::new());
        r.start();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        r.note(&PathBuf::from(format!("f{}", (i + t) % 50)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut got = r.stop().unwrap();
        assert_eq!(got.len(), 50);
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 50);
    }
}
