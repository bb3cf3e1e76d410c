//! The layer descriptor annotations that locate and anchor a zstd:chunked
//! TOC (FORMATS.md §2.3), under the current `io.github.containers.*` keys and
//! the older `io.containers.*` keys (skopeo 1.9.3).

use std::collections::HashMap;

use crate::format::FormatError;
use crate::oci::Digest;
use crate::oci::labels::STARGZ_TOC_DIGEST;

use super::{MAX_TOC_BYTES, Position};

/// sha256 of the compressed TOC (the trust anchor).
pub const MANIFEST_CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
/// `<offset>:<compressedLen>:<uncompressedLen>:<type>` of the TOC.
pub const MANIFEST_POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
/// `<offset>:<compressedLen>:<uncompressedLen>` of the tar-split data.
pub const TARSPLIT_POSITION: &str = "io.github.containers.zstd-chunked.tarsplit-position";
/// [`MANIFEST_CHECKSUM`] as containers/storage wrote it until 2022.
pub const LEGACY_MANIFEST_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
/// [`MANIFEST_POSITION`], older key.
pub const LEGACY_MANIFEST_POSITION: &str = "io.containers.zstd-chunked.manifest-position";
/// [`TARSPLIT_POSITION`], older key.
pub const LEGACY_TARSPLIT_POSITION: &str = "io.containers.zstd-chunked.tarsplit-position";

/// What the annotations say about a layer's TOC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRef {
    /// sha256 of the compressed TOC bytes.
    pub checksum: Digest,
    /// Where the compressed TOC is.
    pub position: Position,
    /// Where the tar-split data is, when annotated.
    pub tar_split: Option<Position>,
}

impl ManifestRef {
    /// Reads the annotations of a layer descriptor: `Ok(None)` when it has
    /// no zstd:chunked checksum.
    ///
    /// # Errors
    /// [`FormatError::Toc`] when both the stargz TOC digest and a manifest
    /// checksum are present (ambiguous, as containers/storage's
    /// `GetTOCDigest` refuses), when the checksum has no position or either
    /// does not parse; [`FormatError::TooLarge`] for sizes past [`MAX_TOC_BYTES`].
    pub fn from_annotations(a: &HashMap<String, String>) -> Result<Option<Self>, FormatError> {
        let (checksum_key, position_key, tarsplit_key) = if a.contains_key(MANIFEST_CHECKSUM) {
            (MANIFEST_CHECKSUM, MANIFEST_POSITION, TARSPLIT_POSITION)
        } else {
            (
                LEGACY_MANIFEST_CHECKSUM,
                LEGACY_MANIFEST_POSITION,
                LEGACY_TARSPLIT_POSITION,
            )
        };
        let Some(checksum) = a.get(checksum_key) else {
            return Ok(None);
        };
        if a.contains_key(STARGZ_TOC_DIGEST) {
            return Err(FormatError::Toc(format!(
                "both {STARGZ_TOC_DIGEST} and {checksum_key} are set"
            )));
        }
        let checksum: Digest = checksum
            .parse()
            .map_err(|e| FormatError::Toc(format!("{checksum_key}: {e}")))?;
        let position = a
            .get(position_key)
            .ok_or_else(|| FormatError::Toc(format!("{checksum_key} without {position_key}")))?;
        let position = parse_position(position)?;
        let tar_split = a
            .get(tarsplit_key)
            .map(|s| parse_span(s, tarsplit_key, 3))
            .transpose()?;
        Ok(Some(ManifestRef {
            checksum,
            position,
            tar_split,
        }))
    }
}

/// Parses a `manifest-position` value, `<offset>:<compressedLen>:<uncompressedLen>:<type>`
/// in decimal; the type must be 1 (`ManifestTypeCRFS`).
///
/// # Errors
/// [`FormatError::Toc`] naming the value; [`FormatError::TooLarge`] past
/// [`MAX_TOC_BYTES`].
pub fn parse_position(s: &str) -> Result<Position, FormatError> {
    parse_span(s, "manifest-position", 4)
}

