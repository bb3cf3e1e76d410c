//! Chunk cache: a memory LRU in front of a content-addressed disk store,
//! both bounded in bytes, with single-flight fetches.
//! It knows keys ([`Digest`]s) and bytes only: no formats, HTTP or FUSE.
//!
//! ```text
//! get_or_fetch(key, fetch)
//!   ├─ memory tier (memory.rs)      hit ─▶ bytes
//!   ├─ disk store  (disk.rs)        hit ─▶ re-verify ─▶ memory tier ─▶ bytes
//!   └─ flights     (flight.rs)      someone fetching key? wait for it
//!                                   else fetch ─▶ verify ─▶ memory tier ─▶ bytes
//!                                              └▶ (background) disk store
//! ```
//!
//! - Every chunk is verified against its key when fetched and again when
//!   loaded from disk; the cache never hands out bytes that do not hash to
//!   the key asked for.
//! - The disk budget holds at all times, also with concurrent writers (see
//!   `ledger.rs` for the accounting unit and the invariant). Nothing is
//!   pinned; a chunk larger than a tier's budget is served but not kept there.
//! - A fetched chunk is returned as soon as it is verified; writing it to
//!   disk continues in the background (the flight stays open meanwhile, so
//!   nobody fetches it again). [`ChunkCache::flush`] waits for those writes.
//! - A disk error never fails a read: the chunk is served uncached and
//!   counted in [`CacheStats::store_errors`].

mod batch;
mod disk;
mod error;
mod flight;
mod ledger;
mod many;
mod memory;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_disk;
#[cfg(test)]
mod tests_files;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::Notify;

pub use batch::LedBatch;
pub use error::{CacheError, CacheMismatch};

use crate::oci::Digest;
use disk::DiskStore;
use flight::{Flights, Join, Leader, Outcome, SharedError};
use memory::MemoryTier;

/// Chunks at most this large are hashed on the calling task; larger ones on
/// the blocking pool, so the reactor never stalls on sha256 of a big chunk.
const INLINE_HASH_MAX: usize = 64 * 1024;

/// Where the cache lives and how big it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    /// The directory of the disk store (`<root>/cache`); created if missing.
    pub dir: PathBuf,
    /// Bytes the disk store may use, counted as in `ledger.rs` (apparent
    /// size rounded up to 4 KiB, at least 4 KiB per file). 0 turns the disk
    /// tier off and empties `dir`.
    pub disk_budget: u64,
    /// Bytes of chunk data the memory tier may hold. 0 turns it off.
    pub memory_budget: u64,
}

impl CacheOptions {
    /// Default disk budget: 10 GiB.
    pub const DEFAULT_DISK_BUDGET: u64 = 10 << 30;
    /// Default memory budget: 64 MiB.
    pub const DEFAULT_MEMORY_BUDGET: u64 = 64 << 20;

    /// Options for `dir` with the default budgets.
    pub fn new(dir: impl Into<PathBuf>) -> CacheOptions {
        CacheOptions {
            dir: dir.into(),
            disk_budget: Self::DEFAULT_DISK_BUDGET,
            memory_budget: Self::DEFAULT_MEMORY_BUDGET,
        }
    }
}

impl Default for CacheOptions {
    /// `/var/lib/lazysnap/cache` with the default budgets.
    fn default() -> CacheOptions {
        CacheOptions::new("/var/lib/lazysnap/cache")
    }
}

/// A snapshot of the cache's counters (monotonic since open) and sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Chunks served from the memory tier.
    pub memory_hits: u64,
    /// Chunks served from the disk store.
    pub disk_hits: u64,
    /// Chunks asked for that were in neither tier (served by a fetch, ours
    /// or one already in flight).
    pub misses: u64,
    /// Calls of a caller's fetch (one call may cover several chunks).
    pub fetches: u64,
    /// Chunks evicted from the disk store to make room.
    pub evictions: u64,
    /// Chunks evicted from the memory tier to make room.
    pub memory_evictions: u64,
    /// Failed disk writes (each attempt; the retry counts again).
    pub store_errors: u64,
    /// Chunks not stored on disk: bigger than the budget, or no room left
    /// after waiting for concurrent writers; excludes write errors.
    pub not_stored: u64,
    /// Disk files that failed verification on load (deleted, then refetched).
    pub corrupt: u64,
    /// Charged bytes of the disk store (see `ledger.rs`), including writes
    /// in progress and files being deleted.
    pub bytes_on_disk: u64,
    /// Chunks indexed on disk.
    pub entries: u64,
    /// Bytes held by the memory tier.
    pub memory_bytes: u64,
    /// Chunks held by the memory tier.
    pub memory_entries: u64,
}

