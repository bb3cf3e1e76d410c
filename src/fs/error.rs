//! Errors of the union filesystem.

use std::ffi::OsString;
use std::path::PathBuf;

/// What failed in the union filesystem, with the path it concerns.
///
/// Paths are merged-view paths relative to the mount root (shown as `/…`)
/// unless the variant says otherwise; the errno each variant becomes is
/// decided in one place, `fs/errno.rs`.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// Mounting or unmounting a FUSE session failed.
    #[error("mount {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A system call on a backing file (a layer dir, the upper or `work`) failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation, e.g. `lstat` or `copy-up`.
        op: &'static str,
        /// The backing path.
        path: PathBuf,
        /// The OS error; its errno is passed on to the caller.
        source: std::io::Error,
    },
    /// No such entry in the merged view.
    #[error("/{path}: not found")]
    NotFound {
        /// The merged-view path.
        path: PathBuf,
    },
    /// The name already exists in the merged view.
    #[error("/{path}: exists")]
    Exists {
        /// The merged-view path.
        path: PathBuf,
    },
    /// A directory was needed.
    #[error("/{path}: not a directory")]
    NotDir {
        /// The merged-view path.
        path: PathBuf,
    },
    /// A non-directory was needed.
    #[error("/{path}: is a directory")]
    IsDir {
        /// The merged-view path.
        path: PathBuf,
    },
    /// The directory has children in the merged view.
    #[error("/{path}: directory not empty")]
    NotEmpty {
        /// The merged-view path.
        path: PathBuf,
    },
    /// A write to a read-only union (a View, or no upper).
    #[error("/{path}: read-only union")]
    ReadOnly {
        /// The merged-view path.
        path: PathBuf,
    },
    /// The kernel named an inode this mount does not know (or no longer has a name).
    #[error("inode {ino}: stale")]
    StaleInode {
        /// The FUSE inode number.
        ino: u64,
    },
    /// The kernel named a file handle this mount does not know.
    #[error("file handle {fh}: unknown")]
    BadHandle {
        /// The FUSE file handle.
        fh: u64,
    },
    /// The extended attribute does not exist (or is one of ours and hidden).
    #[error("/{path}: no xattr {name:?}")]
    NoXattr {
        /// The merged-view path.
        path: PathBuf,
        /// The attribute name.
        name: OsString,
    },
    /// The caller's buffer is too small for an xattr value or list.
    #[error("/{path}: xattr buffer of {size} bytes too small, {needed} needed")]
    XattrRange {
        /// The merged-view path.
        path: PathBuf,
        /// The caller's buffer size.
        size: u32,
        /// The bytes needed.
        needed: usize,
    },
    /// The operation is refused by policy (e.g. setting `trusted.overlay.*`).
    #[error("/{path}: {what} not permitted")]
    Forbidden {
        /// The merged-view path.
        path: PathBuf,
        /// What was refused.
        what: &'static str,
    },
    /// An argument is invalid (e.g. unknown rename flags).
    #[error("/{path}: invalid {what}")]
    Invalid {
        /// The merged-view path.
        path: PathBuf,
        /// What is invalid.
        what: &'static str,
    },
    /// The operation is not supported by this filesystem.
    #[error("{what}: not supported")]
    Unsupported {
        /// The operation.
        what: &'static str,
    },
    /// The bytes of a remote layer could not be had (fetch, verification or
    /// cache failure, as a [`super::ChunkReader`] reports it).
    #[error("remote layer: {what}")]
    Remote {
        /// What failed.
        what: String,
    },
    /// A task handed to the async runtime panicked or was cancelled.
    #[error("{what}: background task failed")]
    TaskFailed {
        /// The operation.
        what: &'static str,
    },
}

impl FsError {
    /// An [`FsError::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// An [`FsError::Remote`] (for [`super::ChunkReader`] implementations).
    pub fn remote(what: impl Into<String>) -> Self {
        Self::Remote { what: what.into() }
    }

    /// A closure for `map_err` building an [`FsError::Io`].
    pub(crate) fn io_at<'a>(
        op: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |e| Self::io(op, path, e)
    }

    /// A closure for `map_err` on `nix` results building an [`FsError::Io`].
    pub(crate) fn nix_at<'a>(
        op: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(nix::errno::Errno) -> Self + 'a {
        move |e| Self::io(op, path, std::io::Error::from(e))
    }

    /// The raw OS error behind an [`FsError::Io`], if any.
    pub(crate) fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } | Self::Mount { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
