//! Disk-store tests: the budget against the real directory, reopening,
//! corruption, temp files, the lock, and a full filesystem.

use std::fs::{self, File, FileTimes};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use super::ledger::{BLOCK, charge};
use super::tests::{
    Fixture, Prng, TestError, Tier, chunk, chunk_files, chunk_path, disk_total, fetch_ok, options,
};
use super::{CacheError, ChunkCache};

/// Property: over a random sequence of inserts and re-reads (sizes from 0
/// to 5 blocks, keys from a small pool so some repeat), the charged bytes
/// found by walking the directory never exceed the budget and equal the
/// books once writes have settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_holds_over_random_inserts() {
    for seed in 0..4 {
        let mut rng = Prng::new(seed);
        let budget = BLOCK * (4 + rng.below(16));
        let f = Fixture::new(Tier::Disk, budget);
        let calls = AtomicUsize::new(0);
        for step in 0..120 {
            let (k, b) = chunk(rng.below(40), rng.below(5 * BLOCK) as usize);
            let got = f.cache.get_or_fetch(&k, fetch_ok(b.clone(), &calls)).await;
            assert_eq!(got, Ok(b));
            if step % 7 == 0 {
                f.cache.flush().await;
                let on_disk = disk_total(f.dir.path());
                assert!(
                    on_disk <= budget,
                    "seed {seed} step {step}: {on_disk} > {budget}"
                );
                assert_eq!(
                    on_disk,
                    f.cache.stats().bytes_on_disk,
                    "seed {seed} step {step}"
                );
            }
        }
        f.cache.flush().await;
        let s = f.cache.stats();
        assert_eq!(s.entries as usize, chunk_files(f.dir.path()).len());
        assert_eq!(s.store_errors, 0);
    }
}

