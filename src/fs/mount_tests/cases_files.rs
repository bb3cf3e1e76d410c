//! Mount tests of file data, attributes and links.

use super::*;

#[test]
fn write_append_truncate_delete_keep_lower_intact() {
    let m = mounted(2, true, |l| {
        put(&l[1], "f", b"hello");
        put(&l[1], "dir/g", b"gee");
        put(&l[1], "dir/keep", b"k");
        put(&l[0], "dir/h", b"aitch");
    });
    let before: Vec<_> = m.lowers.iter().map(|l| tree(l)).collect();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"hello");
    assert_eq!(names(&m.p("dir")), vec!["g", "h", "keep"]);
    let mut f = OpenOptions::new().append(true).open(m.p("f")).unwrap();
    f.write_all(b" world").unwrap();
    drop(f);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"hello world");
    assert_eq!(fs::read(m.up("f")).unwrap(), b"hello world");
    fs::write(m.p("dir/g"), b"new").unwrap(); // O_TRUNC
    assert_eq!(fs::read(m.p("dir/g")).unwrap(), b"new");
    let f = OpenOptions::new().write(true).open(m.p("dir/h")).unwrap();
    f.set_len(2).unwrap(); // ftruncate
    drop(f);
    assert_eq!(fs::read(m.p("dir/h")).unwrap(), b"ai");
    fs::remove_file(m.p("dir/keep")).unwrap();
    assert_eq!(errno_of(fs::metadata(m.p("dir/keep"))), libc::ENOENT);
    assert!(is_whiteout(&m.up("dir/keep")));
    assert_eq!(names(&m.p("dir")), vec!["g", "h"]);
    fs::remove_file(m.p("dir/g")).unwrap();
    fs::remove_file(m.p("dir/h")).unwrap();
    assert_eq!(names(&m.p("dir")), Vec::<String>::new());
    fs::remove_dir(m.p("dir")).unwrap();
    assert!(is_whiteout(&m.up("dir")));
    // Re-create: an opaque dir, old children stay gone (B01 through a mount).
    fs::create_dir(m.p("dir")).unwrap();
    assert_eq!(names(&m.p("dir")), Vec::<String>::new());
    assert!(backing::is_opaque(&m.up("dir")).unwrap());
    // rmdir of a merged non-empty dir.
    fs::create_dir(m.p("dir/sub")).unwrap();
    assert_eq!(errno_of(fs::remove_dir(m.p("dir"))), libc::ENOTEMPTY);
    // Overlay xattrs are not visible.
    assert!(backing::list_xattrs(&m.p("dir")).unwrap().is_empty());
    let after: Vec<_> = m.lowers.iter().map(|l| tree(l)).collect();
    assert_eq!(before, after, "lowers must stay byte-identical");
}

