//! Errors of reading and writing whole images.

use std::path::PathBuf;

use crate::oci::Digest;
use crate::registry::RegistryError;

/// What went wrong with an image; every variant names the image (location) and, where
/// one is involved, the blob digest.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A location argument that is neither `oci:DIR[:REF]` nor a valid reference.
    #[error("invalid image location {input:?}: {reason}")]
    BadLocation {
        /// The argument as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A registry operation failed.
    #[error("{image}: {source}")]
    Registry {
        /// The image location.
        image: String,
        /// The registry's error (names host, repository, digest, status).
        #[source]
        source: Box<RegistryError>,
    },
    /// A file of an OCI image layout could not be read or written.
    #[error("{image}: {path}: {source}")]
    Io {
        /// The image location.
        image: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not an OCI image layout, or a malformed `index.json`/`oci-layout`.
    #[error("{image}: not a valid OCI image layout: {reason}")]
    BadLayout {
        /// The image location.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// The layout has no entry with this ref name (or several images and none named).
    #[error("{image}: {reason}")]
    NotFound {
        /// The image location.
        image: String,
        /// What was looked for.
        reason: String,
    },
    /// A blob's bytes do not hash to its digest.
    #[error("{image}: blob {expected} has digest {actual}: refusing it")]
    DigestMismatch {
        /// The image location.
        image: String,
        /// The digest the descriptor names.
        expected: Digest,
        /// The digest of the bytes found.
        actual: Digest,
    },
    /// A manifest, index or config that does not parse, or a media type we cannot handle.
    #[error("{image}: {what}: {reason}")]
    Malformed {
        /// The image location.
        image: String,
        /// Which document (with its digest).
        what: String,
        /// What is wrong.
        reason: String,
    },
}
