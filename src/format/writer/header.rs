//! Tar header blocks the writer makes itself (FORMATS.md §5.3): the TOC and
//! landmark entries, and re-encoded headers of sanitized or sparse entries.
//!
//! ```text
//! ustar block (512): name[100] mode[8] uid[8] gid[8] size[12] mtime[12] chksum[8]
//!   typeflag[1] linkname[100] "ustar\0" "00" uname[32] gname[32] devmajor[8]
//!   devminor[8] prefix[155] pad[12]
//! numbers: zero-padded octal + NUL (Go's archive/tar style); base-256 when
//!   too large for octal (devices); chksum: 6 octal digits, NUL, space
//! PAX block: a `x` entry `PaxHeaders.0/<base>` whose data is records
//!   "<len> <key>=<value>\n" (len counts the whole record), then padding
//! ```

use super::entry::{Kind, Parsed, pad512};
use crate::format::pax::encode_record;

/// One ustar block's fields.
struct Fields<'a> {
    name: &'a [u8],
    prefix: &'a [u8],
    mode: u64,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &'a [u8],
    uname: &'a [u8],
    gname: &'a [u8],
    dev: (u64, u64),
}

fn put_str(block: &mut [u8; 512], off: usize, len: usize, s: &[u8]) {
    let n = s.len().min(len);
    block[off..off + n].copy_from_slice(&s[..n]);
}

/// Zero-padded octal with a trailing NUL; GNU base-256 when it does not fit.
fn put_num(block: &mut [u8; 512], off: usize, len: usize, v: u64) {
    let text = format!("{v:0width$o}", width = len - 1);
    if text.len() < len {
        put_str(block, off, len, text.as_bytes());
        block[off + len - 1] = 0;
    } else {
        let field = &mut block[off..off + len];
        field.fill(0);
        for (i, b) in v.to_be_bytes().iter().rev().enumerate() {
            field[len - 1 - i] = *b;
        }
        field[0] |= 0x80;
    }
}

fn fits_octal(v: u64, len: usize) -> bool {
    v < 1u64 << (3 * (len - 1))
}

fn ustar(f: &Fields<'_>) -> [u8; 512] {
    let mut b = [0u8; 512];
    put_str(&mut b, 0, 100, f.name);
    put_num(&mut b, 100, 8, f.mode);
    put_num(&mut b, 108, 8, f.uid);
    put_num(&mut b, 116, 8, f.gid);
    put_num(&mut b, 124, 12, f.size);
    put_num(&mut b, 136, 12, f.mtime);
    b[156] = f.typeflag;
    put_str(&mut b, 157, 100, f.link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    put_str(&mut b, 265, 32, f.uname);
    put_str(&mut b, 297, 32, f.gname);
    put_num(&mut b, 329, 8, f.dev.0);
    put_num(&mut b, 337, 8, f.dev.1);
    put_str(&mut b, 345, 155, f.prefix);
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    b
}

/// The header of a regular file `name` of `size` bytes with everything else
/// zero: how `estargz` writes `stargz.index.json` and the landmark files.
pub(super) fn synthetic(name: &str, size: u64) -> [u8; 512] {
    ustar(&Fields {
        name: name.as_bytes(),
        prefix: b"",
        mode: 0,
        uid: 0,
        gid: 0,
        size,
        mtime: 0,
        typeflag: b'0',
        link: b"",
        uname: b"",
        gname: b"",
        dev: (0, 0),
    })
}

/// Splits a long name into ustar prefix and name at a `/`, as Go's
/// `splitUSTARPath` does; `None` when it cannot.
fn split_ustar(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((b"", name));
    }
    let mut limit = name.len().min(156);
    if limit == name.len() && name[limit - 1] == b'/' {
        limit -= 1;
    }
    let i = name[..limit].iter().rposition(|&b| b == b'/')?;
    let (prefix, rest) = (&name[..i], &name[i + 1..]);
    (i > 0 && prefix.len() <= 155 && !rest.is_empty() && rest.len() <= 100)
        .then_some((prefix, rest))
}

