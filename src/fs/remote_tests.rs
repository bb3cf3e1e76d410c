//! Unit tests of the remote lower over hand-built TOCs and a fake reader.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::FsError;
use super::backing::{EntryAttr, EntryKind};
use super::lower::{Lower, LowerFile, LowerKind};
use super::remote_fake::{FakeReader, TocBuilder, pattern};
use crate::format::EntryKind as TocKind;

fn key(name: &str) -> PathBuf {
    PathBuf::from(format!("/nonexistent/lazysnap-test/{name}"))
}

fn remote(name: &str, b: &TocBuilder) -> (Arc<Lower>, Arc<FakeReader>) {
    let (toc, reader) = b.build();
    let l = Lower::remote(&key(name), toc, reader.clone()).unwrap();
    (l, reader)
}

fn stat(l: &Lower, p: &str) -> Option<EntryAttr> {
    l.stat(Path::new(p)).unwrap()
}

fn names(l: &Lower, dir: &str) -> Vec<(String, EntryKind)> {
    let mut v: Vec<_> = l
        .read_dir(Path::new(dir))
        .unwrap()
        .into_iter()
        .map(|e| (e.name.to_string_lossy().into_owned(), e.kind))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn read_all(l: &Lower, p: &str) -> Vec<u8> {
    let f = l.open(Path::new(p)).unwrap();
    let size = match &f {
        LowerFile::Remote(r) => r.size(),
        LowerFile::Local(f) => f.metadata().unwrap().len(),
    };
    let mut buf = vec![0u8; usize::try_from(size).unwrap() + 10];
    let n = f.read_at(&mut buf, 0, Path::new(p)).unwrap();
    buf.truncate(n);
    buf
}

fn errno(e: &FsError) -> i32 {
    e.errno().code()
}

#[test]
fn whiteouts_opaque_and_estargz_files_are_hidden() {
    let mut b = TocBuilder::new(4);
    b.empty("stargz.index.json")
        .empty(".prefetch.landmark")
        .empty(".no.prefetch.landmark")
        .dir("a", 0o755)
        .empty("a/.wh.gone")
        .file("a/keep", 0o644, b"k")
        .dir("o", 0o755)
        .file("o/mine", 0o644, b"m")
        .empty("o/.wh..wh..opq") // after the dir's children: still applies
        .empty(".wh..wh.plnk") // reserved metadata: ignored
        .empty("sub/stargz.index.json") // only hidden at the root
        .empty(".wh.toplevel");
    let (l, reader) = remote("wh", &b);
    assert_eq!(l.kind(), LowerKind::Remote);
    assert_eq!(
        names(&l, ""),
        vec![
            ("a".into(), EntryKind::Dir),
            ("o".into(), EntryKind::Dir),
            ("sub".into(), EntryKind::Dir),
            ("toplevel".into(), EntryKind::Whiteout),
        ]
    );
    assert_eq!(
        names(&l, "a"),
        vec![
            ("gone".into(), EntryKind::Whiteout),
            ("keep".into(), EntryKind::File)
        ]
    );
    assert_eq!(stat(&l, "a/gone").unwrap().kind, EntryKind::Whiteout);
    assert_eq!(stat(&l, "a/.wh.gone"), None);
    assert_eq!(stat(&l, ".prefetch.landmark"), None);
    assert_eq!(stat(&l, "o/.wh..wh..opq"), None);
    assert!(l.is_opaque(Path::new("o")).unwrap());
    assert!(!l.is_opaque(Path::new("a")).unwrap());
    assert!(!l.is_opaque(Path::new("")).unwrap());
    assert_eq!(names(&l, "o"), vec![("mine".into(), EntryKind::File)]);
    assert_eq!(
        names(&l, "sub"),
        vec![("stargz.index.json".into(), EntryKind::File)]
    );
    assert!(names(&l, "a/keep").is_empty());
    assert!(names(&l, "missing").is_empty());
    assert_eq!(reader.calls(), 0, "metadata needs no chunk");
}

#[test]
fn b21_duplicate_entries_last_wins_like_tar_x() {
    let mut b = TocBuilder::new(2);
    b.dir("x", 0o700)
        .file("x/keep", 0o644, b"kept")
        .dir("x", 0o755)
        .file("f", 0o644, b"one")
        .file("f", 0o644, b"two")
        .file("g", 0o644, b"file g")
        .dir("g", 0o755)
        .file("g/child", 0o644, b"c")
        .dir("h", 0o755)
        .file("h/c", 0o644, b"hc")
        .symlink("h", "x")
        .file("e", 0o644, b"old")
        .file("e", 0o644, b"");
    let (l, reader) = remote("b21", &b);
    let x = stat(&l, "x").unwrap();
    assert_eq!((x.kind, x.perm), (EntryKind::Dir, 0o755));
    assert_eq!(names(&l, "x"), vec![("keep".into(), EntryKind::File)]);
    assert_eq!(read_all(&l, "f"), b"two");
    assert_eq!(stat(&l, "g").unwrap().kind, EntryKind::Dir);
    assert_eq!(read_all(&l, "g/child"), b"c");
    assert_eq!(stat(&l, "h").unwrap().kind, EntryKind::Symlink);
    assert_eq!(l.read_link(Path::new("h")).unwrap(), PathBuf::from("x"));
    assert_eq!(stat(&l, "h/c"), None);
    let calls = reader.calls();
    assert_eq!(stat(&l, "e").unwrap().size, 0);
    assert_eq!(read_all(&l, "e"), b"");
    assert_eq!(reader.calls(), calls, "an empty file fetches nothing");
    let root = names(&l, "");
    assert_eq!(
        root.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(),
        vec!["e", "f", "g", "h", "x"]
    );
    // Dir nlink: 2 + subdirectories (x, g are dirs; h is now a symlink).
    assert_eq!(stat(&l, "").unwrap().nlink, 4);
}

#[test]
fn b27_missing_parents_are_synthesized_and_marked_implicit() {
    let mut b = TocBuilder::new(8);
    b.file("usr/bin/b", 0o755, b"b")
        .file("opt/tool/run", 0o755, b"r");
    let (l, _) = remote("b27", &b);
    for d in ["", "usr", "usr/bin", "opt", "opt/tool"] {
        let a = stat(&l, d).unwrap();
        assert_eq!(
            (a.kind, a.perm, a.uid, a.gid),
            (EntryKind::Dir, 0o755, 0, 0),
            "{d}"
        );
        assert_eq!(a.mtime, std::time::SystemTime::UNIX_EPOCH);
        assert!(l.is_implicit(Path::new(d)), "{d}");
    }
    assert!(!l.is_implicit(Path::new("usr/bin/b")));
    assert_eq!(names(&l, "usr/bin"), vec![("b".into(), EntryKind::File)]);
    // Distinct, stable inode numbers.
    let inos: std::collections::HashSet<u64> =
        ["", "usr", "usr/bin", "opt", "opt/tool", "usr/bin/b"]
            .iter()
            .map(|p| stat(&l, p).unwrap().ino)
            .collect();
    assert_eq!(inos.len(), 6);
    let (l2, _) = remote("b27-again", &b);
    assert_eq!(
        stat(&l2, "opt/tool").unwrap().ino,
        stat(&l, "opt/tool").unwrap().ino
    );
    // An explicit root entry is not implicit and gives the root's metadata.
    let mut b = TocBuilder::new(8);
    b.dir("", 0o700).file("a", 0o644, b"a");
    let (l, _) = remote("b27-root", &b);
    assert!(!l.is_implicit(Path::new("")));
    assert_eq!(stat(&l, "").unwrap().perm, 0o700);
}

#[test]
fn hardlinks_share_ino_data_and_count_names() {
    let data = pattern(100, 1);
    let mut b = TocBuilder::new(16);
    b.file("bin/tool", 0o755, &data)
        .hardlink("bin/tool2", "bin/tool")
        .hardlink("bin/tool3", "bin/tool2")
        .hardlink("dangling", "nowhere")
        .file("f", 0o644, b"one")
        .hardlink("l", "f")
        .file("f", 0o644, b"two");
    let (l, _) = remote("links", &b);
    let a = stat(&l, "bin/tool").unwrap();
    assert_eq!(a.nlink, 3);
    assert_eq!(a.ino, 1, "st_ino = TOC index + 1 of the target");
    for n in ["bin/tool2", "bin/tool3"] {
        assert_eq!(stat(&l, n).unwrap(), a, "{n}");
        assert_eq!(read_all(&l, n), data);
    }
    let mut group = l.hardlink_names(a.ino);
    group.sort();
    assert_eq!(
        group,
        vec![
            PathBuf::from("bin/tool"),
            PathBuf::from("bin/tool2"),
            PathBuf::from("bin/tool3")
        ]
    );
    assert_eq!(stat(&l, "dangling"), None);
    // `l` links the first `f`; the later `f` replaced that name only.
    assert_eq!(read_all(&l, "l"), b"one");
    assert_eq!(read_all(&l, "f"), b"two");
    assert_eq!(stat(&l, "l").unwrap().nlink, 1);
    assert_eq!(stat(&l, "f").unwrap().nlink, 1);
    assert!(l.hardlink_names(stat(&l, "f").unwrap().ino).is_empty());
}

#[test]
fn b10_b12_modes_xattrs_symlinks_devices() {
    let cap = b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let long = "t".repeat(300);
    let mut b = TocBuilder::new(8);
    b.file("usr/bin/elevate", 0o4711, b"e")
        .file("usr/bin/grpexec", 0o2755, b"g")
        .dir("shared", 0o1777)
        .dir("setgid-dir", 0o2775)
        .with(|e| e.gid = 50)
        .file("cap-bin", 0o755, b"c")
        .with(|e| {
            e.xattrs_mut()
                .insert("security.capability".into(), cap.to_vec());
            e.xattrs_mut().insert("user.bin".into(), vec![0, 255, 1]);
            e.uid = 1000;
            e.mtime = (1_600_000_000, 123);
        })
        .symlink("lib/libthing.so", "libthing.so.5.13")
        .symlink("lnk/long", &long)
        .special("dev/null", TocKind::Char, 1, 3)
        .special("dev/sda", TocKind::Block, 8, 0)
        .special("run/fifo", TocKind::Fifo, 0, 0);
    let (l, _) = remote("modes", &b);
    let perm = |p| stat(&l, p).unwrap().perm;
    assert_eq!(perm("usr/bin/elevate"), 0o4711);
    assert_eq!(perm("usr/bin/grpexec"), 0o2755);
    assert_eq!(perm("shared"), 0o1777);
    assert_eq!(perm("setgid-dir"), 0o2775);
    assert_eq!(stat(&l, "setgid-dir").unwrap().gid, 50);
    let c = stat(&l, "cap-bin").unwrap();
    assert_eq!(c.uid, 1000);
    assert_eq!(
        c.mtime,
        std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123)
    );
    let mut xs = l.list_xattrs(Path::new("cap-bin")).unwrap();
    xs.sort();
    assert_eq!(xs, vec!["security.capability", "user.bin"]);
    assert_eq!(
        l.get_xattr(Path::new("cap-bin"), OsStr::new("security.capability"))
            .unwrap(),
        Some(cap.to_vec())
    );
    assert_eq!(
        l.get_xattr(Path::new("cap-bin"), OsStr::new("user.none"))
            .unwrap(),
        None
    );
    assert!(l.list_xattrs(Path::new("lib")).unwrap().is_empty());
    let s = stat(&l, "lib/libthing.so").unwrap();
    assert_eq!((s.kind, s.size), (EntryKind::Symlink, 16));
    let s = stat(&l, "lnk/long").unwrap();
    assert_eq!((s.size, s.blocks), (300, 1));
    assert_eq!(
        l.read_link(Path::new("lnk/long")).unwrap(),
        PathBuf::from(&long)
    );
    assert_eq!(
        errno(&l.read_link(Path::new("cap-bin")).unwrap_err()),
        libc::EINVAL
    );
    let d = stat(&l, "dev/null").unwrap();
    assert_eq!((d.kind, d.rdev), (EntryKind::CharDev, libc::makedev(1, 3)));
    let d = stat(&l, "dev/sda").unwrap();
    assert_eq!((d.kind, d.rdev), (EntryKind::BlockDev, libc::makedev(8, 0)));
    assert_eq!(stat(&l, "run/fifo").unwrap().kind, EntryKind::Fifo);
    assert_eq!(stat(&l, "usr/bin/elevate").unwrap().blocks, 1);
    assert_eq!(
        errno(&l.open(Path::new("shared")).unwrap_err()),
        libc::EISDIR
    );
    assert_eq!(errno(&l.open(Path::new("nope")).unwrap_err()), libc::ENOENT);
}