#[test]
fn b06_b08_hardlink_groups_copy_up_together() {
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let d2 = data.clone();
    let mut m = mounted(1, true, move |l| {
        put(&l[0], "bin/tool", &d2);
        fs::set_permissions(l[0].join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::hard_link(l[0].join("bin/tool"), l[0].join("bin/tool2")).unwrap();
        fs::hard_link(l[0].join("bin/tool"), l[0].join("bin/tool3")).unwrap();
        put(&l[0], "pair/a", b"v1");
        fs::hard_link(l[0].join("pair/a"), l[0].join("pair/b")).unwrap();
    });
    let before = tree(&m.lowers[0]);
    let ino = fs::metadata(m.p("bin/tool")).unwrap().ino();
    assert_eq!(fs::metadata(m.p("bin/tool")).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(m.p("bin/tool3")).unwrap().ino(), ino);
    assert_nlink_invariant(&m.mnt);
    fs::hard_link(m.p("bin/tool"), m.p("bin/tool4")).unwrap();
    fs::hard_link(m.p("bin/tool"), m.p("bin/tool5")).unwrap();
    for n in ["tool", "tool2", "tool3", "tool4", "tool5"] {
        let md = fs::metadata(m.p(&format!("bin/{n}"))).unwrap();
        assert_eq!(md.ino(), ino, "{n} keeps st_ino");
        assert_eq!(md.nlink(), 5, "{n}");
        assert_eq!(fs::read(m.p(&format!("bin/{n}"))).unwrap(), data);
    }
    // One copy of the data in the upper, five links.
    assert_eq!(fs::metadata(m.up("bin/tool")).unwrap().nlink(), 5);
    assert_eq!(
        fs::metadata(m.up("bin/tool2")).unwrap().ino(),
        fs::metadata(m.up("bin/tool5")).unwrap().ino()
    );
    assert_nlink_invariant(&m.mnt);
    // B08, lower pair: a reader opened before the write sees it.
    let mut fd3 = File::open(m.p("pair/b")).unwrap();
    let f = OpenOptions::new().write(true).open(m.p("pair/a")).unwrap();
    f.write_all_at(b"v2", 0).unwrap();
    drop(f);
    assert_eq!(fs::read(m.p("pair/b")).unwrap(), b"v2");
    let mut s = String::new();
    fd3.read_to_string(&mut s).unwrap();
    assert_eq!(s, "v2");
    // B08, upper pair.
    fs::write(m.p("ua"), b"v1").unwrap();
    fs::hard_link(m.p("ua"), m.p("ub")).unwrap();
    let mut fd3 = File::open(m.p("ub")).unwrap();
    let f = OpenOptions::new().write(true).open(m.p("ua")).unwrap();
    f.write_all_at(b"v2", 0).unwrap();
    drop(f);
    let mut s = String::new();
    fd3.read_to_string(&mut s).unwrap();
    assert_eq!(s, "v2");
    assert_eq!(fs::read(m.p("ub")).unwrap(), b"v2");
    let (a, b) = (
        fs::metadata(m.p("ua")).unwrap(),
        fs::metadata(m.p("ub")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    // Unlinking one name of a group.
    fs::remove_file(m.p("bin/tool3")).unwrap();
    assert_eq!(fs::metadata(m.p("bin/tool")).unwrap().nlink(), 4);
    assert_nlink_invariant(&m.mnt);
    // After a restart of the daemon: same st_ino, same counts.
    m.remount();
    for n in ["tool", "tool2", "tool4", "tool5"] {
        let md = fs::metadata(m.p(&format!("bin/{n}"))).unwrap();
        assert_eq!((md.ino(), md.nlink()), (ino, 4), "{n}");
    }
    assert_nlink_invariant(&m.mnt);
    assert_eq!(
        before,
        tree(&m.lowers[0]),
        "lowers must stay byte-identical"
    );
}

#[test]
fn b09_readonly_lower_file_of_another_uid_chmod_append_rm() {
    let m = mounted(1, true, |l| {
        put(&l[0], "ro/locked", b"data");
        put(&l[0], "ro2/locked", b"data");
        put(&l[0], "ro3/locked", b"data");
        for d in ["ro", "ro2", "ro3"] {
            let f = l[0].join(d).join("locked");
            crate::fs::upper::chown(&f, Some(1000), Some(1000)).unwrap();
            crate::fs::upper::chmod(&f, 0o444).unwrap();
            crate::fs::upper::set_times(
                &f,
                None,
                Some(nix::sys::time::TimeSpec::new(5_000_000, 0)),
            )
            .unwrap();
            crate::fs::upper::chown(&l[0].join(d), Some(1000), Some(1000)).unwrap();
        }
    });
    let sh = |cmd: &str| {
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&m.mnt)
            .uid(1000)
            .gid(1000)
            .status()
            .unwrap()
    };
    assert!(sh("rm -f ro/locked").success());
    assert_eq!(errno_of(fs::metadata(m.p("ro/locked"))), libc::ENOENT);
    assert!(is_whiteout(&m.up("ro/locked")));
    // As uid 1000: writing a 0444 file is refused by the kernel, chmod is not.
    assert!(!sh("echo x 2>/dev/null >> ro2/locked").success());
    assert!(sh("chmod u+w ro2/locked && echo x >> ro2/locked").success());
    let md = fs::metadata(m.p("ro2/locked")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o644);
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
    assert_eq!(fs::read(m.p("ro2/locked")).unwrap(), b"datax\n");
    // As root: chmod keeps owner and mtime, the append works, rm works.
    fs::set_permissions(m.p("ro3/locked"), fs::Permissions::from_mode(0o644)).unwrap();
    let md = fs::metadata(m.p("ro3/locked")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o644);
    assert_eq!((md.uid(), md.gid(), md.mtime()), (1000, 1000, 5_000_000));
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.p("ro3/locked"))
        .unwrap();
    f.write_all(b"y").unwrap();
    drop(f);
    assert_eq!(fs::read(m.p("ro3/locked")).unwrap(), b"datay");
    fs::remove_file(m.p("ro3/locked")).unwrap();
    assert!(is_whiteout(&m.up("ro3/locked")));
    let lower_md = fs::metadata(m.lowers[0].join("ro2/locked")).unwrap();
    assert_eq!(lower_md.mode() & 0o7777, 0o444);
}

#[test]
fn b10_special_mode_bits_and_setgid_inheritance() {
    let m = mounted(1, true, |l| {
        put(&l[0], "usr/bin/elevate", b"#!");
        put(&l[0], "usr/bin/grpexec", b"#!");
        fs::create_dir(l[0].join("shared")).unwrap();
        fs::create_dir(l[0].join("setgid-dir")).unwrap();
        put(&l[0], "cap-bin", b"\x7fELF");
        crate::fs::upper::chmod(&l[0].join("usr/bin/elevate"), 0o4711).unwrap();
        crate::fs::upper::chmod(&l[0].join("usr/bin/grpexec"), 0o2755).unwrap();
        crate::fs::upper::chmod(&l[0].join("shared"), 0o1777).unwrap();
        crate::fs::upper::chown(&l[0].join("setgid-dir"), None, Some(1000)).unwrap();
        crate::fs::upper::chmod(&l[0].join("setgid-dir"), 0o2775).unwrap();
        // cap_net_bind_service+ep, VFS_CAP_REVISION_2.
        let cap = [
            0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        backing::set_xattr(
            &l[0].join("cap-bin"),
            OsStr::new("security.capability"),
            &cap,
            0,
        )
        .unwrap();
    });
    let mode = |p: &str| fs::metadata(m.p(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("usr/bin/elevate"), 0o4711);
    assert_eq!(mode("usr/bin/grpexec"), 0o2755);
    assert_eq!(mode("shared"), 0o1777);
    assert_eq!(mode("setgid-dir"), 0o2775);
    let cap = backing::get_xattr(&m.p("cap-bin"), OsStr::new("security.capability")).unwrap();
    assert_eq!(cap.map(|c| c.len()), Some(20));
    fs::write(m.p("setgid-dir/new"), b"n").unwrap();
    fs::create_dir(m.p("setgid-dir/sub")).unwrap();
    assert_eq!(fs::metadata(m.p("setgid-dir/new")).unwrap().gid(), 1000);
    assert_eq!(fs::metadata(m.p("setgid-dir/sub")).unwrap().gid(), 1000);
    assert_eq!(mode("setgid-dir/sub") & 0o2000, 0o2000);
    // Copy-up (a touch) keeps the bits and the capability.
    crate::fs::upper::set_times(
        &m.p("usr/bin/elevate"),
        Some(nix::sys::time::TimeSpec::UTIME_NOW),
        None,
    )
    .unwrap();
    assert_eq!(mode("usr/bin/elevate"), 0o4711);
    assert_eq!(
        fs::metadata(m.up("usr/bin/elevate")).unwrap().mode() & 0o7777,
        0o4711
    );
    fs::set_permissions(m.p("cap-bin"), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        backing::get_xattr(&m.up("cap-bin"), OsStr::new("security.capability"))
            .unwrap()
            .is_some()
    );
}

#[test]
fn b15_o_direct_aligned_writes_through_mmap_buffer() {
    let orig: Vec<u8> = (0..65536u32).map(|i| (i * 13 % 256) as u8).collect();
    let o2 = orig.clone();
    let m = mounted(1, true, move |l| put(&l[0], "db/data.bin", &o2));
    let path = CString::new(m.p("db/data.bin").as_os_str().as_bytes()).unwrap();
    // SAFETY: test-only raw syscalls on a valid path, a fresh anonymous mapping
    // of 8 KiB, and the fd they return.
    unsafe {
        let buf = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(buf, libc::MAP_FAILED);
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECT);
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        assert_eq!(libc::pread(fd, buf, 4096, 4096), 4096);
        assert_eq!(
            std::slice::from_raw_parts(buf as *const u8, 4096),
            &orig[4096..8192]
        );
        libc::close(fd);
        let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_DIRECT);
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        std::ptr::write_bytes(buf as *mut u8, 0xab, 4096);
        assert_eq!(
            libc::pwrite(fd, buf, 4096, 8192),
            4096,
            "{}",
            std::io::Error::last_os_error()
        );
        std::ptr::write_bytes(buf as *mut u8, 0, 4096);
        assert_eq!(libc::pwrite(fd, buf, 4096, 12288), 4096);
        libc::close(fd);
        libc::munmap(buf, 8192);
    }
    let mut want = orig.clone();
    want[8192..12288].fill(0xab);
    want[12288..16384].fill(0);
    assert_eq!(fs::read(m.p("db/data.bin")).unwrap(), want);
    assert_eq!(fs::read(m.lowers[0].join("db/data.bin")).unwrap(), orig);
}

#[test]
fn mknod_fifo_xattrs_and_mmap_shared() {
    let m = mounted(1, true, |l| {
        put(&l[0], "f", b"0123456789");
        fs::create_dir(l[0].join("od")).unwrap();
        backing::set_opaque(&l[0].join("od")).unwrap();
    });
    nix::unistd::mkfifo(
        &m.p("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let md = fs::symlink_metadata(m.p("fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&md.file_type()));
    assert_eq!(md.mode() & 0o777, 0o640);
    // Binary values and the size probe.
    let v = b"a\0b\xffc";
    backing::set_xattr(&m.p("f"), OsStr::new("user.bin"), v, 0).unwrap();
    let p = CString::new(m.p("f").as_os_str().as_bytes()).unwrap();
    let n = CString::new("user.bin").unwrap();
    // SAFETY: valid C strings; a null buffer with size 0 asks for the size, a
    // 2-byte buffer is too small.
    unsafe {
        assert_eq!(
            libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0),
            5
        );
        let mut small = [0u8; 2];
        assert_eq!(
            libc::getxattr(p.as_ptr(), n.as_ptr(), small.as_mut_ptr().cast(), 2),
            -1
        );
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ERANGE)
        );
    }
    assert_eq!(
        backing::get_xattr(&m.p("f"), OsStr::new("user.bin")).unwrap(),
        Some(v.to_vec())
    );
    assert_eq!(
        backing::list_xattrs(&m.p("f")).unwrap(),
        vec![OsStr::new("user.bin").to_os_string()]
    );
    backing::remove_xattr(&m.p("f"), OsStr::new("user.bin")).unwrap();
    assert!(backing::list_xattrs(&m.p("f")).unwrap().is_empty());
    assert!(backing::list_xattrs(&m.p("od")).unwrap().is_empty());
    assert_eq!(
        backing::set_xattr(&m.p("od"), OsStr::new("trusted.overlay.opaque"), b"y", 0)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EPERM)
    );
    // MAP_SHARED writes reach the file.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("f"))
        .unwrap();
    // SAFETY: maps 10 bytes of an open file we keep alive, writes within them.
    unsafe {
        use std::os::fd::AsRawFd;
        let p = libc::mmap(
            std::ptr::null_mut(),
            10,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(b"AB".as_ptr(), p.cast::<u8>(), 2);
        assert_eq!(libc::msync(p, 10, libc::MS_SYNC), 0);
        libc::munmap(p, 10);
    }
    drop(f);
    assert_eq!(fs::read(m.up("f")).unwrap(), b"AB23456789");
    // flock works.
    let f = File::open(m.p("f")).unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
}

