//! The disk store: one file per chunk, named by its digest and sharded by
//! the first two hex digits (`ab/abcdef…`), so a chunk shared by layers and
//! images is stored once.
//!
//! Every function here does blocking file I/O; `ChunkCache` calls them from
//! `spawn_blocking`. The budget's books are in [`Ledger`], behind a std
//! `Mutex` that is never held across a syscall.
//!
//! # Crash safety
//!
//! A chunk is written to `ab/.tmp-<hex>-<pid>-<n>`, fsynced, and renamed over
//! its final name, so a final name never holds a partial write of ours.
//! Leftover temp files are deleted on open. The directory is not fsynced
//! after the rename: after a power loss a chunk may be missing or (on some
//! filesystems) empty, and since every load is re-verified against its
//! digest, that is only a miss. An exclusive `flock` on `LOCK` keeps a second
//! process from deleting the first one's temp files.

use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::error::CacheError;
use super::ledger::{self, Ledger, Reserve, Victim};
use crate::oci::Digest;

mod files;

const TEMP_PREFIX: &str = ".tmp-";
const LOCK_FILE: &str = "LOCK";
/// How often a writer waits for other writers' deletions before giving up.
const MAX_WAITS: u32 = 200;

/// Counters the disk store keeps itself.
#[derive(Debug, Default)]
pub(super) struct DiskCounters {
    pub(super) evictions: AtomicU64,
    pub(super) store_errors: AtomicU64,
    pub(super) not_stored: AtomicU64,
    pub(super) corrupt: AtomicU64,
}

/// The on-disk tier.
#[derive(Debug)]
pub(super) struct DiskStore {
    dir: PathBuf,
    ledger: Mutex<Ledger>,
    pub(super) counters: DiskCounters,
    temp_seq: AtomicU64,
    /// Whole files: which were hashed, which are being written (`files.rs`).
    files: Mutex<files::FileState>,
    /// Holds the `flock` for as long as the store lives.
    _lock: File,
}