/// Many concurrent inserts of distinct chunks while another thread walks
/// the directory: the walk never sees more than the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_holds_under_concurrent_inserts() {
    let budget = 24 * BLOCK;
    let f = Fixture::new(Tier::Disk, budget);
    let stop = Arc::new(AtomicBool::new(false));
    let walker = {
        let (dir, stop) = (f.dir.path().to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut walks = 0;
            while !stop.load(Ordering::SeqCst) {
                let total = disk_total(&dir);
                assert!(total <= budget, "walk saw {total} > {budget}");
                walks += 1;
            }
            walks
        })
    };
    let mut tasks = Vec::new();
    for i in 0..200 {
        let cache = f.cache.clone();
        tasks.push(tokio::spawn(async move {
            let (k, b) = chunk(1000 + i, ((i % 5) * BLOCK + i) as usize);
            cache
                .get_or_fetch(&k, async { Ok::<_, TestError>(b) })
                .await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    f.cache.flush().await;
    stop.store(true, Ordering::SeqCst);
    assert!(walker.join().expect("budget exceeded during the walk") > 0);
    assert_eq!(disk_total(f.dir.path()), f.cache.stats().bytes_on_disk);
    assert!(f.cache.stats().evictions > 0);
}

fn set_times(path: &Path, secs: u64) {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let file = File::options().write(true).open(path).unwrap();
    file.set_times(FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap();
}

#[tokio::test]
async fn reopen_indexes_by_recency_and_trims() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (0..5).map(|i| chunk(50 + i, 1000)).collect();
    {
        let cache = ChunkCache::open(options(dir.path(), Tier::Disk, 10 * BLOCK)).unwrap();
        for (k, b) in &chunks {
            cache
                .get_or_fetch(k, async { Ok::<_, TestError>(b.clone()) })
                .await
                .unwrap();
        }
        cache.flush().await;
        // Distinct, old times so the order is unambiguous; then a disk hit
        // on chunk 1 makes it the most recent.
        for (i, (k, _)) in chunks.iter().enumerate() {
            set_times(&chunk_path(dir.path(), k), 1_000_000 + i as u64);
        }
        let (k1, b1) = &chunks[1];
        let hit = cache
            .get_or_fetch(k1, async { Err(TestError::Fetch("must hit".into())) })
            .await;
        assert_eq!(hit.as_ref(), Ok(b1));
    }
    let same = ChunkCache::open(options(dir.path(), Tier::Disk, 10 * BLOCK)).unwrap();
    assert_eq!(same.stats().entries, 5);
    assert_eq!(same.stats().bytes_on_disk, 5 * BLOCK);
    drop(same);

    let small = ChunkCache::open(options(dir.path(), Tier::Disk, 2 * BLOCK)).unwrap();
    let kept: Vec<bool> = chunks.iter().map(|(k, _)| small.contains(k)).collect();
    assert_eq!(kept, [false, true, false, false, true]);
    let s = small.stats();
    assert_eq!((s.entries, s.bytes_on_disk, s.evictions), (2, 2 * BLOCK, 3));
    assert_eq!(chunk_files(dir.path()).len(), 2);
    // What was indexed is served from disk.
    let (k4, b4) = &chunks[4];
    let hit = small
        .get_or_fetch(k4, async { Err(TestError::Fetch("must hit".into())) })
        .await;
    assert_eq!(hit.as_ref(), Ok(b4));
}

#[tokio::test]
async fn corrupt_file_is_deleted_and_refetched() {
    let f = Fixture::new(Tier::Disk, 1 << 20);
    let calls = AtomicUsize::new(0);
    let (k, b) = chunk(60, 3000);
    f.cache
        .get_or_fetch(&k, fetch_ok(b.clone(), &calls))
        .await
        .unwrap();
    f.cache.flush().await;
    let path = chunk_path(f.dir.path(), &k);
    let mut bad = b.to_vec();
    bad[17] ^= 1;
    fs::write(&path, &bad).unwrap();
    assert_eq!(
        f.cache.get_or_fetch(&k, fetch_ok(b.clone(), &calls)).await,
        Ok(b.clone())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(f.cache.stats().corrupt, 1);
    f.cache.flush().await;
    assert_eq!(fs::read(&path).unwrap(), b);
    assert_eq!(f.cache.stats().bytes_on_disk, charge(3000));
}

#[tokio::test]
async fn truncated_file_from_a_crash_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let (k, b) = chunk(61, 9000);
    let path = chunk_path(dir.path(), &k);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, &b[..100]).unwrap();
    let cache = ChunkCache::open(options(dir.path(), Tier::Both, 1 << 20)).unwrap();
    assert!(cache.contains(&k), "indexed by name; verified on load");
    let calls = AtomicUsize::new(0);
    assert_eq!(
        cache.get_or_fetch(&k, fetch_ok(b.clone(), &calls)).await,
        Ok(b)
    );
    assert_eq!(
        (calls.load(Ordering::SeqCst), cache.stats().corrupt),
        (1, 1)
    );
}

#[test]
fn leftover_temp_files_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (k, _) = chunk(62, 10);
    let shard = dir.path().join(&k.hex()[..2]);
    fs::create_dir_all(&shard).unwrap();
    let temp = shard.join(format!(".tmp-{}-1-0", k.hex()));
    fs::write(&temp, b"half a chu").unwrap();
    let stray = shard.join("README");
    fs::write(&stray, b"not ours").unwrap();
    let cache = ChunkCache::open(options(dir.path(), Tier::Disk, 1 << 20)).unwrap();
    assert!(!temp.exists());
    assert!(stray.exists(), "unknown files are left alone");
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn second_open_of_a_dir_is_refused() {
    let f = Fixture::new(Tier::Disk, 1 << 20);
    let again = ChunkCache::open(options(f.dir.path(), Tier::Disk, 1 << 20));
    assert!(matches!(again, Err(CacheError::Locked { .. })), "{again:?}");
}

/// A tmpfs mounted on a temp dir, unmounted when dropped (even when the
/// test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        use nix::mount::{MsFlags, mount};
        let dir = tempfile::tempdir().ok()?;
        let data = format!("size={size}");
        match mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::empty(),
            Some(data.as_str()),
        ) {
            Ok(()) => Some(Tmpfs { dir }),
            Err(e) => {
                eprintln!("skipping: cannot mount tmpfs ({e}); needs root");
                None
            }
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_never_fails_a_read() {
    let Some(fs) = Tmpfs::mount("1m") else {
        return;
    };
    // The budget believes in 8 MiB; the filesystem has 1 MiB.
    let cache = ChunkCache::open(options(&fs.path(), Tier::Disk, 8 << 20)).unwrap();
    let calls = AtomicUsize::new(0);
    let chunks: Vec<_> = (0..40).map(|i| chunk(70 + i, 64 * 1024)).collect();
    for (k, b) in &chunks {
        assert_eq!(
            cache
                .get_or_fetch(k, fetch_ok(b.clone(), &calls))
                .await
                .as_ref(),
            Ok(b)
        );
        cache.flush().await;
    }
    let s = cache.stats();
    assert!(s.store_errors > 0, "{s:?}");
    assert!(s.evictions > 0, "{s:?}");
    assert!(s.entries > 0 && s.entries < 40, "{s:?}");
    assert_eq!(disk_total(&fs.path()), s.bytes_on_disk);
    // The most recent chunks are still served from disk.
    let (k, b) = chunks.last().unwrap();
    let hit = cache
        .get_or_fetch(k, async { Err(TestError::Fetch("must hit".into())) })
        .await;
    assert_eq!(hit.as_ref(), Ok(b));

    // Bigger than the whole filesystem: both attempts fail, still served.
    let (k, b) = chunk(200, 2 << 20);
    assert_eq!(
        cache.get_or_fetch(&k, fetch_ok(b.clone(), &calls)).await,
        Ok(b)
    );
    cache.flush().await;
    assert_eq!(cache.stats().store_errors, s.store_errors + 2);
    assert!(!cache.contains(&k));
    assert!(
        chunk_files(&fs.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains(".tmp-"))
    );
}
