//! Mount tests of remote lowers (a hand-built TOC, bytes from an in-memory
//! chunk reader that counts its calls) under a local upper.

use std::sync::Arc;

use super::super::Lower;
use super::super::remote_fake::{FakeReader, TocBuilder, pattern};
use super::*;

fn image() -> TocBuilder {
    let mut b = TocBuilder::new(1000);
    b.empty(".no.prefetch.landmark")
        .dir("etc", 0o755)
        .file("etc/conf", 0o644, b"conf=1\n")
        .with(|e| {
            e.xattrs_mut().insert("user.origin".into(), b"toc".to_vec());
        })
        .file("bin/app", 0o4755, &pattern(5500, 1)) // no entry for bin/
        .hardlink("bin/app2", "bin/app")
        .symlink("bin/sh", "app")
        .dir("data", 0o755)
        .file("data/a", 0o644, b"a")
        .file("data/b", 0o640, b"bee")
        .dir("data/sub", 0o700)
        .file("data/sub/c", 0o600, b"c")
        .file("rm-me", 0o644, b"x")
        .file("f", 0o644, b"one")
        .file("f", 0o644, b"two");
    b
}

/// Mounts `n` lowers, `lowers[0]` remote with `b`'s TOC, the rest set up by `local`.
fn mounted_remote(
    n: usize,
    b: &TocBuilder,
    local: impl FnOnce(&[PathBuf]),
) -> (Mounted, Arc<FakeReader>, Arc<Lower>) {
    let (toc, reader) = b.build();
    let mut keep = None;
    let m = mounted(n, true, |l| {
        keep = Some(Lower::remote(&l[0], toc, reader.clone()).unwrap());
        local(&l[1..]);
    });
    (m, reader, keep.unwrap())
}

fn walk_meta(p: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        n += 1;
        if md.is_dir() {
            n += walk_meta(&e.path());
        }
    }
    n
}

#[test]
fn remote_lower_is_read_lazily() {
    let (m, reader, _keep) = mounted_remote(1, &image(), |_| {});
    assert_eq!(names(&m.mnt), vec!["bin", "data", "etc", "f", "rm-me"]);
    assert_eq!(walk_meta(&m.mnt), 13);
    assert_eq!(reader.calls(), 0, "stat and readdir fetch nothing");
    assert_eq!(fs::read(m.p("etc/conf")).unwrap(), b"conf=1\n");
    assert_eq!(reader.calls(), 1, "a small file fetches its one chunk");
    assert_eq!(fs::read(m.p("bin/app")).unwrap(), pattern(5500, 1));
    assert_eq!(reader.calls(), 7);
    // The page cache is kept: reading again (through a hardlink too) fetches nothing.
    assert_eq!(fs::read(m.p("bin/app2")).unwrap(), pattern(5500, 1));
    assert_eq!(fs::read(m.p("etc/conf")).unwrap(), b"conf=1\n");
    assert_eq!(reader.calls(), 7);
    // Odd offsets through pread.
    let f = File::open(m.p("bin/app")).unwrap();
    let mut buf = vec![0u8; 1503];
    f.read_exact_at(&mut buf, 2999).unwrap();
    assert_eq!(buf, pattern(5500, 1)[2999..4502]);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"two");
    // Attributes.
    let md = fs::metadata(m.p("bin/app")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4755);
    assert_eq!(md.nlink(), 2);
    assert_eq!(md.ino(), fs::metadata(m.p("bin/app2")).unwrap().ino());
    assert_eq!(md.len(), 5500);
    let sl = fs::symlink_metadata(m.p("bin/sh")).unwrap();
    assert_eq!(sl.len(), 3);
    assert_eq!(fs::read_link(m.p("bin/sh")).unwrap(), PathBuf::from("app"));
    let bin = fs::metadata(m.p("bin")).unwrap();
    assert_eq!((bin.mode() & 0o7777, bin.uid(), bin.mtime()), (0o755, 0, 0));
    assert_eq!(
        backing::get_xattr(&m.p("etc/conf"), OsStr::new("user.origin")).unwrap(),
        Some(b"toc".to_vec())
    );
    assert_eq!(
        errno_of(fs::metadata(m.p(".no.prefetch.landmark"))),
        libc::ENOENT
    );
    assert_nlink_invariant(&m.mnt);
}

