//! Edge cases: empty layers, prioritized order, sanitizing, field cases
//! B21 and B27, sparse files, re-conversion, and GNU tar extracting output.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use super::*;
use crate::format::FormatError;
use crate::format::writer::Landmark;

fn opts(format: LayerFormat, prioritized: Option<&[&str]>) -> WriterOptions {
    let mut o = WriterOptions::new(format);
    o.prioritized = prioritized.map(|l| l.iter().map(|s| s.to_string()).collect());
    o
}

fn err(tar: &[u8], format: LayerFormat) -> String {
    let dir = tempfile::tempdir().unwrap();
    let e = write_layer(tar, Vec::new(), &WriterOptions::new(format), dir.path()).unwrap_err();
    assert!(matches!(e, FormatError::Entry { .. }), "{e}");
    e.to_string()
}

#[test]
fn empty_layers() {
    for input in [TarB::new().finish(), Vec::new()] {
        for format in FORMATS {
            let (blob, w) = write(&input, &WriterOptions::new(format));
            let rb = read_back(format, &blob, &w);
            let names: Vec<&str> = rb.toc.entries.iter().map(|e| e.name.as_str()).collect();
            if format == LayerFormat::ZstdChunked {
                assert!(names.is_empty());
                // The input's end-of-archive blocks (or added ones).
                assert_eq!(rb.stream, vec![0u8; 1024]);
            } else {
                assert_eq!(names, [".no.prefetch.landmark"]);
                assert!(rb.stream.ends_with(&[0u8; 1024]));
            }
            assert_eq!(w.entries, names.len());
        }
    }
}

/// A layer for ordering tests: `usr/bin/a` is prioritized, then `etc/b`.
fn ordered_tar() -> Vec<u8> {
    let mut t = TarB::new();
    t.dir("etc/")
        .file(b"etc/b", b"b")
        .file(b"etc/c", b"c")
        .dir("usr/")
        .dir("usr/bin/")
        .file(b"usr/bin/a", b"a")
        .link("usr/bin/a2", tar::EntryType::Link, "usr/bin/a")
        .file(b"usr/z", b"z");
    t.finish()
}

#[test]
fn prioritized_entries_come_first_then_the_landmark() {
    let tar = ordered_tar();
    for format in FORMATS {
        let o = opts(format, Some(&["usr/bin/a", "/etc/b", "nope"]));
        let (blob, w) = write(&tar, &o);
        let rb = read_back(format, &blob, &w);
        let names: Vec<&str> = rb.toc.entries.iter().map(|e| e.name.as_str()).collect();
        let mut want = vec!["usr", "usr/bin", "usr/bin/a", "usr/bin/a2", "etc", "etc/b"];
        if format != LayerFormat::ZstdChunked {
            want.push(".prefetch.landmark");
            assert_eq!(w.landmark, Landmark::Prefetch);
        }
        want.extend(["etc/c", "usr/z"]);
        assert_eq!(names, want, "{format}");
        assert_eq!(w.prioritized_missing, ["nope"]);
        assert!(w.prioritized_unmovable.is_empty());
        assert_eq!(rb.files["usr/bin/a"], b"a");
        // Still a tar a plain extractor can read, ending properly.
        let out = untar(&rb.stream);
        assert_eq!(
            out.len(),
            names.len() + usize::from(format == LayerFormat::Estargz)
        );
        assert!(rb.stream.ends_with(&[0u8; 1024]));
        if format == LayerFormat::ZstdChunked {
            replay_tar_split(&blob, &w, &rb.stream);
        }
    }
    // An empty list is no reordering: the no-prefetch landmark first.
    let (blob, w) = write(&tar, &opts(LayerFormat::Estargz, Some(&[])));
    assert_eq!(w.landmark, Landmark::NoPrefetch);
    let rb = read_back(LayerFormat::Estargz, &blob, &w);
    assert_eq!(rb.toc.entries[0].name, ".no.prefetch.landmark");
    assert_eq!(rb.toc.entries[1].name, "etc");
}

