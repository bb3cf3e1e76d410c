//! Layer formats: pure parsers over bytes, no network, no cache, no FUSE
//! (STYLE.md rule 3). eStargz (gzip and zstd members) and zstd:chunked
//! (containers/storage); the writers come with the convert work.
//!
//! Trust chain (FORMATS.md §1.7): manifest → layer annotation TOC digest →
//! TOC JSON ([`estargz::verify_toc`]) → per-chunk digest
//! ([`chunk::decode_verified`]) → bytes served.

pub mod chunk;
mod error;
pub mod estargz;
pub mod pax;
pub mod tar_reader;
pub mod toc;
pub mod writer;
pub mod zstd_chunked;

pub use crate::oci::rfc3339;
pub use error::FormatError;
pub use toc::{Chunk, ChunkIter, Compression, Entry, EntryKind, LinkName, Name, Toc, Xattrs};