#[derive(Debug, Default)]
struct Counters {
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    misses: AtomicU64,
    fetches: AtomicU64,
    memory_evictions: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Background disk work in progress, for [`ChunkCache::flush`].
#[derive(Debug, Default)]
struct Background {
    pending: AtomicUsize,
    idle: Notify,
}

/// Counts one piece of background work until dropped.
struct PendingGuard(Arc<Background>);

impl Background {
    fn begin(self: &Arc<Self>) -> PendingGuard {
        self.pending.fetch_add(1, Ordering::SeqCst);
        PendingGuard(Arc::clone(self))
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The chunk cache. `Send + Sync`; share it as `Arc<ChunkCache>`.
#[derive(Debug)]
pub struct ChunkCache {
    memory: MemoryTier,
    disk: Arc<DiskStore>,
    disk_enabled: bool,
    flights: Arc<Flights>,
    background: Arc<Background>,
    counters: Counters,
}

impl ChunkCache {
    /// Opens or creates the disk store at `opts.dir`: takes its lock,
    /// deletes leftover temp files, indexes the chunks there (least recently
    /// used first, by the later of each file's atime and mtime) and deletes
    /// the least recent until they fit `opts.disk_budget`. Chunk contents are
    /// not read here; each is verified when first loaded.
    ///
    /// Does blocking file I/O (a directory listing per shard): call it at
    /// startup or from `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// [`CacheError`] if the directory cannot be created, listed or locked
    /// ([`CacheError::Locked`] if another process uses it), or if a file
    /// that must go (temp file, chunk over budget) cannot be deleted.
    pub fn open(opts: CacheOptions) -> Result<Arc<ChunkCache>, CacheError> {
        let disk = DiskStore::open(&opts.dir, opts.disk_budget)?;
        Ok(Arc::new(ChunkCache {
            memory: MemoryTier::new(opts.memory_budget),
            disk: Arc::new(disk),
            disk_enabled: opts.disk_budget > 0,
            flights: Arc::new(Flights::default()),
            background: Arc::new(Background::default()),
            counters: Counters::default(),
        }))
    }

    /// The verified bytes of chunk `key`: from memory, else from disk
    /// (re-verified; a corrupt file is deleted and treated as a miss), else
    /// from `fetch`. However many callers ask for `key` at once, one fetch
    /// runs and all of them get its result, errors included; a failed fetch
    /// is not remembered, so the next call fetches again.
    ///
    /// `fetch` is awaited only if this caller leads the fetch, and then
    /// exactly once. Its bytes are verified against `key`; a fetch should
    /// verify too, but need not.
    ///
    /// # Errors
    ///
    /// The fetch's error (this caller's or the leader's, if the leader's
    /// error has type `E` too), or `E::from(CacheMismatch)` if the fetched
    /// bytes do not hash to `key` (they are then not stored). Disk errors
    /// never surface here.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. If the leading caller is dropped mid-fetch, its flight
    /// ends and the waiters retry: one of them fetches with its own `fetch`.
    /// Once a fetch has succeeded, storing it no longer depends on the caller.
    pub async fn get_or_fetch<E, F>(&self, key: &Digest, fetch: F) -> Result<Bytes, E>
    where
        F: Future<Output = Result<Bytes, E>>,
        E: Clone + From<CacheMismatch> + Send + Sync + 'static,
    {
        let mut fetch = Some(fetch);
        let mut first = true;
        loop {
            if let Some(bytes) = self.lookup(key).await {
                return Ok(bytes);
            }
            if first {
                bump(&self.counters.misses, 1);
                first = false;
            }
            match self.flights.join(key, || self.is_cached(key)) {
                Join::Cached => continue,
                Join::Wait(waiter) => match waiter.wait().await {
                    Outcome::Done(bytes) => return Ok(bytes),
                    Outcome::Failed(e) => {
                        if let Some(e) = e.downcast_ref::<E>() {
                            return Err(e.clone());
                        }
                        // A caller with another error type failed: try ourselves.
                    }
                    Outcome::Abandoned => {}
                },
                Join::Lead(leader) => {
                    let fetch = fetch.take().expect("a caller leads at most once");
                    return self.lead_one(leader, fetch).await;
                }
            }
        }
    }

    async fn lead_one<E, F>(&self, leader: Leader, fetch: F) -> Result<Bytes, E>
    where
        F: Future<Output = Result<Bytes, E>>,
        E: Clone + From<CacheMismatch> + Send + Sync + 'static,
    {
        bump(&self.counters.fetches, 1);
        let bytes = match fetch.await {
            Ok(bytes) => bytes,
            Err(e) => {
                leader.fail(Arc::new(e.clone()) as SharedError);
                return Err(e);
            }
        };
        let actual = digests_of(vec![bytes.clone()]).await.remove(0);
        if actual != *leader.key() {
            let e = E::from(mismatch(leader.key(), Some(actual)));
            leader.fail(Arc::new(e.clone()) as SharedError);
            return Err(e);
        }
        self.admit(vec![(leader, bytes.clone())]);
        Ok(bytes)
    }

    /// Whether `key` is in either tier (without touching its recency).
    pub fn contains(&self, key: &Digest) -> bool {
        self.is_cached(key)
    }

    fn is_cached(&self, key: &Digest) -> bool {
        self.memory.contains(key) || self.disk.contains(key)
    }

    /// Drops `key` from both tiers now (e.g. when the last layer using it is
    /// removed); the file is deleted on the blocking pool when called inside
    /// a tokio runtime, else right here. A fetch of `key` in flight is not
    /// affected and stores its result as usual.
    pub fn remove(&self, key: &Digest) {
        self.memory.remove(key);
        let Some(victim) = self.disk.take(key) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let disk = Arc::clone(&self.disk);
                let pending = self.background.begin();
                rt.spawn_blocking(move || {
                    disk.unlink([victim], false);
                    drop(disk);
                    drop(pending);
                });
            }
            Err(_) => self.disk.unlink([victim], false),
        }
    }