#[test]
fn big_sparse_files_and_seek_data() {
    const BIG: u64 = 5 << 30;
    let m = mounted(1, true, |l| {
        let f = File::create(l[0].join("lowbig")).unwrap();
        f.write_all_at(b"end", BIG).unwrap();
    });
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.p("big"))
        .unwrap();
    f.write_all_at(b"tail", BIG).unwrap();
    assert_eq!(f.metadata().unwrap().len(), BIG + 4);
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, BIG).unwrap();
    assert_eq!(&b, b"tail");
    use std::os::fd::AsRawFd;
    let data = nix::unistd::lseek(f.as_raw_fd(), 0, nix::unistd::Whence::SeekData).unwrap();
    assert!(data > (4 << 30), "first data at {data}");
    let hole = nix::unistd::lseek(f.as_raw_fd(), 0, nix::unistd::Whence::SeekHole).unwrap();
    assert_eq!(hole, 0);
    drop(f);
    // Copy-up of a sparse lower file keeps its holes.
    let mut f = OpenOptions::new().append(true).open(m.p("lowbig")).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    let md = fs::metadata(m.up("lowbig")).unwrap();
    assert_eq!(md.len(), BIG + 4);
    assert!(
        md.blocks() < 64,
        "copy-up kept holes ({} blocks)",
        md.blocks()
    );
}

#[test]
fn enospc_on_copy_up_reaches_the_writer_and_keeps_the_lower() {
    let data = vec![7u8; 2 << 20];
    let d2 = data.clone();
    let m = mounted_in(1, true, Some(1024), move |l| put(&l[0], "big", &d2));
    let err = OpenOptions::new().append(true).open(m.p("big"));
    assert_eq!(errno_of(err), libc::ENOSPC);
    assert_eq!(fs::read(m.lowers[0].join("big")).unwrap(), data);
    assert_eq!(fs::read(m.p("big")).unwrap(), data);
    assert!(fs::symlink_metadata(m.up("big")).is_err());
    let leftovers: Vec<_> = fs::read_dir(&m.work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.as_bytes().starts_with(b"lazysnap-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Small writes still work.
    fs::write(m.p("small"), b"ok").unwrap();
    assert_eq!(fs::read(m.p("small")).unwrap(), b"ok");
}
