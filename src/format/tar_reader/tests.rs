//! Tests of [`super::TarReader`] over tars built byte by byte and by GNU tar.

use std::io::Read;

use super::*;
use crate::format::pax::encode_record;

/// A ustar header block (checksum set).
fn hdr(name: &[u8], typeflag: u8, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0001750\0"); // uid 1000
    h[116..124].copy_from_slice(b"0001750\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14524770400\0"); // 1700000000
    h[156] = typeflag;
    h[257..265].copy_from_slice(b"ustar\x0000");
    seal(&mut h);
    h
}

fn seal(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// Appends `data` and its padding.
fn put(t: &mut Vec<u8>, data: &[u8]) {
    t.extend_from_slice(data);
    t.resize(t.len() + pad512(data.len() as u64) as usize, 0);
}

fn pax(t: &mut Vec<u8>, typeflag: u8, recs: &[(&[u8], &[u8])]) {
    let mut data = Vec::new();
    for (k, v) in recs {
        encode_record(&mut data, k, v);
    }
    t.extend_from_slice(&hdr(b"PaxHeaders/x", typeflag, data.len() as u64));
    put(t, &data);
}

fn file(t: &mut Vec<u8>, name: &[u8], data: &[u8]) {
    t.extend_from_slice(&hdr(name, b'0', data.len() as u64));
    put(t, data);
}

fn all(tar: &[u8]) -> Result<Vec<(TarEntry, Vec<u8>)>, TarError> {
    let mut r = TarReader::new(tar);
    let mut out = Vec::new();
    while let Some(e) = r.next_entry()? {
        let mut data = Vec::new();
        r.read_to_end(&mut data)
            .map_err(|source| TarError::Io { offset: 0, source })?;
        out.push((e, data));
    }
    Ok(out)
}

/// A v2 `security.capability` value holding `0a 0a`.
const CAP: [u8; 20] = [
    1, 0, 0, 2, 0x0a, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn pax_records_after_a_binary_value_are_honoured() {
    let mut t = Vec::new();
    pax(
        &mut t,
        b'x',
        &[
            (b"SCHILY.xattr.security.capability", &CAP),
            (b"gid", b"5000000000"),
            (b"mtime", b"1700000001.25"),
            (b"path", b"a/long\npath"),
            (b"size", b"5"),
            (b"uid", b"42"),
        ],
    );
    // The header says 0 bytes: the PAX size (5) must be used.
    t.extend_from_slice(&hdr(b"short", b'0', 0));
    put(&mut t, b"hello");
    file(&mut t, b"next", b"x");
    t.extend_from_slice(&[0; 1024]);
    let got = all(&t).unwrap();
    assert_eq!(got.len(), 2);
    let (e, data) = &got[0];
    assert_eq!(e.path, b"a/long\npath");
    assert_eq!((e.size, data.as_slice()), (5, &b"hello"[..]));
    assert_eq!(
        e.xattrs().collect::<Vec<_>>(),
        [(&b"security.capability"[..], &CAP[..])]
    );
    assert_eq!((e.uid().unwrap(), e.gid().unwrap()), (42, 5_000_000_000));
    assert_eq!(e.mtime().unwrap(), (1_700_000_001, 250_000_000));
    assert_eq!((e.start, e.data_start), (0, 512 * 3));
    assert_eq!(e.next_start(), 512 * 4);
    let (n, data) = &got[1];
    assert_eq!(
        (n.path.as_slice(), data.as_slice()),
        (&b"next"[..], &b"x"[..])
    );
    assert_eq!(
        (n.start, n.uid().unwrap(), n.mtime().unwrap()),
        (2048, 1000, (1_700_000_000, 0))
    );
    assert!(n.pax.is_empty());
}

#[test]
fn gnu_long_names_ustar_prefixes_and_globals() {
    let long = vec![b'n'; 300];
    let mut t = Vec::new();
    t.extend_from_slice(&hdr(b"././@LongLink", b'L', 301));
    put(&mut t, &[&long[..], b"\0"].concat());
    t.extend_from_slice(&hdr(b"././@LongLink", b'K', 4));
    put(&mut t, b"tgt\0");
    // A PAX path loses to the GNU long name (Go's order).
    pax(&mut t, b'x', &[(b"path", b"pax-name")]);
    t.extend_from_slice(&hdr(b"truncated", b'2', 0));
    let mut p = hdr(b"base", b'5', 0);
    p[345..348].copy_from_slice(b"pre");
    seal(&mut p);
    t.extend_from_slice(&p);
    pax(&mut t, b'g', &[(b"comment", b"hi\nthere")]);
    file(&mut t, b"after-global", b"");
    let got = all(&t).unwrap();
    assert_eq!(got[0].0.path, long);
    assert_eq!(got[0].0.link, b"tgt");
    assert_eq!(got[0].0.typeflag(), b'2');
    assert_eq!(got[1].0.path, b"pre/base");
    assert_eq!(got[2].0.typeflag(), b'g');
    assert_eq!(got[2].0.pax, [(b"comment".to_vec(), b"hi\nthere".to_vec())]);
    // A global header is not applied to later entries.
    assert_eq!(got[3].0.path, b"after-global");
    assert!(got[3].0.pax.is_empty());
    assert_eq!(got[3].0.start, got[2].0.next_start());
}

#[test]
fn agrees_with_the_tar_crate_on_plain_tars() {
    let mut b = tar::Builder::new(Vec::new());
    for (i, n) in [0usize, 1, 511, 512, 513, 70_000].iter().enumerate() {
        let mut h = tar::Header::new_gnu();
        h.set_size(*n as u64);
        h.set_mode(0o600);
        h.set_cksum();
        let name = format!("dir/{}/file-{i}", "x".repeat(i * 30));
        b.append_data(&mut h, &name, &vec![i as u8; *n][..])
            .unwrap();
    }
    let t = b.into_inner().unwrap();
    let ours = all(&t).unwrap();
    let mut a = tar::Archive::new(&t[..]);
    let theirs: Vec<_> = a
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            (e.path_bytes().into_owned(), e.raw_file_position(), d)
        })
        .collect();
    assert_eq!(ours.len(), theirs.len());
    for ((e, d), (p, pos, td)) in ours.iter().zip(&theirs) {
        assert_eq!((&e.path, e.data_start, d), (p, *pos, td));
    }
}

