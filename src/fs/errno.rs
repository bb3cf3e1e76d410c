//! The one table from [`FsError`] to the errno the kernel passes on.

use fuser::Errno;

use super::FsError;

impl FsError {
    /// The errno a FUSE reply carries for this error. One exhaustive match:
    /// a new variant does not compile until its errno is decided here.
    pub fn errno(&self) -> Errno {
        match self {
            // The OS error of a backing call is what a local fs would return.
            FsError::Io { source, .. } | FsError::Mount { source, .. } => source
                .raw_os_error()
                .filter(|e| *e > 0)
                .map_or(Errno::EIO, Errno::from_i32),
            FsError::NotFound { .. } => Errno::ENOENT,
            FsError::Exists { .. } => Errno::EEXIST,
            FsError::NotDir { .. } => Errno::ENOTDIR,
            FsError::IsDir { .. } => Errno::EISDIR,
            FsError::NotEmpty { .. } => Errno::ENOTEMPTY,
            FsError::ReadOnly { .. } => Errno::EROFS,
            FsError::StaleInode { .. } => Errno::ESTALE,
            FsError::BadHandle { .. } => Errno::EBADF,
            FsError::NoXattr { .. } => Errno::ENODATA,
            FsError::XattrRange { .. } => Errno::ERANGE,
            FsError::Forbidden { .. } => Errno::EPERM,
            FsError::Invalid { .. } => Errno::EINVAL,
            FsError::Unsupported { .. } => Errno::EOPNOTSUPP,
            FsError::TaskFailed { .. } | FsError::Remote { .. } => Errno::EIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn io_errors_keep_their_errno() {
        let e = FsError::io(
            "write",
            "/x",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(e.errno(), Errno::ENOSPC);
        let e = FsError::io("write", "/x", std::io::Error::other("no errno"));
        assert_eq!(e.errno(), Errno::EIO);
        let e = FsError::NotEmpty {
            path: PathBuf::from("d"),
        };
        assert_eq!(e.errno(), Errno::ENOTEMPTY);
    }
}
