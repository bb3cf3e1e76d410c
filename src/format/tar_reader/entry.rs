//! One tar entry as [`TarReader`](super::TarReader) returns it, and the
//! header field parsers it uses.

use super::{TarError, header_err, pad512};

/// Parses a tar numeric field: octal text (NUL/space padded, empty = 0) or
/// GNU base-256 (high bit of the first byte set); `None` when malformed or
/// negative.
pub fn numeric(field: &[u8]) -> Option<u64> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        if first == 0xff {
            return None;
        }
        let mut v: u64 = u64::from(first & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?.trim();
    if text.is_empty() {
        return Some(0);
    }
    if !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u64::from_str_radix(text, 8).ok()
}

/// Parses a PAX time (`1700000000`, `1700000000.5`, `-1.25`) into seconds
/// and non-negative nanoseconds (digits past the ninth are dropped).
pub fn pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u32 = digits.parse().ok()?;
    Some(match (neg, nanos) {
        (false, n) => (secs, n),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

/// A decimal PAX number (`size`, `uid`, `gid`).
pub(super) fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The bytes of a NUL-terminated field.
pub(super) fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Whether the stored checksum matches the unsigned or the signed sum.
pub(super) fn checksum_ok(h: &[u8; 512]) -> bool {
    let Some(want) = numeric(&h[148..156]) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    want == unsigned || i64::try_from(want) == Ok(signed)
}

/// The name a header block gives: ustar prefix and name, or the name field.
pub(super) fn header_path(h: &[u8; 512]) -> Vec<u8> {
    let name = cstr(&h[..100]);
    let prefix = cstr(&h[345..500]);
    if &h[257..265] == b"ustar\x0000" && !prefix.is_empty() {
        [prefix, b"/", name].concat()
    } else {
        name.to_vec()
    }
}

/// A GNU sparse (`S`) file's map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sparse {
    /// Data segments of the expanded file, `(offset, length)` in bytes, in
    /// order and not overlapping; their bytes are stored back to back.
    pub segments: Vec<(u64, u64)>,
    /// Size of the expanded file in bytes.
    pub real_size: u64,
}

/// One entry (its extension headers applied).
#[derive(Debug, Clone)]
pub struct TarEntry {
    /// Stream offset of its first header block (extension headers included).
    pub start: u64,
    /// Stream offset of its data (after the main header and, for a GNU
    /// sparse file, its extension blocks).
    pub data_start: u64,
    /// The main header block as read.
    pub header: [u8; 512],
    /// Name bytes: GNU long name, else PAX `path`, else the header's.
    pub path: Vec<u8>,
    /// Link target bytes: GNU long link, else PAX `linkpath`, else the
    /// header's (empty when none).
    pub link: Vec<u8>,
    /// Its local PAX records in order; for a `g` entry, the global records.
    pub pax: Vec<crate::format::pax::Record>,
    /// Stored data bytes (PAX `size` over the header field; for a sparse
    /// file the stored segments, not the expanded size).
    pub size: u64,
    /// The sparse map of a GNU sparse file.
    pub sparse: Option<Sparse>,
}

impl TarEntry {
    /// The typeflag byte.
    pub fn typeflag(&self) -> u8 {
        self.header[156]
    }

    /// Stream offset of the next entry's first block: the data end
    /// rounded up to a block.
    pub fn next_start(&self) -> u64 {
        self.data_start + self.size + pad512(self.size)
    }

    /// Size of the file's contents as [`TarReader`] reads them: the
    /// expanded size of a sparse file, else [`TarEntry::size`].
    pub fn file_size(&self) -> u64 {
        self.sparse.as_ref().map_or(self.size, |s| s.real_size)
    }

    /// The value of the last PAX record `key`.
    pub fn pax_value(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// `SCHILY.xattr.*` records: attribute name (prefix stripped) and raw
    /// value, in record order.
    pub fn xattrs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pax
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(b"SCHILY.xattr.").map(|n| (n, v.as_slice())))
    }

    fn id(&self, key: &[u8], off: usize) -> Result<u64, TarError> {
        let what = String::from_utf8_lossy(key);
        match self.pax_value(key) {
            Some(v) => decimal(v).ok_or_else(|| header_err(self.start, format!("bad PAX {what}"))),
            None => numeric(&self.header[off..off + 8])
                .ok_or_else(|| header_err(self.start, format!("bad {what} field"))),
        }
    }

    /// Owner: PAX `uid`, else the header's.
    ///
    /// # Errors
    /// [`TarError::Header`] when the one used is not a number.
    pub fn uid(&self) -> Result<u64, TarError> {
        self.id(b"uid", 108)
    }

    /// Group: PAX `gid`, else the header's.
    ///
    /// # Errors
    /// [`TarError::Header`] when the one used is not a number.
    pub fn gid(&self) -> Result<u64, TarError> {
        self.id(b"gid", 116)
    }

    /// Modification time (seconds, nanoseconds): PAX `mtime`, else the
    /// header's whole seconds.
    ///
    /// # Errors
    /// [`TarError::Header`] when the one used does not parse.
    pub fn mtime(&self) -> Result<(i64, u32), TarError> {
        match self.pax_value(b"mtime") {
            Some(v) => pax_time(v).ok_or_else(|| header_err(self.start, "bad PAX mtime")),
            None => numeric(&self.header[136..148])
                .and_then(|t| i64::try_from(t).ok())
                .map(|t| (t, 0))
                .ok_or_else(|| header_err(self.start, "bad mtime field")),
        }
    }
}
