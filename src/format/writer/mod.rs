//! Layer writers: an uncompressed OCI layer tar stream ▶ eStargz (gzip
//! members, FORMATS.md §1.1–1.2), eStargz with zstd frames (§1.3) or
//! zstd:chunked (§2), with the TOC, footer, landmark files and the layer
//! descriptor annotations the readers look for. Owns no I/O beyond the given
//! reader, writer and spool directory; knows nothing of registries or images.
//!
//! How an entry goes through (the same for every format):
//!
//! ```text
//! input tar ──TarReader──▶ entry::parse (sanitize, validate) ──▶ Builder
//!   header blocks: copied raw (re-encoded only when sanitized or sparse)
//!     into the current gzip member / zstd frame
//!   payload: a new member/frame per chunk; sha256 per chunk and per file
//!   TOC entry appended ─▶ at the end: TOC, (tar-split), footer
//! ```
//!
//! Members are compressed on [`WriterOptions::threads`] worker threads and
//! written in order; the blob is byte-identical for every thread count.
//!
//! Header blocks are copied byte for byte, so a zstd:chunked layer without
//! reordering decompresses to exactly the input tar (same DiffID, as
//! containers/storage does); eStargz adds its landmark and TOC entries.
//!
//! Choices that differ from a literal reading of the tools, on purpose:
//! - Landmarks (eStargz only): `ctr-remote convert --estargz` without a
//!   prioritized list writes `.no.prefetch.landmark` first (`estargz.Build`
//!   with no prioritized files), so `prioritized: None` and `Some(vec![])`
//!   both do that; a non-empty list writes `.prefetch.landmark` after the
//!   moved entries. zstd:chunked has no landmarks.
//! - Duplicate names are all kept in input order (`estargz.Build` keeps
//!   only the last); prioritized names move together with their earlier
//!   duplicates, so the last still wins at unpack.
//! - Existing root `stargz.index.json` and landmark entries are dropped
//!   from eStargz output (as `estargz.Build` does), kept for zstd:chunked.
//!   Comment-only PAX global headers are dropped from every format (other
//!   global headers are refused): containers/storage rejects layers with one.
//! - Typeflag `7` (contiguous file) is re-encoded as `0`, GNU sparse files
//!   are expanded into plain files; PAX sparse files are refused.
//! - TOC names are the tar names as UTF-8; a name that is not UTF-8 gets
//!   U+FFFD in the TOC (what Go's JSON encoder does), the tar keeps its bytes.

mod build;
mod chunked;
mod entry;
mod estargz;
mod header;
mod json;
mod member;
mod reorder;
mod rollsum;
mod sink;
mod stream;
mod tap;
mod tarsplit;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

use crate::format::{Compression, FormatError};
use crate::oci::Digest;

/// Default chunk size: `ctr-remote`/`estargz.Writer` split regular files
/// larger than 4 MiB (`4 << 20`) into chunks of this size.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// Which layer format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// eStargz with gzip members (FORMATS.md §1.1, §1.2): `tar+gzip`.
    Estargz,
    /// eStargz with zstd frames and the 40-byte zstd footer (§1.3): `tar+zstd`.
    EstargzZstd,
    /// containers/storage zstd:chunked (§2): `tar+zstd`, 64-byte footer, tar-split.
    ZstdChunked,
}

impl LayerFormat {
    /// How the blob's members are compressed.
    pub fn compression(self) -> Compression {
        match self {
            LayerFormat::Estargz => Compression::Gzip,
            LayerFormat::EstargzZstd | LayerFormat::ZstdChunked => Compression::Zstd,
        }
    }

    /// The OCI media type of a layer in this format.
    pub fn media_type(self) -> &'static str {
        match self.compression() {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The default compression level: gzip 9 (`ctr-remote
    /// --estargz-compression-level`, Go's `gzip.BestCompression`), zstd 3 for
    /// eStargz-zstd (`--zstdchunked-compression-level`), zstd 10 for
    /// zstd:chunked (containers/storage `ZstdCompressor`).
    pub fn default_level(self) -> i32 {
        match self {
            LayerFormat::Estargz => 9,
            LayerFormat::EstargzZstd => 3,
            LayerFormat::ZstdChunked => 10,
        }
    }

    /// Whether the layer is eStargz (TOC entry, landmarks).
    fn is_estargz(self) -> bool {
        self != LayerFormat::ZstdChunked
    }
}

impl FromStr for LayerFormat {
    type Err = String;

    /// `estargz`, `estargz-zstd` or `zstd-chunked`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "estargz" => Ok(LayerFormat::Estargz),
            "estargz-zstd" => Ok(LayerFormat::EstargzZstd),
            "zstd-chunked" => Ok(LayerFormat::ZstdChunked),
            other => Err(format!(
                "layer format {other:?}: want estargz, estargz-zstd or zstd-chunked"
            )),
        }
    }
}

impl fmt::Display for LayerFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayerFormat::Estargz => "estargz",
            LayerFormat::EstargzZstd => "estargz-zstd",
            LayerFormat::ZstdChunked => "zstd-chunked",
        })
    }
}

