//! The cache's errors: [`CacheError`] for opening the store, [`CacheMismatch`]
//! for fetched bytes that do not hash to the key they were fetched for.

use std::io;
use std::path::PathBuf;

use crate::oci::Digest;

/// Why the on-disk store could not be opened.
///
/// Reads never fail with a `CacheError`: once the cache is open, a disk
/// problem only means a chunk is served uncached (see `CacheStats::store_errors`).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache directory or one of its shard directories could not be created.
    #[error("creating cache directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The lock file could not be opened or locked.
    #[error("locking cache directory with {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another process (or another open `ChunkCache`) holds the directory.
    #[error("cache directory lock {path} is held by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A shard directory could not be listed while indexing.
    #[error("indexing cache directory {path}: {source}")]
    Scan {
        /// The directory being listed.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file could not be deleted while trimming to the budget or removing
    /// a leftover temp file.
    #[error("removing cache file {path}: {source}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Fetched bytes that do not belong to the key they were fetched for.
///
/// The cache verifies every fetched chunk and converts a mismatch into the
/// caller's error type through `E: From<CacheMismatch>`, so a registry error
/// enum gains one variant (`#[error(transparent)] Mismatch(#[from] CacheMismatch)`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk {key}: {}", match .actual {
    Some(actual) => format!("fetched bytes hash to {actual}"),
    None => "fetch returned no bytes for it".to_string(),
})]
pub struct CacheMismatch {
    /// The key that was asked for.
    pub key: Digest,
    /// The digest of what the fetch returned; `None` when a batched fetch
    /// returned fewer chunks than keys.
    pub actual: Option<Digest>,
}
