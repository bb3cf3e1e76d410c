//! Errors of `lazysnap convert`.

use crate::format::FormatError;
use crate::image::ImageError;
use crate::oci::Digest;

/// What stopped a conversion; names the image and, for layer faults, the layer digest.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading the source or writing the destination failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A layer could not be read or rewritten.
    #[error("{image}: layer {layer}: {reason}")]
    Layer {
        /// The source image.
        image: String,
        /// The layer digest.
        layer: Digest,
        /// What is wrong.
        reason: String,
    },
    /// The layer's tar could not be converted (not a tar, a name escaping the root, …).
    #[error("{image}: layer {layer}: {source}")]
    Format {
        /// The source image.
        image: String,
        /// The layer digest.
        layer: Digest,
        /// The format error (names the tar entry).
        #[source]
        source: Box<FormatError>,
    },
    /// A manifest, index or config that cannot be converted.
    #[error("{image}: {what}: {reason}")]
    Malformed {
        /// The source image.
        image: String,
        /// Which document.
        what: String,
        /// What is wrong.
        reason: String,
    },
}