fn parse_span(s: &str, what: &'static str, fields: usize) -> Result<Position, FormatError> {
    let bad = |why: &str| FormatError::Toc(format!("{what} {s:?}: {why}"));
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != fields {
        return Err(bad(&format!("want {fields} fields")));
    }
    let mut v = [0u64; 4];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("not a decimal number"));
        }
        v[i] = p.parse().map_err(|_| bad("number out of range"))?;
    }
    if fields == 4 && v[3] != 1 {
        return Err(bad(&format!("manifest type {}, want 1", v[3])));
    }
    let p = Position {
        offset: v[0],
        compressed_len: v[1],
        uncompressed_len: v[2],
    };
    for size in [p.compressed_len, p.uncompressed_len] {
        if size > MAX_TOC_BYTES {
            return Err(FormatError::TooLarge {
                what,
                size,
                max: MAX_TOC_BYTES,
            });
        }
    }
    if p.end().is_none() {
        return Err(bad("offset + length overflows"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:12a173921d66a8d889456be87decb2913e5ff47c7cd0c298f755492860bc6269";

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn positions_parse_and_are_capped() {
        assert_eq!(
            parse_position("1063225:4056:56584:1").unwrap(),
            Position {
                offset: 1063225,
                compressed_len: 4056,
                uncompressed_len: 56584
            }
        );
        for bad in [
            "1:2:3:2",
            "1:2:3",
            "1:2:3:1:5",
            "-1:2:3:1",
            "a:2:3:1",
            ":2:3:1",
            "99999999999999999999999:1:1:1",
        ] {
            assert!(
                matches!(parse_position(bad), Err(FormatError::Toc(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_position(&format!("0:{}:1:1", MAX_TOC_BYTES + 1)),
            Err(FormatError::TooLarge { .. })
        ));
        assert!(parse_position(&format!("{}:5:5:1", u64::MAX)).is_err());
    }

    #[test]
    fn both_key_sets_are_read() {
        let old = map(&[
            (LEGACY_MANIFEST_CHECKSUM, D),
            (LEGACY_MANIFEST_POSITION, "1063225:4056:56584:1"),
        ]);
        let r = ManifestRef::from_annotations(&old).unwrap().unwrap();
        assert_eq!(r.checksum.as_str(), D);
        assert_eq!(r.position.compressed_len, 4056);
        assert_eq!(r.tar_split, None);
        let new = map(&[
            (MANIFEST_CHECKSUM, D),
            (MANIFEST_POSITION, "10:20:30:1"),
            (TARSPLIT_POSITION, "30:5:50"),
        ]);
        let r = ManifestRef::from_annotations(&new).unwrap().unwrap();
        assert_eq!(r.position.offset, 10);
        assert_eq!(r.tar_split.unwrap().uncompressed_len, 50);
        assert_eq!(
            ManifestRef::from_annotations(&map(&[(STARGZ_TOC_DIGEST, D)])).unwrap(),
            None
        );
    }

    #[test]
    fn ambiguous_or_incomplete_annotations_are_refused() {
        let both = map(&[
            (STARGZ_TOC_DIGEST, D),
            (MANIFEST_CHECKSUM, D),
            (MANIFEST_POSITION, "10:20:30:1"),
        ]);
        let e = ManifestRef::from_annotations(&both)
            .unwrap_err()
            .to_string();
        assert!(e.contains("both"), "{e}");
        let no_pos = map(&[(MANIFEST_CHECKSUM, D)]);
        assert!(ManifestRef::from_annotations(&no_pos).is_err());
        let bad_digest = map(&[
            (MANIFEST_CHECKSUM, "md5:x"),
            (MANIFEST_POSITION, "10:20:30:1"),
        ]);
        assert!(ManifestRef::from_annotations(&bad_digest).is_err());
    }
}