/// How to write a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    /// Output format.
    pub format: LayerFormat,
    /// Largest uncompressed chunk of a regular file, bytes (> 0). eStargz
    /// splits files into chunks of exactly this size (the last one shorter);
    /// zstd:chunked cuts content-defined chunks (rolling checksum, zero
    /// runs) and uses this only as a ceiling.
    pub chunk_size: u64,
    /// `None` or `Some(empty)`: input order (eStargz: `.no.prefetch.landmark`
    /// first). `Some(list)`: clean root-relative paths in access order; the
    /// entries for them go first (eStargz: then `.prefetch.landmark`).
    pub prioritized: Option<Vec<String>>,
    /// Prioritized regular files larger than this (bytes) stay in place:
    /// a start that reads part of a big file should not prefetch all of it
    /// (the prefetch region is whole files); its reads fetch what they need.
    pub prefetch_file_limit: u64,
    /// Compression level (gzip 0–9, zstd 1–22).
    pub level: i32,
    /// Threads compressing members in parallel: 0 for one per CPU, 1 for
    /// none (all on the calling thread). The blob is byte-identical for
    /// every value.
    pub threads: usize,
}

impl WriterOptions {
    /// The defaults of `format`: [`DEFAULT_CHUNK_SIZE`], no reordering,
    /// [`LayerFormat::default_level`].
    pub fn new(format: LayerFormat) -> Self {
        WriterOptions {
            format,
            chunk_size: DEFAULT_CHUNK_SIZE,
            prioritized: None,
            prefetch_file_limit: DEFAULT_PREFETCH_FILE_LIMIT,
            level: format.default_level(),
            threads: 0,
        }
    }
}

impl Default for WriterOptions {
    /// eStargz (gzip) with its defaults.
    fn default() -> Self {
        WriterOptions::new(LayerFormat::Estargz)
    }
}

/// Default [`WriterOptions::prefetch_file_limit`]: 64 MiB.
pub const DEFAULT_PREFETCH_FILE_LIMIT: u64 = 64 << 20;

/// Which landmark file a written layer holds (FORMATS.md §1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landmark {
    /// `.prefetch.landmark` after the prioritized entries.
    Prefetch,
    /// `.no.prefetch.landmark` first.
    NoPrefetch,
    /// None (zstd:chunked).
    None,
}

/// What [`write_layer`] wrote: everything the layer descriptor and the image
/// config need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerWritten {
    /// `application/vnd.oci.image.layer.v1.tar+gzip` or `…+zstd`.
    pub media_type: String,
    /// sha256 of the compressed blob.
    pub digest: Digest,
    /// Compressed blob size in bytes.
    pub size: u64,
    /// sha256 of the whole uncompressed tar stream (`rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Uncompressed tar stream size in bytes.
    pub uncompressed_size: u64,
    /// eStargz: sha256 of the TOC JSON (`containerd.io/snapshot/stargz/toc.digest`);
    /// zstd:chunked: sha256 of the compressed TOC (`…manifest-checksum`).
    pub toc_digest: Digest,
    /// Annotations for the layer descriptor.
    pub annotations: BTreeMap<String, String>,
    /// Tar entries described by the TOC (landmark included, TOC entry not).
    pub entries: usize,
    /// Payload chunks (each its own gzip member or zstd frame).
    pub chunks: usize,
    /// The landmark written.
    pub landmark: Landmark,
    /// Prioritized paths with no entry in this layer (normal for a
    /// multi-layer image: each layer gets the whole list).
    pub prioritized_missing: Vec<String>,
    /// Prioritized paths left in place because moving them would change
    /// what sequential extraction produces (e.g. a later non-directory
    /// entry replacing a directory whose children come earlier).
    pub prioritized_unmovable: Vec<String>,
    /// Prioritized regular files left in place because they are larger than
    /// [`WriterOptions::prefetch_file_limit`].
    pub prioritized_too_large: Vec<String>,
}

/// Writes the layer tar read from `tar` as `opts.format` into `out`.
///
/// Entries are copied in input order, or with `opts.prioritized` non-empty,
/// the prioritized ones first: the input is then spooled to an unnamed
/// temporary file in `spool_dir` (zstd:chunked also spools its tar-split
/// there). Memory stays bounded by the chunk size plus the TOC and a small
/// per-entry name index.
///
/// Entry names are sanitized as the OCI layer spec asks: a leading `/` is
/// dropped, `..` is resolved, a name that climbs above the root is refused;
/// a hardlink must name an earlier non-directory entry.
///
/// # Errors
/// [`FormatError::Entry`] naming the entry for a name escaping the root, a
/// dangling hardlink, an unsupported entry type (GNU volume headers, PAX
/// sparse files, global PAX headers other than comments), non-regular
/// entries carrying data; [`FormatError::Io`] when reading the input,
/// spooling or writing `out` fails (a malformed tar also shows up here);
/// [`FormatError::TooLarge`] for a TOC or tar-split past 4 GiB.
pub fn write_layer<R: Read, W: Write>(
    tar: R,
    out: W,
    opts: &WriterOptions,
    spool_dir: &Path,
) -> Result<LayerWritten, FormatError> {
    let builder = build::Builder::new(out, opts, spool_dir)?;
    match &opts.prioritized {
        Some(list) if !list.is_empty() => {
            reorder::write(tar, builder, list, opts.prefetch_file_limit, spool_dir)
        }
        _ => stream::write(tar, builder),
    }
}
