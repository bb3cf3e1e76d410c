//! Memory per TOC entry of a mounted remote lower (issue 6: target about
//! 200 bytes per entry). Not a timing benchmark: it builds a synthetic TOC
//! of `LAZYSNAP_TOC_FILES` regular files (default 100,000; one chunk each,
//! with file and chunk digests as eStargz TOCs have them, in 1,000
//! directories) as eStargz TOC JSON, then measures, as live heap bytes (a
//! counting allocator) and as RSS (/proc/self/statm):
//!
//! 1. the TOC as parsed by `format::estargz::parse_toc` (`format::Toc`),
//! 2. the remote lower's index over it (`fs::Lower::remote`),
//! 3. a read-only union mounted over that lower, after a walk that looks up
//!    every entry: the inode table the kernel's lookups fill (the mount's own
//!    buffers are reported apart; needs root and /dev/fuse, skipped otherwise),
//!
//! and prints bytes per entry for each. Run: `cargo bench --bench toc_memory`.
//!
//! Measured (heap, this synthetic image, 45-byte file names): the parsed TOC
//! costs 181 B per entry (was 607 before the compact `format::Entry`, 276
//! with a 144-byte entry and an 88-byte shared digest allocation): a
//! 136-byte entry and its name, nothing else. The file digest is its 32-byte
//! sha256 value inline (`oci::Digest`), the one chunk is stored as its span
//! (offset, end, inner offset, size; its digest is the file's) and handed
//! out by value, and the rare fields share one optional box; see
//! `format::toc`. The remote index costs 40 B, the inode table 176 B.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::Bytes;
use lazysnap::format::estargz::parse_toc;
use lazysnap::format::{Chunk, Compression, Entry};
use lazysnap::fs::{ChunkReader, FsError, Lower, MountSpec};
use lazysnap::oci::Digest;

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's; the system allocator
        // hands out zeroed pages without touching them.
        unsafe { System.alloc_zeroed(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with layout `l`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn rss() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A reader that is never asked: nothing is read in this benchmark.
#[derive(Debug)]
struct NoReads;

impl ChunkReader for NoReads {
    fn read_chunk(&self, entry: usize, chunk: usize) -> Result<Bytes, FsError> {
        Err(FsError::remote(format!("no reads ({entry}/{chunk})")))
    }
}

fn digest_of(i: usize, salt: u8) -> Digest {
    let mut b = [0u8; 9];
    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    b[8] = salt;
    Digest::sha256_of(&b)
}

/// eStargz TOC JSON of `files` regular files (one chunk each, with file and
/// chunk digests) in `files / 100` directories of a realistic depth, and the
/// blob offset of the TOC.
fn synthetic_toc_json(files: usize) -> (Vec<u8>, u64) {
    let mut out = String::from(r#"{"version":1,"entries":["#);
    let mut first = true;
    let mut push = |e: String| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&e);
    };
    let dir = |name: &str| {
        format!(r#"{{"name":"{name}/","type":"dir","mode":493,"modtime":"2023-11-14T22:13:20Z"}}"#)
    };
    for top in ["usr", "usr/lib", "usr/lib/python3"] {
        push(dir(top));
    }
    let mut off = 0u64;
    for i in 0..files {
        if i % 100 == 0 {
            push(dir(&format!("usr/lib/python3/package_{:04}", i / 100)));
        }
        let size = 1000 + (i as u64 * 37) % 20_000;
        let name = format!("usr/lib/python3/package_{:04}/module_{i:06}.py", i / 100);
        let d = digest_of(i, 1);
        push(format!(
            r#"{{"name":"{name}","type":"reg","size":{size},"mode":420,"modtime":"2023-11-14T22:13:20Z","digest":"{d}","offset":{off},"chunkDigest":"{d}"}}"#,
            d = d.as_str()
        ));
        off += 512 + size / 3;
    }
    out.push_str("]}");
    (out.into_bytes(), off + 512)
}

fn walk(p: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        n += 1;
        if md.is_dir() {
            n += walk(&e.path());
        }
    }
    n
}

fn report(what: &str, heap: isize, rss: isize, n: usize) {
    println!(
        "{what:<44} heap {:>8.1} B/entry  rss {:>8.1} B/entry  ({:.1} MiB heap)",
        heap as f64 / n as f64,
        rss as f64 / n as f64,
        heap as f64 / (1 << 20) as f64
    );
}

fn main() {
    let files: usize = std::env::var("LAZYSNAP_TOC_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let t = tempfile::tempdir().unwrap();
    let (json, toc_offset) = synthetic_toc_json(files);
    let (h0, r0) = (live(), rss());
    let toc = parse_toc(&json, toc_offset, Compression::Gzip).expect("synthetic TOC parses");
    let toc = Arc::new(toc);
    let n = toc.entries.len();
    let (h1, r1) = (live(), rss());
    println!(
        "synthetic TOC: {files} files, {n} entries (size_of Entry {} B, Chunk {} B, Digest {} B)",
        std::mem::size_of::<Entry>(),
        std::mem::size_of::<Chunk>(),
        std::mem::size_of::<Digest>()
    );
    report(
        "1. parsed TOC (format::Toc, estargz::parse_toc)",
        h1 - h0,
        r1 - r0,
        n,
    );
    // The JSON is gone once parsed: measure from here on without it.
    drop(json);
    let (h0, r0) = (h0 - (h1 - live()), r0 - (r1 - rss()));
    let (h1, r1) = (live(), rss());
    let key = t.path().join("layer");
    std::fs::create_dir(&key).unwrap();
    let lower = Lower::remote(&key, toc.clone(), Arc::new(NoReads)).unwrap();
    let (h2, r2) = (live(), rss());
    report(
        "2. remote lower index (fs::Lower::remote)",
        h2 - h1,
        r2 - r1,
        n,
    );
    report("   TOC + index", h2 - h0, r2 - r0, n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let spec = MountSpec {
        lowers: vec![key.clone()],
        upper: None,
        work: t.path().join("work"),
        mountpoint: mnt.clone(),
        fsname: "lazysnap-bench".into(),
    };
    let (h3, r3) = (live(), rss());
    match lazysnap::fs::mount(spec, rt.handle().clone()) {
        Ok(m) => {
            // The session threads allocate their buffers once serving.
            std::fs::metadata(&mnt).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            let (h3m, r3m) = (live(), rss());
            println!(
                "   (the mount itself: {:.1} MiB heap, {:.1} MiB rss — fuser's receive buffers)",
                (h3m - h3) as f64 / (1 << 20) as f64,
                (r3m - r3) as f64 / (1 << 20) as f64
            );
            let seen = walk(&mnt);
            std::thread::sleep(std::time::Duration::from_millis(200));
            let (h4, r4) = (live(), rss());
            report(
                &format!("3. inode table, {seen} names looked up"),
                h4 - h3m,
                r4 - r3m,
                n,
            );
            report(
                "   TOC + index + inodes",
                h4 - h0 - (h3m - h3),
                r4 - r0 - (r3m - r3),
                n,
            );
            m.unmount().unwrap();
        }
        Err(e) => println!("3. mount skipped (needs root and /dev/fuse): {e}"),
    }
    drop(lower);
}
