//! zstd:chunked footers (FORMATS.md §2.2, §1.3): the payload of the blob's
//! last skippable frame, all little-endian u64, told apart by the last 8 bytes.
//!
//! ```text
//! current (64 bytes, "GNUlInUx"):
//!   manifestOffset | manifestCompressedLen | manifestUncompressedLen | type=1 |
//!   tarSplitOffset | tarSplitCompressedLen | tarSplitUncompressedLen | magic
//! legacy (40 bytes, "GnUlInUx", the 2020 format skopeo 1.9.3 writes):
//!   manifestOffset | manifestCompressedLen | manifestUncompressedLen | type=1 | magic
//! ```
//!
//! containers/storage never reads the footer (the annotations carry the same
//! positions); it is parsed here for blobs whose descriptor lost them.

use crate::format::FormatError;

use super::{MAX_TOC_BYTES, Position};

/// Payload size of the current footer.
pub const FOOTER_SIZE: usize = 64;
/// Payload size of the legacy footer.
pub const LEGACY_FOOTER_SIZE: usize = 40;
/// Bytes to fetch from the end to parse either footer (payload + frame header).
pub const MAX_FOOTER_BYTES: usize = FOOTER_SIZE + 8;

const MAGIC: &[u8; 8] = b"GNUlInUx";
const LEGACY_MAGIC: &[u8; 8] = b"GnUlInUx";
const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// `ManifestTypeCRFS`, the only manifest type.
const MANIFEST_TYPE_CRFS: u64 = 1;

/// Which footer layout a blob ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FooterKind {
    /// 64 bytes, `GNUlInUx`, with the tar-split position.
    Current,
    /// 40 bytes, `GnUlInUx` (also eStargz's zstd footer, FORMATS.md §1.3).
    Legacy,
}

impl FooterKind {
    /// Payload size of this layout.
    pub fn payload_size(self) -> usize {
        match self {
            FooterKind::Current => FOOTER_SIZE,
            FooterKind::Legacy => LEGACY_FOOTER_SIZE,
        }
    }
}

/// A parsed footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Layout.
    pub kind: FooterKind,
    /// Where the compressed TOC ("manifest") is.
    pub manifest: Position,
    /// Where the compressed tar-split data is (current layout, when non-zero).
    pub tar_split: Option<Position>,
}

impl Footer {
    /// Bytes the footer takes at the end of the blob, frame header included.
    pub fn size(&self) -> u64 {
        self.kind.payload_size() as u64 + 8
    }

    /// The footer's bytes: skippable frame header and payload. A legacy
    /// footer has no room for the tar-split position; it is dropped.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.kind.payload_size();
        let mut f = Vec::with_capacity(n + 8);
        f.extend_from_slice(&SKIPPABLE_MAGIC);
        f.extend_from_slice(&(n as u32).to_le_bytes());
        let m = &self.manifest;
        for v in [
            m.offset,
            m.compressed_len,
            m.uncompressed_len,
            MANIFEST_TYPE_CRFS,
        ] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        match self.kind {
            FooterKind::Current => {
                let t = self.tar_split.unwrap_or_default();
                for v in [t.offset, t.compressed_len, t.uncompressed_len] {
                    f.extend_from_slice(&v.to_le_bytes());
                }
                f.extend_from_slice(MAGIC);
            }
            FooterKind::Legacy => f.extend_from_slice(LEGACY_MAGIC),
        }
        f
    }
}