    /// Opens the disk-store entry `key` as a read-only file: a chunk, or a
    /// whole file stored with [`ChunkCache::store_file`] (keyed by the file's
    /// digest). The file is hashed against `key` on its first open in this
    /// process (blocking I/O proportional to its size), not on later ones.
    /// `None` when the disk tier does not hold `key` (a corrupt file is
    /// deleted and also gives `None`). An open file stays readable after
    /// eviction; its bytes are then outside the budget until it is closed.
    pub fn open_file(&self, key: &Digest) -> Option<std::fs::File> {
        if !self.disk_enabled {
            return None;
        }
        self.disk.open_file(key)
    }

    /// Whether [`ChunkCache::open_file`] of `key` would open it without
    /// hashing it (stored, and hashed already by this process).
    pub fn file_verified(&self, key: &Digest) -> bool {
        self.disk_enabled && self.disk.file_verified(key)
    }

    /// Stores a whole file of `len` bytes whose sha256 is `key` in the disk
    /// tier, counted against its budget like a chunk (least recently used
    /// entries are evicted to make room): `fill` writes the bytes in order;
    /// they are hashed as written and must match `key` and `len`. Returns the
    /// stored file opened read-only. Blocking I/O: call from a blocking thread.
    ///
    /// `None` (nothing stored; logged) when the disk tier is off, `key` is
    /// stored or being stored already, it does not fit, `fill` fails, or the
    /// bytes do not match.
    pub fn store_file(
        &self,
        key: &Digest,
        len: u64,
        fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Option<std::fs::File> {
        if !self.disk_enabled {
            return None;
        }
        self.disk.store_file(key, len, fill)
    }

    /// The counters and sizes.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let d = &self.disk.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (bytes_on_disk, entries) = self.disk.usage();
        let (memory_bytes, memory_entries) = self.memory.usage();
        CacheStats {
            memory_hits: get(&c.memory_hits),
            disk_hits: get(&c.disk_hits),
            misses: get(&c.misses),
            fetches: get(&c.fetches),
            evictions: get(&d.evictions),
            memory_evictions: get(&c.memory_evictions),
            store_errors: get(&d.store_errors),
            not_stored: get(&d.not_stored),
            corrupt: get(&d.corrupt),
            bytes_on_disk,
            entries,
            memory_bytes,
            memory_entries,
        }
    }