#[test]
fn reads_across_chunks_equal_the_original_bytes() {
    let data = pattern(10_007, 7);
    let mut b = TocBuilder::new(1000);
    b.file("small", 0o644, b"tiny").file("big", 0o644, &data);
    let (l, reader) = remote("reads", &b);
    let f = l.open(Path::new("big")).unwrap();
    let p = Path::new("big");
    for (off, len) in [
        (0usize, 1usize),
        (0, 10_007),
        (0, 20_000),
        (999, 2),
        (999, 1002),
        (1, 2998),
        (3333, 4444),
        (9999, 100),
        (10_006, 1),
        (10_007, 5),
        (12_000, 5),
        (5000, 0),
    ] {
        let mut buf = vec![0xAAu8; len];
        let n = f.read_at(&mut buf, off as u64, p).unwrap();
        let want = &data[off.min(data.len())..(off + len).min(data.len())];
        assert_eq!(&buf[..n], want, "read {len} at {off}");
    }
    // Only the chunks touched are fetched, and a small file only its own.
    let before = reader.calls();
    let mut buf = [0u8; 2];
    f.read_at(&mut buf, 999, p).unwrap();
    assert_eq!(reader.calls() - before, 2);
    assert_eq!(&reader.fetched()[before..], &[(1, 0), (1, 1)]);
    let before = reader.calls();
    assert_eq!(read_all(&l, "small"), b"tiny");
    assert_eq!(&reader.fetched()[before..], &[(0, 0)]);
}

