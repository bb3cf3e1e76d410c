//! Real FUSE mounts over tempdir layers, checked through std::fs / libc.
//! They need root and /dev/fuse; every mount is undone by a guard.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

mod cases_files;
mod cases_ns;
mod cases_passthrough;
mod cases_remote;
mod serve;

use super::backing::{self, EntryKind};
use super::{MountHandle, MountSpec, MountState, mount, mount_state, unmount};

/// A mounted union; unmounts on drop, even when the test fails.
struct Mounted {
    t: tempfile::TempDir,
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: PathBuf,
    mnt: PathBuf,
    handle: Option<MountHandle>,
    rt: Option<tokio::runtime::Runtime>,
    /// Mounts under the tempdir to undo after the union (a small tmpfs upper).
    extra: Vec<PathBuf>,
    /// Whatever the test needs alive as long as the mount (dropped after it).
    keep: Option<Box<dyn std::any::Any>>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = unmount(&self.mnt);
        drop(self.handle.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        for p in &self.extra {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Mounted {
    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn up(&self, rel: &str) -> PathBuf {
        self.upper.as_ref().unwrap().join(rel)
    }

    fn spec(&self) -> MountSpec {
        MountSpec {
            lowers: self.lowers.clone(),
            upper: self.upper.clone(),
            work: self.work.clone(),
            mountpoint: self.mnt.clone(),
            fsname: "lazysnap-test".into(),
        }
    }

    fn remount(&mut self) {
        unmount(&self.mnt).unwrap();
        drop(self.handle.take());
        let rt = self.rt.as_ref().unwrap().handle().clone();
        self.handle = Some(mount(self.spec(), rt).unwrap());
    }
}

/// Builds `n` lower dirs (nearest first) with `setup`, then mounts them.
fn mounted(n: usize, writable: bool, setup: impl FnOnce(&[PathBuf])) -> Mounted {
    mounted_in(n, writable, None, setup)
}

/// As [`mounted`], with the upper and `work` on a tmpfs of `tmpfs_kib` KiB when given.
fn mounted_in(
    n: usize,
    writable: bool,
    tmpfs_kib: Option<u64>,
    setup: impl FnOnce(&[PathBuf]),
) -> Mounted {
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let lowers: Vec<PathBuf> = (0..n)
        .map(|i| {
            let d = t.path().join(format!("l{i}"));
            fs::create_dir(&d).unwrap();
            d
        })
        .collect();
    setup(&lowers);
    let mut extra = Vec::new();
    let base = match tmpfs_kib {
        Some(kib) => {
            let small = t.path().join("small");
            fs::create_dir(&small).unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                &small,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(format!("size={kib}k").as_str()),
            )
            .unwrap();
            extra.push(small.clone());
            small
        }
        None => t.path().to_path_buf(),
    };
    let upper = writable.then(|| base.join("upper"));
    let work = base.join("work");
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    if let Some(u) = &upper {
        fs::create_dir(u).unwrap();
    }
    fs::create_dir(&work).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .unwrap();
    let mut m = Mounted {
        t,
        lowers,
        upper,
        work,
        mnt,
        handle: None,
        rt: None,
        extra,
        keep: None,
    };
    let h = mount(m.spec(), rt.handle().clone()).unwrap();
    m.handle = Some(h);
    m.rt = Some(rt);
    m
}

fn put(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap()
}

/// Everything about a tree that a byte-identical check compares.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let p = root.join(rel);
        let md = fs::symlink_metadata(&p).unwrap();
        let mut h = DefaultHasher::new();
        if md.is_file() {
            fs::read(&p).unwrap().hash(&mut h);
        } else if md.file_type().is_symlink() {
            fs::read_link(&p).unwrap().hash(&mut h);
        }
        let mut xattrs = backing::list_xattrs(&p).unwrap();
        xattrs.sort();
        for x in &xattrs {
            backing::get_xattr(&p, x).unwrap().hash(&mut h);
        }
        out.insert(
            rel.to_path_buf(),
            format!(
                "{:o} {}:{} {} {}.{} {} {:?} {:x}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.size(),
                md.mtime(),
                md.mtime_nsec(),
                md.nlink(),
                xattrs,
                h.finish()
            ),
        );
        if md.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                walk(root, &rel.join(n), out);
            }
        }
    }
    walk(dir, Path::new(""), &mut out);
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_whiteout(p: &Path) -> bool {
    backing::lstat(p)
        .unwrap()
        .is_some_and(|a| a.kind == EntryKind::Whiteout)
}

/// Asserts the B06 invariant over the whole mount: each file's `st_nlink`
/// equals the number of names sharing its `st_ino`.
fn assert_nlink_invariant(root: &Path) {
    let mut by_ino: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    fn walk(p: &Path, by_ino: &mut BTreeMap<u64, (u64, u64)>) {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                walk(&e.path(), by_ino);
            } else {
                let ent = by_ino.entry(md.ino()).or_insert((0, md.nlink()));
                ent.0 += 1;
                assert_eq!(ent.1, md.nlink(), "{:?}", e.path());
            }
        }
    }
    walk(root, &mut by_ino);
    for (ino, (names, nlink)) in by_ino {
        assert_eq!(
            names, nlink,
            "inode {ino:#x}: {names} names, st_nlink {nlink}"
        );
    }
}
