//! Tar header bytes: POSIX ustar headers, preceded by a PAX extended header
//! (`x`) when a value does not fit, and the PAX sparse 1.0 map (FORMATS.md
//! §5.3, POSIX.1-2001 `pax`, GNU tar's "PAX format, version 1.0" sparse).
//!
//! ```text
//! ustar header (512 bytes)
//!   0 name[100]   100 mode[8]   108 uid[8]   116 gid[8]   124 size[12]
//! 136 mtime[12]   148 chksum[8] 156 typeflag 157 linkname[100]
//! 257 "ustar\0"   263 "00"      265 uname[32] 297 gname[32]
//! 329 devmajor[8] 337 devminor[8] 345 prefix[155] 500 pad[12]
//! ```
//!
//! Numbers are zero-padded octal ending in NUL; uname, gname and prefix stay
//! empty. A PAX record is `"<len> <key>=<value>\n"`, `<len>` counting the
//! whole record.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use super::diff::Meta;

/// The tar block size.
pub(crate) const BLOCK: u64 = 512;
const NAME_LEN: usize = 100;

/// Typeflags written.
pub(crate) mod flag {
    pub(crate) const REG: u8 = b'0';
    pub(crate) const LINK: u8 = b'1';
    pub(crate) const SYMLINK: u8 = b'2';
    pub(crate) const CHAR: u8 = b'3';
    pub(crate) const BLOCK: u8 = b'4';
    pub(crate) const DIR: u8 = b'5';
    pub(crate) const FIFO: u8 = b'6';
    pub(crate) const PAX: u8 = b'x';
}

/// One member's header, before encoding.
#[derive(Debug)]
pub(crate) struct Member<'a> {
    /// The entry name (`dir/` for directories).
    pub name: &'a [u8],
    /// The typeflag, one of [`flag`].
    pub typeflag: u8,
    /// Mode, owner, mtime.
    pub meta: &'a Meta,
    /// Bytes of payload following the header in the archive (for a sparse
    /// file: the map block plus the data chunks).
    pub size: u64,
    /// Symlink target or hardlink target; empty for other kinds.
    pub link: &'a [u8],
    /// Device numbers of a device node.
    pub dev: (u32, u32),
    /// xattrs written as `SCHILY.xattr.*`.
    pub xattrs: &'a [(OsString, Vec<u8>)],
    /// For a sparse file: its real size (PAX sparse 1.0).
    pub sparse_size: Option<u64>,
}

/// Rounds `n` up to a whole number of blocks.
pub(crate) fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Writes `v` as zero-padded octal filling `field` but its last byte (NUL);
/// `false` when it does not fit.
fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

