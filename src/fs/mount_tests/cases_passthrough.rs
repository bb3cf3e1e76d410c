//! Mount tests of the I/O modes (kernel passthrough or the page cache,
//! `passthrough.rs`): which opens pass through, and that the bytes are right
//! whichever way a file is open. They need a kernel with FUSE passthrough
//! (Linux ≥ 6.9, root); on one without, the counters say so and the tests
//! only check the bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::remote_fake::{TocBuilder, pattern};
use super::super::{IoStats, Lower};
use super::*;
use crate::cache::{CacheOptions, ChunkCache};
use crate::oci::Digest;

fn stats(m: &Mounted) -> IoStats {
    m.handle.as_ref().unwrap().io_stats()
}

/// Waits until the kernel has released every handle (RELEASE is sent in
/// the background after `close`, so an open right after a close may still
/// find the old handle counted).
fn wait_idle(m: &Mounted) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats(m).open > 0 {
        assert!(
            Instant::now() < deadline,
            "handles never released: {:?}",
            stats(m)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether this kernel can pass through (Linux ≥ 6.9); where it can, the
/// tests require that it did.
fn kernel_passes_through() -> bool {
    let rel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse::<u32>().ok());
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) >= (6, 9)
}

/// Whether the mount passed through: it must have on a kernel that can.
fn passes_through(m: &Mounted) -> bool {
    let yes = stats(m).passthrough > 0;
    assert!(
        yes || !kernel_passes_through(),
        "no passthrough open on Linux ≥ 6.9: {:?}",
        stats(m)
    );
    yes
}

/// Reads `len` bytes at 0 through a shared read-only mapping.
fn mmap_read(p: &Path, len: usize) -> Vec<u8> {
    let f = File::open(p).unwrap();
    // SAFETY: maps `len` bytes of a file we keep open, copies them out, unmaps.
    unsafe {
        use std::os::fd::AsRawFd;
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED);
        let out = std::slice::from_raw_parts(ptr.cast::<u8>(), len).to_vec();
        libc::munmap(ptr, len);
        out
    }
}

#[test]
fn upper_files_pass_through_and_see_their_writes() {
    let m = mounted(1, true, |l| put(&l[0], "low", b"lower bytes"));
    // A created file, written and read back through new opens.
    fs::write(m.p("new"), b"first").unwrap();
    let created = stats(&m);
    if created.passthrough == 0 {
        assert_eq!(created.cached, 1, "no passthrough here: {created:?}");
    }
    assert_eq!(fs::read(m.p("new")).unwrap(), b"first");
    // Two opens of one upper file share its backing: a reader open before
    // the write sees it, as does mmap.
    let mut reader = File::open(m.p("new")).unwrap();
    let w = OpenOptions::new().write(true).open(m.p("new")).unwrap();
    w.write_all_at(b"FIRST, then more", 0).unwrap();
    let mut s = String::new();
    reader.read_to_string(&mut s).unwrap();
    assert_eq!(s, "FIRST, then more");
    assert_eq!(mmap_read(&m.p("new"), 16), b"FIRST, then more");
    drop((w, reader));
    assert_eq!(fs::read(m.up("new")).unwrap(), b"FIRST, then more");
    // A lower file of a writable union is served by the daemon (B08: a
    // reader open before a copy-up must see the upper copy).
    let before = stats(&m);
    assert_eq!(fs::read(m.p("low")).unwrap(), b"lower bytes");
    let after = stats(&m);
    assert_eq!(after.cached, before.cached + 1);
    assert_eq!(after.passthrough, before.passthrough);
    if passes_through(&m) {
        assert!(after.passthrough >= 5, "{after:?}");
        assert_eq!(after.passthrough_direct, 0);
    }
}

#[test]
fn a_file_open_both_ways_keeps_one_mode_and_right_bytes() {
    let m = mounted(1, true, |l| put(&l[0], "f", b"v1 lower"));
    // Cached first (a lower file), then copied up while that reader is
    // open: the writer joins the cached mode, the reader sees the write.
    let mut old = File::open(m.p("f")).unwrap();
    let s0 = stats(&m);
    let w = OpenOptions::new().write(true).open(m.p("f")).unwrap();
    w.write_all_at(b"v2", 0).unwrap();
    assert_eq!(
        stats(&m).cached,
        s0.cached + 1,
        "writer joins the cached mode"
    );
    let mut s = String::new();
    old.read_to_string(&mut s).unwrap();
    assert_eq!(s, "v2 lower");
    // A third open while the inode is cached: cached too, right bytes.
    assert_eq!(fs::read(m.p("f")).unwrap(), b"v2 lower");
    drop((w, old));
    wait_idle(&m);
    // All closed: the upper file now passes through, and a write through it
    // is seen by a later open, whatever was cached in the page cache before.
    let s1 = stats(&m);
    let w = OpenOptions::new().write(true).open(m.p("f")).unwrap();
    w.write_all_at(b"v3", 0).unwrap();
    drop(w);
    wait_idle(&m);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"v3 lower");
    assert_eq!(mmap_read(&m.p("f"), 8), b"v3 lower");
    let s2 = stats(&m);
    if passes_through(&m) {
        assert_eq!(s2.passthrough, s1.passthrough + 3, "{s1:?} → {s2:?}");
        assert_eq!(s2.cached, s1.cached);
    }
    assert_eq!(fs::read(m.up("f")).unwrap(), b"v3 lower");
}

