//! zstd:chunked (containers/storage `pkg/chunked`, FORMATS.md §2): a plain
//! `tar+zstd` layer whose entries and chunks start new zstd frames, with a
//! zstd-compressed TOC ("manifest") in a skippable frame, found through the
//! layer descriptor's annotations (or the footer).
//!
//! Trust chain: manifest → `…zstd-chunked.manifest-checksum` annotation =
//! sha256 of the **compressed** TOC bytes ([`verify_manifest`], checked before
//! decompressing) → TOC JSON ([`parse_toc`]) → per-chunk digest.

pub mod annotations;
pub mod footer;
pub mod toc_json;

use std::io::Read;

use crate::format::{FormatError, Toc};
use crate::oci::Digest;

pub use annotations::{ManifestRef, parse_position};
pub use footer::{Footer, FooterKind};
pub use toc_json::parse_toc;

/// Largest compressed or uncompressed TOC (and tar-split) accepted.
pub const MAX_TOC_BYTES: u64 = 256 << 20;

/// Where a compressed stream (TOC or tar-split) sits in the blob.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// Blob offset of the compressed bytes (skippable frame start + 8).
    pub offset: u64,
    /// Compressed length.
    pub compressed_len: u64,
    /// Uncompressed length.
    pub uncompressed_len: u64,
}

impl Position {
    /// `offset + compressed_len`, `None` on overflow.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.compressed_len)
    }
}

/// Whether `bytes` start like a zstd frame (`28 b5 2f fd`): how a stored
/// compressed zstd:chunked TOC is told from stored TOC JSON.
pub fn is_zstd_frame(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
}

/// Checks the compressed TOC bytes against the manifest checksum.
///
/// # Errors
/// [`FormatError::TocDigest`] on a mismatch.
pub fn verify_manifest(compressed: &[u8], checksum: &Digest) -> Result<(), FormatError> {
    let actual = Digest::sha256_of(compressed);
    if &actual == checksum {
        Ok(())
    } else {
        Err(FormatError::TocDigest {
            expected: checksum.clone(),
            actual,
        })
    }
}

/// Decompresses a TOC, refusing more than `max` bytes (and more than
/// [`MAX_TOC_BYTES`]).
///
/// # Errors
/// [`FormatError::Decompress`], or [`FormatError::TooLarge`] past the limit.
pub fn decompress_manifest(compressed: &[u8], max: u64) -> Result<Vec<u8>, FormatError> {
    let max = max.min(MAX_TOC_BYTES);
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(compressed)
        .and_then(|d| d.take(max + 1).read_to_end(&mut out))
        .map_err(|e| FormatError::Decompress {
            what: "zstd:chunked TOC".to_string(),
            message: e.to_string(),
        })?;
    if out.len() as u64 > max {
        return Err(FormatError::TooLarge {
            what: "zstd:chunked TOC",
            size: out.len() as u64,
            max,
        });
    }
    Ok(out)
}