/// Appends one PAX record.
fn record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A PAX time: seconds with up to 9 fraction digits, trailing zeros trimmed;
/// before the epoch the whole value is negative (`-1.5` = 1.5 s before).
pub(crate) fn pax_time(secs: i64, nsecs: u32) -> String {
    if nsecs == 0 {
        return secs.to_string();
    }
    let (sign, whole, frac) = if secs < 0 {
        ("-", -(secs + 1), 1_000_000_000 - nsecs)
    } else {
        ("", secs, nsecs)
    };
    let frac = format!("{frac:09}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

/// The last path component of a tar name (a directory's trailing `/` dropped).
fn base(name: &[u8]) -> &[u8] {
    let name = name.strip_suffix(b"/").unwrap_or(name);
    match name.iter().rposition(|&b| b == b'/') {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

/// The name a sparse member carries in its ustar header (GNU tar's
/// `%d/GNUSparseFile.%p/%f`, with 0 for the process id, so output stays
/// deterministic); readers that know PAX sparse use `GNU.sparse.name`.
fn sparse_placeholder(name: &[u8]) -> Vec<u8> {
    let b = base(name);
    let dir = &name[..name.len() - b.len()];
    [dir, b"GNUSparseFile.0/", b].concat()
}

/// Encodes `m`: a PAX header with its records when needed, then the ustar
/// header; the caller writes the payload (`m.size` bytes) and pads it.
pub(crate) fn encode(m: &Member<'_>) -> Vec<u8> {
    let max_octal_12: u64 = 0o77_777_777_777;
    let max_octal_8: u32 = 0o7_777_777;
    let mut pax = Vec::new();
    // Names are raw bytes, UTF-8 or not, as GNU tar writes them (no
    // `hdrcharset`: GNU tar 1.34 warns about it and ignores it).
    let long_name = m.name.len() > NAME_LEN;
    let long_link = m.link.len() > NAME_LEN;
    let header_name = match m.sparse_size {
        Some(real) => {
            record(&mut pax, b"GNU.sparse.major", b"1");
            record(&mut pax, b"GNU.sparse.minor", b"0");
            record(&mut pax, b"GNU.sparse.name", m.name);
            record(
                &mut pax,
                b"GNU.sparse.realsize",
                real.to_string().as_bytes(),
            );
            sparse_placeholder(m.name)
        }
        None => {
            if long_name {
                record(&mut pax, b"path", m.name);
            }
            m.name.to_vec()
        }
    };
    if long_link {
        record(&mut pax, b"linkpath", m.link);
    }
    if m.size > max_octal_12 {
        record(&mut pax, b"size", m.size.to_string().as_bytes());
    }
    if m.meta.uid > max_octal_8 {
        record(&mut pax, b"uid", m.meta.uid.to_string().as_bytes());
    }
    if m.meta.gid > max_octal_8 {
        record(&mut pax, b"gid", m.meta.gid.to_string().as_bytes());
    }
    let t = m.meta.mtime;
    let mtime_fits = t.nsecs == 0 && u64::try_from(t.secs).is_ok_and(|s| s <= max_octal_12);
    if !mtime_fits {
        record(&mut pax, b"mtime", pax_time(t.secs, t.nsecs).as_bytes());
    }
    for (k, v) in m.xattrs {
        record(&mut pax, &[b"SCHILY.xattr.", k.as_bytes()].concat(), v);
    }

    let mut out = Vec::new();
    if !pax.is_empty() {
        let name = [&b"PaxHeaders/"[..], base(m.name)].concat();
        let pax_meta = Meta::default();
        out.extend_from_slice(&ustar(&Ustar {
            name: &name,
            typeflag: flag::PAX,
            meta: &pax_meta,
            size: pax.len() as u64,
            link: b"",
            dev: (0, 0),
        }));
        let len = pax.len() as u64;
        out.extend_from_slice(&pax);
        out.resize(out.len() + (padded(len) - len) as usize, 0);
    }
    let meta = Meta {
        uid: if m.meta.uid > max_octal_8 {
            0
        } else {
            m.meta.uid
        },
        gid: if m.meta.gid > max_octal_8 {
            0
        } else {
            m.meta.gid
        },
        mtime: if mtime_fits {
            m.meta.mtime
        } else {
            // The whole seconds when they fit (readers without PAX), else 0.
            let s = m.meta.mtime.secs;
            super::diff::Mtime {
                secs: if (0..=max_octal_12 as i64).contains(&s) {
                    s
                } else {
                    0
                },
                nsecs: 0,
            }
        },
        ..*m.meta
    };
    out.extend_from_slice(&ustar(&Ustar {
        name: &header_name,
        typeflag: m.typeflag,
        meta: &meta,
        size: if m.size > max_octal_12 { 0 } else { m.size },
        link: m.link,
        dev: m.dev,
    }));
    out
}

/// The fields of one plain ustar header; every number must fit (the caller
/// moved the others into PAX records).
struct Ustar<'a> {
    name: &'a [u8],
    typeflag: u8,
    meta: &'a Meta,
    size: u64,
    link: &'a [u8],
    dev: (u32, u32),
}

fn ustar(u: &Ustar<'_>) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = u.name.len().min(NAME_LEN);
    h[..n].copy_from_slice(&u.name[..n]);
    let ok = octal(&mut h[100..108], u64::from(u.meta.perm & 0o7777))
        & octal(&mut h[108..116], u64::from(u.meta.uid))
        & octal(&mut h[116..124], u64::from(u.meta.gid))
        & octal(&mut h[124..136], u.size)
        & octal(
            &mut h[136..148],
            u64::try_from(u.meta.mtime.secs).unwrap_or(0),
        )
        & octal(&mut h[329..337], u64::from(u.dev.0))
        & octal(&mut h[337..345], u64::from(u.dev.1));
    // Device numbers beyond 7 octal digits have no PAX key; Linux's are
    // 12 + 20 bits, which fit.
    debug_assert!(ok, "ustar field overflow");
    h[156] = u.typeflag;
    let l = u.link.len().min(NAME_LEN);
    h[157..157 + l].copy_from_slice(&u.link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// The PAX sparse 1.0 map block that starts a sparse member's payload:
/// the chunk count, then each chunk's offset and length, one decimal number
/// per line, NUL-padded to whole blocks.
pub(crate) fn sparse_map(chunks: &[(u64, u64)]) -> Vec<u8> {
    let mut out = format!("{}\n", chunks.len()).into_bytes();
    for (off, len) in chunks {
        out.extend_from_slice(format!("{off}\n{len}\n").as_bytes());
    }
    let len = out.len() as u64;
    out.resize(padded(len) as usize, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        let mut out = Vec::new();
        record(&mut out, b"path", b"a");
        assert_eq!(out, b"9 path=a\n");
        let mut out = Vec::new();
        let v = vec![b'x'; 89]; // 4 + 89 + 3 = 96 bytes + "98" → 98 < 100
        record(&mut out, b"path", &v);
        assert_eq!(&out[..3], b"98 ");
        assert_eq!(out.len(), 98);
        let mut out = Vec::new();
        let v = vec![b'x'; 95]; // 102 + 3 digits = 105
        record(&mut out, b"path", &v);
        assert_eq!(&out[..4], b"105 ");
        assert_eq!(out.len(), 105);
    }

    #[test]
    fn pax_times_trim_zeros_and_handle_negatives() {
        assert_eq!(pax_time(1_700_000_000, 0), "1700000000");
        assert_eq!(pax_time(1_700_000_000, 123_456_789), "1700000000.123456789");
        assert_eq!(pax_time(5, 500_000_000), "5.5");
        assert_eq!(pax_time(-2, 500_000_000), "-1.5");
        assert_eq!(pax_time(-1, 0), "-1");
    }

    #[test]
    fn ustar_header_bytes() {
        let meta = Meta {
            perm: 0o4755,
            uid: 1000,
            gid: 100,
            mtime: super::super::diff::Mtime {
                secs: 1_700_000_000,
                nsecs: 0,
            },
        };
        let h = encode(&Member {
            name: b"usr/bin/x",
            typeflag: flag::REG,
            meta: &meta,
            size: 5,
            link: b"",
            dev: (0, 0),
            xattrs: &[],
            sparse_size: None,
        });
        assert_eq!(h.len(), 512);
        assert_eq!(&h[..10], b"usr/bin/x\0");
        assert_eq!(&h[100..108], b"0004755\0");
        assert_eq!(&h[108..116], b"0001750\0");
        assert_eq!(&h[116..124], b"0000144\0");
        assert_eq!(&h[124..136], b"00000000005\0");
        assert_eq!(&h[136..148], b"14524770400\0");
        assert_eq!(h[156], b'0');
        assert_eq!(&h[257..265], b"ustar\x0000");
        let sum: u32 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        assert_eq!(&h[148..156], format!("{sum:06o}\0 ").as_bytes());
        assert_eq!(
            sparse_map(&[(0, 512), (1 << 30, 0)])[..18],
            *b"2\n0\n512\n1073741824"
        );
    }
}
