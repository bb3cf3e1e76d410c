//! Commit tests over hand-built upper dirs (run as root: devices, owners,
//! `trusted.*` xattrs): the change list, the tar read back with the `tar`
//! crate, GNU tar extraction, determinism and sparse files.

use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

use super::*;

/// `lsetxattr(path, name, value)`.
pub(super) fn setx(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: p and n are NUL-terminated; value is readable for its length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Sets the mtime (and atime) of `path` without following a symlink.
pub(super) fn set_mtime(path: &Path, secs: i64, nsecs: i64) {
    let t = TimeSpec::new(secs, nsecs);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
}

pub(super) fn whiteout(path: &Path) {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
}

/// One member of a tar as read back by the `tar` crate, PAX overrides applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Got {
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// The PAX `mtime` value when present, else the header's seconds.
    pub mtime: String,
    pub link: Vec<u8>,
    pub dev: (u32, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub data: Vec<u8>,
}

/// Splits a PAX body by record lengths (the `tar` crate's own iterator
/// splits at `\n`, which breaks on binary xattr values holding 0x0A).
fn pax_records(mut body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let sp = body.iter().position(|&b| b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&body[..sp]).unwrap().parse().unwrap();
        assert_eq!(body[len - 1], b'\n');
        let rec = &body[sp + 1..len - 1];
        let eq = rec.iter().position(|&b| b == b'=').unwrap();
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        body = &body[len..];
    }
    out
}

/// Reads a tar with the `tar` crate in raw mode, applying the PAX records
/// (`path`, `linkpath`, `uid`, `gid`, `mtime`, `SCHILY.xattr.*`) itself.
pub(super) fn parse(tar_bytes: &[u8]) -> Vec<Got> {
    let mut a = ::tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    let mut pax = Vec::new();
    for e in a.entries().unwrap().raw(true) {
        let mut e = e.unwrap();
        let h = e.header().clone();
        if h.entry_type() == ::tar::EntryType::XHeader {
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            pax = pax_records(&body);
            continue;
        }
        let mut g = Got {
            name: e.path_bytes().into_owned(),
            typeflag: h.entry_type().as_byte(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap().to_string(),
            link: e
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default(),
            dev: (
                h.device_major().unwrap().unwrap_or(0),
                h.device_minor().unwrap().unwrap_or(0),
            ),
            ..Got::default()
        };
        for (k, v) in std::mem::take(&mut pax) {
            let num = || String::from_utf8(v.clone()).unwrap().parse().unwrap();
            match &k[..] {
                b"path" => g.name = v,
                b"linkpath" => g.link = v,
                b"uid" => g.uid = num(),
                b"gid" => g.gid = num(),
                b"mtime" => g.mtime = String::from_utf8(v).unwrap(),
                _ => {
                    let n = k.strip_prefix(b"SCHILY.xattr.").expect("known PAX key");
                    g.xattrs.push((n.to_vec(), v));
                }
            }
        }
        e.read_to_end(&mut g.data).unwrap();
        out.push(g);
    }
    out
}

pub(super) fn commit(upper: &Path) -> (Vec<Change>, Vec<u8>) {
    let ch = changes(upper).unwrap();
    let mut out = Vec::new();
    let w = write_tar(upper, &ch, &mut out, &TarOptions::default()).unwrap();
    assert_eq!(w.bytes, out.len() as u64);
    assert_eq!(w.entries, ch.len() as u64);
    assert_eq!(out.len() % 512, 0);
    assert!(out.ends_with(&[0u8; 1024]));
    (ch, out)
}

/// Extracts `tar_bytes` with GNU tar into `dir` (owners, modes, xattrs).
pub(super) fn gnu_extract(tar_bytes: &[u8], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.with_extension("tar");
    std::fs::write(&file, tar_bytes).unwrap();
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&file)
        .arg("-C")
        .arg(dir)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "GNU tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    // A pre-1970 mtime is restored, with a warning.
    assert!(
        err.lines()
            .all(|l| l.contains("implausibly old time stamp")),
        "GNU tar warned: {err}"
    );
}

const CAP: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
pub(super) const T: i64 = 1_600_000_000;

fn long_dir() -> String {
    format!("long_dir_{}", "d".repeat(60))
}
fn long_file() -> String {
    format!("file_{}", "f".repeat(60))
}
fn long_target() -> String {
    format!("/{}", "t/".repeat(75))
}