#[test]
fn malformed_streams_are_refused_with_offsets() {
    let err = |t: &[u8]| all(t).unwrap_err().to_string();
    // Bad checksum.
    let mut h = hdr(b"f", b'0', 0);
    h[0] = b'g';
    assert!(err(&h).contains("byte 0: checksum mismatch"), "{}", err(&h));
    // A PAX record with a wrong length.
    let mut t = Vec::new();
    file(&mut t, b"ok", b"");
    t.extend_from_slice(&hdr(b"PaxHeaders/x", b'x', 11));
    put(&mut t, b"30 path=ab\n");
    file(&mut t, b"f", b"");
    let e = err(&t);
    assert!(
        e.contains("PAX header at byte 512: PAX record at byte 0: length 30 runs past"),
        "{e}"
    );
    // Two PAX headers for one entry; one with no entry after it.
    let mut t = Vec::new();
    pax(&mut t, b'x', &[(b"uid", b"1")]);
    pax(&mut t, b'x', &[(b"uid", b"2")]);
    file(&mut t, b"f", b"");
    assert!(err(&t).contains("two PAX headers"));
    let mut t = Vec::new();
    pax(&mut t, b'x', &[(b"uid", b"1")]);
    t.extend_from_slice(&[0; 1024]);
    assert!(err(&t).contains("not followed by an entry"));
    // Cut inside the data.
    let mut t = Vec::new();
    file(&mut t, b"f", &[7; 600]);
    t.truncate(800);
    let mut r = TarReader::new(&t[..]);
    r.next_entry().unwrap().unwrap();
    let e = r.read_to_end(&mut Vec::new()).unwrap_err();
    assert!(
        e.to_string()
            .contains("ends inside an entry's data (at byte 800)"),
        "{e}"
    );
    let mut r = TarReader::new(&t[..]);
    r.next_entry().unwrap().unwrap();
    assert!(matches!(
        r.next_entry(),
        Err(TarError::Truncated { offset: 800, .. })
    ));
    // A bad PAX size; oversized extension data.
    let mut t = Vec::new();
    pax(&mut t, b'x', &[(b"size", b"-1")]);
    file(&mut t, b"f", b"");
    assert!(err(&t).contains("bad PAX size"));
    let t = hdr(b"PaxHeaders/x", b'x', MAX_EXTENSION + 1);
    assert!(err(&t).contains("limit"));
}

#[test]
fn empty_streams_and_clean_ends() {
    assert!(all(b"").unwrap().is_empty());
    assert!(all(&[0; 1024]).unwrap().is_empty());
    let mut t = Vec::new();
    file(&mut t, b"f", b"abc");
    // No end-of-archive blocks: a clean end at a block boundary.
    assert_eq!(all(&t).unwrap()[0].1, b"abc");
}

#[test]
fn gnu_sparse_files_expand() {
    let src = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(src.path().join("sparse")).unwrap();
    f.set_len(3 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"middle", 1_500_000).unwrap();
    f.write_all_at(b"end", (3 << 20) - 3).unwrap();
    drop(f);
    std::fs::write(src.path().join("after"), b"after").unwrap();
    let tarfile = src.path().join("s.tar");
    let st = std::process::Command::new("tar")
        .args(["--format=gnu", "-S", "-cf"])
        .arg(&tarfile)
        .arg("-C")
        .arg(src.path())
        .args(["sparse", "after"])
        .status()
        .unwrap();
    assert!(st.success());
    let t = std::fs::read(&tarfile).unwrap();
    let got = all(&t).unwrap();
    let (e, data) = &got[0];
    assert_eq!(e.typeflag(), b'S');
    let map = e.sparse.as_ref().unwrap();
    assert_eq!((map.real_size, e.file_size()), (3 << 20, 3 << 20));
    assert!(e.size < 10_000, "stored {}", e.size);
    let mut want = vec![0u8; 3 << 20];
    want[1_500_000..1_500_006].copy_from_slice(b"middle");
    want[(3 << 20) - 3..].copy_from_slice(b"end");
    assert!(*data == want);
    assert_eq!(got[1].0.path, b"after");
    assert_eq!(got[1].1, b"after");
    assert_eq!(got[1].0.start, e.next_start());
}