#[test]
fn remote_lower_copy_up_whiteouts_and_rename() {
    let (mut m, reader, _keep) = mounted_remote(1, &image(), |_| {});
    let app = pattern(5500, 1);
    let ino = fs::metadata(m.p("bin/app")).unwrap().ino();
    // Append: the file (and its hardlink group) is copied up with its data.
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.p("bin/app"))
        .unwrap();
    f.write_all(b"+tail").unwrap();
    drop(f);
    let mut want = app.clone();
    want.extend_from_slice(b"+tail");
    assert_eq!(fs::read(m.up("bin/app")).unwrap(), want);
    assert_eq!(fs::read(m.p("bin/app2")).unwrap(), want);
    assert_eq!(fs::metadata(m.p("bin/app")).unwrap().ino(), ino);
    assert_eq!(
        fs::metadata(m.up("bin/app")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(fs::metadata(m.up("bin/app2")).unwrap().nlink(), 2);
    // chmod copies up with data and xattrs.
    fs::set_permissions(m.p("etc/conf"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(m.p("etc/conf")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(fs::read(m.up("etc/conf")).unwrap(), b"conf=1\n");
    assert_eq!(
        backing::get_xattr(&m.up("etc/conf"), OsStr::new("user.origin")).unwrap(),
        Some(b"toc".to_vec())
    );
    // Rename a remote directory: copied up whole.
    fs::rename(m.p("data"), m.p("data2")).unwrap();
    assert_eq!(names(&m.p("data2")), vec!["a", "b", "sub"]);
    assert_eq!(fs::read(m.p("data2/sub/c")).unwrap(), b"c");
    assert_eq!(fs::read(m.up("data2/b")).unwrap(), b"bee");
    assert_eq!(
        fs::metadata(m.up("data2/sub")).unwrap().mode() & 0o7777,
        0o700
    );
    assert!(is_whiteout(&m.up("data")));
    assert_eq!(errno_of(fs::metadata(m.p("data"))), libc::ENOENT);
    // Delete a remote file: a whiteout.
    fs::remove_file(m.p("rm-me")).unwrap();
    assert!(is_whiteout(&m.up("rm-me")));
    assert_eq!(names(&m.mnt), vec!["bin", "data2", "etc", "f"]);
    // An implicit remote dir copied up gets its synthesized metadata.
    fs::write(m.p("bin/new"), b"n").unwrap();
    assert_eq!(fs::metadata(m.up("bin")).unwrap().mode() & 0o7777, 0o755);
    assert_nlink_invariant(&m.mnt);
    // All of it survives a remount over the same registered lower.
    m.remount();
    assert_eq!(fs::read(m.p("bin/app2")).unwrap(), want);
    assert_eq!(fs::read(m.p("data2/sub/c")).unwrap(), b"c");
    assert_eq!(fs::metadata(m.p("bin/app")).unwrap().ino(), ino);
    assert_eq!(names(&m.mnt), vec!["bin", "data2", "etc", "f"]);
    assert!(reader.calls() > 0);
}

#[test]
fn union_of_remote_and_local_lowers() {
    let mut b = TocBuilder::new(4);
    b.empty(".wh.gone")
        .dir("opq", 0o755)
        .empty("opq/.wh..wh..opq")
        .file("opq/new", 0o644, b"new")
        .file("usr/bin/b", 0o755, b"b") // no usr/ or usr/bin/ entries (B27)
        .dir("merged", 0o755)
        .file("merged/top", 0o644, b"top")
        .empty("merged/.wh.hidden");
    let (m, reader, _keep) = mounted_remote(2, &b, |l| {
        put(&l[0], "gone", b"g");
        put(&l[0], "opq/old", b"o");
        put(&l[0], "usr/bin/a", b"a");
        fs::set_permissions(l[0].join("usr/bin"), fs::Permissions::from_mode(0o750)).unwrap();
        put(&l[0], "merged/bottom", b"bottom");
        put(&l[0], "merged/hidden", b"h");
        put(&l[0], "plain", b"plain");
    });
    assert_eq!(names(&m.mnt), vec!["merged", "opq", "plain", "usr"]);
    assert_eq!(names(&m.p("opq")), vec!["new"]);
    assert_eq!(names(&m.p("usr/bin")), vec!["a", "b"]);
    assert_eq!(names(&m.p("merged")), vec!["bottom", "top"]);
    assert_eq!(fs::metadata(m.p("usr/bin")).unwrap().mode() & 0o7777, 0o750);
    assert_eq!(fs::read(m.p("merged/bottom")).unwrap(), b"bottom");
    assert_eq!(fs::read(m.p("usr/bin/a")).unwrap(), b"a");
    assert_eq!(reader.calls(), 0);
    assert_eq!(fs::read(m.p("merged/top")).unwrap(), b"top");
    assert_eq!(fs::read(m.p("usr/bin/b")).unwrap(), b"b");
    assert_eq!(reader.calls(), 2);
    // Copy-up into a dir that is implicit in the remote layer keeps the
    // local layer's metadata; deleting a remote file in a merged dir
    // leaves a whiteout.
    fs::write(m.p("usr/bin/c"), b"c").unwrap();
    assert_eq!(
        fs::metadata(m.up("usr/bin")).unwrap().mode() & 0o7777,
        0o750
    );
    fs::remove_file(m.p("merged/top")).unwrap();
    assert!(is_whiteout(&m.up("merged/top")));
    assert_eq!(names(&m.p("merged")), vec!["bottom"]);
}

#[test]
fn remote_read_errors_are_eio_and_never_wrong_bytes() {
    let data = pattern(1 << 20, 2);
    let mut b = TocBuilder::new(64 << 10);
    b.file("f", 0o644, &data);
    let (m, reader, _keep) = mounted_remote(1, &b, |_| {});
    reader.fail(0, 8); // [512 KiB, 576 KiB)
    let f = File::open(m.p("f")).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, data[..4096]);
    assert_eq!(errno_of(f.read_exact_at(&mut buf, 540 << 10)), libc::EIO);
    reader.heal();
    let mut all = Vec::new();
    File::open(m.p("f")).unwrap().read_to_end(&mut all).unwrap();
    assert_eq!(all, data);
}
