//! Mount tests of the namespace: renames, readdir, whiteouts, views, remounts.

use super::*;

#[test]
fn b13_rename_lower_dir_keeps_content_modes_xattrs_times() {
    let m = mounted(1, true, |l| {
        put(&l[0], "srv/old/f1", b"one");
        put(&l[0], "srv/old/sub/f2", b"two");
        backing::set_xattr(
            &l[0].join("srv/old/sub/f2"),
            OsStr::new("user.tag"),
            b"1",
            0,
        )
        .unwrap();
        fs::create_dir(l[0].join("srv/old/priv")).unwrap();
        fs::set_permissions(l[0].join("srv/old/priv"), fs::Permissions::from_mode(0o700)).unwrap();
        crate::fs::upper::set_times(
            &l[0].join("srv/old/f1"),
            None,
            Some(nix::sys::time::TimeSpec::new(1_000_000, 0)),
        )
        .unwrap();
    });
    let before = tree(&m.lowers[0]);
    let old = tree(&m.p("srv/old"));
    fs::rename(m.p("srv/old"), m.p("srv/new")).unwrap();
    assert_eq!(errno_of(fs::metadata(m.p("srv/old"))), libc::ENOENT);
    let new = tree(&m.p("srv/new"));
    // Same content, modes, owners, mtimes and xattrs (st_nlink of merged
    // dirs may differ; compare everything but that column).
    let strip = |t: BTreeMap<PathBuf, String>| -> Vec<(PathBuf, String)> {
        t.into_iter()
            .map(|(k, v)| {
                let cols: Vec<&str> = v.split(' ').collect();
                let mut c = cols.clone();
                c.remove(4);
                (k, c.join(" "))
            })
            .collect()
    };
    assert_eq!(strip(old), strip(new));
    assert_eq!(fs::metadata(m.p("srv/new/f1")).unwrap().mtime(), 1_000_000);
    assert_eq!(
        backing::get_xattr(&m.p("srv/new/sub/f2"), OsStr::new("user.tag")).unwrap(),
        Some(b"1".to_vec())
    );
    assert!(is_whiteout(&m.up("srv/old")));
    assert!(backing::is_opaque(&m.up("srv/new")).unwrap());
    // A dir created in the upper renames too, and again.
    fs::create_dir(m.p("mine")).unwrap();
    fs::write(m.p("mine/x"), b"x").unwrap();
    fs::rename(m.p("mine"), m.p("srv/mine2")).unwrap();
    fs::rename(m.p("srv/new"), m.p("srv/new3")).unwrap();
    assert_eq!(fs::read(m.p("srv/mine2/x")).unwrap(), b"x");
    assert_eq!(fs::read(m.p("srv/new3/sub/f2")).unwrap(), b"two");
    assert_eq!(names(&m.p("srv")), vec!["mine2", "new3"]);
    // mv over an existing empty lower dir.
    assert_eq!(before, tree(&m.lowers[0]));
}