#[test]
fn layer_without_parent_entries_converts_and_optimizes() {
    // Field case B27: L2 has only usr/bin/b, L3 only opt/tool/run.
    let mut t = TarB::new();
    t.file(b"usr/bin/b", b"b").file(b"opt/tool/run", b"r");
    let tar = t.finish();
    for format in FORMATS {
        let (blob, w) = write(&tar, &opts(format, Some(&["opt/tool/run", "usr/bin/b"])));
        let rb = read_back(format, &blob, &w);
        let names: Vec<&str> = rb
            .toc
            .entries
            .iter()
            .map(|e| e.name.as_str())
            .filter(|n| !n.ends_with("landmark"))
            .collect();
        // No parent entries are invented.
        assert_eq!(names, ["opt/tool/run", "usr/bin/b"], "{format}");
        assert_eq!(rb.files["opt/tool/run"], b"r");
    }
}

#[test]
fn duplicates_keep_input_order_and_the_last_wins() {
    // Field case B21.
    let mut t = TarB::new();
    t.entry(b"x/", tar::EntryType::Directory, b"", |h| h.set_mode(0o700))
        .file(b"x/keep", b"k")
        .dir("x/")
        .file(b"f", b"one")
        .file(b"f", b"two")
        .file(b"g", b"file")
        .dir("g/")
        .file(b"g/child", b"c")
        .dir("h/")
        .file(b"h/c", b"hc")
        .link("h", tar::EntryType::Symlink, "x");
    let tar = t.finish();
    for format in FORMATS {
        for prio in [None, Some(&["f", "g/child", "h", "h/c"][..])] {
            let (blob, w) = write(&tar, &opts(format, prio));
            let rb = read_back(format, &blob, &w);
            assert_eq!(rb.toc.entries.iter().filter(|e| e.name == "f").count(), 2);
            assert_eq!(rb.files["f"], b"two", "{format}");
            let x_modes: Vec<u32> = rb
                .toc
                .entries
                .iter()
                .filter(|e| e.name == "x")
                .map(|e| e.mode)
                .collect();
            assert_eq!(x_modes, [0o700, 0o755]);
            let last_h = rb.toc.entries.iter().rev().find(|e| e.name == "h").unwrap();
            assert_eq!(last_h.kind, EntryKind::Symlink);
            // GNU tar agrees: the last `f` wins, `h` ends a symlink.
            let root = extract(format, &blob, true);
            assert_eq!(std::fs::read(root.path().join("f")).unwrap(), b"two");
            assert_eq!(
                std::fs::read_link(root.path().join("h")).unwrap(),
                Path::new("x")
            );
            assert_eq!(std::fs::read(root.path().join("g/child")).unwrap(), b"c");
            if prio.is_some() {
                // `h` cannot move ahead of `h/c` without changing the result.
                assert_eq!(w.prioritized_unmovable, ["h"]);
            }
        }
    }
}

