//! eStargz footers (FORMATS.md §1.2, §1.3). Which one a blob has is told by
//! its last bytes:
//!
//! ```text
//! gzip (51 bytes), an empty gzip member whose FEXTRA holds the TOC offset:
//!   1f 8b 08 04 mtime(4) xfl os | XLEN=26 | 'S' 'G' LEN=22 | %016x "STARGZ" | empty deflate | crc32 isize
//! legacy stargz (47 bytes): same, XLEN=22 and the 22 bytes without 'S' 'G' LEN
//! zstd (40-byte payload of a skippable frame 50 2a 4d 18 28 00 00 00):
//!   tocOffset u64le | tocCompressedLen u64le | tocUncompressedLen u64le | type=1 u64le | "GnUlInUx"
//! ```

use std::io::Read;

use crate::format::{Compression, FormatError};

/// Size of the gzip eStargz footer.
pub const GZIP_FOOTER_SIZE: usize = 51;
/// Size of the legacy (CRFS) stargz footer.
pub const LEGACY_FOOTER_SIZE: usize = 47;
/// Size of the zstd footer payload.
pub const ZSTD_FOOTER_SIZE: usize = 40;
/// Bytes to fetch from the end to find any footer (largest + frame header).
pub const MAX_FOOTER_SIZE: usize = 64 + 8;

const ZSTD_MAGIC: &[u8; 8] = b"GnUlInUx";
const SKIPPABLE_HEADER: [u8; 8] = [0x50, 0x2a, 0x4d, 0x18, 0x28, 0, 0, 0];

/// Which footer layout a blob ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FooterKind {
    /// eStargz with gzip members (51 bytes).
    Gzip,
    /// Legacy stargz (47 bytes).
    Legacy,
    /// eStargz with zstd frames (40-byte payload, 48 bytes with the frame header).
    Zstd,
}

/// A parsed footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Layout.
    pub kind: FooterKind,
    /// Blob offset where the TOC starts (gzip: its member's header; zstd:
    /// the compressed TOC bytes).
    pub toc_offset: u64,
    /// zstd only: compressed TOC length.
    pub toc_compressed_len: u64,
    /// zstd only: uncompressed TOC length.
    pub toc_uncompressed_len: u64,
    /// Bytes the footer takes at the end of the blob.
    pub size: u64,
}

impl Footer {
    /// Compression of the blob's members.
    pub fn compression(&self) -> Compression {
        match self.kind {
            FooterKind::Gzip | FooterKind::Legacy => Compression::Gzip,
            FooterKind::Zstd => Compression::Zstd,
        }
    }

    /// The TOC's blob range `[start, end)` for a blob of `blob_size` bytes.
    pub fn toc_range(&self, blob_size: u64) -> (u64, u64) {
        match self.kind {
            FooterKind::Zstd => (
                self.toc_offset,
                self.toc_offset.saturating_add(self.toc_compressed_len),
            ),
            _ => (self.toc_offset, blob_size.saturating_sub(self.size)),
        }
    }
}

/// Parses the footer from `tail`, the last bytes of a blob of `blob_size`
/// bytes (`tail` may be the whole blob).
///
/// # Errors
/// [`FormatError::NeedMoreBytes`] when `tail` is shorter than needed,
/// [`FormatError::Footer`] when no layout matches or an offset points
/// outside the blob.
pub fn parse(tail: &[u8], blob_size: u64) -> Result<Footer, FormatError> {
    if (tail.len() as u64) > blob_size {
        return Err(FormatError::Footer(format!(
            "{} tail bytes for a blob of {blob_size} bytes",
            tail.len()
        )));
    }
    if tail.len() >= 8 && tail.ends_with(ZSTD_MAGIC) {
        return parse_zstd(tail, blob_size);
    }
    if tail.len() >= 8 && tail.ends_with(b"GNUlInUx") {
        return Err(FormatError::Footer(
            "64-byte zstd:chunked footer (containers/storage), not eStargz".to_string(),
        ));
    }
    if tail.len() < GZIP_FOOTER_SIZE && blob_size >= GZIP_FOOTER_SIZE as u64 {
        return Err(FormatError::NeedMoreBytes {
            wanted: MAX_FOOTER_SIZE as u64,
        });
    }
    let mut why = Vec::new();
    for (size, kind) in [
        (GZIP_FOOTER_SIZE, FooterKind::Gzip),
        (LEGACY_FOOTER_SIZE, FooterKind::Legacy),
    ] {
        if tail.len() < size {
            continue;
        }
        match parse_gzip(&tail[tail.len() - size..], kind) {
            Ok(off) if off < blob_size - size as u64 => {
                return Ok(Footer {
                    kind,
                    toc_offset: off,
                    toc_compressed_len: 0,
                    toc_uncompressed_len: 0,
                    size: size as u64,
                });
            }
            Ok(off) => why.push(format!("TOC offset {off} is past the footer")),
            Err(e) => why.push(e),
        }
    }
    Err(FormatError::Footer(format!(
        "not an eStargz blob ({})",
        why.join("; ")
    )))
}

