//! Layer formats: pure parsers over bytes, no network, no cache, no FUSE
//! (STYLE.md rule 3). eStargz (gzip and zstd members) today; zstd:chunked
//! and the writers come with the lazy-pull and convert work.
//!
//! Trust chain (FORMATS.md §1.7): manifest → layer annotation TOC digest →
//! TOC JSON ([`estargz::verify_toc`]) → per-chunk digest
//! ([`chunk::decode_verified`]) → bytes served.

pub mod chunk;
mod error;
pub mod estargz;
pub mod toc;

pub use crate::oci::rfc3339;
pub use error::FormatError;
pub use toc::{Chunk, Compression, Entry, EntryKind, Toc};
