//! Field cases on the commit side (B02, B05, B06 of CASES.md, and implicit
//! parents): the upper is made by lazysnap's own union ops (no FUSE mount),
//! then committed and read back; then the errors.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::tests::{commit, gnu_extract, parse, setx, whiteout};
use super::*;
use crate::fs::{Ctx, MountSpec, UnionFs};

/// The FUSE root node id.
const ROOT: u64 = 1;
const CTX: Ctx = Ctx { uid: 0, gid: 0 };

struct Union {
    t: tempfile::TempDir,
    fs: UnionFs,
}

impl Union {
    /// A union over the lower dir `t/lower`, filled by `fill` first.
    fn new(fill: impl FnOnce(&Path)) -> Union {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        std::fs::create_dir(&lower).unwrap();
        fill(&lower);
        let fs = UnionFs::new(&MountSpec {
            lowers: vec![lower],
            upper: Some(t.path().join("upper")),
            work: t.path().join("work"),
            mountpoint: t.path().join("mnt"),
            fsname: "test".into(),
        })
        .unwrap();
        Union { t, fs }
    }

    fn upper(&self) -> PathBuf {
        self.t.path().join("upper")
    }

    /// The node id of merged path `rel` ("" is the root).
    fn ino(&self, rel: &str) -> u64 {
        let mut ino = ROOT;
        for c in Path::new(rel).iter() {
            ino = self.fs.lookup(ino, c).unwrap().attr.ino;
        }
        ino
    }
}

fn names(ch: &[Change]) -> Vec<String> {
    ch.iter()
        .map(|c| String::from_utf8(c.tar_name()).unwrap())
        .collect()
}

#[test]
fn b02_recreated_dir_is_opaque_without_whiteouts_inside() {
    let u = Union::new(|l| std::fs::create_dir_all(l.join("top/sub")).unwrap());
    // rm -rf top; mkdir -p top/sub; mv top/sub sub
    u.fs.rmdir(u.ino("top"), OsStr::new("sub")).unwrap();
    u.fs.rmdir(ROOT, OsStr::new("top")).unwrap();
    let top =
        u.fs.mkdir(ROOT, OsStr::new("top"), 0o755, CTX)
            .unwrap()
            .attr
            .ino;
    u.fs.mkdir(top, OsStr::new("sub"), 0o755, CTX).unwrap();
    u.fs.rename(top, OsStr::new("sub"), ROOT, OsStr::new("sub"), 0)
        .unwrap();
    let (ch, tar) = commit(&u.upper());
    assert_eq!(names(&ch), ["sub/", "top/", "top/.wh..wh..opq"]);
    let got = parse(&tar);
    assert_eq!(got.len(), 3);
    assert!(
        !got.iter()
            .any(|g| g.name.starts_with(b"top/.wh.") && g.name != b"top/.wh..wh..opq")
    );

    // A stray whiteout left inside an opaque dir (what the B02 bug made) is dropped.
    whiteout(&u.upper().join("top/ghost"));
    let (ch, _) = commit(&u.upper());
    assert_eq!(names(&ch), ["sub/", "top/", "top/.wh..wh..opq"]);
}

#[test]
fn b05_deleted_dir_is_one_whiteout() {
    let u = Union::new(|l| {
        std::fs::create_dir(l.join("data")).unwrap();
        std::fs::write(l.join("data/item"), b"i").unwrap();
    });
    // rm -rf /data
    u.fs.unlink(u.ino("data"), OsStr::new("item")).unwrap();
    u.fs.rmdir(ROOT, OsStr::new("data")).unwrap();
    let (ch, tar) = commit(&u.upper());
    assert_eq!(names(&ch), [".wh.data"]);
    let got = parse(&tar);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].typeflag, got[0].mode, got[0].data.len()),
        (b'0', 0, 0)
    );
}