fn parse_gzip(f: &[u8], kind: FooterKind) -> Result<u64, String> {
    if f[0] != 0x1f || f[1] != 0x8b || f[2] != 8 || f[3] & 0x04 == 0 {
        return Err("no gzip header with FEXTRA".to_string());
    }
    let xlen = u16::from_le_bytes([f[10], f[11]]) as usize;
    let payload = match kind {
        FooterKind::Gzip => {
            if xlen != 26 || &f[12..14] != b"SG" || u16::from_le_bytes([f[14], f[15]]) != 22 {
                return Err("extra field is not an SG subfield of 22 bytes".to_string());
            }
            &f[16..38]
        }
        _ => {
            if xlen != 22 {
                return Err("legacy extra field is not 22 bytes".to_string());
            }
            &f[12..34]
        }
    };
    if &payload[16..22] != b"STARGZ" {
        return Err("extra field does not end in STARGZ".to_string());
    }
    let hex = std::str::from_utf8(&payload[..16]).map_err(|_| "offset is not ASCII")?;
    let off = u64::from_str_radix(hex, 16).map_err(|_| format!("offset {hex:?} is not hex"))?;
    // The member must be a well-formed, empty gzip member.
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .map_err(|e| format!("footer member: {e}"))?;
    if !out.is_empty() {
        return Err("footer member is not empty".to_string());
    }
    Ok(off)
}

fn parse_zstd(tail: &[u8], blob_size: u64) -> Result<Footer, FormatError> {
    if tail.len() < ZSTD_FOOTER_SIZE + 8 {
        return Err(FormatError::NeedMoreBytes {
            wanted: MAX_FOOTER_SIZE as u64,
        });
    }
    let frame = &tail[tail.len() - ZSTD_FOOTER_SIZE - 8..];
    if frame[..8] != SKIPPABLE_HEADER {
        return Err(FormatError::Footer(
            "zstd footer is not in a 40-byte skippable frame".to_string(),
        ));
    }
    let f = &frame[8..];
    let u = |i: usize| u64::from_le_bytes(f[i..i + 8].try_into().expect("8 bytes"));
    let (off, clen, ulen, typ) = (u(0), u(8), u(16), u(24));
    if typ != 1 {
        return Err(FormatError::Footer(format!(
            "zstd footer manifest type {typ}, want 1"
        )));
    }
    let limit = blob_size - (ZSTD_FOOTER_SIZE as u64 + 8);
    if off.checked_add(clen).is_none_or(|end| end > limit) {
        return Err(FormatError::Footer(format!(
            "zstd TOC [{off}, +{clen}) is outside the blob of {blob_size} bytes"
        )));
    }
    Ok(Footer {
        kind: FooterKind::Zstd,
        toc_offset: off,
        toc_compressed_len: clen,
        toc_uncompressed_len: ulen,
        size: (ZSTD_FOOTER_SIZE + 8) as u64,
    })
}

/// The 51-byte gzip footer for a TOC at `toc_offset`.
pub fn encode_gzip(toc_offset: u64) -> [u8; GZIP_FOOTER_SIZE] {
    let mut f = [0u8; GZIP_FOOTER_SIZE];
    f[..10].copy_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff]);
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12..14].copy_from_slice(b"SG");
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f[38..43].copy_from_slice(&[1, 0, 0, 0xff, 0xff]);
    f
}

/// The 48 bytes (skippable frame header + 40-byte payload) of a zstd footer.
pub fn encode_zstd(toc_offset: u64, compressed: u64, uncompressed: u64) -> [u8; 48] {
    let mut f = [0u8; 48];
    f[..8].copy_from_slice(&SKIPPABLE_HEADER);
    for (i, v) in [toc_offset, compressed, uncompressed, 1]
        .into_iter()
        .enumerate()
    {
        f[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    f[40..48].copy_from_slice(ZSTD_MAGIC);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_footer_round_trip_and_exact_bytes() {
        let f = encode_gzip(0x1234);
        assert_eq!(&f[16..38], b"0000000000001234STARGZ");
        let blob_size = 0x1234 + 100;
        let p = parse(&f, blob_size).unwrap();
        assert_eq!(p.kind, FooterKind::Gzip);
        assert_eq!(p.toc_offset, 0x1234);
        assert_eq!(p.toc_range(blob_size), (0x1234, blob_size - 51));
        assert_eq!(p.compression(), Compression::Gzip);
    }

    #[test]
    fn legacy_footer_is_accepted() {
        let mut f = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 22, 0];
        f.extend_from_slice(b"0000000000000010STARGZ");
        f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(f.len(), LEGACY_FOOTER_SIZE);
        let mut tail = vec![7u8; 25];
        tail.extend_from_slice(&f);
        let p = parse(&tail, 200).unwrap();
        assert_eq!((p.kind, p.toc_offset, p.size), (FooterKind::Legacy, 16, 47));
    }

    #[test]
    fn zstd_footer_round_trip() {
        let f = encode_zstd(1000, 200, 900);
        let p = parse(&f, 1248).unwrap();
        assert_eq!(p.kind, FooterKind::Zstd);
        assert_eq!(p.toc_range(1248), (1000, 1200));
        assert_eq!(p.toc_uncompressed_len, 900);
        // A TOC range past the footer is refused.
        assert!(matches!(parse(&f, 1100), Err(FormatError::Footer(_))));
    }

    #[test]
    fn bad_footers_name_the_problem() {
        let mut f = encode_gzip(5);
        f[33] = b'X';
        let e = parse(&f, 500).unwrap_err().to_string();
        assert!(e.contains("STARGZ"), "{e}");
        // Offset beyond the blob.
        assert!(parse(&encode_gzip(1 << 40), 500).is_err());
        // Plain gzip tail.
        assert!(parse(&[0u8; 51], 500).is_err());
        // Too short a tail.
        assert!(matches!(
            parse(&f[40..], 500),
            Err(FormatError::NeedMoreBytes { wanted: 72 })
        ));
    }
}
