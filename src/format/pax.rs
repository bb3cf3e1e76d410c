//! PAX extended header records (POSIX.1-2017 `pax`, "pax Extended Header"),
//! parsed by their length prefix.
//!
//! ```text
//! record: "<len> <key>=<value>\n"
//!   len    decimal ASCII digits: the length in bytes of the whole record,
//!          its own digits, the space, key, '=', value and newline included
//!   key    bytes up to the first '=': not empty, no NUL
//!   value  any bytes up to the record's last byte: '\n', '=' and NUL may
//!          occur (`SCHILY.xattr.*` values are binary); `path`, `linkpath`,
//!          `uname` and `gname` values must hold no NUL (Go archive/tar)
//! data:   records back to back; NUL bytes after the last record are
//!         accepted as padding
//! ```
//!
//! The length, never a newline, ends a record: the `tar` crate's
//! `PaxExtensions` splits at `\n` and so breaks on binary values (a
//! `security.capability` value often holds `0x0a`).

/// A PAX record that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PAX record at byte {offset}: {message}")]
pub struct PaxError {
    /// Offset of the record in the extended header data.
    pub offset: usize,
    /// What is wrong with it.
    pub message: String,
}

/// One record: key and value bytes.
pub type Record = (Vec<u8>, Vec<u8>);

/// One record borrowed from the data, or why it does not parse.
pub type RecordRef<'a> = Result<(&'a [u8], &'a [u8]), PaxError>;

/// Keys whose values are names and must hold no NUL byte.
const NAME_KEYS: [&[u8]; 4] = [b"path", b"linkpath", b"uname", b"gname"];

/// Most digits a length may have (`u64::MAX` has 20).
const MAX_DIGITS: usize = 20;

/// Iterator over the records of PAX extended header data: `(key, value)`
/// borrowed from the data, in order. Stops after the first error.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    data: &'a [u8],
    at: usize,
    failed: bool,
}

/// The records of `data` (the payload of a tar `x` or `g` entry).
pub fn records(data: &[u8]) -> Records<'_> {
    Records {
        data,
        at: 0,
        failed: false,
    }
}

impl<'a> Records<'a> {
    fn fail(&mut self, message: impl Into<String>) -> Option<RecordRef<'a>> {
        self.failed = true;
        Some(Err(PaxError {
            offset: self.at,
            message: message.into(),
        }))
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = &self.data[self.at..];
        if rest.iter().all(|&b| b == 0) {
            return None; // the end, or NUL padding after the last record
        }
        let Some(space) = rest.iter().take(MAX_DIGITS + 1).position(|&b| b == b' ') else {
            return self.fail("no length field (digits then a space) at the record's start");
        };
        let digits = &rest[..space];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return self.fail(format!(
                "length field {:?} is not a decimal number",
                String::from_utf8_lossy(digits)
            ));
        }
        let Some(len) = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u64>().ok())
        else {
            return self.fail("length field overflows");
        };
        // Shortest record: digits, ' ', one key byte, '=', '\n'.
        if len < (space + 4) as u64 {
            return self.fail(format!(
                "length {len} is shorter than the record's own fields"
            ));
        }
        if len > rest.len() as u64 {
            return self.fail(format!(
                "length {len} runs past the end of the data ({} bytes left)",
                rest.len()
            ));
        }
        let len = len as usize;
        let record = &rest[..len];
        if record[len - 1] != b'\n' {
            return self.fail(format!(
                "record of length {len} does not end with a newline (wrong length?)"
            ));
        }
        let body = &record[space + 1..len - 1];
        let Some(eq) = body.iter().position(|&b| b == b'=') else {
            return self.fail("no '=' between key and value");
        };
        let (key, value) = (&body[..eq], &body[eq + 1..]);
        if key.is_empty() {
            return self.fail("empty key");
        }
        if key.contains(&0) {
            return self.fail(format!(
                "key {:?} holds a NUL byte",
                String::from_utf8_lossy(key)
            ));
        }
        if NAME_KEYS.contains(&key) && value.contains(&0) {
            return self.fail(format!(
                "{} value holds a NUL byte",
                String::from_utf8_lossy(key)
            ));
        }
        self.at += len;
        Some(Ok((key, value)))
    }
}