#[test]
fn reads_reaching_a_chunk_end_prefetch_the_next_chunks() {
    let data = pattern(4000, 3);
    let mut b = TocBuilder::new(1000);
    b.file("f", 0o644, &data);
    let (l, reader) = remote("readahead", &b);
    let f = l.open(Path::new("f")).unwrap();
    let mut buf = vec![0u8; 500];
    f.read_at(&mut buf, 0, Path::new("f")).unwrap();
    assert!(reader.prefetched().is_empty());
    f.read_at(&mut buf, 500, Path::new("f")).unwrap();
    assert_eq!(reader.prefetched(), vec![(0, 1), (0, 2)]);
    let mut buf = vec![0u8; 1000];
    f.read_at(&mut buf, 3000, Path::new("f")).unwrap();
    assert_eq!(reader.prefetched().len(), 2, "nothing after the last chunk");
}

#[test]
fn a_read_over_several_chunks_asks_for_them_together_first() {
    let data = pattern(4000, 5);
    let mut b = TocBuilder::new(1000);
    b.file("f", 0o644, &data);
    let (l, reader) = remote("together", &b);
    let f = l.open(Path::new("f")).unwrap();
    let mut buf = vec![0u8; 2500];
    f.read_at(&mut buf, 200, Path::new("f")).unwrap();
    assert_eq!(&buf[..], &data[200..2700]);
    // Chunks 0..=2 hinted as one group before they are read (then the readahead
    // after chunk 2's end is not reached: the read ends inside it).
    assert_eq!(reader.prefetched(), vec![(0, 0), (0, 1), (0, 2)]);
}