    /// Makes the process's metrics ([`crate::metrics::global`]) read this
    /// cache's [`CacheStats`] at every scrape, replacing an earlier cache's.
    /// Holds only a weak reference: once the cache is dropped its series go.
    pub fn export_metrics(self: &Arc<Self>) {
        let cache = Arc::downgrade(self);
        crate::metrics::global().watch_cache(move || cache.upgrade().map(|c| c.stats().into()));
    }

    /// Waits until the disk writes and deletions started so far are done.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; the background work goes on regardless.
    pub async fn flush(&self) {
        loop {
            let idle = self.background.idle.notified();
            let mut idle = std::pin::pin!(idle);
            idle.as_mut().enable();
            if self.background.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// `key` from memory, else from disk (then also kept in memory).
    async fn lookup(&self, key: &Digest) -> Option<Bytes> {
        if let Some(bytes) = self.memory.get(key) {
            self.disk.promote(key);
            bump(&self.counters.memory_hits, 1);
            return Some(bytes);
        }
        if !self.disk.contains(key) {
            return None;
        }
        let disk = Arc::clone(&self.disk);
        let k = key.clone();
        let bytes = tokio::task::spawn_blocking(move || disk.load(&k))
            .await
            .ok()
            .flatten()?;
        let evicted = self.memory.insert(key, bytes.clone());
        bump(&self.counters.memory_evictions, evicted);
        bump(&self.counters.disk_hits, 1);
        Some(bytes)
    }

    /// Publishes verified chunks to their waiters, keeps them in memory,
    /// and stores them on disk in the background; each flight ends when its
    /// chunk is stored.
    fn admit(&self, chunks: Vec<(Leader, Bytes)>) {
        for (leader, bytes) in &chunks {
            // A copy, so a chunk sliced from a larger range response does not
            // keep the whole response alive in the memory tier.
            let evicted = self
                .memory
                .insert(leader.key(), Bytes::copy_from_slice(bytes));
            bump(&self.counters.memory_evictions, evicted);
            leader.succeed(bytes.clone());
        }
        if !self.disk_enabled || chunks.is_empty() {
            return;
        }
        let disk = Arc::clone(&self.disk);
        let pending = self.background.begin();
        tokio::task::spawn_blocking(move || {
            for (leader, bytes) in chunks {
                disk.store(leader.key(), &bytes);
                drop(leader);
            }
            drop(disk);
            drop(pending);
        });
    }
}

impl From<CacheStats> for crate::metrics::CacheSample {
    fn from(s: CacheStats) -> Self {
        crate::metrics::CacheSample {
            memory_hits: s.memory_hits,
            disk_hits: s.disk_hits,
            misses: s.misses,
            memory_evictions: s.memory_evictions,
            disk_evictions: s.evictions,
            memory_bytes: s.memory_bytes,
            disk_bytes: s.bytes_on_disk,
            memory_entries: s.memory_entries,
            disk_entries: s.entries,
        }
    }
}

fn mismatch(key: &Digest, actual: Option<Digest>) -> CacheMismatch {
    tracing::warn!(chunk = %key, actual = ?actual.as_ref().map(Digest::as_str),
        "fetched chunk does not match its digest");
    CacheMismatch {
        key: key.clone(),
        actual,
    }
}

/// The digests of `chunks`, hashed on the blocking pool unless they are small.
async fn digests_of(chunks: Vec<Bytes>) -> Vec<Digest> {
    let hash = |chunks: &[Bytes]| chunks.iter().map(|c| Digest::sha256_of(c)).collect();
    let total: usize = chunks.iter().map(Bytes::len).sum();
    if total <= INLINE_HASH_MAX {
        return hash(&chunks);
    }
    let on_pool = chunks.clone();
    match tokio::task::spawn_blocking(move || hash(&on_pool)).await {
        Ok(digests) => digests,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down: hash here rather than fail.
        Err(_) => hash(&chunks),
    }
}
