//! Errors of the snapshot layer. `service::status` maps each to a gRPC code.

use std::path::PathBuf;

/// What failed, naming the snapshot key or path it is about.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot has this key (gRPC NotFound).
    #[error("snapshot {0:?}: not found")]
    NotFound(String),
    /// The key or name is taken (gRPC AlreadyExists).
    #[error("snapshot {0:?}: already exists")]
    AlreadyExists(String),
    /// The snapshot is in a state that forbids the operation (gRPC FailedPrecondition).
    #[error("snapshot {key:?}: {reason}")]
    FailedPrecondition {
        /// The snapshot.
        key: String,
        /// Why, e.g. "has children" or "is not active".
        reason: String,
    },
    /// The request itself is malformed (gRPC InvalidArgument).
    #[error("{0}")]
    InvalidArgument(String),
    /// A remote layer's registry cannot be reached (gRPC Unavailable).
    #[error("{0}")]
    Unavailable(String),
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Store(String),
    /// A snapshot dir could not be created, read or removed.
    #[error("snapshot {key:?}: {path}: {source}")]
    Io {
        /// The snapshot.
        key: String,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Mounting or unmounting the snapshot's union failed.
    #[error("snapshot {key:?}: {source}")]
    Mount {
        /// The snapshot.
        key: String,
        /// The filesystem error.
        source: crate::fs::FsError,
    },
}

impl SnapshotError {
    /// An I/O error on `path` of snapshot `key`.
    pub(crate) fn io(key: &str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SnapshotError::Io {
            key: key.to_string(),
            path: path.into(),
            source,
        }
    }
}

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for SnapshotError {
            fn from(e: $t) -> Self {
                SnapshotError::Store(e.to_string())
            }
        }
    )*};
}
store_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);
