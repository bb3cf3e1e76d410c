//! Content digests (OCI image-spec `descriptor.md` "Digests"): `sha256:<hex>`.

use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Length of a digest's text: `sha256:` and 64 hex digits.
const LEN: usize = 71;
const PREFIX: &[u8; 7] = b"sha256:";

/// A validated `sha256:` digest: algorithm `sha256` and 64 lowercase hex
/// digits. Other registered algorithms (sha512) are refused for now: every
/// format lazysnap reads uses sha256.
///
/// Held as the 32 bytes of the sha256 value, inline: 32 bytes (33 as an
/// `Option`), no allocation, so a clone is a copy and a TOC chunk handed out
/// by value (`format::Entry::chunk`) carries its digest for free.
/// Equality, order and hashing are those of the value; the order is that
/// of the text too (lowercase hex keeps the byte order). The text is
/// formatted on demand ([`Digest::as_str`], [`Digest::hex`], `Display`)
/// into a [`DigestText`] on the stack.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("digest {0:?}: want sha256: followed by 64 lowercase hex digits")]
pub struct BadDigest(pub String);

/// The text of a [`Digest`], formatted on the stack (72 bytes, no
/// allocation): the whole `sha256:<hex>` ([`Digest::as_str`]) or its
/// 64 hex digits ([`Digest::hex`]). Reads as `str`: deref, `Display`,
/// `Debug` as a string, `AsRef<str | Path>`, comparisons with `str`,
/// `&str` and `String`. Bind it to a local to borrow the `str` beyond one
/// expression.
#[derive(Clone, Copy)]
pub struct DigestText {
    text: [u8; LEN],
    /// 0 for the whole text, 7 for the hex digits only.
    start: u8,
}

impl DigestText {
    /// The text as a string slice.
    pub fn as_str(&self) -> &str {
        // Every byte is ASCII (`sha256:` and hex digits written by
        // `text_of`), so this never fails; checking 71 bytes is cheap.
        std::str::from_utf8(&self.text[usize::from(self.start)..])
            .expect("a digest's text is ASCII")
    }
}

/// The text of the digest whose sha256 value is `hash`.
fn text_of(hash: &[u8; 32]) -> [u8; LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [0u8; LEN];
    t[..7].copy_from_slice(PREFIX);
    for (i, b) in hash.iter().enumerate() {
        t[7 + 2 * i] = HEX[usize::from(b >> 4)];
        t[8 + 2 * i] = HEX[usize::from(b & 15)];
    }
    t
}

/// The value of one lowercase hex digit.
fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl Digest {
    /// The digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest whose sha256 value is `hash` (a finished hasher's output).
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        Digest(hash)
    }

    /// The sha256 value: the 32 bytes the hex digits spell.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hex part, without `sha256:`: 64 lowercase hex digits.
    pub fn hex(&self) -> DigestText {
        DigestText {
            text: text_of(&self.0),
            start: PREFIX.len() as u8,
        }
    }

    /// The whole string, `sha256:<hex>` (71 bytes).
    pub fn as_str(&self) -> DigestText {
        DigestText {
            text: text_of(&self.0),
            start: 0,
        }
    }

    /// Whether `bytes` hash to this digest (without allocating).
    pub fn verify(&self, bytes: &[u8]) -> bool {
        <[u8; 32]>::from(Sha256::digest(bytes)) == self.0
    }
}

impl FromStr for Digest {
    type Err = BadDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadDigest(s.chars().take(80).collect());
        let hex = match s.as_bytes().split_first_chunk::<7>() {
            Some((prefix, hex)) if prefix == PREFIX && hex.len() == 64 => hex,
            _ => return Err(bad()),
        };
        let mut hash = [0u8; 32];
        for (out, pair) in hash.iter_mut().zip(hex.chunks_exact(2)) {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(hi), Some(lo)) => *out = hi << 4 | lo,
                _ => return Err(bad()),
            }
        }
        Ok(Digest(hash))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl fmt::Debug for Digest {
    /// As the former `Digest(String)`: `Digest("sha256:…")`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Digest").field(&&*self.as_str()).finish()
    }
}

impl Deref for DigestText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for DigestText {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<Path> for DigestText {
    fn as_ref(&self) -> &Path {
        Path::new(self.as_str())
    }
}

impl fmt::Display for DigestText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DigestText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<DigestText> for String {
    fn from(t: DigestText) -> String {
        t.as_str().to_string()
    }
}

impl PartialEq for DigestText {
    fn eq(&self, o: &DigestText) -> bool {
        self.as_str() == o.as_str()
    }
}

impl Eq for DigestText {}

impl PartialEq<str> for DigestText {
    fn eq(&self, o: &str) -> bool {
        self.as_str() == o
    }
}

impl PartialEq<&str> for DigestText {
    fn eq(&self, o: &&str) -> bool {
        self.as_str() == *o
    }
}

impl PartialEq<String> for DigestText {
    fn eq(&self, o: &String) -> bool {
        self.as_str() == o
    }
}

impl PartialEq<DigestText> for str {
    fn eq(&self, o: &DigestText) -> bool {
        self == o.as_str()
    }
}

impl PartialEq<DigestText> for &str {
    fn eq(&self, o: &DigestText) -> bool {
        *self == o.as_str()
    }
}

impl PartialEq<DigestText> for String {
    fn eq(&self, o: &DigestText) -> bool {
        self == o.as_str()
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
        assert_eq!(
            format!("{} {:?}", d.hex(), d.as_str()),
            format!("{} {text:?}", &text[7..])
        );
        assert!(d.verify(b"{}"));
        assert!(!d.verify(b"{} "));
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
        let hash: [u8; 32] = Sha256::digest(b"{}").into();
        assert_eq!(Digest::from_sha256(hash), d);
        assert_eq!(d.sha256(), &hash);
        assert_eq!(&d.sha256()[..4], [0x44, 0x13, 0x6f, 0xa3]);
    }

    #[test]
    fn held_inline_and_ordered_as_the_text() {
        assert_eq!(std::mem::size_of::<Digest>(), 32);
        assert_eq!(std::mem::size_of::<Option<Digest>>(), 33);
        let a = Digest::sha256_of(b"a");
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
        assert_eq!(lo.as_str().cmp(&hi.as_str()), lo.cmp(&hi));
        let mut by_value = [hi.clone(), a.clone(), lo.clone()];
        let mut by_text = by_value.clone();
        by_value.sort();
        by_text.sort_by_key(|d| d.to_string());
        assert_eq!(by_value, by_text);
    }

    #[test]
    fn malformed_digests_are_refused() {
        for bad in [
            "",
            "sha256:",
            "sha512:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "sha256:44136FA355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8",
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a0",
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaffg",
            // 71 bytes, not all ASCII.
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaffé",
        ] {
            assert_eq!(bad.parse::<Digest>(), Err(BadDigest(bad.into())), "{bad}");
        }
    }
}