#[test]
fn reader_errors_fail_the_whole_read_with_eio() {
    let data = pattern(5000, 9);
    let mut b = TocBuilder::new(1000);
    b.file("f", 0o644, &data);
    let (l, reader) = remote("errors", &b);
    let f = l.open(Path::new("f")).unwrap();
    let p = Path::new("f");
    reader.fail(0, 2);
    let mut buf = vec![0u8; 3000];
    let e = f.read_at(&mut buf, 500, p).unwrap_err();
    assert_eq!(errno(&e), libc::EIO);
    assert!(e.to_string().contains("injected failure"), "{e}");
    // Reads that avoid the bad chunk still work.
    let n = f.read_at(&mut buf[..1000], 0, p).unwrap();
    assert_eq!(&buf[..n], &data[..1000]);
    // A chunk of the wrong length is an error too, never short or shifted data.
    reader.heal();
    reader.short(0, 3);
    assert_eq!(errno(&f.read_at(&mut buf, 2500, p).unwrap_err()), libc::EIO);
    reader.heal();
    let n = f.read_at(&mut buf, 2500, p).unwrap();
    assert_eq!(&buf[..n], &data[2500..5000]);
}

#[test]
fn registry_serves_the_remote_lower_by_key_while_held() {
    let t = tempfile::tempdir().unwrap();
    let mut b = TocBuilder::new(8);
    b.file("a", 0o644, b"remote a");
    let (toc, reader) = b.build();
    let l = Lower::remote(t.path(), toc.clone(), reader.clone()).unwrap();
    let again = Lower::open_at(t.path()).unwrap();
    assert!(Arc::ptr_eq(&l, &again));
    assert_eq!(again.root(), t.path());
    drop((l, again));
    // Expired: the (empty) dir is read again.
    let local = Lower::open_at(t.path()).unwrap();
    assert_eq!(local.kind(), LowerKind::LocalDir);
    assert_eq!(stat(&local, "a"), None);
    drop(local);
    let l = Lower::remote(t.path(), toc, reader).unwrap();
    Lower::unregister(t.path());
    assert_eq!(
        Lower::open_at(t.path()).unwrap().kind(),
        LowerKind::LocalDir
    );
    assert_eq!(read_all(&l, "a"), b"remote a");
}