/// The whole read of a TOC: `compressed` (the blob bytes at
/// `toc_offset`) checked against `checksum`, decompressed and parsed.
///
/// # Errors
/// As [`verify_manifest`], [`decompress_manifest`] and [`parse_toc`].
pub fn open_toc(compressed: &[u8], checksum: &Digest, toc_offset: u64) -> Result<Toc, FormatError> {
    verify_manifest(compressed, checksum)?;
    let json = decompress_manifest(compressed, MAX_TOC_BYTES)?;
    parse_toc(&json, toc_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skippable(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x50, 0x2a, 0x4d, 0x18];
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A blob laid out as containers/storage writes it: a header frame, one
    /// frame per chunk (data, zeros, data), a trailer frame, then the TOC,
    /// tar-split and footer skippable frames.
    #[test]
    fn hand_built_blob_reads_back_through_the_toc() {
        use crate::format::chunk::decode_verified;
        let (a, z, b) = (vec![7u8; 3000], vec![0u8; 2048], b"tail bytes".to_vec());
        let mut blob = zstd::encode_all(&[1u8; 512][..], 3).unwrap();
        let mut offs = Vec::new();
        for part in [&a, &z, &b] {
            offs.push(blob.len());
            blob.extend_from_slice(&zstd::encode_all(&part[..], 3).unwrap());
        }
        let end = blob.len();
        blob.extend_from_slice(&zstd::encode_all(&[0u8; 1024][..], 3).unwrap());
        let file: Vec<u8> = [&a[..], &z[..], &b[..]].concat();
        let d = |x: &[u8]| Digest::sha256_of(x).to_string();
        let json = format!(
            r#"{{"version":1,"entries":[{{"type":"reg","name":"./f","size":{},"digest":"{}","offset":{},"endOffset":{end},"chunkSize":3000,"chunkDigest":"{}"}},{{"type":"chunk","name":"./f","offset":{},"chunkOffset":3000,"chunkSize":2048,"chunkDigest":"{}","chunkType":"zeros"}},{{"type":"chunk","name":"./f","offset":{},"chunkOffset":5048,"chunkSize":{},"chunkDigest":"{}"}}]}}"#,
            file.len(),
            d(&file),
            offs[0],
            d(&a),
            offs[1],
            d(&z),
            offs[2],
            b.len(),
            d(&b)
        );
        let ztoc = zstd::encode_all(json.as_bytes(), 3).unwrap();
        let toc_off = blob.len() as u64 + 8;
        blob.extend_from_slice(&skippable(&ztoc));
        let ts = zstd::encode_all(&b"{}\n"[..], 3).unwrap();
        let ts_off = blob.len() as u64 + 8;
        blob.extend_from_slice(&skippable(&ts));
        let footer = Footer {
            kind: FooterKind::Current,
            manifest: Position {
                offset: toc_off,
                compressed_len: ztoc.len() as u64,
                uncompressed_len: json.len() as u64,
            },
            tar_split: Some(Position {
                offset: ts_off,
                compressed_len: ts.len() as u64,
                uncompressed_len: 3,
            }),
        };
        blob.extend_from_slice(&footer.encode());
        // The footer finds the TOC; so do the annotations.
        let f = footer::parse(&blob[blob.len() - 72..], blob.len() as u64).unwrap();
        assert_eq!(f, footer);
        let ann: std::collections::HashMap<String, String> = [
            (
                annotations::MANIFEST_CHECKSUM,
                Digest::sha256_of(&ztoc).to_string(),
            ),
            (
                annotations::MANIFEST_POSITION,
                format!("{toc_off}:{}:{}:1", ztoc.len(), json.len()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let m = ManifestRef::from_annotations(&ann).unwrap().unwrap();
        assert_eq!(m.position, f.manifest);
        let span = &blob[toc_off as usize..m.position.end().unwrap() as usize];
        let toc = open_toc(span, &m.checksum, toc_off).unwrap();
        let e = &toc.entries[0];
        let mut got = Vec::new();
        for c in e.chunks() {
            let span = &blob[c.offset as usize..c.end as usize];
            got.extend(decode_verified(toc.compression, span, &c, &e.name).unwrap());
        }
        assert_eq!(got, file);
        // The zeros chunk has nothing to fetch; the chunk before it ends where it starts.
        assert_eq!(e.chunk(1).offset, e.chunk(1).end);
        assert_eq!(e.chunk(0).end, offs[1] as u64);
        // The whole blob still decodes as one zstd stream (skippable frames ignored).
        let all = zstd::decode_all(&blob[..]).unwrap();
        assert_eq!(&all[512..512 + file.len()], &file[..]);
    }

    #[test]
    fn manifest_is_checked_before_decompressing() {
        let json = br#"{"version":1,"entries":[{"type":"dir","name":"a/"}]}"#;
        let z = zstd::encode_all(&json[..], 3).unwrap();
        assert!(is_zstd_frame(&z) && !is_zstd_frame(json));
        let t = open_toc(&z, &Digest::sha256_of(&z), 1000).unwrap();
        assert_eq!(t.entries[0].name, "a");
        // The digest of the JSON is not the checksum.
        let e = open_toc(&z, &Digest::sha256_of(json), 1000).unwrap_err();
        assert!(matches!(e, FormatError::TocDigest { .. }), "{e}");
        // Garbage that matches its own checksum still fails to decompress.
        let e = open_toc(b"nope", &Digest::sha256_of(b"nope"), 1000).unwrap_err();
        assert!(matches!(e, FormatError::Decompress { .. }), "{e}");
        // A decompression bomb stops at the limit.
        let z = zstd::encode_all(&vec![b' '; 10_000][..], 3).unwrap();
        assert!(matches!(
            decompress_manifest(&z, 100),
            Err(FormatError::TooLarge { .. })
        ));
    }
}