#[test]
fn b12_symlink_sizes_and_loops() {
    let long: String = "x/".repeat(149) + "yy";
    let l2 = long.clone();
    let m = mounted(1, true, move |l| {
        fs::create_dir_all(l[0].join("lib")).unwrap();
        fs::create_dir_all(l[0].join("lnk")).unwrap();
        std::os::unix::fs::symlink("libthing.so.5.13", l[0].join("lib/libthing.so")).unwrap();
        std::os::unix::fs::symlink(&l2, l[0].join("lnk/long")).unwrap();
        std::os::unix::fs::symlink("loop2", l[0].join("lnk/loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", l[0].join("lnk/loop2")).unwrap();
    });
    assert_eq!(
        fs::symlink_metadata(m.p("lib/libthing.so")).unwrap().len(),
        16
    );
    assert_eq!(fs::symlink_metadata(m.p("lnk/long")).unwrap().len(), 300);
    assert_eq!(
        fs::read_link(m.p("lnk/long")).unwrap().as_os_str().len(),
        long.len()
    );
    assert_eq!(errno_of(File::open(m.p("lnk/loop1"))), libc::ELOOP);
    std::os::unix::fs::symlink("/etc/hostname", m.p("lnk/abs")).unwrap();
    assert_eq!(fs::symlink_metadata(m.p("lnk/abs")).unwrap().len(), 13);
    assert_eq!(
        fs::read_link(m.p("lnk/abs")).unwrap(),
        PathBuf::from("/etc/hostname")
    );
}

#[test]
fn readdir_offsets_are_stable_and_merged() {
    let m = mounted(2, true, |l| {
        for i in 0..60 {
            put(&l[1], &format!("d/low{i:03}"), b"l");
        }
        for i in 0..30 {
            put(&l[0], &format!("d/mid{i:03}"), b"m");
        }
        put(&l[0], "d/low000", b"shadow");
    });
    for i in 0..40 {
        fs::write(m.p(&format!("d/up{i:03}")), b"u").unwrap();
    }
    let all = names(&m.p("d"));
    assert_eq!(all.len(), 130);
    assert_eq!(fs::read(m.p("d/low000")).unwrap(), b"shadow");
    let dir = CString::new(m.p("d").as_os_str().as_bytes()).unwrap();
    let read_all = |d: *mut libc::DIR| -> Vec<String> {
        let mut v = Vec::new();
        loop {
            // SAFETY: d is an open DIR stream.
            let e = unsafe { libc::readdir(d) };
            if e.is_null() {
                break;
            }
            // SAFETY: readdir returned a valid dirent with a NUL-terminated name.
            let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
            v.push(name.to_string_lossy().into_owned());
        }
        v
    };
    // SAFETY: opendir/readdir/telldir/seekdir/closedir on a stream we own.
    unsafe {
        let d = libc::opendir(dir.as_ptr());
        assert!(!d.is_null());
        let mut first = Vec::new();
        for _ in 0..50 {
            let e = libc::readdir(d);
            assert!(!e.is_null());
            first.push(
                std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        let pos = libc::telldir(d);
        // Changes after opendir do not shift the stream.
        fs::remove_file(m.p("d/low059")).unwrap();
        fs::write(m.p("d/zzz-new"), b"z").unwrap();
        let rest = read_all(d);
        libc::seekdir(d, pos);
        let again = read_all(d);
        assert_eq!(rest, again);
        libc::closedir(d);
        let mut everything: Vec<String> = first.into_iter().chain(rest).collect();
        assert_eq!(everything.len(), 132);
        everything.sort();
        let mut want: Vec<String> = all.clone();
        want.push(".".into());
        want.push("..".into());
        want.sort();
        assert_eq!(everything, want);
    }
    assert!(names(&m.p("d")).contains(&"zzz-new".to_string()));
    // d_ino matches st_ino.
    for e in fs::read_dir(m.p("d")).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            std::os::unix::fs::DirEntryExt::ino(&e),
            fs::symlink_metadata(e.path()).unwrap().ino()
        );
    }
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    nix::fcntl::renameat2(
        None,
        from,
        None,
        to,
        nix::fcntl::RenameFlags::from_bits_truncate(flags),
    )
    .map_err(std::io::Error::from)
}

#[test]
fn rename_exchange_and_noreplace() {
    let m = mounted(1, true, |l| {
        put(&l[0], "a", b"lower a");
        put(&l[0], "dir/x", b"x");
        put(&l[0], "other/y", b"y");
    });
    fs::write(m.p("b"), b"upper b").unwrap();
    assert_eq!(
        errno_of(renameat2(&m.p("a"), &m.p("b"), libc::RENAME_NOREPLACE)),
        libc::EEXIST
    );
    renameat2(&m.p("a"), &m.p("b"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"upper b");
    assert_eq!(fs::read(m.p("b")).unwrap(), b"lower a");
    // Exchange a lower dir and a file.
    renameat2(&m.p("dir"), &m.p("a"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.p("a/x")).unwrap(), b"x");
    assert_eq!(fs::read(m.p("dir")).unwrap(), b"upper b");
    // Exchange two lower dirs.
    renameat2(&m.p("a"), &m.p("other"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(names(&m.p("a")), vec!["y"]);
    assert_eq!(names(&m.p("other")), vec!["x"]);
    // NOREPLACE onto a free name works; plain rename over a lower file works.
    renameat2(&m.p("b"), &m.p("c"), libc::RENAME_NOREPLACE).unwrap();
    fs::rename(m.p("c"), m.p("dir")).unwrap();
    assert_eq!(fs::read(m.p("dir")).unwrap(), b"lower a");
    assert_eq!(names(&m.mnt), vec!["a", "dir", "other"]);
    assert_eq!(
        errno_of(renameat2(&m.p("nope"), &m.p("a"), libc::RENAME_EXCHANGE)),
        libc::ENOENT
    );
}

#[test]
fn b02_delete_recreate_move_child_out() {
    let m = mounted(1, true, |l| {
        fs::create_dir_all(l[0].join("top/sub")).unwrap();
    });
    fs::remove_dir(m.p("top/sub")).unwrap();
    fs::remove_dir(m.p("top")).unwrap();
    fs::create_dir_all(m.p("top/sub")).unwrap();
    fs::rename(m.p("top/sub"), m.p("sub")).unwrap();
    assert_eq!(names(&m.p("top")), Vec::<String>::new());
    assert_eq!(names(&m.p("sub")), Vec::<String>::new());
    assert!(backing::is_opaque(&m.up("top")).unwrap());
    assert!(
        fs::read_dir(m.up("top")).unwrap().next().is_none(),
        "no whiteouts in top"
    );
    assert!(fs::metadata(m.up("sub")).unwrap().is_dir());
    for n in names(&m.mnt) {
        fs::symlink_metadata(m.p(&n)).unwrap();
    }
}

#[test]
fn read_only_view_refuses_writes() {
    let m = mounted(2, false, |l| {
        put(&l[1], "f", b"base");
        backing::make_whiteout(&l[0].join("f")).unwrap();
        put(&l[0], "g", b"top");
    });
    assert_eq!(names(&m.mnt), vec!["g"]);
    assert_eq!(errno_of(fs::write(m.p("g"), b"x")), libc::EROFS);
    assert_eq!(errno_of(fs::create_dir(m.p("d"))), libc::EROFS);
    assert_eq!(fs::read(m.p("g")).unwrap(), b"top");
}

#[test]
fn st_ino_survives_copy_up_and_remount_and_dead_mounts_recover() {
    let mut m = mounted(1, true, |l| {
        put(&l[0], "etc/conf", b"c");
    });
    let ino = fs::metadata(m.p("etc/conf")).unwrap().ino();
    let dino = fs::metadata(m.p("etc")).unwrap().ino();
    fs::set_permissions(m.p("etc/conf"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(m.p("etc/conf")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(m.p("etc")).unwrap().ino(), dino);
    assert_eq!(mount_state(&m.mnt), MountState::Live);
    m.remount();
    assert_eq!(fs::metadata(m.p("etc/conf")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(m.p("etc/conf")).unwrap().mode() & 0o777, 0o600);
    // Abort the connection: the mount is dead (ENOTCONN) until remounted.
    let dev = fs::metadata(&m.mnt).unwrap().dev();
    let minor = nix::sys::stat::minor(dev);
    let abort = PathBuf::from(format!("/sys/fs/fuse/connections/{minor}/abort"));
    // fusectl is not always mounted in test environments: mount it for the
    // abort, and take it down again afterwards (also on failure).
    struct Fusectl(bool);
    impl Drop for Fusectl {
        fn drop(&mut self) {
            if self.0 {
                let _ = nix::mount::umount2(
                    "/sys/fs/fuse/connections",
                    nix::mount::MntFlags::MNT_DETACH,
                );
            }
        }
    }
    let _fusectl = Fusectl(
        !abort.exists()
            && nix::mount::mount(
                Some("fusectl"),
                "/sys/fs/fuse/connections",
                Some("fusectl"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .is_ok(),
    );
    fs::write(&abort, b"1").unwrap();
    assert_eq!(errno_of(fs::read_dir(m.p("etc"))), libc::ENOTCONN);
    assert_eq!(mount_state(&m.mnt), MountState::Dead);
    m.remount();
    assert_eq!(mount_state(&m.mnt), MountState::Live);
    assert_eq!(fs::read(m.p("etc/conf")).unwrap(), b"c");
    unmount(&m.mnt).unwrap();
    assert_eq!(mount_state(&m.mnt), MountState::Absent);
    let _ = &m.t;
}

#[test]
fn concurrent_namespace_changes_and_copy_ups() {
    let m = mounted(2, true, |l| {
        for i in 0..20 {
            put(&l[1], &format!("shared/f{i}"), b"lower");
        }
        put(&l[0], "shared/dir/x", b"x");
    });
    let root = m.mnt.clone();
    std::thread::scope(|s| {
        for t in 0..4usize {
            let root = root.clone();
            s.spawn(move || {
                let d = root.join(format!("t{t}"));
                for round in 0..30 {
                    fs::create_dir_all(&d).unwrap();
                    let f = d.join(format!("f{round}"));
                    fs::write(&f, vec![t as u8; 4096]).unwrap();
                    fs::rename(&f, d.join("g")).unwrap();
                    assert_eq!(fs::read(d.join("g")).unwrap(), vec![t as u8; 4096]);
                    let shared = root.join(format!("shared/f{}", (round + t) % 20));
                    let mut h = OpenOptions::new().append(true).open(&shared).unwrap();
                    h.write_all(b"+").unwrap();
                    drop(h);
                    assert_eq!(names(&root.join("shared")).len(), 21);
                    fs::remove_file(d.join("g")).unwrap();
                }
                fs::remove_dir(&d).unwrap();
            });
        }
    });
    let mut plus = 0;
    for i in 0..20 {
        let data = fs::read(m.p(&format!("shared/f{i}"))).unwrap();
        assert!(data.starts_with(b"lower"));
        plus += data[5..].iter().filter(|b| **b == b'+').count();
        assert_eq!(data.len(), 5 + data[5..].len());
    }
    assert_eq!(plus, 120);
    assert_eq!(names(&m.mnt), vec!["shared"]);
}

#[test]
fn negative_entries_do_not_hide_new_names() {
    let m = mounted(1, true, |l| put(&l[0], "a", b"a"));
    assert_eq!(errno_of(fs::metadata(m.p("later"))), libc::ENOENT);
    assert_eq!(errno_of(fs::metadata(m.p("later"))), libc::ENOENT);
    fs::write(m.p("later"), b"now").unwrap();
    assert_eq!(fs::read(m.p("later")).unwrap(), b"now");
    fs::remove_file(m.p("a")).unwrap();
    assert_eq!(errno_of(fs::metadata(m.p("a"))), libc::ENOENT);
    fs::rename(m.p("later"), m.p("a")).unwrap();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"now");
    fs::hard_link(m.p("a"), m.p("b")).unwrap();
    assert_eq!(fs::read(m.p("b")).unwrap(), b"now");
}

#[test]
fn mount_options_and_type() {
    let m = mounted(1, true, |_| {});
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = m.mnt.to_str().unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mnt))
        .expect("listed in mountinfo");
    let (left, right) = line.split_once(" - ").unwrap();
    let mount_opts = left.split(' ').nth(5).unwrap();
    assert!(
        !mount_opts.contains("nosuid") && !mount_opts.contains("nodev"),
        "{line}"
    );
    assert!(mount_opts.starts_with("rw"), "{line}");
    let mut right = right.split(' ');
    assert_eq!(right.next(), Some("fuse.lazysnap"));
    assert_eq!(right.next(), Some("lazysnap-test"));
    let super_opts = right.next().unwrap();
    assert!(super_opts.contains("default_permissions"), "{line}");
    assert!(super_opts.contains("allow_other"), "{line}");
}

/// Unmounts a kernel overlay mount on drop.
struct KernelOverlay(PathBuf);

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `tree` without the link-count column (merged directories report 1 here,
/// a real count in kernel overlayfs).
fn tree_no_nlink(dir: &Path) -> Vec<(PathBuf, String)> {
    tree(dir)
        .into_iter()
        .map(|(k, v)| {
            let mut c: Vec<&str> = v.split(' ').collect();
            c.remove(4);
            (k, c.join(" "))
        })
        .collect()
}

#[test]
fn the_upper_reads_the_same_through_kernel_overlayfs() {
    let m = mounted(2, true, |l| {
        put(&l[1], "etc/a", b"a");
        put(&l[1], "etc/b", b"b");
        put(&l[1], "etc/sub/c", b"c");
        put(&l[1], "old/x", b"x");
        put(&l[1], "bin/tool", b"tool");
        fs::hard_link(l[1].join("bin/tool"), l[1].join("bin/tool2")).unwrap();
        put(&l[0], "etc/b", b"b2");
        backing::make_whiteout(&l[0].join("etc/a")).unwrap();
        put(&l[0], "opq/mine", b"m");
        backing::set_opaque(&l[0].join("opq")).unwrap();
        put(&l[1], "opq/hidden", b"h");
    });
    // Changes of every kind through the union.
    fs::write(m.p("etc/b"), b"b3").unwrap();
    fs::remove_file(m.p("etc/sub/c")).unwrap();
    fs::remove_dir(m.p("etc/sub")).unwrap();
    fs::create_dir(m.p("etc/sub")).unwrap();
    fs::write(m.p("etc/sub/new"), b"n").unwrap();
    fs::rename(m.p("old"), m.p("new")).unwrap();
    fs::hard_link(m.p("bin/tool"), m.p("bin/tool3")).unwrap();
    std::os::unix::fs::symlink("../etc/b", m.p("bin/link")).unwrap();
    fs::set_permissions(m.p("bin/tool2"), fs::Permissions::from_mode(0o4755)).unwrap();
    backing::set_xattr(&m.p("etc"), OsStr::new("user.k"), b"v", 0).unwrap();
    fs::write(m.p("opq/mine2"), b"m2").unwrap();
    let ours = tree_no_nlink(&m.mnt);
    assert!(ours.iter().all(|(p, _)| !p.starts_with("opq/hidden")));
    unmount(&m.mnt).unwrap();
    // The same upper as the top lower of a read-only kernel overlay.
    let opts = format!(
        "lowerdir={}:{}:{}",
        m.up("").display(),
        m.lowers[0].display(),
        m.lowers[1].display()
    );
    nix::mount::mount(
        Some("overlay"),
        &m.mnt,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .unwrap();
    let _guard = KernelOverlay(m.mnt.clone());
    let kernel = tree_no_nlink(&m.mnt);
    assert_eq!(ours, kernel);
}

#[test]
fn no_lowers_with_an_upper_and_an_empty_view() {
    let m = mounted(0, true, |_| {});
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/f"), b"f").unwrap();
    assert_eq!(names(&m.mnt), vec!["d"]);
    assert!(!backing::is_opaque(&m.up("d")).unwrap());
    fs::remove_file(m.p("d/f")).unwrap();
    assert!(
        fs::symlink_metadata(m.up("d/f")).is_err(),
        "no whiteout without lowers"
    );
    let v = mounted(0, false, |_| {});
    assert_eq!(names(&v.mnt), Vec::<String>::new());
    assert_eq!(errno_of(fs::write(v.p("x"), b"x")), libc::EROFS);
}