#[test]
fn names_are_sanitized_and_bad_links_refused() {
    for format in FORMATS {
        let mut t = TarB::new();
        t.file(b"../x", b"evil");
        let e = err(&t.finish(), format);
        assert!(
            e.contains("\"../x\"") && e.contains("climbs above the root"),
            "{e}"
        );

        let mut t = TarB::new();
        t.file(b"a", b"a").link("l", tar::EntryType::Link, "nope");
        let e = err(&t.finish(), format);
        assert!(
            e.contains("\"l\"") && e.contains("\"nope\" is not an earlier entry"),
            "{e}"
        );

        let mut t = TarB::new();
        t.link("l", tar::EntryType::Link, "a").file(b"a", b"later");
        assert!(err(&t.finish(), format).contains("not an earlier entry"));

        let mut t = TarB::new();
        t.dir("d/").link("l", tar::EntryType::Link, "d");
        assert!(err(&t.finish(), format).contains("is a directory"));

        let mut t = TarB::new();
        t.link("x", tar::EntryType::Link, "../../etc/shadow");
        assert!(err(&t.finish(), format).contains("climbs above the root"));

        // Absolute names and link targets become relative, in the TOC and the tar.
        let mut t = TarB::new();
        t.dir("/abs/")
            .file(b"/abs/f", b"f")
            .link("/abs/h", tar::EntryType::Link, "/abs/f")
            .file(b"abs/../g", b"g");
        let (blob, w) = write(&t.finish(), &WriterOptions::new(format));
        let rb = read_back(format, &blob, &w);
        let out: Vec<(Vec<u8>, Vec<u8>)> = untar(&rb.stream)
            .into_iter()
            .filter(|e| !e.name.ends_with(b"landmark") && e.name != b"stargz.index.json")
            .map(|e| (e.name, e.link))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> =
            [("abs/", ""), ("abs/f", ""), ("abs/h", "abs/f"), ("g", "")]
                .iter()
                .map(|(n, l)| (n.as_bytes().to_vec(), l.as_bytes().to_vec()))
                .collect();
        assert_eq!(out, want, "{format}");
        assert_eq!(rb.files["abs/f"], b"f");
        if format == LayerFormat::ZstdChunked {
            replay_tar_split(&blob, &w, &rb.stream);
        }
        assert_eq!(rb.files["g"], b"g");
        let root = extract(format, &blob, false);
        assert_eq!(std::fs::read(root.path().join("abs/h")).unwrap(), b"f");
    }
}

#[test]
fn unsupported_entries_are_named() {
    let mut t = TarB::new();
    t.entry(b"vol", tar::EntryType::new(b'V'), b"", |_| {});
    let e = err(&t.finish(), LayerFormat::Estargz);
    assert!(
        e.contains("\"vol\"") && e.contains("unsupported tar entry type 'V'"),
        "{e}"
    );
    let mut t = TarB::new();
    t.entry(b"d/", tar::EntryType::Directory, b"data", |_| {});
    assert!(err(&t.finish(), LayerFormat::ZstdChunked).contains("carries 4 bytes"));
    // A comment-only global header is dropped; other records are refused.
    let mut t = TarB::new();
    t.entry(
        b"g",
        tar::EntryType::XGlobalHeader,
        b"19 comment=abcdefg\n",
        |_| {},
    )
    .file(b"a", b"a");
    let tar = t.finish();
    for format in FORMATS {
        let (blob, w) = write(&tar, &opts(format, Some(&["a"])));
        let rb = read_back(format, &blob, &w);
        assert_eq!(rb.files["a"], b"a");
    }
    let (blob, w) = write(&tar, &WriterOptions::new(LayerFormat::ZstdChunked));
    let stream = read_back(LayerFormat::ZstdChunked, &blob, &w).stream;
    assert!(
        stream == tar[512 + 512..],
        "the g entry (header and data) is gone"
    );
    replay_tar_split(&blob, &w, &stream);
    let mut t = TarB::new();
    t.entry(
        b"g",
        tar::EntryType::XGlobalHeader,
        b"12 mtime=10\n",
        |_| {},
    );
    assert!(err(&t.finish(), LayerFormat::Estargz).contains("\"mtime\" is not supported"));
}

#[test]
fn converting_an_estargz_stream_again_keeps_one_toc_and_landmark() {
    let mut t = TarB::new();
    t.file(b"a", b"a");
    let (blob, w) = write(&t.finish(), &WriterOptions::new(LayerFormat::Estargz));
    let stream = read_back(LayerFormat::Estargz, &blob, &w).stream;
    let (blob2, w2) = write(&stream, &WriterOptions::new(LayerFormat::Estargz));
    let rb = read_back(LayerFormat::Estargz, &blob2, &w2);
    let names: Vec<Vec<u8>> = untar(&rb.stream).into_iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        [&b".no.prefetch.landmark"[..], b"a", b"stargz.index.json"]
    );
    // Idempotent: the same layer again.
    assert_eq!(rb.stream, stream);
}