/// An upper holding every kind of entry; all mtimes `T` unless noted.
fn build_upper(up: &Path) {
    use std::os::unix::fs::{lchown, symlink};
    let p = |r: &str| up.join(r);
    std::fs::create_dir(up).unwrap();
    whiteout(&p("gone"));
    std::fs::create_dir(p("a")).unwrap();
    std::fs::write(p("a/f"), b"hello").unwrap();
    symlink("f", p("a/s")).unwrap();
    std::fs::write(up.join(OsStr::from_bytes(b"bad\xff")), b"nb").unwrap();
    mknod(
        &p("bdev"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(7, 0),
    )
    .unwrap();
    std::fs::set_permissions(
        p("bdev"),
        std::os::unix::fs::PermissionsExt::from_mode(0o660),
    )
    .unwrap();
    std::fs::write(p("big"), b"big ids").unwrap();
    mknod(
        &p("cdev"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .unwrap();
    std::fs::set_permissions(
        p("cdev"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    nix::unistd::mkfifo(&p("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    std::fs::create_dir_all(p("h")).unwrap();
    std::fs::create_dir_all(p("z")).unwrap();
    std::fs::write(p("h/a"), b"linked").unwrap();
    std::fs::hard_link(p("h/a"), p("h/b")).unwrap();
    std::fs::hard_link(p("h/a"), p("z/c")).unwrap();
    std::fs::create_dir(p(&long_dir())).unwrap();
    std::fs::write(p(&format!("{}/{}", long_dir(), long_file())), b"deep").unwrap();
    symlink(long_target(), p("longlink")).unwrap();
    std::fs::create_dir_all(p("o/sub")).unwrap();
    setx(&p("o"), "trusted.overlay.opaque", b"y");
    std::fs::write(p("o/new"), b"new").unwrap();
    whiteout(&p("o/old"));
    whiteout(&p("o/sub/x"));
    std::fs::write(p("old"), b"1969").unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(p("sock")).unwrap();

    nix::unistd::chown(&p("a"), Some(1000.into()), Some(1001.into())).unwrap();
    std::fs::set_permissions(p("a"), std::os::unix::fs::PermissionsExt::from_mode(0o2755)).unwrap();
    setx(&p("a"), "user.dir", b"d");
    std::fs::set_permissions(
        p("a/f"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    setx(&p("a/f"), "user.bin", b"\x00\xff\n=x");
    setx(&p("a/f"), "security.capability", &CAP);
    setx(&p("a/f"), "trusted.overlay.origin", b"junk");
    setx(&p("a/f"), "trusted.lazysnap.implicit", b"y");
    setx(&p("a/f"), "trusted.other", b"keep");
    lchown(p("bdev"), None, Some(6)).unwrap();
    lchown(p("big"), Some(3_000_000), Some(4_000_000)).unwrap();
    lchown(p("a/s"), Some(5), Some(6)).unwrap();
    for e in walk(up) {
        set_mtime(&e, T, 0);
    }
    set_mtime(&p("a"), T, 123_456_789);
    set_mtime(&p("old"), -2, 500_000_000);
}

/// Every path under `root` (not `root`), depth first.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

fn g(name: &[u8], typeflag: u8, mode: u32) -> Got {
    Got {
        name: name.to_vec(),
        typeflag,
        mode,
        mtime: T.to_string(),
        ..Got::default()
    }
}

fn expected() -> Vec<Got> {
    let ld = long_dir();
    let lf = format!("{ld}/{}", long_file());
    vec![
        g(b".wh.gone", b'0', 0),
        Got {
            uid: 1000,
            gid: 1001,
            mtime: format!("{T}.123456789"),
            xattrs: vec![(b"user.dir".to_vec(), b"d".to_vec())],
            ..g(b"a/", b'5', 0o2755)
        },
        Got {
            data: b"hello".to_vec(),
            xattrs: vec![
                (b"security.capability".to_vec(), CAP.to_vec()),
                (b"trusted.other".to_vec(), b"keep".to_vec()),
                (b"user.bin".to_vec(), b"\x00\xff\n=x".to_vec()),
            ],
            ..g(b"a/f", b'0', 0o4755)
        },
        Got {
            uid: 5,
            gid: 6,
            link: b"f".to_vec(),
            ..g(b"a/s", b'2', 0o777)
        },
        Got {
            data: b"nb".to_vec(),
            ..g(b"bad\xff", b'0', 0o644)
        },
        Got {
            gid: 6,
            dev: (7, 0),
            ..g(b"bdev", b'4', 0o660)
        },
        Got {
            uid: 3_000_000,
            gid: 4_000_000,
            data: b"big ids".to_vec(),
            ..g(b"big", b'0', 0o644)
        },
        Got {
            dev: (1, 3),
            ..g(b"cdev", b'3', 0o666)
        },
        g(b"fifo", b'6', 0o644),
        g(b"h/", b'5', 0o755),
        Got {
            data: b"linked".to_vec(),
            ..g(b"h/a", b'0', 0o644)
        },
        Got {
            link: b"h/a".to_vec(),
            ..g(b"h/b", b'1', 0o644)
        },
        g(format!("{ld}/").as_bytes(), b'5', 0o755),
        Got {
            data: b"deep".to_vec(),
            ..g(lf.as_bytes(), b'0', 0o644)
        },
        Got {
            link: long_target().into_bytes(),
            ..g(b"longlink", b'2', 0o777)
        },
        g(b"o/", b'5', 0o755),
        g(b"o/.wh..wh..opq", b'0', 0),
        Got {
            data: b"new".to_vec(),
            ..g(b"o/new", b'0', 0o644)
        },
        g(b"o/sub/", b'5', 0o755),
        Got {
            data: b"1969".to_vec(),
            mtime: "-1.5".into(),
            ..g(b"old", b'0', 0o644)
        },
        g(b"z/", b'5', 0o755),
        Got {
            link: b"h/a".to_vec(),
            ..g(b"z/c", b'1', 0o644)
        },
    ]
}

#[test]
fn every_kind_round_trips_through_the_tar_crate_in_order() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("up");
    build_upper(&up);
    let (ch, tar) = commit(&up);
    let kinds: Vec<(PathBuf, ChangeKind)> = ch
        .iter()
        .map(|c| (c.path.clone(), c.kind.clone()))
        .collect();
    assert_eq!(kinds[0], (PathBuf::from("gone"), ChangeKind::Whiteout));
    assert_eq!(
        kinds[2],
        (PathBuf::from("a/f"), ChangeKind::File { size: 5 })
    );
    assert_eq!(
        kinds[21],
        (
            PathBuf::from("z/c"),
            ChangeKind::Hardlink {
                target: "h/a".into()
            }
        )
    );
    assert_eq!(kinds[16], (PathBuf::from("o"), ChangeKind::Opaque));
    assert_eq!(
        ch[7].kind,
        ChangeKind::CharDev { major: 1, minor: 3 },
        "{:?}",
        ch[7].path
    );
    let got = parse(&tar);
    let want = expected();
    assert_eq!(
        got.len(),
        want.len(),
        "{:#?}",
        got.iter()
            .map(|g| String::from_utf8_lossy(&g.name).into_owned())
            .collect::<Vec<_>>()
    );
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "entry {}", String::from_utf8_lossy(&w.name));
    }
    // Deterministic: a second walk and write give the same bytes.
    let (ch2, tar2) = commit(&up);
    assert_eq!(ch, ch2);
    assert_eq!(tar, tar2);
}

#[test]
fn headers_use_pax_only_where_needed() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("up");
    build_upper(&up);
    let (_, tar) = commit(&up);
    // Walk the raw headers: typeflag and the PAX keys attached to each member.
    let mut at = 0;
    let mut pax_keys: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
    let mut pending = Vec::new();
    while at + 512 <= tar.len() && tar[at] != 0 {
        let h = &tar[at..at + 512];
        let size = u64::from_str_radix(std::str::from_utf8(&h[124..135]).unwrap(), 8).unwrap();
        let body = &tar[at + 512..at + 512 + size as usize];
        if h[156] == b'x' {
            let mut rest = body;
            while !rest.is_empty() {
                let sp = rest.iter().position(|&b| b == b' ').unwrap();
                let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
                let rec = &rest[sp + 1..len - 1];
                let eq = rec.iter().position(|&b| b == b'=').unwrap();
                pending.push(rec[..eq].to_vec());
                rest = &rest[len..];
            }
        } else {
            let n = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
            pax_keys.push((h[..n].to_vec(), std::mem::take(&mut pending)));
        }
        at += 512 + size.div_ceil(512) as usize * 512;
    }
    let keys = |name: &[u8]| -> Vec<String> {
        pax_keys
            .iter()
            .find(|(n, _)| n.starts_with(name))
            .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(name)))
            .1
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    };
    assert_eq!(keys(b"a/"), ["mtime", "SCHILY.xattr.user.dir"]);
    assert_eq!(keys(b"big"), ["uid", "gid"]);
    assert_eq!(keys(b"old"), ["mtime"]);
    assert_eq!(keys(b"longlink"), ["linkpath"]);
    assert_eq!(keys(long_dir().as_bytes()), Vec::<String>::new());
    let long_entries: Vec<_> = pax_keys
        .iter()
        .filter(|(_, k)| k.contains(&b"path".to_vec()))
        .collect();
    assert_eq!(long_entries.len(), 1, "the long file name takes a PAX path");
    assert!(keys(b"h/b").is_empty() && keys(b".wh.gone").is_empty() && keys(b"cdev").is_empty());
    // Header mtime of `a/` keeps the whole seconds for readers without PAX.
    assert_eq!(parse(&tar)[1].mtime, format!("{T}.123456789"));
}

#[test]
fn gnu_tar_extracts_the_same_tree() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("up");
    build_upper(&up);
    let (_, tar) = commit(&up);
    let x = t.path().join("x");
    gnu_extract(&tar, &x);
    let md = |r: &[u8]| std::fs::symlink_metadata(x.join(OsStr::from_bytes(r))).unwrap();
    let mdu = |r: &[u8]| std::fs::symlink_metadata(up.join(OsStr::from_bytes(r))).unwrap();
    for r in [
        &b"a"[..],
        b"a/f",
        b"a/s",
        b"bad\xff",
        b"bdev",
        b"big",
        b"cdev",
        b"fifo",
        b"h/a",
        b"h/b",
        b"z/c",
        b"longlink",
        b"o/new",
        b"old",
    ] {
        let (a, b) = (md(r), mdu(r));
        let name = String::from_utf8_lossy(r);
        assert_eq!(a.mode(), b.mode(), "{name}");
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "{name}");
        assert_eq!(
            (a.mtime(), a.mtime_nsec()),
            (b.mtime(), b.mtime_nsec()),
            "{name}"
        );
        assert_eq!(a.rdev(), b.rdev(), "{name}");
        assert_eq!(a.len(), b.len(), "{name}");
    }
    let deep = format!("{}/{}", long_dir(), long_file());
    assert_eq!(std::fs::read(x.join(&deep)).unwrap(), b"deep");
    assert_eq!(
        std::fs::read_link(x.join("longlink")).unwrap(),
        PathBuf::from(long_target())
    );
    assert_eq!(md(b"h/a").ino(), md(b"z/c").ino());
    assert_eq!(md(b"h/a").nlink(), 3);
    let getx = |r: &str, n: &str| crate::fs::get_xattr(&x.join(r), OsStr::new(n)).unwrap();
    assert_eq!(
        getx("a/f", "security.capability").as_deref(),
        Some(&CAP[..])
    );
    assert_eq!(
        getx("a/f", "user.bin").as_deref(),
        Some(&b"\x00\xff\n=x"[..])
    );
    assert_eq!(getx("a/f", "trusted.overlay.origin"), None);
    assert_eq!(getx("a/f", "trusted.lazysnap.implicit"), None);
    // Markers are plain empty files to GNU tar; sockets and dropped whiteouts are absent.
    assert_eq!(md(b".wh.gone").len(), 0);
    assert!(md(b"o/.wh..wh..opq").is_file());
    for absent in ["sock", "gone", "o/old", "o/.wh.old", "o/sub/.wh.x"] {
        assert!(
            std::fs::symlink_metadata(x.join(absent)).is_err(),
            "{absent}"
        );
    }
}

#[test]
fn long_non_utf8_names_and_targets_go_raw_into_pax_records() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("up");
    let dir = [&b"d\xfe"[..], &[b'x'; 70]].concat();
    let file = [&b"f\xff"[..], &[b'y'; 60]].concat();
    let target = [&b"/t\xfd/"[..], &[b'z'; 120]].concat();
    let rel = [&dir[..], b"/", &file[..]].concat();
    std::fs::create_dir_all(up.join(OsStr::from_bytes(&dir))).unwrap();
    std::fs::write(up.join(OsStr::from_bytes(&rel)), b"raw").unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(&target), up.join("ln")).unwrap();
    let (_, tar) = commit(&up);
    let got = parse(&tar);
    let names: Vec<&[u8]> = got.iter().map(|g| &g.name[..]).collect();
    assert_eq!(names, [&[&dir[..], b"/"].concat()[..], &rel[..], b"ln"]);
    assert_eq!(got[1].data, b"raw");
    assert_eq!(got[2].link, target);
    let x = t.path().join("x");
    gnu_extract(&tar, &x);
    assert_eq!(
        std::fs::read(x.join(OsStr::from_bytes(&rel))).unwrap(),
        b"raw"
    );
    let l = std::fs::read_link(x.join("ln")).unwrap();
    assert_eq!(l.as_os_str().as_bytes(), &target[..]);
}