/// Header blocks for `p` written afresh: its PAX records (minus those
/// recomputed here: `path`, `linkpath`, `size`) plus the ones its fields
/// need, then the ustar block. Sparse files come out as plain files of
/// their expanded size.
pub(super) fn encode(p: &Parsed) -> Vec<u8> {
    let mut recs: Vec<(Vec<u8>, Vec<u8>)> = p
        .pax
        .iter()
        .filter(|(k, _)| !matches!(k.as_slice(), b"path" | b"linkpath" | b"size"))
        .cloned()
        .collect();
    let has = |recs: &[(Vec<u8>, Vec<u8>)], k: &[u8]| recs.iter().any(|(key, _)| key == k);
    let (prefix, name) = split_ustar(&p.name).unwrap_or_else(|| {
        recs.push((b"path".to_vec(), p.name.clone()));
        (b"", &p.name[..p.name.len().min(100)])
    });
    if p.link.len() > 100 {
        recs.push((b"linkpath".to_vec(), p.link.clone()));
    }
    if !fits_octal(p.size, 12) {
        recs.push((b"size".to_vec(), p.size.to_string().into_bytes()));
    }
    for (key, v) in [(&b"uid"[..], p.uid), (&b"gid"[..], p.gid)] {
        if !fits_octal(v, 8) && !has(&recs, key) {
            recs.push((key.to_vec(), v.to_string().into_bytes()));
        }
    }
    let mtime = u64::try_from(p.mtime.0).ok().filter(|&t| fits_octal(t, 12));
    if mtime.is_none() && !has(&recs, b"mtime") {
        recs.push((b"mtime".to_vec(), p.mtime.0.to_string().into_bytes()));
    }
    for (key, v) in [(&b"uname"[..], &p.uname), (&b"gname"[..], &p.gname)] {
        if v.len() > 32 && !has(&recs, key) {
            recs.push((key.to_vec(), v.clone()));
        }
    }
    let typeflag = match p.kind {
        Kind::Reg => b'0',
        Kind::Hardlink => b'1',
        Kind::Symlink => b'2',
        Kind::Char => b'3',
        Kind::Block => b'4',
        Kind::Dir => b'5',
        Kind::Fifo => b'6',
        Kind::Global => b'g',
    };
    let mut out = Vec::with_capacity(1536);
    if !recs.is_empty() {
        recs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut data = Vec::new();
        for (k, v) in &recs {
            encode_record(&mut data, k, v);
        }
        let base = p.clean.rsplit(|&b| b == b'/').next().unwrap_or(b"");
        let mut xname = b"PaxHeaders.0/".to_vec();
        xname.extend_from_slice(base);
        out.extend_from_slice(&ustar(&Fields {
            name: &xname[..xname.len().min(100)],
            prefix: b"",
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: data.len() as u64,
            mtime: 0,
            typeflag: b'x',
            link: b"",
            uname: b"",
            gname: b"",
            dev: (0, 0),
        }));
        out.extend_from_slice(&data);
        out.resize(out.len() + pad512(data.len() as u64) as usize, 0);
    }
    out.extend_from_slice(&ustar(&Fields {
        name,
        prefix,
        mode: u64::from(p.mode),
        uid: if fits_octal(p.uid, 8) { p.uid } else { 0 },
        gid: if fits_octal(p.gid, 8) { p.gid } else { 0 },
        size: if p.kind == Kind::Reg && fits_octal(p.size, 12) {
            p.size
        } else {
            0
        },
        mtime: mtime.unwrap_or(0),
        typeflag,
        link: &p.link[..p.link.len().min(100)],
        uname: &p.uname[..p.uname.len().min(32)],
        gname: &p.gname[..p.gname.len().min(32)],
        dev: (u64::from(p.dev.0), u64::from(p.dev.1)),
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_header_matches_go_archive_tar() {
        // Bytes as ctr-remote wrote `.no.prefetch.landmark` (tests/fixtures/ctr-remote-small.esgz).
        let h = synthetic(".no.prefetch.landmark", 1);
        assert_eq!(&h[..21], b".no.prefetch.landmark");
        assert_eq!(&h[100..108], b"0000000\0");
        assert_eq!(&h[124..136], b"00000000001\0");
        assert_eq!(&h[136..148], b"00000000000\0");
        assert_eq!(&h[148..156], b"013162\0 ");
        assert_eq!(&h[156..157], b"0");
        assert_eq!(&h[257..265], b"ustar\x0000");
        assert_eq!(&h[329..345], b"0000000\x000000000\0");
    }

    #[test]
    fn long_names_split_or_go_to_pax() {
        let n = [&[b'd'; 120][..], b"/", &[b'f'; 60][..]].concat();
        let (prefix, name) = split_ustar(&n).unwrap();
        assert_eq!((prefix.len(), name.len()), (120, 60));
        assert!(split_ustar(&[b'x'; 150]).is_none());
        let mut big = [0u8; 512];
        put_num(&mut big, 329, 8, 1 << 30);
        assert_eq!(big[329], 0x80);
        assert_eq!(&big[332..337], &[0, 0x40, 0, 0, 0]);
    }
}