#[test]
fn copy_entry_of_a_remote_file_writes_all_chunks() {
    use std::os::unix::fs::MetadataExt;
    let data = pattern(3500, 5);
    let mut b = TocBuilder::new(1000);
    b.file("d/f", 0o4755, &data).with(|e| {
        e.uid = 1000;
        e.xattrs_mut().insert("user.k".into(), b"v".to_vec());
    });
    let (l, reader) = remote("copy", &b);
    let t = tempfile::tempdir().unwrap();
    let attr = stat(&l, "d/f").unwrap();
    let tmp = t.path().join("tmp");
    super::upper::copy_entry(&l, Path::new("d/f"), &attr, &tmp, true).unwrap();
    assert_eq!(std::fs::read(&tmp).unwrap(), data);
    let md = std::fs::metadata(&tmp).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o4755, 1000));
    assert_eq!(
        super::backing::get_xattr(&tmp, OsStr::new("user.k")).unwrap(),
        Some(b"v".to_vec())
    );
    assert_eq!(reader.calls(), 4);
    assert_eq!(reader.prefetched().len(), 4);
    // A failed chunk fails the copy and leaves no temp file.
    reader.fail(0, 1);
    let tmp2 = t.path().join("tmp2");
    let e = super::upper::copy_entry(&l, Path::new("d/f"), &attr, &tmp2, true).unwrap_err();
    assert_eq!(errno(&e), libc::EIO);
    assert!(!tmp2.exists());
}

#[test]
fn b27_union_takes_dir_metadata_from_a_real_entry_below() {
    use super::union::Stack;
    use std::os::unix::fs::PermissionsExt;
    // Nearest first: L3 remote (opt/tool/run only), L2 remote (usr/bin/b
    // only), L1 local (usr/, usr/bin/ with mode 0750 and a time, usr/bin/a).
    let t = tempfile::tempdir().unwrap();
    let l1 = t.path().join("l1");
    std::fs::create_dir_all(l1.join("usr/bin")).unwrap();
    std::fs::write(l1.join("usr/bin/a"), b"a").unwrap();
    std::fs::set_permissions(l1.join("usr/bin"), std::fs::Permissions::from_mode(0o750)).unwrap();
    super::backing::set_xattr(&l1.join("usr"), OsStr::new("user.tag"), b"l1", 0).unwrap();
    super::upper::set_times(
        &l1.join("usr/bin"),
        None,
        Some(nix::sys::time::TimeSpec::new(1_234_567, 0)),
    )
    .unwrap();
    let mut b2 = TocBuilder::new(8);
    b2.file("usr/bin/b", 0o755, b"b");
    let mut b3 = TocBuilder::new(8);
    b3.file("opt/tool/run", 0o755, b"r");
    let (r2, _) = remote("b27-l2", &b2);
    let (r3, _) = remote("b27-l3", &b3);
    let s = Stack {
        upper: None,
        lowers: vec![r3, r2.clone(), Lower::open_at(&l1).unwrap()],
    };
    let hit = s.resolve(Path::new("usr/bin")).unwrap();
    assert_eq!(hit.layers, vec![2, 3]);
    assert_eq!(hit.attr.perm, 0o750);
    assert_eq!(
        hit.attr.mtime,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567)
    );
    assert_eq!(
        hit.attr.ino,
        r2.stat(Path::new("usr/bin")).unwrap().unwrap().ino
    );
    assert_eq!(
        s.dir_attr(&hit.layers, Path::new("usr/bin")).unwrap(),
        Some(hit.attr)
    );
    let usr = s.resolve(Path::new("usr")).unwrap();
    assert_eq!(s.meta_layer(&usr.layers, Path::new("usr")), 3);
    let mut listed: Vec<_> = s
        .list(Path::new("usr/bin"), &hit.layers)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    listed.sort();
    assert_eq!(listed, vec!["a", "b"]);
    // Only implicit everywhere: the synthesized 0755 root dirs.
    let opt = s.resolve(Path::new("opt/tool")).unwrap();
    assert_eq!((opt.attr.perm, opt.attr.uid), (0o755, 0));
}

