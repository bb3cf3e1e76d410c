//! Errors of the commit step.

use std::path::PathBuf;

use crate::fs::FsError;

/// What failed while turning an upper dir into a layer tar, with the path it
/// concerns.
///
/// Paths in `Io`, `Xattr` and `NotADir` are backing paths (the upper dir
/// joined with the entry); `ReservedName`, `Changed` and `Write` name the
/// entry relative to the upper root, as it appears in the layer.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A system call on the upper dir failed (`lstat`, `readdir`, `open`, `read`, `lseek`).
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The backing path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Listing or reading the extended attributes of an entry failed (the
    /// inner error names the path).
    #[error("xattrs: {0}")]
    Xattr(#[source] FsError),
    /// The upper root is not a directory.
    #[error("{path}: the upper is not a directory")]
    NotADir {
        /// The upper path given.
        path: PathBuf,
    },
    /// A real entry whose name starts with `.wh.`: a layer cannot hold it,
    /// every consumer would read it as a whiteout (OCI image-spec `layer.md`).
    #[error("/{path}: a name starting with .wh. cannot be stored in a layer")]
    ReservedName {
        /// The entry, relative to the upper root.
        path: PathBuf,
    },
    /// An entry changed between [`changes`](super::changes) and
    /// [`write_tar`](super::write_tar), or while it was read (the upper must
    /// be quiescent during a commit).
    #[error("/{path}: changed during commit ({what})")]
    Changed {
        /// The entry, relative to the upper root.
        path: PathBuf,
        /// What was found different.
        what: &'static str,
    },
    /// Writing the tar stream to its destination failed.
    #[error("writing the layer tar at /{path}: {source}")]
    Write {
        /// The entry being written, relative to the upper root.
        path: PathBuf,
        /// The writer's error.
        source: std::io::Error,
    },
}

impl CommitError {
    /// A closure wrapping an OS error of `op` on `path`, for `map_err`.
    pub(crate) fn io_at<'a>(
        op: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> CommitError + 'a {
        move |source| CommitError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
