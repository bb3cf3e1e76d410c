//! Whole files in the disk store: any stored entry opened as a plain file
//! (for FUSE passthrough), and whole regular files assembled by the caller
//! and stored under their own digest (a file's `sha256`), counted against the
//! same budget as chunks.
//!
//! The store is content addressed, so a whole file is just one more entry
//! whose bytes hash to its key: it is evicted, indexed on open and charged
//! exactly like a chunk. A file of one chunk whose chunk digest equals the
//! file digest is found without storing anything twice.
//!
//! # Verification
//!
//! [`DiskStore::load`] hashes a chunk on every load. A file handed out as a
//! descriptor is hashed once per process and per stored generation instead:
//! when written here (while it is written), or on its first open, so that
//! opening a large file again costs no read of it. The generation check makes
//! a re-stored key hash again.

use std::collections::HashMap;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use super::{DiskStore, TEMP_PREFIX};
use crate::cache::ledger::{self, Reserve};
use crate::oci::Digest;

/// Read size when hashing a stored file.
const HASH_BUF: usize = 1 << 20;

/// Which stored generations have been hashed in this process, and which
/// whole files are being written now.
#[derive(Debug, Default)]
pub(in crate::cache) struct FileState {
    verified: HashMap<Digest, u64>,
    writing: std::collections::HashSet<Digest>,
}

/// A writer that hashes and counts what goes through it.
struct Hashing<'a> {
    file: &'a mut File,
    hash: Sha256,
    len: u64,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn open_ro(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

/// The sha256 of everything `f` holds (positioned reads: the file offset
/// stays at 0).
fn hash_file(f: &File) -> io::Result<Digest> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; HASH_BUF];
    let mut pos = 0u64;
    loop {
        match f.read_at(&mut buf, pos) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Digest::from_sha256(hash.finalize().into()))
}

impl DiskStore {
    fn file_state(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `key` is stored and this generation of it was hashed in this
    /// process (so [`DiskStore::open_file`] will not read it). Marks it
    /// most recently used.
    pub(in crate::cache) fn file_verified(&self, key: &Digest) -> bool {
        let Some(entry) = self.books().touch(key) else {
            return false;
        };
        self.file_state().verified.get(key) == Some(&entry.generation)
    }

    /// Opens the stored entry `key` read-only, hashing it first unless this
    /// generation of it was hashed before in this process. `None` when it is
    /// not indexed; a missing or corrupt file is dropped from the index (and
    /// deleted, counted in `corrupt`) and also gives `None`. Marks `key`
    /// most recently used and sets the file's atime.
    pub(in crate::cache) fn open_file(&self, key: &Digest) -> Option<File> {
        let generation = self.books().touch(key)?.generation;
        let path = self.path_of(key);
        let known = self.file_state().verified.get(key) == Some(&generation);
        let opened = open_ro(&path).and_then(|f| {
            if known {
                return Ok((f, true));
            }
            let ok = hash_file(&f)? == *key;
            Ok((f, ok))
        });
        match opened {
            Ok((f, true)) => {
                let _ = f.set_times(FileTimes::new().set_accessed(SystemTime::now()));
                self.file_state().verified.insert(key.clone(), generation);
                return Some(f);
            }
            Ok((_, false)) => {
                self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %key, path = %path.display(),
                    "cached file does not match its digest; deleting it");
            }
            Err(e) => {
                tracing::debug!(key = %key, path = %path.display(), error = %e,
                    "opening cached file; dropping it");
            }
        }
        let victim = self.books().remove(key, Some(generation));
        self.unlink(victim, false);
        None
    }

    /// Stores a file of `len` bytes hashing to `key`, written by `fill`
    /// into a temp file (hashed as it is written) and renamed into place,
    /// then opened read-only. Not fsynced: a file a crash damaged fails its
    /// hash on the first open of the next process and is dropped then. Room is made by evicting least recently
    /// used entries, as for a chunk.
    ///
    /// `None` (nothing stored, logged) when `key` is stored or being stored
    /// already, it does not fit the budget, `fill` fails, or what it wrote
    /// is not `len` bytes hashing to `key`.
    pub(in crate::cache) fn store_file(
        &self,
        key: &Digest,
        len: u64,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Option<File> {
        if !self.file_state().writing.insert(key.clone()) {
            return None;
        }
        let out = self.store_file_inner(key, len, fill);
        self.file_state().writing.remove(key);
        out
    }

    fn store_file_inner(
        &self,
        key: &Digest,
        len: u64,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Option<File> {
        let charge = ledger::charge(len);
        if let Err(why) = self.reserve_room(key, charge) {
            if !matches!(why, Reserve::Busy) {
                tracing::debug!(key = %key, bytes = len, why = ?why, "whole file not stored");
            }
            return None;
        }
        let path = self.path_of(key);
        let n = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp = path.with_file_name(format!(
            "{TEMP_PREFIX}{}-{}-{n}",
            key.hex(),
            std::process::id()
        ));
        let written = (|| {
            if let Some(shard) = temp.parent() {
                fs::create_dir_all(shard)?;
            }
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)?;
            let mut w = Hashing {
                file: &mut f,
                hash: Sha256::new(),
                len: 0,
            };
            fill(&mut w)?;
            let (got, got_len) = (Digest::from_sha256(w.hash.finalize().into()), w.len);
            if got_len != len || got != *key {
                return Err(io::Error::other(format!(
                    "assembled {got_len} bytes hashing to {got}, want {len} bytes hashing to {key}"
                )));
            }
            fs::rename(&temp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            self.books().release(charge);
            self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key = %key, error = %e, "storing whole file failed");
            return None;
        }
        self.books().commit(key.clone(), charge);
        let generation = self.books().touch(key)?.generation;
        self.file_state().verified.insert(key.clone(), generation);
        open_ro(&path).ok()
    }
}