#[test]
fn lower_files_of_a_view_pass_through() {
    let data = pattern(300_000, 9);
    let m = mounted(1, false, |l| put(&l[0], "dir/big", &data));
    assert_eq!(fs::read(m.p("dir/big")).unwrap(), data);
    let f = File::open(m.p("dir/big")).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 123_457).unwrap();
    assert_eq!(buf, data[123_457..127_553]);
    assert_eq!(mmap_read(&m.p("dir/big"), 300_000), data);
    drop(f);
    let s = stats(&m);
    assert_eq!(s.passthrough + s.cached, 3);
    // The readahead window was raised after the handshake.
    let dev = super::super::mount::mount_dev(&m.mnt).unwrap();
    let ra = fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb")).unwrap();
    assert_eq!(ra.trim(), super::super::mount::READAHEAD_KB.to_string());
    if passes_through(&m) {
        assert_eq!(s.passthrough, 3, "{s:?}");
    }
}

/// A cache in `dir` and a remote lower over it, in a read-only union.
fn remote_view(
    b: &TocBuilder,
) -> (
    Mounted,
    Arc<super::super::remote_fake::FakeReader>,
    Arc<ChunkCache>,
) {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(CacheOptions {
        dir: cache_dir.path().join("cache"),
        disk_budget: 64 << 20,
        memory_budget: 1 << 20,
    })
    .unwrap();
    let (toc, reader) = b.build_cached(cache.clone());
    let mut keep = None;
    let mut m = mounted(1, false, |l| {
        keep = Some(Lower::remote(&l[0], toc, reader.clone()).unwrap());
    });
    m.keep = Some(Box::new((keep, cache_dir)));
    (m, reader, cache)
}

#[test]
fn remote_files_with_cached_chunks_pass_through_to_an_assembled_file() {
    let small = pattern(10_000, 1);
    let big = pattern(6 << 20, 2);
    let mut b = TocBuilder::new(4096);
    b.file("small", 0o644, &small)
        .file("one", 0o644, b"single chunk");
    let mut b_big = TocBuilder::new(1 << 20);
    b_big.file("big", 0o644, &big);
    let (m, reader, cache) = remote_view(&b);
    // Small file: assembled while its open waits, then read by the kernel.
    assert_eq!(fs::read(m.p("small")).unwrap(), small);
    let key = Digest::sha256_of(&small);
    if !passes_through(&m) {
        assert_eq!(stats(&m).cached, 1);
        return;
    }
    assert!(cache.contains(&key), "whole file stored under its digest");
    let calls = reader.calls();
    assert_eq!(calls, 3, "the 3 chunks, read once to assemble");
    assert_eq!(fs::read(m.p("small")).unwrap(), small);
    assert_eq!(mmap_read(&m.p("small"), 10_000), small);
    assert_eq!(reader.calls(), calls, "passthrough reads skip the daemon");
    // One chunk: its cache file is the whole file, nothing assembled.
    let used = cache.stats().bytes_on_disk;
    assert_eq!(fs::read(m.p("one")).unwrap(), b"single chunk");
    assert_eq!(cache.stats().bytes_on_disk, used);
    assert_eq!(stats(&m).passthrough, 4);
    drop(m);

    // A large file: its first open is served by the daemon while it is
    // assembled aside; once that is done, a new open passes through.
    let (m, _reader, cache) = remote_view(&b_big);
    let f = File::open(m.p("big")).unwrap();
    assert_eq!(stats(&m).cached, 1);
    let mut head = vec![0u8; 1000];
    f.read_exact_at(&mut head, 5 << 20).unwrap();
    assert_eq!(head, big[5 << 20..(5 << 20) + 1000]);
    drop(f);
    wait_idle(&m);
    let key = Digest::sha256_of(&big);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cache.file_verified(&key) {
        assert!(Instant::now() < deadline, "never assembled");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fs::read(m.p("big")).unwrap(), big);
    let s = stats(&m);
    assert_eq!((s.cached, s.passthrough), (1, 1), "{s:?}");
}
