//! The seam between snapshot semantics and the filesystem: [`LayerMounter`]
//! mounts and unmounts one union per Active/View snapshot. [`FuseMounter`]
//! is the real one (lazysnap's FUSE union); tests of the snapshot rules may
//! pass another.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::fs::{self, FsError, MountHandle, MountSpec, MountState, Recorder};

/// Mounts unions for snapshots.
pub trait LayerMounter: Send + Sync + std::fmt::Debug {
    /// Mounts `spec` and returns once it is served.
    ///
    /// # Errors
    /// [`FsError`] when the kernel or the layer dirs refuse.
    fn mount(&self, spec: MountSpec) -> Result<(), FsError>;
    /// Unmounts `mountpoint` (lazily when busy); Ok when nothing is mounted.
    ///
    /// # Errors
    /// [`FsError`] when it stays mounted.
    fn unmount(&self, mountpoint: &Path) -> Result<(), FsError>;
    /// Live, dead (ENOTCONN) or absent.
    fn state(&self, mountpoint: &Path) -> MountState;
    /// The access recorder of the union this mounter serves at
    /// `mountpoint`; `None` when it serves none there (or records nothing).
    fn recorder(&self, _mountpoint: &Path) -> Option<Arc<Recorder>> {
        None
    }
}

/// The real mounter: lazysnap's FUSE union, served by this process on the
/// given tokio runtime. Session handles are kept until unmount; they are
/// never dropped on shutdown, so mounts are not torn down by exiting.
#[derive(Debug)]
pub struct FuseMounter {
    rt: tokio::runtime::Handle,
    sessions: Mutex<HashMap<PathBuf, MountHandle>>,
}

impl FuseMounter {
    /// A mounter whose sessions hand slow work to `rt`.
    pub fn new(rt: tokio::runtime::Handle) -> Self {
        FuseMounter {
            rt,
            sessions: Mutex::new(HashMap::new()),
        }
    }
}

impl LayerMounter for FuseMounter {
    fn mount(&self, spec: MountSpec) -> Result<(), FsError> {
        let mp = spec.mountpoint.clone();
        let handle = fs::mount(spec, self.rt.clone())?;
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mp, handle);
        Ok(())
    }

    fn unmount(&self, mountpoint: &Path) -> Result<(), FsError> {
        fs::unmount(mountpoint)?;
        // The session thread ends once the kernel drops the connection.
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(mountpoint);
        Ok(())
    }

    fn state(&self, mountpoint: &Path) -> MountState {
        fs::mount_state(mountpoint)
    }

    fn recorder(&self, mountpoint: &Path) -> Option<Arc<Recorder>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(mountpoint)
            .map(MountHandle::recorder)
    }
}
