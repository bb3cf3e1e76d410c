//! Content digests (OCI image-spec `descriptor.md` "Digests"): `sha256:<hex>`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

/// Length of a digest's text: `sha256:` and 64 hex digits.
const LEN: usize = 71;
const PREFIX: &[u8; 7] = b"sha256:";

/// A validated `sha256:` digest: algorithm `sha256` and 64 lowercase hex
/// digits. Other registered algorithms (sha512) are refused for now: every
/// format lazysnap reads uses sha256.
///
/// One pointer (8 bytes; `Option<Digest>` too) to the 71 bytes of its text,
/// shared and reference counted: a clone never allocates, so a TOC entry
/// and its chunk hold one copy, and a read that clones its chunk's digest
/// as a cache key costs an atomic increment. Equality, order and hashing
/// are those of the text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(Arc<[u8; LEN]>);

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("digest {0:?}: want sha256: followed by 64 lowercase hex digits")]
pub struct BadDigest(pub String);

/// The text of the digest whose sha256 value is `hash`.
fn text_of(hash: &[u8]) -> [u8; LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [0u8; LEN];
    t[..7].copy_from_slice(PREFIX);
    for (i, b) in hash.iter().enumerate() {
        t[7 + 2 * i] = HEX[usize::from(b >> 4)];
        t[8 + 2 * i] = HEX[usize::from(b & 15)];
    }
    t
}

impl Digest {
    /// The digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest(Arc::new(text_of(&Sha256::digest(bytes))))
    }

    /// The digest whose sha256 value is `hash` (a finished hasher's output).
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        Digest(Arc::new(text_of(&hash)))
    }

    /// The hex part, without `sha256:`.
    pub fn hex(&self) -> &str {
        &self.as_str()[7..]
    }

    /// The whole string, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        // Every constructor fills the text with ASCII only (`sha256:` and hex
        // digits, written by `text_of` or checked by `from_str`); checking 71
        // bytes costs less than a cache miss.
        std::str::from_utf8(&self.0[..]).expect("a digest's text is ASCII")
    }

    /// Whether `bytes` hash to this digest (without allocating).
    pub fn verify(&self, bytes: &[u8]) -> bool {
        text_of(&Sha256::digest(bytes)) == *self.0
    }
}

impl FromStr for Digest {
    type Err = BadDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.len() == LEN
            && s.starts_with("sha256:")
            && s[7..]
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        match <[u8; LEN]>::try_from(s.as_bytes()) {
            Ok(text) if ok => Ok(Digest(Arc::new(text))),
            _ => Err(BadDigest(s.chars().take(80).collect())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Digest {
    /// As the former `Digest(String)`: `Digest("sha256:…")`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Digest").field(&self.as_str()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_of_empty_json() {
        // The OCI empty descriptor's blob `{}` (image-spec manifest.md).
        let d = Digest::sha256_of(b"{}");
        let text = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        assert_eq!(d.as_str(), text);
        assert_eq!(
            d.hex(),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(d.to_string(), text);
        assert_eq!(format!("{d:?}"), format!("Digest({text:?})"));
        assert!(d.verify(b"{}"));
        assert!(!d.verify(b"{} "));
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
        let hash: [u8; 32] = Sha256::digest(b"{}").into();
        assert_eq!(Digest::from_sha256(hash), d);
    }

    #[test]
    fn clones_share_the_text_and_compare_by_it() {
        assert_eq!(std::mem::size_of::<Digest>(), 8);
        assert_eq!(std::mem::size_of::<Option<Digest>>(), 8);
        let a = Digest::sha256_of(b"a");
        let b = a.clone();
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        // Order and equality are the text's, whatever the allocation.
        let a2: Digest = a.as_str().parse().unwrap();
        assert_eq!(a, a2);
        let (lo, hi) = (
            "sha256:0000000000000000000000000000000000000000000000000000000000000009"
                .parse::<Digest>()
                .unwrap(),
            "sha256:00000000000000000000000000000000000000000000000000000000000000a0"
                .parse::<Digest>()
                .unwrap(),
        );
        assert!(lo < hi);
        assert_eq!(lo.as_str().cmp(hi.as_str()), lo.cmp(&hi));
    }

    #[test]
    fn malformed_digests_are_refused() {
        for bad in [
            "",
            "sha256:",
            "sha512:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "sha256:44136FA355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8",
            // 71 bytes, not all ASCII.
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaffé",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }
}