#[test]
fn b06_new_links_to_a_lower_group_are_one_copy_plus_hardlinks() {
    let blob: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let b = blob.clone();
    let u = Union::new(move |l| {
        std::fs::create_dir(l.join("bin")).unwrap();
        std::fs::write(l.join("bin/tool"), &b).unwrap();
        std::fs::set_permissions(
            l.join("bin/tool"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::hard_link(l.join("bin/tool"), l.join("bin/tool2")).unwrap();
        std::fs::hard_link(l.join("bin/tool"), l.join("bin/tool3")).unwrap();
    });
    // ln bin/tool bin/tool4 && ln bin/tool bin/tool5
    let bin = u.ino("bin");
    let tool = u.ino("bin/tool");
    u.fs.link(tool, bin, OsStr::new("tool4")).unwrap();
    u.fs.link(tool, bin, OsStr::new("tool5")).unwrap();
    let (ch, tar) = commit(&u.upper());
    assert_eq!(
        names(&ch),
        [
            "bin/",
            "bin/tool",
            "bin/tool2",
            "bin/tool3",
            "bin/tool4",
            "bin/tool5"
        ]
    );
    assert!(
        tar.len() < 1_100_000,
        "one copy of the data: {} bytes",
        tar.len()
    );
    let got = parse(&tar);
    assert_eq!(got[1].data, blob);
    assert_eq!(got[1].mode, 0o755);
    for g in &got[2..] {
        assert_eq!((g.typeflag, &g.link[..]), (b'1', &b"bin/tool"[..]));
    }
    let x = u.t.path().join("x");
    gnu_extract(&tar, &x);
    let ino = std::fs::metadata(x.join("bin/tool")).unwrap().ino();
    for n in 2..=5 {
        let p = x.join(format!("bin/tool{n}"));
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino);
        assert_eq!(std::fs::read(&p).unwrap(), blob);
    }
    assert_eq!(std::fs::metadata(x.join("bin/tool")).unwrap().nlink(), 5);
}

#[test]
fn implicit_lower_parents_are_written_without_private_xattrs() {
    // A layer naming only usr/bin/b: its parents are implicit in the lower.
    let mut b = ::tar::Builder::new(Vec::new());
    let mut h = ::tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(1);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, "usr/bin/b", &b"b"[..]).unwrap();
    let layer = b.into_inner().unwrap();
    let u = Union::new(|l| {
        crate::fs::apply::apply_layer(&layer[..], l).unwrap();
    });
    let bin = u.ino("usr/bin");
    let (_, fh) =
        u.fs.create(bin, OsStr::new("new"), 0o644, libc::O_WRONLY, CTX)
            .unwrap();
    u.fs.write(fh, 0, b"n").unwrap();
    u.fs.release(fh);
    let (ch, tar) = commit(&u.upper());
    assert_eq!(names(&ch), ["usr/", "usr/bin/", "usr/bin/new"]);
    for c in &ch {
        assert!(c.xattrs.is_empty(), "{:?}: {:?}", c.path, c.xattrs);
    }
    let got = parse(&tar);
    assert!(got.iter().all(|g| g.xattrs.is_empty()));
    assert_eq!(got[2].data, b"n");
}

#[test]
fn reserved_names_and_missing_uppers_are_errors_naming_the_path() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("up");
    std::fs::create_dir_all(up.join("d")).unwrap();
    std::fs::write(up.join("d/.wh.sneaky"), b"").unwrap();
    let e = changes(&up).unwrap_err();
    assert!(
        matches!(e, CommitError::ReservedName { ref path } if path == Path::new("d/.wh.sneaky")),
        "{e}"
    );
    assert!(e.to_string().contains("d/.wh.sneaky"), "{e}");
    let missing = t.path().join("nope");
    let e = changes(&missing).unwrap_err();
    assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
    std::fs::write(t.path().join("file"), b"").unwrap();
    let e = changes(&t.path().join("file")).unwrap_err();
    assert!(matches!(e, CommitError::NotADir { .. }), "{e}");
}

#[test]
fn an_opaque_root_and_a_file_changed_under_the_writer() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("up");
    std::fs::create_dir(&up).unwrap();
    setx(&up, "trusted.overlay.opaque", b"y");
    std::fs::write(up.join("f"), b"four").unwrap();
    whiteout(&up.join("w")); // dropped: under the opaque root
    let ch = changes(&up).unwrap();
    let names: Vec<Vec<u8>> = ch.iter().map(Change::tar_name).collect();
    assert_eq!(names, [b".wh..wh..opq".to_vec(), b"f".to_vec()]);
    std::fs::remove_file(up.join("f")).unwrap();
    std::os::unix::fs::symlink("x", up.join("f")).unwrap();
    let e = write_tar(&up, &ch, Vec::new(), &TarOptions::default()).unwrap_err();
    assert!(
        matches!(e, CommitError::Io { op: "open", ref path, .. } if path.ends_with("up/f")),
        "{e}"
    );
}
