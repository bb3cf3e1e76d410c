//! Access recording of a snapshot's FUSE union, by snapshot key (for the
//! Control service's `StartRecording` / `StopRecording`; what is recorded is
//! described in `crate::fs`'s `record` module: union paths of regular files
//! opened and symlinks read, first access first, no duplicates).
//!
//! Keys: the store holds *backend* keys, as containerd's metadata layer names
//! snapshots when it calls the proxy: `<namespace>/<n>/<key>` (`n` a decimal
//! counter of that layer). A caller that knows only the namespace and the key
//! it used with containerd gets the backend key from
//! [`Snapshotter::resolve_key`].

use std::path::PathBuf;
use std::sync::Arc;

use super::SnapshotError;
use super::snapshotter::Snapshotter;
use super::store::{Kind, MountMode};
use crate::fs::Recorder;

/// Whether backend key `backend` is `<namespace>/<digits>/<key>`.
fn is_namespaced(backend: &str, namespace: &str, key: &str) -> bool {
    backend
        .strip_prefix(namespace)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_suffix(key))
        .and_then(|r| r.strip_suffix('/'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Snapshotter {
    /// The backend key of the snapshot the client names: `key` itself when
    /// `namespace` is empty, else the Active or View snapshot stored as
    /// `<namespace>/<n>/<key>`.
    ///
    /// # Errors
    /// `NotFound` naming the key (and namespace) when no such snapshot exists.
    pub fn resolve_key(&self, namespace: &str, key: &str) -> Result<String, SnapshotError> {
        if namespace.is_empty() {
            self.get(key)?;
            return Ok(key.to_string());
        }
        self.store
            .all()?
            .into_iter()
            .filter(|(k, r)| r.kind != Kind::Committed && is_namespaced(k, namespace, key))
            .max_by_key(|(_, r)| r.id)
            .map(|(k, _)| k)
            .ok_or_else(|| SnapshotError::NotFound(format!("{namespace}/*/{key}")))
    }

    /// The recorder of the FUSE union of backend key `key`.
    fn recorder_of(&self, key: &str) -> Result<Arc<Recorder>, SnapshotError> {
        let rec = self.get(key)?;
        let precondition = |reason: &str| SnapshotError::FailedPrecondition {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        if rec.kind == Kind::Committed {
            return Err(SnapshotError::NotFound(key.to_string()));
        }
        if rec.mount_mode != MountMode::Fuse {
            return Err(precondition(
                "is not served by a FUSE union (an extraction snapshot); nothing to record",
            ));
        }
        self.mounter
            .recorder(&self.mount_point(rec.id))
            .ok_or_else(|| precondition("its union is not mounted by this daemon"))
    }

    /// Starts recording accesses to the union of Active/View snapshot `key`
    /// (a backend key; see [`Snapshotter::resolve_key`]). A recording already
    /// under way is discarded and starts over. Returns whether one was.
    ///
    /// # Errors
    /// `NotFound` naming the key when there is no such Active or View
    /// snapshot; `FailedPrecondition` when it has no FUSE union served here.
    pub fn start_recording(&self, key: &str) -> Result<bool, SnapshotError> {
        let was = self.recorder_of(key)?.start();
        tracing::info!(key, restarted = was, "recording accesses");
        Ok(was)
    }

    /// Stops recording on snapshot `key` and returns the union paths
    /// recorded (relative to the root, first access first, no duplicates).
    ///
    /// # Errors
    /// As [`Snapshotter::start_recording`], and `FailedPrecondition` when no
    /// recording is under way.
    pub fn stop_recording(&self, key: &str) -> Result<Vec<PathBuf>, SnapshotError> {
        let paths =
            self.recorder_of(key)?
                .stop()
                .ok_or_else(|| SnapshotError::FailedPrecondition {
                    key: key.to_string(),
                    reason: "is not being recorded (StartRecording first)".to_string(),
                })?;
        tracing::info!(key, paths = paths.len(), "recording stopped");
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::path::Path;
    use std::sync::Mutex;

    use super::*;
    use crate::fs::{FsError, MountSpec, MountState};
    use crate::snapshot::LayerMounter;

    /// Mounts nothing; keeps one recorder per mount point.
    #[derive(Debug, Default)]
    struct FakeMounter {
        recorders: Mutex<HashMap<PathBuf, Arc<Recorder>>>,
    }

    impl LayerMounter for FakeMounter {
        fn mount(&self, spec: MountSpec) -> Result<(), FsError> {
            self.recorders
                .lock()
                .unwrap()
                .insert(spec.mountpoint, Arc::new(Recorder::new()));
            Ok(())
        }
        fn unmount(&self, mountpoint: &Path) -> Result<(), FsError> {
            self.recorders.lock().unwrap().remove(mountpoint);
            Ok(())
        }
        fn state(&self, mountpoint: &Path) -> MountState {
            if self.recorders.lock().unwrap().contains_key(mountpoint) {
                MountState::Live
            } else {
                MountState::Absent
            }
        }
        fn recorder(&self, mountpoint: &Path) -> Option<Arc<Recorder>> {
            self.recorders.lock().unwrap().get(mountpoint).cloned()
        }
    }

    fn setup() -> (tempfile::TempDir, Snapshotter, Arc<FakeMounter>) {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(FakeMounter::default());
        let s = Snapshotter::open(dir.path(), m.clone(), None).unwrap();
        (dir, s, m)
    }

    #[test]
    fn namespaced_keys_match_only_digit_counters() {
        assert!(is_namespaced("ns/12/k", "ns", "k"));
        assert!(is_namespaced("ns/3/a/b", "ns", "a/b"));
        assert!(!is_namespaced("ns/x1/k", "ns", "k"));
        assert!(!is_namespaced("ns//k", "ns", "k"));
        assert!(!is_namespaced("ns2/1/k", "ns", "k"));
        assert!(!is_namespaced("ns/1/kk", "ns", "k"));
    }

    #[test]
    fn resolve_by_namespace_and_key() {
        let (_d, s, _m) = setup();
        s.prepare("ns/7/run-1", None, BTreeMap::new()).unwrap();
        s.prepare("other/8/run-1", None, BTreeMap::new()).unwrap();
        assert_eq!(s.resolve_key("ns", "run-1").unwrap(), "ns/7/run-1");
        assert_eq!(s.resolve_key("", "other/8/run-1").unwrap(), "other/8/run-1");
        let e = s.resolve_key("ns", "nope").unwrap_err();
        assert!(
            matches!(&e, SnapshotError::NotFound(k) if k == "ns/*/nope"),
            "{e}"
        );
        let e = s.resolve_key("", "ns/7/nope").unwrap_err();
        assert!(
            matches!(&e, SnapshotError::NotFound(k) if k == "ns/7/nope"),
            "{e}"
        );
    }

    #[test]
    fn start_note_stop_through_the_mounters_recorder() {
        let (_d, s, m) = setup();
        s.prepare("ns/1/c", None, BTreeMap::new()).unwrap();
        assert!(!s.start_recording("ns/1/c").unwrap());
        let rec = m.recorders.lock().unwrap().values().next().unwrap().clone();
        rec.note(Path::new("bin/sh"));
        rec.note(Path::new("etc/os-release"));
        rec.note(Path::new("bin/sh"));
        assert_eq!(
            s.stop_recording("ns/1/c").unwrap(),
            vec![PathBuf::from("bin/sh"), PathBuf::from("etc/os-release")]
        );
        let e = s.stop_recording("ns/1/c").unwrap_err();
        assert!(matches!(e, SnapshotError::FailedPrecondition { .. }), "{e}");
        let e = s.start_recording("ns/1/missing").unwrap_err();
        assert!(matches!(&e, SnapshotError::NotFound(k) if k == "ns/1/missing"));
    }

    #[test]
    fn extraction_snapshots_cannot_be_recorded() {
        let (_d, s, _m) = setup();
        s.prepare("ns/2/extract-1 sha256:x", None, BTreeMap::new())
            .unwrap();
        let e = s.start_recording("ns/2/extract-1 sha256:x").unwrap_err();
        assert!(matches!(e, SnapshotError::FailedPrecondition { .. }), "{e}");
    }
}