impl DiskStore {
    /// Creates or opens the store at `dir` (shard directories are made on
    /// first use): takes the lock, deletes temp
    /// files, indexes the chunks found by recency (the later of atime and
    /// mtime, oldest first) and deletes the least recent until they fit
    /// `budget`.
    pub(super) fn open(dir: &Path, budget: u64) -> Result<DiskStore, CacheError> {
        fs::create_dir_all(dir).map_err(|source| CacheError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = lock_dir(&dir.join(LOCK_FILE))?;
        let mut found = Vec::new();
        let scan_err = |source| CacheError::Scan {
            path: dir.to_path_buf(),
            source,
        };
        // Shard directories are created on first use, so only list those there.
        for entry in fs::read_dir(dir).map_err(scan_err)? {
            let entry = entry.map_err(scan_err)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_shard = name.len() == 2
                && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                && entry.file_type().map_err(scan_err)?.is_dir();
            if is_shard {
                scan_shard(&entry.path(), &name, &mut found)?;
            } else if name != LOCK_FILE {
                tracing::warn!(path = %entry.path().display(), "unexpected entry in chunk cache; ignored");
            }
        }
        found.sort_by_key(|(time, _, _)| *time);
        let mut books = Ledger::new(budget);
        for (_, key, len) in found {
            books.insert_existing(key, ledger::charge(len));
        }
        let victims = books.over_budget();
        let store = DiskStore {
            dir: dir.to_path_buf(),
            ledger: Mutex::new(books),
            counters: DiskCounters::default(),
            temp_seq: AtomicU64::new(0),
            files: Mutex::default(),
            _lock: lock,
        };
        for v in victims {
            let path = store.path_of(&v.key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(CacheError::Remove { path, source }),
            }
            store.books().unlinked(&v.key, true);
            store.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(store)
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // Every ledger method leaves it consistent before it can panic, so
        // a poisoned lock is still good.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path_of(&self, key: &Digest) -> PathBuf {
        let hex = key.hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    pub(super) fn contains(&self, key: &Digest) -> bool {
        self.books().contains(key)
    }

    /// Marks `key` most recently used (a memory-tier hit).
    pub(super) fn promote(&self, key: &Digest) {
        self.books().touch(key);
    }

    /// (charged bytes, chunks indexed).
    pub(super) fn usage(&self) -> (u64, u64) {
        let books = self.books();
        (books.used(), books.entries())
    }

    /// Reads and verifies chunk `key`. Returns `None` if it is not indexed;
    /// a missing, unreadable or corrupt file is dropped from the index (and
    /// deleted) and also gives `None`. A hit sets the file's atime, which
    /// orders the index when the store is opened again.
    pub(super) fn load(&self, key: &Digest) -> Option<Bytes> {
        let generation = self.books().touch(key)?.generation;
        let path = self.path_of(key);
        let read = File::open(&path).and_then(|mut f| {
            let mut data = Vec::with_capacity(f.metadata().map_or(0, |m| m.len() as usize));
            io::Read::read_to_end(&mut f, &mut data)?;
            Ok((f, data))
        });
        match read {
            Ok((f, data)) if key.verify(&data) => {
                let _ = f.set_times(FileTimes::new().set_accessed(SystemTime::now()));
                return Some(Bytes::from(data));
            }
            Ok((_, data)) => {
                self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    chunk = %key,
                    path = %path.display(),
                    len = data.len(),
                    "cached chunk does not match its digest; deleting it"
                );
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(chunk = %key, "cached chunk vanished");
            }
            Err(e) => {
                tracing::warn!(chunk = %key, path = %path.display(), error = %e,
                    "reading cached chunk; dropping it");
            }
        }
        let victim = self.books().remove(key, Some(generation));
        self.unlink(victim, false);
        None
    }

    /// Takes `key` out of the index; its file must then be [`unlink`]ed.
    ///
    /// [`unlink`]: DiskStore::unlink
    pub(super) fn take(&self, key: &Digest) -> Option<Victim> {
        self.books().remove(key, None)
    }

    /// Deletes victims' files and settles their charges.
    pub(super) fn unlink(&self, victims: impl IntoIterator<Item = Victim>, evicted: bool) {
        for v in victims {
            let path = self.path_of(&v.key);
            let removed = match fs::remove_file(&path) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => true,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e,
                        "deleting cached chunk; its space stays counted");
                    false
                }
            };
            self.books().unlinked(&v.key, removed);
            if evicted {
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(chunk = %v.key, bytes = v.charge, "evicted");
            }
        }
    }

    /// Reserves `charge` bytes for `key` in the ledger, evicting and briefly
    /// waiting as it asks. `Err` when it can't be stored now: `Busy`
    /// (another writer stores `key`), or a refusal (`Wait` too long,
    /// `NoRoom`, `TooBig`), which is counted in `not_stored`.
    pub(super) fn reserve_room(&self, key: &Digest, charge: u64) -> Result<(), Reserve> {
        let mut waits = 0;
        loop {
            // Bound first: the ledger's lock must be released before
            // `unlink` takes it again.
            let answer = self.books().reserve(key, charge);
            match answer {
                Reserve::Granted => return Ok(()),
                Reserve::Evict(victims) => self.unlink(victims, true),
                Reserve::Wait if waits < MAX_WAITS => {
                    waits += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Reserve::Busy => return Err(Reserve::Busy),
                refused => {
                    self.counters.not_stored.fetch_add(1, Ordering::Relaxed);
                    return Err(refused);
                }
            }
        }
    }

    /// Stores verified chunk `key`, evicting least recently used chunks to
    /// make room first. Never fails: a chunk that cannot be stored is
    /// counted (`not_stored`, `store_errors`) and logged. A failed write
    /// (ENOSPC, EIO, …) evicts at least the chunk's size more and is retried
    /// once.
    pub(super) fn store(&self, key: &Digest, bytes: &[u8]) {
        let charge = ledger::charge(bytes.len() as u64);
        if let Err(why) = self.reserve_room(key, charge) {
            if !matches!(why, Reserve::Busy) {
                tracing::debug!(chunk = %key, bytes = bytes.len(), why = ?why,
                    "chunk served uncached");
            }
            return;
        }
        let mut retried = false;
        loop {
            match self.write(key, bytes) {
                Ok(()) => {
                    self.books().commit(key.clone(), charge);
                    return;
                }
                Err(e) => {
                    self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                    if retried {
                        self.books().release(charge);
                        tracing::warn!(chunk = %key, error = %e,
                            "storing chunk failed twice; serving it uncached");
                        return;
                    }
                    tracing::warn!(chunk = %key, error = %e,
                        "storing chunk failed; evicting and retrying once");
                    let victims = self.books().pop_victims(charge);
                    self.unlink(victims, true);
                    retried = true;
                }
            }
        }
    }

    /// Writes `bytes` under a temp name, fsyncs and renames it into place.
    fn write(&self, key: &Digest, bytes: &[u8]) -> io::Result<()> {
        let path = self.path_of(key);
        let n = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp = path.with_file_name(format!(
            "{TEMP_PREFIX}{}-{}-{n}",
            key.hex(),
            std::process::id()
        ));
        let result = (|| {
            let mut f = match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // First chunk of this shard (or the shard was deleted).
                    fs::create_dir_all(temp.parent().unwrap_or(&self.dir))?;
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&temp)?
                }
                other => other?,
            };
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&temp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }
}

/// Opens `path` and takes an exclusive, non-blocking `flock` on it.
fn lock_dir(path: &Path) -> Result<File, CacheError> {
    let lock_err = |source| CacheError::Lock {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(lock_err)?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            CacheError::Locked {
                path: path.to_path_buf(),
            }
        } else {
            lock_err(e)
        });
    }
    Ok(file)
}

/// Lists one shard: deletes temp files, collects (recency, key, length) of
/// chunk files, and leaves anything else alone (with a warning; it is not
/// counted against the budget).
fn scan_shard(
    shard: &Path,
    prefix: &str,
    found: &mut Vec<(SystemTime, Digest, u64)>,
) -> Result<(), CacheError> {
    let scan_err = |source| CacheError::Scan {
        path: shard.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(shard).map_err(scan_err)? {
        let entry = entry.map_err(scan_err)?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TEMP_PREFIX) {
            match fs::remove_file(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "removed leftover temp file"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(CacheError::Remove { path, source }),
            }
            continue;
        }
        let key = format!("sha256:{name}").parse::<Digest>().ok();
        let meta = entry.metadata().map_err(scan_err)?;
        match key {
            Some(key) if name.starts_with(prefix) && meta.is_file() => {
                let time = [meta.accessed(), meta.modified()]
                    .into_iter()
                    .filter_map(Result::ok)
                    .max()
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((time, key, meta.len()));
            }
            _ => tracing::warn!(path = %path.display(), "unexpected file in chunk cache; ignored"),
        }
    }
    Ok(())
}
