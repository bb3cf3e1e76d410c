//! Finding and verifying a lazy layer's table of contents with range reads
//! (FORMATS.md §1.8 for eStargz, §2.3 for zstd:chunked): the anchor is a layer
//! descriptor annotation (the eStargz TOC digest, or the zstd:chunked manifest checksum
//! and position), so nothing is trusted that the manifest does not vouch for.
//!
//! - eStargz: one range read of the blob's last [`TAIL_BYTES`] (footer, and the TOC when it
//!   fits), a second for the TOC otherwise; the JSON is checked against the annotation.
//! - zstd:chunked: one range read of the compressed TOC the position annotation names,
//!   checked against the checksum annotation before it is decompressed.
//! - A small blob (at most the caller's `whole_limit` bytes, or within the tail read) is
//!   read whole in that one request instead, and handed back ([`LayerToc::blob`]) so its
//!   chunks need no request of their own: on a link with a long round trip, a few
//!   requests cost more than the bytes of a small layer.

use std::collections::HashMap;
use std::io::Read;

use bytes::Bytes;

use crate::format::estargz::{footer, parse_toc, toc_json_from_gzip_member, verify_toc};
use crate::format::{Compression, FormatError, Toc, zstd_chunked};
use crate::oci::Digest;
use crate::oci::labels::STARGZ_TOC_DIGEST;

use super::error::ImageError;
use super::source::Source;

/// Bytes read from the end of a blob to find the footer (and, for small layers, the
/// TOC) in one request.
pub const TAIL_BYTES: u64 = 64 << 10;
/// Largest uncompressed zstd TOC accepted.
const MAX_ZSTD_TOC: u64 = crate::format::estargz::toc_json::MAX_TOC_BYTES;

/// Which lazy format a TOC came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TocKind {
    /// eStargz, with gzip or zstd members.
    Estargz(Compression),
    /// zstd:chunked.
    ZstdChunked,
}

/// A verified TOC.
#[derive(Debug, Clone)]
pub struct LayerToc {
    /// The format.
    pub kind: TocKind,
    /// The digest that anchors it (eStargz TOC digest / zstd:chunked manifest checksum).
    pub toc_digest: Digest,
    /// The bytes that digest covers: the TOC JSON (eStargz) or the compressed manifest
    /// (zstd:chunked); kept so the TOC can be reopened without the network.
    pub anchored: Vec<u8>,
    /// Blob offset of the TOC.
    pub toc_offset: u64,
    /// The parsed TOC.
    pub toc: Toc,
    /// The whole blob, when it was read whole (see the module doc). Its bytes are not
    /// verified as a whole (the TOC is, and each chunk is when it is decoded).
    pub blob: Option<Bytes>,
    /// The bytes received by each range read this took (one or two reads).
    pub fetched: Vec<u64>,
}

/// Why a TOC could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    /// Reading the blob failed (network, registry, file).
    #[error(transparent)]
    Read(#[from] ImageError),
    /// The layer is not lazily readable: no anchor annotation, a bad footer, a TOC that
    /// does not verify or parse.
    #[error("{0}")]
    NotLazy(String),
}

/// Reads and verifies the TOC of blob `digest` (`size` bytes, descriptor `annotations`)
/// of `src`. A blob of at most `whole_limit` bytes (0 = none) is read whole, in one
/// request, and returned in [`LayerToc::blob`]; so is one that fits in the tail read.
///
/// # Errors
/// [`TocError::Read`] for failed reads, [`TocError::NotLazy`] for everything else.
pub async fn read_toc(
    src: &Source,
    digest: &Digest,
    size: u64,
    annotations: &HashMap<String, String>,
    whole_limit: u64,
) -> Result<LayerToc, TocError> {
    toc_from(Reader::Source(src, digest), size, annotations, whole_limit).await
}

/// The verified TOC of a whole blob already in hand (`blob`, its descriptor
/// `annotations`), as [`read_toc`] would read it; [`LayerToc::blob`] is `blob`
/// and nothing is fetched.
///
/// # Errors
/// [`TocError::NotLazy`]: no anchor, a bad footer, a TOC that does not verify or parse.
pub async fn toc_in_blob(
    blob: &Bytes,
    annotations: &HashMap<String, String>,
) -> Result<LayerToc, TocError> {
    let size = blob.len() as u64;
    toc_from(Reader::InHand(blob), size, annotations, size).await
}

/// Where the bytes of a blob come from: ranges of a source, or a whole blob in hand.
enum Reader<'a> {
    Source(&'a Source, &'a Digest),
    InHand(&'a Bytes),
}