/// Extracts `blob` with GNU tar into a new directory; `replace_dirs`
/// (`--recursive-unlink`) lets a later non-directory replace a directory, as
/// containerd's applier does.
fn extract(format: LayerFormat, blob: &[u8], replace_dirs: bool) -> tempfile::TempDir {
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
        .args(["-x", flag, "--numeric-owner"])
        .args(replace_dirs.then_some("--recursive-unlink"))
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
fn gnu_tar_extracts_every_format() {
    let (tar, big) = sample_tar();
    for format in FORMATS {
        let mut o = WriterOptions::new(format);
        o.chunk_size = 16 << 10;
        let (blob, _) = write(&tar, &o);
        let root = extract(format, &blob, false);
        let p = |n: &str| root.path().join(n);
        assert_eq!(std::fs::read(p("d/hello")).unwrap(), b"hello, world\n");
        assert_eq!(std::fs::read(p("d/big")).unwrap(), big);
        assert_eq!(std::fs::read(p("dup")).unwrap(), b"two");
        assert_eq!(std::fs::read_link(p("d/sym")).unwrap(), Path::new("hello"));
        assert_eq!(
            std::fs::metadata(p("d/hard")).unwrap().ino(),
            std::fs::metadata(p("d/hello")).unwrap().ino()
        );
        let tty = std::fs::metadata(p("d/tty")).unwrap();
        assert_eq!(tty.rdev(), libc::makedev(5, 1));
        let latin = std::ffi::OsStr::from_bytes(b"d/caf\xe9");
        assert_eq!(
            std::fs::read(root.path().join(latin)).unwrap(),
            b"latin-1 name"
        );
        assert_eq!(
            std::fs::read(p(&format!("d/{}", "n".repeat(148)))).unwrap(),
            b"long"
        );
        let landmark = p(".no.prefetch.landmark").exists();
        assert_eq!(landmark, format != LayerFormat::ZstdChunked);
        assert_eq!(
            p("stargz.index.json").exists(),
            format == LayerFormat::Estargz
        );
    }
}

#[test]
fn gnu_sparse_files_are_expanded() {
    let src = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(src.path().join("sparse")).unwrap();
    f.set_len(1 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"middle", 500_000).unwrap();
    f.write_all_at(b"end", (1 << 20) - 3).unwrap();
    drop(f);
    let tarfile = src.path().join("s.tar");
    let st = Command::new("tar")
        .args(["--format=gnu", "-S", "-cf"])
        .arg(&tarfile)
        .arg("-C")
        .arg(src.path())
        .arg("sparse")
        .status()
        .unwrap();
    assert!(st.success());
    let tar = std::fs::read(&tarfile).unwrap();
    assert!(tar.len() < 100_000, "GNU tar did not write a sparse entry");
    let mut want = vec![0u8; 1 << 20];
    want[500_000..500_006].copy_from_slice(b"middle");
    want[(1 << 20) - 3..].copy_from_slice(b"end");
    for format in FORMATS {
        let (blob, w) = write(&tar, &WriterOptions::new(format));
        let rb = read_back(format, &blob, &w);
        assert!(rb.files["sparse"] == want, "{format}");
        if format == LayerFormat::ZstdChunked {
            replay_tar_split(&blob, &w, &rb.stream);
            // The zero runs are chunks with nothing to fetch.
            let f = rb.toc.entries.iter().find(|e| e.name == "sparse").unwrap();
            assert!(f.chunks().filter(|c| c.offset == c.end).count() >= 2);
        }
        let out = untar(&rb.stream);
        let e = out.iter().find(|e| e.name == b"sparse").unwrap();
        assert_eq!(e.kind, b'0');
        assert!(e.data == want);
    }
}