/// Kind, mode and content of every name under `dir` of `l`, recursively.
fn listing(l: &Lower, dir: &Path, out: &mut Vec<String>) {
    let mut ents = l.read_dir(dir).unwrap();
    ents.sort_by(|a, b| a.name.cmp(&b.name));
    for e in ents {
        let p = dir.join(&e.name);
        let a = l.stat(&p).unwrap().unwrap();
        let body = match a.kind {
            EntryKind::File => String::from_utf8(read_all(l, p.to_str().unwrap())).unwrap(),
            EntryKind::Symlink => l.read_link(&p).unwrap().display().to_string(),
            _ => String::new(),
        };
        out.push(format!(
            "{} {:?} {:o} {body:?}",
            p.display(),
            a.kind,
            a.perm
        ));
        if a.kind == EntryKind::Dir {
            listing(l, &p, out);
        }
    }
}

#[test]
fn b21_remote_tree_equals_gnu_tar_extraction() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    let t = tempfile::tempdir().unwrap();
    let (s, ar, out) = (
        t.path().join("s"),
        t.path().join("a.tar"),
        t.path().join("out"),
    );
    std::fs::create_dir_all(&s).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let chmod = |p: &str, m| {
        std::fs::set_permissions(s.join(p), std::fs::Permissions::from_mode(m)).unwrap()
    };
    let har = t.path().join("h.tar");
    let append_to = |ar: &Path, names: &[&str]| {
        let st = Command::new("tar")
            .arg(if ar.exists() { "-rf" } else { "-cf" })
            .arg(ar)
            .args(["--no-recursion", "-C"])
            .arg(&s)
            .args(names)
            .status()
            .unwrap();
        assert!(st.success());
    };
    let append = |names: &[&str]| append_to(&ar, names);
    let mut b = TocBuilder::new(2);
    std::fs::create_dir(s.join("x")).unwrap();
    chmod("x", 0o700);
    std::fs::write(s.join("x/keep"), b"kept").unwrap();
    append(&["x", "x/keep"]);
    b.dir("x", 0o700).file("x/keep", 0o644, b"kept");
    chmod("x", 0o755);
    append(&["x"]);
    b.dir("x", 0o755);
    for v in ["one", "two"] {
        std::fs::write(s.join("f"), v).unwrap();
        append(&["f"]);
        b.file("f", 0o644, v.as_bytes());
    }
    std::fs::write(s.join("g"), b"file g").unwrap();
    append(&["g"]);
    std::fs::remove_file(s.join("g")).unwrap();
    std::fs::create_dir(s.join("g")).unwrap();
    std::fs::write(s.join("g/child"), b"c").unwrap();
    append(&["g", "g/child"]);
    b.file("g", 0o644, b"file g")
        .dir("g", 0o755)
        .file("g/child", 0o644, b"c");
    std::fs::create_dir(s.join("h")).unwrap();
    std::fs::write(s.join("h/c"), b"hc").unwrap();
    append_to(&har, &["h", "h/c"]);
    std::fs::remove_dir_all(s.join("h")).unwrap();
    std::os::unix::fs::symlink("x", s.join("h")).unwrap();
    append_to(&har, &["h"]);
    b.dir("h", 0o755)
        .file("h/c", 0o644, b"hc")
        .symlink("h", "x");
    for v in ["old", ""] {
        std::fs::write(s.join("e"), v).unwrap();
        append(&["e"]);
        b.file("e", 0o644, v.as_bytes());
    }
    // GNU tar refuses to replace the non-empty dir `h` by a symlink unless
    // told to (`--recursive-unlink`, which would also empty `x` on its
    // second entry): extract that sub-case on its own with it.
    for (ar, opts) in [
        (&ar, &["-xpf"][..]),
        (&har, &["--recursive-unlink", "-xpf"][..]),
    ] {
        let st = Command::new("tar")
            .args(opts)
            .arg(ar)
            .arg("-C")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let (remote_l, _) = remote("b21-tar", &b);
    let (mut want, mut got) = (Vec::new(), Vec::new());
    listing(&Lower::open_at(&out).unwrap(), Path::new(""), &mut want);
    listing(&remote_l, Path::new(""), &mut got);
    assert_eq!(got, want);
}
