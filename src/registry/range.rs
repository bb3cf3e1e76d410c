//! Byte ranges of blobs: the half-open [`ByteRange`], the inclusive HTTP
//! `Range` header it turns into, and `Content-Range` parsing (RFC 9110 §14).

use std::fmt;

/// A half-open byte range `[start, end)` of a blob; never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    start: u64,
    end: u64,
}

impl ByteRange {
    /// The range `[start, end)`, or `None` when it is empty or reversed.
    pub fn new(start: u64, end: u64) -> Option<ByteRange> {
        (start < end).then_some(ByteRange { start, end })
    }

    /// First byte.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Number of bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Always false: a `ByteRange` is never empty (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `Range` header value, `bytes=<start>-<end - 1>`: HTTP ranges are
    /// inclusive, this is the only place that knows it.
    pub fn to_http_header(&self) -> String {
        format!("bytes={}-{}", self.start, self.end - 1)
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// A parsed `Content-Range: bytes <first>-<last>/<total|*>` of a satisfied range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// The bytes sent, half-open.
    pub range: ByteRange,
    /// The whole blob's size, when the server said it.
    pub total: Option<u64>,
}

/// Parses a `Content-Range` header of a 206 (or a 200 carrying one).
///
/// Refuses `last < first`, a `last` beyond `total`, the unsatisfied form
/// `bytes */<total>` and anything not in the `bytes` unit; the error is a
/// short reason.
pub fn parse_content_range(value: &str) -> Result<ContentRange, &'static str> {
    let rest = value
        .trim()
        .strip_prefix("bytes")
        .ok_or("unit is not bytes")?
        .trim_start();
    let (span, total) = rest.split_once('/').ok_or("no '/<total>'")?;
    let (first, last) = span.trim().split_once('-').ok_or("no '<first>-<last>'")?;
    let first: u64 = digits(first).ok_or("first byte is not a number")?;
    let last: u64 = digits(last).ok_or("last byte is not a number")?;
    if last < first {
        return Err("last byte before first");
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(digits(t).ok_or("total is not a number")?),
    };
    if let Some(t) = total
        && last >= t
    {
        return Err("last byte beyond total");
    }
    let end = last.checked_add(1).ok_or("last byte overflows")?;
    Ok(ContentRange {
        range: ByteRange { start: first, end },
        total,
    })
}

fn digits(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_inclusive() {
        assert_eq!(ByteRange::new(0, 1).unwrap().to_http_header(), "bytes=0-0");
        assert_eq!(
            ByteRange::new(10, 110).unwrap().to_http_header(),
            "bytes=10-109"
        );
        assert_eq!(ByteRange::new(5, 5), None);
        assert_eq!(ByteRange::new(6, 5), None);
        assert_eq!(ByteRange::new(3, 8).unwrap().len(), 5);
    }

    #[test]
    fn content_range_accepts_valid_forms() {
        let cr = parse_content_range("bytes 0-0/1234").unwrap();
        assert_eq!(
            (cr.range.start(), cr.range.end(), cr.total),
            (0, 1, Some(1234))
        );
        let cr = parse_content_range("bytes 100-199/*").unwrap();
        assert_eq!(
            (cr.range.start(), cr.range.end(), cr.total),
            (100, 200, None)
        );
        let cr = parse_content_range(" bytes  7-7/8 ").unwrap();
        assert_eq!(
            (cr.range.start(), cr.range.end(), cr.total),
            (7, 8, Some(8))
        );
    }

    #[test]
    fn content_range_never_accepts_end_before_start() {
        assert_eq!(
            parse_content_range("bytes 10-9/100"),
            Err("last byte before first")
        );
        for start in 0..20u64 {
            for end in 0..20u64 {
                let v = format!("bytes {start}-{end}/100");
                match parse_content_range(&v) {
                    Ok(cr) => {
                        assert!(end >= start, "{v}");
                        assert_eq!(cr.range.len(), end - start + 1);
                    }
                    Err(_) => assert!(end < start, "{v}"),
                }
            }
        }
    }

    #[test]
    fn content_range_refuses_malformed() {
        for bad in [
            "",
            "bytes */100",
            "items 0-1/2",
            "bytes 0-1",
            "bytes -1-2/3",
            "bytes 0-+1/3",
            "bytes 0-5/5",
            "bytes a-b/c",
            "bytes 0-18446744073709551615/*",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad:?}");
        }
    }
}