/// Parses the footer from `tail`, the last bytes of a blob of `blob_size`
/// bytes (`tail` may be the whole blob).
///
/// # Errors
/// [`FormatError::NeedMoreBytes`] when `tail` is too short,
/// [`FormatError::Footer`] for an unknown magic, a bad frame header, a
/// manifest type other than 1 or a position outside the blob,
/// [`FormatError::TooLarge`] for a TOC past [`MAX_TOC_BYTES`].
pub fn parse(tail: &[u8], blob_size: u64) -> Result<Footer, FormatError> {
    if tail.len() as u64 > blob_size {
        return Err(FormatError::Footer(format!(
            "{} tail bytes for a blob of {blob_size} bytes",
            tail.len()
        )));
    }
    let kind = if tail.ends_with(MAGIC) {
        FooterKind::Current
    } else if tail.ends_with(LEGACY_MAGIC) {
        FooterKind::Legacy
    } else if tail.len() < 8 && blob_size >= 8 {
        return Err(FormatError::NeedMoreBytes {
            wanted: MAX_FOOTER_BYTES as u64,
        });
    } else {
        return Err(FormatError::Footer(
            "no zstd:chunked footer magic (GNUlInUx or GnUlInUx)".to_string(),
        ));
    };
    let n = kind.payload_size();
    if tail.len() < n + 8 {
        if blob_size >= (n + 8) as u64 {
            return Err(FormatError::NeedMoreBytes {
                wanted: MAX_FOOTER_BYTES as u64,
            });
        }
        return Err(FormatError::Footer(format!(
            "blob of {blob_size} bytes is shorter than a {n}-byte footer"
        )));
    }
    let frame = &tail[tail.len() - n - 8..];
    if frame[..4] != SKIPPABLE_MAGIC || frame[4..8] != (n as u32).to_le_bytes() {
        return Err(FormatError::Footer(format!(
            "footer is not in a {n}-byte skippable frame"
        )));
    }
    let f = &frame[8..];
    let u = |i: usize| u64::from_le_bytes(f[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    if u(3) != MANIFEST_TYPE_CRFS {
        return Err(FormatError::Footer(format!(
            "manifest type {}, want {MANIFEST_TYPE_CRFS}",
            u(3)
        )));
    }
    let limit = blob_size - (n as u64 + 8);
    let manifest = Position {
        offset: u(0),
        compressed_len: u(1),
        uncompressed_len: u(2),
    };
    manifest.check("TOC", limit)?;
    let tar_split = match kind {
        FooterKind::Legacy => None,
        FooterKind::Current => {
            let t = Position {
                offset: u(4),
                compressed_len: u(5),
                uncompressed_len: u(6),
            };
            if t == Position::default() {
                None
            } else {
                t.check("tar-split", limit)?;
                Some(t)
            }
        }
    };
    Ok(Footer {
        kind,
        manifest,
        tar_split,
    })
}

impl Position {
    /// Checks the span lies in the first `limit` bytes of the blob and its
    /// sizes are under [`MAX_TOC_BYTES`].
    pub(crate) fn check(&self, what: &'static str, limit: u64) -> Result<(), FormatError> {
        for size in [self.compressed_len, self.uncompressed_len] {
            if size > MAX_TOC_BYTES {
                return Err(FormatError::TooLarge {
                    what,
                    size,
                    max: MAX_TOC_BYTES,
                });
            }
        }
        if self.end().is_none_or(|end| end > limit) {
            return Err(FormatError::Footer(format!(
                "{what} [{}, +{}) is outside the first {limit} bytes of the blob",
                self.offset, self.compressed_len
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64, c: u64, u: u64) -> Position {
        Position {
            offset,
            compressed_len: c,
            uncompressed_len: u,
        }
    }

    #[test]
    fn current_footer_round_trip_and_bytes() {
        let f = Footer {
            kind: FooterKind::Current,
            manifest: pos(1000, 200, 900),
            tar_split: Some(pos(1208, 50, 300)),
        };
        let b = f.encode();
        assert_eq!(b.len(), 72);
        assert_eq!(&b[..8], &[0x50, 0x2a, 0x4d, 0x18, 0x40, 0, 0, 0]);
        assert_eq!(&b[64..], b"GNUlInUx");
        let mut blob = vec![0u8; 1300];
        blob.extend_from_slice(&b);
        assert_eq!(parse(&blob, blob.len() as u64).unwrap(), f);
        assert_eq!(parse(&b, 1372).unwrap().size(), 72);
        // No tar-split: all zero, parsed back as None.
        let f0 = Footer {
            tar_split: None,
            ..f.clone()
        };
        assert_eq!(parse(&f0.encode(), 1300).unwrap(), f0);
    }

    #[test]
    fn legacy_footer_round_trip_and_bytes() {
        let f = Footer {
            kind: FooterKind::Legacy,
            manifest: pos(1063225, 4056, 56584),
            tar_split: None,
        };
        let b = f.encode();
        assert_eq!(b.len(), 48);
        assert_eq!(&b[..8], &[0x50, 0x2a, 0x4d, 0x18, 0x28, 0, 0, 0]);
        assert_eq!(&b[40..], b"GnUlInUx");
        // It is byte for byte eStargz's zstd footer.
        assert_eq!(
            b,
            crate::format::estargz::footer::encode_zstd(1063225, 4056, 56584)
        );
        assert_eq!(parse(&b, 1067329).unwrap(), f);
    }

    #[test]
    fn bad_footers_name_the_problem() {
        let f = Footer {
            kind: FooterKind::Current,
            manifest: pos(10, 20, 30),
            tar_split: None,
        };
        let good = f.encode();
        // Manifest past the footer.
        let e = parse(&good, 80).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        // Wrong type.
        let mut b = good.clone();
        b[8 + 24] = 2;
        assert!(parse(&b, 500).unwrap_err().to_string().contains("type 2"));
        // Wrong frame size.
        let mut b = good.clone();
        b[4] = 0x28;
        assert!(
            parse(&b, 500)
                .unwrap_err()
                .to_string()
                .contains("skippable")
        );
        // Short tail.
        assert!(matches!(
            parse(&good[40..], 500),
            Err(FormatError::NeedMoreBytes { wanted: 72 })
        ));
        // Huge TOC.
        let big = Footer {
            manifest: pos(0, MAX_TOC_BYTES + 1, 1),
            ..f
        };
        assert!(matches!(
            parse(&big.encode(), u64::MAX),
            Err(FormatError::TooLarge { .. })
        ));
        assert!(parse(&[0u8; 72], 500).is_err());
    }
}