/// All records of `data`, owned, in order (a key may repeat; the last wins
/// for whoever applies them).
///
/// # Errors
/// [`PaxError`] at the first record whose length field is not decimal,
/// is too short for the record, runs past the data or does not land on a
/// newline; a record without `=`, with an empty key or a NUL in the key,
/// or a NUL in a `path`/`linkpath`/`uname`/`gname` value; trailing bytes
/// that are not a record and not all NUL.
pub fn parse(data: &[u8]) -> Result<Vec<Record>, PaxError> {
    records(data)
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect()
}

/// Appends one record `"<len> <key>=<value>\n"` to `out`, `len` counting
/// the whole record, its own digits included.
pub fn encode_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(recs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in recs {
            encode_record(&mut out, k, v);
        }
        out
    }

    #[test]
    fn lengths_count_the_whole_record() {
        assert_eq!(enc(&[(b"path", b"a")]), b"9 path=a\n");
        // 7 + 89 + 3 bytes: the length itself needs 3 digits.
        let v = vec![b'x'; 89];
        let r = enc(&[(b"linkpat", &v)]);
        assert_eq!(r.len(), 102);
        assert!(r.starts_with(b"102 linkpat="));
        // 99 bytes with two digits, 100 with three.
        let r = enc(&[(b"k", &[b'v'; 93][..])]);
        assert_eq!((r.len(), &r[..5]), (99, &b"99 k="[..]));
        let r = enc(&[(b"k", &[b'v'; 94][..])]);
        assert_eq!((r.len(), &r[..4]), (101, &b"101 "[..]));
    }

    #[test]
    fn values_with_newlines_equals_and_nuls_round_trip() {
        // A v2 security.capability value: `0a 0a` inside, NULs around.
        let cap: &[u8] = &[
            1, 0, 0, 2, 0x0a, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let recs: Vec<(&[u8], &[u8])> = vec![
            (b"SCHILY.xattr.security.capability", cap),
            (b"SCHILY.xattr.user.eq", b"a=b\n=\n"),
            (b"SCHILY.xattr.user.nl", b"\n"),
            (b"path", b"dir/with\nnewline"),
            (b"mtime", b"1700000000.5"),
        ];
        let data = enc(&recs);
        let got = parse(&data).unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> =
            recs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(got, want);
        // The tar crate's newline split fails on the same data.
        assert!(tar::PaxExtensions::new(&data).any(|r| r.is_err()));
    }

    #[test]
    fn trailing_nuls_are_padding_and_empty_data_has_no_records() {
        let mut data = enc(&[(b"uid", b"1000")]);
        data.extend_from_slice(&[0; 7]);
        assert_eq!(parse(&data).unwrap(), [(b"uid".to_vec(), b"1000".to_vec())]);
        assert!(parse(b"").unwrap().is_empty());
        assert!(parse(&[0; 512]).unwrap().is_empty());
    }

    #[test]
    fn bad_records_name_the_problem_and_offset() {
        let good = enc(&[(b"uid", b"1")]); // "8 uid=1\n"
        let at = good.len();
        let cases: [(&[u8], usize, &str); 9] = [
            (b"x path=a\n", 0, "not a decimal number"),
            (b"-9 path=a\n", 0, "not a decimal number"),
            (b"path=a\n", 0, "no length field"),
            (b"4 k=\n", 0, "shorter than the record's own fields"),
            (
                b"90 path=a\n",
                0,
                "runs past the end of the data (10 bytes left)",
            ),
            (b"9 path=ab\n", 0, "does not end with a newline"),
            (b"8 patha\n", 0, "no '='"),
            (b"5 =a\n", 0, "empty key"),
            (b"12 path=a\0b\n", 0, "path value holds a NUL byte"),
        ];
        for (bad, offset, want) in cases {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.offset, offset, "{bad:?}");
            assert!(e.message.contains(want), "{bad:?}: {e}");
        }
        // After a good record, the offset is the bad one's.
        let mut data = good.clone();
        data.extend_from_slice(b"99999999999999999999999 k=v\n");
        let e = parse(&data).unwrap_err();
        assert_eq!(e.offset, at);
        assert!(
            e.to_string()
                .starts_with(&format!("PAX record at byte {at}: "))
        );
        // Junk after the records that is not NUL padding.
        let mut data = good;
        data.extend_from_slice(b"\0\0junk");
        assert!(parse(&data).is_err());
        // A NUL in an xattr key is refused, in its value kept.
        assert!(parse(&enc(&[(b"SCHILY.xattr.a\0b", b"v")])).is_err());
        assert_eq!(
            parse(&enc(&[(b"SCHILY.xattr.a", b"\0")])).unwrap()[0].1,
            b"\0"
        );
    }
}
