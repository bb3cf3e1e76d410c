//! Shared conformance tests, run against memory-only, disk-only and
//! two-tier caches.

/// A small deterministic PRNG (splitmix64) for property-style tests.
#[derive(Debug, Clone)]
pub(crate) struct Prng(u64);

impl Prng {
    pub(crate) fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`0` if `n == 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tempfile::TempDir;

use super::ledger::{BLOCK, charge};
use super::{CacheMismatch, CacheOptions, ChunkCache};
use crate::oci::Digest;

/// A caller's error type: a fetch failure or a mismatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TestError {
    Fetch(String),
    Mismatch(CacheMismatch),
}

impl From<CacheMismatch> for TestError {
    fn from(m: CacheMismatch) -> TestError {
        TestError::Mismatch(m)
    }
}

/// Which tiers a cache under test has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tier {
    Memory,
    Disk,
    Both,
}

/// A cache in a fresh temp dir; both budgets `budget` where enabled.
pub(super) struct Fixture {
    pub(super) dir: TempDir,
    pub(super) cache: Arc<ChunkCache>,
}

impl Fixture {
    pub(super) fn new(tier: Tier, budget: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(options(dir.path(), tier, budget)).unwrap();
        Fixture { dir, cache }
    }
}

pub(super) fn options(dir: &Path, tier: Tier, budget: u64) -> CacheOptions {
    CacheOptions {
        dir: dir.to_path_buf(),
        disk_budget: if tier == Tier::Memory { 0 } else { budget },
        memory_budget: if tier == Tier::Disk { 0 } else { budget },
    }
}

/// Deterministic chunk number `i` of `len` bytes, and its key.
pub(super) fn chunk(i: u64, len: usize) -> (Digest, Bytes) {
    let mut rng = Prng::new(i.wrapping_mul(7919) ^ len as u64);
    let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    (Digest::sha256_of(&bytes), Bytes::from(bytes))
}

/// A fetch that counts its calls and returns `bytes`.
pub(super) async fn fetch_ok(bytes: Bytes, calls: &AtomicUsize) -> Result<Bytes, TestError> {
    calls.fetch_add(1, Ordering::SeqCst);
    Ok(bytes)
}

/// Charged bytes of every file under the shard dirs (temp files included).
pub(super) fn disk_total(dir: &Path) -> u64 {
    chunk_files(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| charge(m.len()))
        .sum()
}

/// Every file in the shard dirs.
pub(super) fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(dir).unwrap().flatten() {
        if shard.path().is_dir() {
            for f in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                files.push(f.path());
            }
        }
    }
    files
}

pub(super) fn chunk_path(dir: &Path, key: &Digest) -> PathBuf {
    dir.join(&key.hex()[..2]).join(key.hex())
}

/// The conformance suite: everything a cache must do whatever its tiers.
async fn check_cache(tier: Tier) {
    hit_then_miss(tier).await;
    single_flight(tier).await;
    error_shared_then_retry(tier).await;
    mismatch_rejected(tier).await;
    cancelled_leader_does_not_strand_waiters(tier).await;
    too_big_is_served_not_stored(tier).await;
    lru_keeps_touched(tier).await;
    many_fetches_only_missing(tier).await;
    many_mismatch_keeps_the_good(tier).await;
    remove_drops(tier).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_only_conforms() {
    check_cache(Tier::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_only_conforms() {
    check_cache(Tier::Disk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tiers_conform() {
    check_cache(Tier::Both).await;
}

async fn hit_then_miss(tier: Tier) {
    let f = Fixture::new(tier, 1 << 20);
    let calls = AtomicUsize::new(0);
    let (k, b) = chunk(1, 5000);
    assert!(!f.cache.contains(&k));
    let got = f.cache.get_or_fetch(&k, fetch_ok(b.clone(), &calls)).await;
    assert_eq!(got, Ok(b.clone()));
    f.cache.flush().await;
    assert!(f.cache.contains(&k), "{tier:?}");
    let again = f.cache.get_or_fetch(&k, fetch_ok(b.clone(), &calls)).await;
    assert_eq!(again, Ok(b));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{tier:?}");
    let s = f.cache.stats();
    assert_eq!((s.misses, s.fetches), (1, 1));
    match tier {
        Tier::Disk => assert_eq!((s.memory_hits, s.disk_hits, s.memory_entries), (0, 1, 0)),
        _ => assert_eq!((s.memory_hits, s.disk_hits, s.memory_entries), (1, 0, 1)),
    }
    match tier {
        Tier::Memory => assert_eq!((s.entries, s.bytes_on_disk), (0, 0)),
        _ => assert_eq!((s.entries, s.bytes_on_disk), (1, charge(5000))),
    }
}

async fn single_flight(tier: Tier) {
    let f = Fixture::new(tier, 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let (k, b) = chunk(2, 70_000); // hashed on the blocking pool
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (cache, calls, k, b) = (f.cache.clone(), calls.clone(), k.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_fetch(&k, async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, TestError>(b)
                })
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(b.clone()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{tier:?}");
    assert_eq!(f.cache.stats().fetches, 1);
}

async fn error_shared_then_retry(tier: Tier) {
    let f = Fixture::new(tier, 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let (k, b) = chunk(3, 100);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (cache, calls, k) = (f.cache.clone(), calls.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_fetch(&k, async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<Bytes, _>(TestError::Fetch("registry said 503".into()))
                })
                .await
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            Err(TestError::Fetch("registry said 503".into()))
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{tier:?}");
    assert!(!f.cache.contains(&k));
    let retry = f.cache.get_or_fetch(&k, fetch_ok(b.clone(), &calls)).await;
    assert_eq!(retry, Ok(b));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

async fn mismatch_rejected(tier: Tier) {
    let f = Fixture::new(tier, 1 << 20);
    let calls = AtomicUsize::new(0);
    let (k, b) = chunk(4, 100);
    let (wrong_key, wrong) = chunk(5, 100);
    let got = f.cache.get_or_fetch(&k, fetch_ok(wrong, &calls)).await;
    assert_eq!(
        got,
        Err(TestError::Mismatch(CacheMismatch {
            key: k.clone(),
            actual: Some(wrong_key.clone())
        }))
    );
    f.cache.flush().await;
    assert!(!f.cache.contains(&k) && !f.cache.contains(&wrong_key));
    assert!(chunk_files(f.dir.path()).is_empty(), "{tier:?}");
    assert_eq!(
        f.cache.get_or_fetch(&k, fetch_ok(b.clone(), &calls)).await,
        Ok(b)
    );
}

async fn cancelled_leader_does_not_strand_waiters(tier: Tier) {
    let f = Fixture::new(tier, 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let (k, b) = chunk(6, 100);
    let leader = {
        let (cache, calls, k) = (f.cache.clone(), calls.clone(), k.clone());
        tokio::spawn(async move {
            cache
                .get_or_fetch(&k, async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<Result<Bytes, TestError>>().await
                })
                .await
        })
    };
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let mut waiters = Vec::new();
    for _ in 0..4 {
        let (cache, calls, k, b) = (f.cache.clone(), calls.clone(), k.clone(), b.clone());
        waiters.push(tokio::spawn(async move {
            cache
                .get_or_fetch(&k, async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, TestError>(b)
                })
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    leader.abort();
    for w in waiters {
        let got = tokio::time::timeout(Duration::from_secs(5), w).await;
        assert_eq!(got.expect("waiter hung").unwrap(), Ok(b.clone()));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "{tier:?}: the dead leader and one new one"
    );
}

async fn too_big_is_served_not_stored(tier: Tier) {
    let f = Fixture::new(tier, 3 * BLOCK);
    let calls = AtomicUsize::new(0);
    let (k, b) = chunk(7, 5 * BLOCK as usize);
    assert_eq!(
        f.cache.get_or_fetch(&k, fetch_ok(b.clone(), &calls)).await,
        Ok(b.clone())
    );
    f.cache.flush().await;
    assert!(!f.cache.contains(&k), "{tier:?}");
    assert_eq!(
        f.cache.get_or_fetch(&k, fetch_ok(b.clone(), &calls)).await,
        Ok(b)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(chunk_files(f.dir.path()).is_empty());
}

async fn lru_keeps_touched(tier: Tier) {
    let f = Fixture::new(tier, 3 * BLOCK);
    let calls = AtomicUsize::new(0);
    let chunks: Vec<_> = (10..14).map(|i| chunk(i, BLOCK as usize)).collect();
    for (k, b) in &chunks[..3] {
        f.cache
            .get_or_fetch(k, fetch_ok(b.clone(), &calls))
            .await
            .unwrap();
        f.cache.flush().await;
    }
    let (k0, b0) = &chunks[0];
    f.cache
        .get_or_fetch(k0, fetch_ok(b0.clone(), &calls))
        .await
        .unwrap();
    let (k3, b3) = &chunks[3];
    f.cache
        .get_or_fetch(k3, fetch_ok(b3.clone(), &calls))
        .await
        .unwrap();
    f.cache.flush().await;
    let kept: Vec<bool> = chunks.iter().map(|(k, _)| f.cache.contains(k)).collect();
    assert_eq!(kept, [true, false, true, true], "{tier:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let s = f.cache.stats();
    let want = match tier {
        Tier::Memory => (1, 0),
        Tier::Disk => (0, 1),
        Tier::Both => (1, 1),
    };
    assert_eq!((s.memory_evictions, s.evictions), want, "{tier:?}");
}

async fn many_fetches_only_missing(tier: Tier) {
    let f = Fixture::new(tier, 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let c: Vec<_> = (20..24).map(|i| chunk(i, 3000)).collect();
    // c0 cached, c1 in flight elsewhere, c2 and c3 missing.
    f.cache
        .get_or_fetch(&c[0].0, fetch_ok(c[0].1.clone(), &calls))
        .await
        .unwrap();
    f.cache.flush().await;
    let release = Arc::new(tokio::sync::Notify::new());
    let other = {
        let (cache, release, k, b, calls) = (
            f.cache.clone(),
            release.clone(),
            c[1].0.clone(),
            c[1].1.clone(),
            calls.clone(),
        );
        tokio::spawn(async move {
            cache
                .get_or_fetch(&k, async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    Ok::<_, TestError>(b)
                })
                .await
        })
    };
    while calls.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
    }
    let asked = Mutex::new(Vec::new());
    let keys: Vec<Digest> = [0, 1, 2, 3, 2].iter().map(|&i| c[i].0.clone()).collect();
    let by_key = |k: &Digest| c.iter().find(|(ck, _)| ck == k).unwrap().1.clone();
    let many = f.cache.get_or_fetch_many(&keys, |missing: Vec<Digest>| {
        asked.lock().unwrap().push(missing.clone());
        let bytes: Vec<Bytes> = missing.iter().map(by_key).collect();
        async move { Ok::<_, TestError>(bytes) }
    });
    let releaser = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        release.notify_one();
    };
    let (got, ()) = tokio::join!(many, releaser);
    let want: Vec<Bytes> = keys.iter().map(by_key).collect();
    assert_eq!(got, Ok(want), "{tier:?}");
    assert_eq!(
        *asked.lock().unwrap(),
        vec![vec![c[2].0.clone(), c[3].0.clone()]]
    );
    assert_eq!(other.await.unwrap(), Ok(c[1].1.clone()));
    f.cache.flush().await;
    assert!(c.iter().all(|(k, _)| f.cache.contains(k)));
    // All cached now: no fetch at all.
    let again = f
        .cache
        .get_or_fetch_many(&keys, |_| async {
            Err::<Vec<Bytes>, _>(TestError::Fetch("unexpected".into()))
        })
        .await;
    assert!(again.is_ok());
}

async fn many_mismatch_keeps_the_good(tier: Tier) {
    let f = Fixture::new(tier, 1 << 20);
    let c: Vec<_> = (30..33).map(|i| chunk(i, 2000)).collect();
    let keys: Vec<Digest> = c.iter().map(|(k, _)| k.clone()).collect();
    let (bad_key, bad) = chunk(99, 10);
    let got = f
        .cache
        .get_or_fetch_many(&keys, |_| {
            // The middle chunk is wrong and the last one is missing.
            let bytes = vec![c[0].1.clone(), bad.clone()];
            async move { Ok::<_, TestError>(bytes) }
        })
        .await;
    assert_eq!(
        got,
        Err(TestError::Mismatch(CacheMismatch {
            key: keys[1].clone(),
            actual: Some(bad_key)
        }))
    );
    f.cache.flush().await;
    let kept: Vec<bool> = keys.iter().map(|k| f.cache.contains(k)).collect();
    assert_eq!(kept, [true, false, false], "{tier:?}");
}

async fn remove_drops(tier: Tier) {
    let f = Fixture::new(tier, 1 << 20);
    let calls = AtomicUsize::new(0);
    let (k, b) = chunk(40, 100);
    f.cache
        .get_or_fetch(&k, fetch_ok(b.clone(), &calls))
        .await
        .unwrap();
    f.cache.flush().await;
    f.cache.remove(&k);
    f.cache.flush().await;
    assert!(!f.cache.contains(&k));
    assert!(chunk_files(f.dir.path()).is_empty(), "{tier:?}");
    assert_eq!(f.cache.stats().bytes_on_disk, 0);
    f.cache.get_or_fetch(&k, fetch_ok(b, &calls)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// `export_metrics` makes the process's metrics show this cache's numbers,
/// and only while the cache lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_are_exported_to_the_process_metrics() {
    let f = Fixture::new(Tier::Both, 1 << 20);
    let calls = AtomicUsize::new(0);
    let (k, b) = chunk(77, 5000);
    for _ in 0..3 {
        f.cache
            .get_or_fetch(&k, fetch_ok(b.clone(), &calls))
            .await
            .unwrap();
    }
    f.cache.flush().await;
    f.cache.export_metrics();
    let t = crate::metrics::global().render();
    for line in [
        "lazysnap_cache_misses_total 1\n".to_string(),
        "lazysnap_cache_hits_total{tier=\"memory\"} 2\n".to_string(),
        "lazysnap_cache_hits_total{tier=\"disk\"} 0\n".to_string(),
        "lazysnap_cache_bytes{tier=\"memory\"} 5000\n".to_string(),
        format!("lazysnap_cache_bytes{{tier=\"disk\"}} {}\n", charge(5000)),
        "lazysnap_cache_entries{tier=\"disk\"} 1\n".to_string(),
        "lazysnap_cache_evictions_total{tier=\"disk\"} 0\n".to_string(),
    ] {
        assert!(t.contains(&line), "{line:?} not in\n{t}");
    }
    drop(f);
    assert!(
        !crate::metrics::global()
            .render()
            .contains("lazysnap_cache_")
    );
}
