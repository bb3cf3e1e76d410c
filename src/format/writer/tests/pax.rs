//! PAX records whose values hold newlines (a binary `security.capability`
//! with `0x0a` bytes) followed by more records: every format, in input
//! order and reordered, read back by our TOC reader, our tar reader and
//! GNU tar `--xattrs`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use super::*;

/// A v2 `security.capability` (effective; permitted 0x0a0a): `0a 0a` inside.
const CAP: [u8; 20] = [
    1, 0, 0, 2, 0x0a, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// The long name the PAX `path` record gives `bin/ping`'s entry.
fn long_name() -> String {
    format!("bin/{}/ping", "p".repeat(120))
}

/// A layer whose PAX headers put records after newline-holding values.
fn tar() -> Vec<u8> {
    let long = long_name();
    let mut t = TarB::new();
    t.dir("bin/")
        // Sorted like Go writes them: the xattrs come before `path`.
        .pax(&[
            ("SCHILY.xattr.security.capability", &CAP),
            ("SCHILY.xattr.user.nl", b"line1\nline2\n\n"),
            ("path", long.as_bytes()),
            ("uid", b"4242"),
        ])
        .file(b"bin/truncated-by-pax", b"ping binary\n")
        .pax(&[("SCHILY.xattr.user.eq", b"a=b\n="), ("path", b"etc/after")])
        .file(b"etc/x", b"after\n")
        .file(b"plain", b"plain\n");
    t.finish()
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and live across the call;
    // `buf` is writable for its whole length, which is what we pass.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| {
        buf.truncate(len as usize);
        buf
    })
}

#[test]
fn binary_xattrs_and_later_pax_records_survive_every_format() {
    let input = tar();
    let long = long_name();
    for format in FORMATS {
        for prioritized in [None, Some(vec!["etc/after".to_string()])] {
            let mut opts = WriterOptions::new(format);
            opts.prioritized = prioritized.clone();
            let (blob, w) = write(&input, &opts);
            let rb = read_back(format, &blob, &w);
            let what = format!("{format} {prioritized:?}");

            // Our TOC reader.
            let e = rb.toc.entries.iter().find(|e| e.name == long).expect(&what);
            assert_eq!(e.xattrs()["security.capability"], CAP, "{what}");
            assert_eq!(e.xattrs()["user.nl"], b"line1\nline2\n\n", "{what}");
            assert_eq!((e.uid, e.size), (4242, 12), "{what}");
            assert_eq!(rb.files[&long], b"ping binary\n", "{what}");
            let after = rb
                .toc
                .entries
                .iter()
                .find(|e| e.name == "etc/after")
                .unwrap();
            assert_eq!(after.xattrs()["user.eq"], b"a=b\n=", "{what}");
            assert_eq!(rb.files["etc/after"], b"after\n", "{what}");
            assert_eq!(rb.files["plain"], b"plain\n", "{what}");

            // Our tar reader over the whole uncompressed stream.
            let out = untar(&rb.stream);
            let t = out.iter().find(|t| t.name == long.as_bytes()).unwrap();
            let cap = (b"SCHILY.xattr.security.capability".to_vec(), CAP.to_vec());
            assert!(t.xattrs.contains(&cap), "{what}");
            if format == LayerFormat::ZstdChunked && prioritized.is_none() {
                replay_tar_split(&blob, &w, &rb.stream);
                assert!(rb.stream == input, "zstd:chunked keeps the tar as is");
            }

            // GNU tar, extracting xattrs (security.* needs root, as here).
            let root = extract_xattrs(format, &blob);
            let ping = root.path().join(&long);
            assert_eq!(std::fs::read(&ping).unwrap(), b"ping binary\n", "{what}");
            assert_eq!(
                lgetxattr(&ping, "security.capability").as_deref(),
                Some(&CAP[..]),
                "{what}"
            );
            assert_eq!(
                lgetxattr(&ping, "user.nl").as_deref(),
                Some(&b"line1\nline2\n\n"[..])
            );
            let after = root.path().join("etc/after");
            assert_eq!(
                lgetxattr(&after, "user.eq").as_deref(),
                Some(&b"a=b\n="[..])
            );
        }
    }
}

/// Extracts `blob` with GNU tar, all xattrs included.
fn extract_xattrs(format: LayerFormat, blob: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer");
    std::fs::write(&file, blob).unwrap();
    let root = tempfile::tempdir().unwrap();
    let flag = if format == LayerFormat::Estargz {
        "-z"
    } else {
        "--zstd"
    };
    let out = Command::new("tar")
        .args([
            "-x",
            flag,
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
        ])
        .arg("-f")
        .arg(&file)
        .arg("-C")
        .arg(root.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{format}: tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    root
}

#[test]
fn malformed_pax_records_are_named() {
    let mut t = TarB::new();
    t.entry(
        b"PaxHeaders/x",
        tar::EntryType::XHeader,
        b"30 path=ab\n",
        |_| {},
    )
    .file(b"f", b"x");
    let tar = t.finish();
    for format in FORMATS {
        let dir = tempfile::tempdir().unwrap();
        let e = write_layer(
            &tar[..],
            Vec::new(),
            &WriterOptions::new(format),
            dir.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("PAX record at byte 0: length 30 runs past the end of the data"),
            "{format}: {e}"
        );
    }
}
