//! Errors of the format parsers; each names what was wrong.

use crate::oci::Digest;

/// A layer's bytes do not parse or do not verify.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The parser needs the last `wanted` bytes of the blob (it was given fewer).
    #[error("need the last {wanted} bytes of the blob")]
    NeedMoreBytes {
        /// How many bytes from the end of the blob to fetch.
        wanted: u64,
    },
    /// The footer is not one of the accepted layouts.
    #[error("footer: {0}")]
    Footer(String),
    /// A size read from the blob exceeds a ceiling.
    #[error("{what} is {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The TOC's digest differs from the one the manifest promised.
    #[error("TOC digest mismatch: manifest says {expected}, TOC bytes hash to {actual}")]
    TocDigest {
        /// From the layer annotation.
        expected: Digest,
        /// Of the bytes read.
        actual: Digest,
    },
    /// The TOC is malformed; the message names the entry.
    #[error("TOC: {0}")]
    Toc(String),
    /// Decompression failed.
    #[error("decompress {what}: {message}")]
    Decompress {
        /// What was being decompressed.
        what: String,
        /// The decoder's message.
        message: String,
    },
    /// A chunk's bytes differ from its TOC digest: never served.
    #[error(
        "chunk of {name:?} at file offset {file_offset}: digest mismatch (TOC {expected}, got {actual})"
    )]
    ChunkDigest {
        /// File name.
        name: String,
        /// Offset of the chunk in the file.
        file_offset: u64,
        /// Digest in the TOC.
        expected: Digest,
        /// Digest of the bytes.
        actual: Digest,
    },
    /// An input tar entry cannot go into a written layer (its name escapes
    /// the root, its hardlink target is not an earlier entry, its type is
    /// unsupported...); names the entry as the tar stores it.
    #[error("entry {name:?}: {message}")]
    Entry {
        /// The entry's name (lossy UTF-8).
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// Reading the input or writing the output of a layer writer failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