impl Reader<'_> {
    /// Blob bytes `[start, end)`; `fetched` gets the length of each network read.
    async fn range(&self, start: u64, end: u64, fetched: &mut Vec<u64>) -> Result<Bytes, TocError> {
        let got = match self {
            Reader::Source(src, digest) => {
                let b = src.read_range(digest, start, end).await?;
                fetched.push(b.len() as u64);
                b
            }
            Reader::InHand(blob) => {
                let len = blob.len() as u64;
                if start > end || end > len {
                    return Err(TocError::NotLazy(format!(
                        "blob bytes [{start}, {end}) are outside the blob of {len} bytes"
                    )));
                }
                blob.slice(start as usize..end as usize)
            }
        };
        if got.len() as u64 != end - start {
            return Err(TocError::NotLazy(format!(
                "a read of blob bytes [{start}, {end}) returned {} bytes",
                got.len()
            )));
        }
        Ok(got)
    }
}

async fn toc_from(
    from: Reader<'_>,
    size: u64,
    annotations: &HashMap<String, String>,
    whole_limit: u64,
) -> Result<LayerToc, TocError> {
    let not_lazy = |e: String| TocError::NotLazy(e);
    let whole = size <= whole_limit;
    let mut fetched = Vec::new();
    let Some(toc_digest) = annotations.get(STARGZ_TOC_DIGEST) else {
        let mref = zstd_chunked::ManifestRef::from_annotations(annotations)
            .map_err(|e| not_lazy(format!("zstd:chunked annotations: {e}")))?
            .ok_or_else(|| {
                not_lazy(format!(
                    "no {STARGZ_TOC_DIGEST} or zstd:chunked manifest-checksum annotation \
                     (neither eStargz nor zstd:chunked)"
                ))
            })?;
        let pos = mref.position;
        let end = pos
            .end()
            .filter(|&end| end <= size && pos.compressed_len > 0)
            .ok_or_else(|| {
                not_lazy(format!(
                    "zstd:chunked TOC [{}, +{}) is outside the blob of {size} bytes",
                    pos.offset, pos.compressed_len
                ))
            })?;
        let (compressed, blob) = if whole {
            let blob = from.range(0, size, &mut fetched).await?;
            (blob.slice(pos.offset as usize..end as usize), Some(blob))
        } else {
            (from.range(pos.offset, end, &mut fetched).await?, None)
        };
        let toc = zstd_chunked::open_toc(&compressed, &mref.checksum, pos.offset)
            .map_err(|e| not_lazy(e.to_string()))?;
        return Ok(LayerToc {
            kind: TocKind::ZstdChunked,
            toc_digest: mref.checksum,
            anchored: compressed.to_vec(),
            toc_offset: pos.offset,
            toc,
            blob,
            fetched,
        });
    };
    let toc_digest: Digest = toc_digest
        .parse()
        .map_err(|e| not_lazy(format!("{STARGZ_TOC_DIGEST}: {e}")))?;
    let tail_start = if whole {
        0
    } else {
        size.saturating_sub(TAIL_BYTES)
    };
    let tail = from.range(tail_start, size, &mut fetched).await?;
    let footer = footer::parse(&tail, size).map_err(|e| not_lazy(e.to_string()))?;
    let (start, end) = footer.toc_range(size);
    let toc_bytes: Bytes = if start >= tail_start {
        tail.slice((start - tail_start) as usize..(end - tail_start) as usize)
    } else {
        from.range(start, end, &mut fetched).await?
    };
    let json = match footer.compression() {
        Compression::Gzip => toc_json_from_gzip_member(&toc_bytes),
        Compression::Zstd => zstd_toc(&toc_bytes, footer.toc_uncompressed_len),
    }
    .map_err(|e| not_lazy(e.to_string()))?;
    verify_toc(&json, &toc_digest).map_err(|e| not_lazy(e.to_string()))?;
    let toc = parse_toc(&json, footer.toc_offset, footer.compression())
        .map_err(|e| not_lazy(e.to_string()))?;
    Ok(LayerToc {
        kind: TocKind::Estargz(footer.compression()),
        toc_digest,
        anchored: json,
        toc_offset: footer.toc_offset,
        toc,
        blob: (tail_start == 0).then_some(tail),
        fetched,
    })
}

fn zstd_toc(compressed: &[u8], uncompressed_len: u64) -> Result<Vec<u8>, FormatError> {
    if uncompressed_len > MAX_ZSTD_TOC {
        return Err(FormatError::TooLarge {
            what: "zstd TOC",
            size: uncompressed_len,
            max: MAX_ZSTD_TOC,
        });
    }
    let mut out = Vec::with_capacity(uncompressed_len as usize);
    zstd::stream::read::Decoder::new(compressed)
        .and_then(|d| d.take(MAX_ZSTD_TOC + 1).read_to_end(&mut out))
        .map_err(|e| FormatError::Decompress {
            what: "zstd TOC".to_string(),
            message: e.to_string(),
        })?;
    Ok(out)
}
