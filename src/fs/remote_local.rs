//! Whole remote files as plain local files, for kernel passthrough: a
//! regular file of a remote lower whose chunks are all in the chunk cache
//! is assembled into one file stored in that cache under the file's own
//! digest (the TOC's `digest`), counted against the cache's byte budget and
//! evicted like a chunk (`cache/disk/files.rs`).
//!
//! Policy ([`RemoteFile::local_file`]):
//! - nothing is fetched here: a file with a chunk not cached has no local
//!   file (its reads go through the daemon, which fetches);
//! - files up to [`ASSEMBLE_INLINE_MAX`] are assembled (or, when found
//!   stored but not yet hashed by this process, hashed) while their open
//!   waits; larger ones in the background, once at a time per digest, and
//!   the open that started it is served by the daemon;
//! - a file of one chunk whose chunk digest is the file digest is that
//!   chunk's cache file: nothing is copied;
//! - empty files have none (the kernel reads nothing from them).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};

use super::remote_file::RemoteFile;
use crate::cache::ChunkCache;
use crate::oci::Digest;

/// Files at most this large (bytes) are assembled or hashed while their
/// open waits.
pub const ASSEMBLE_INLINE_MAX: u64 = 4 << 20;

/// Digests being assembled or hashed in the background.
fn in_flight() -> &'static Mutex<HashSet<Digest>> {
    static SET: OnceLock<Mutex<HashSet<Digest>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Runs `job` for `key` on the blocking pool unless one already runs.
fn in_background(key: Digest, job: impl FnOnce() + Send + 'static) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if !in_flight()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.clone())
    {
        return;
    }
    drop(rt.spawn_blocking(move || {
        job();
        in_flight()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }));
}

impl RemoteFile {
    /// A plain local file with exactly this file's bytes (see the module
    /// docs), opened read-only; `None` when there is none yet. Blocking I/O
    /// up to [`ASSEMBLE_INLINE_MAX`] bytes; never waits on the network.
    pub fn local_file(&self) -> Option<File> {
        let size = self.attr.size;
        if size == 0 {
            return None;
        }
        let cache = self.reader.cache()?.clone();
        let key = self.toc.entries.get(self.entry)?.digest()?;
        let inline = size <= ASSEMBLE_INLINE_MAX;
        if inline || cache.file_verified(&key) {
            if let Some(f) = cache.open_file(&key) {
                return f.metadata().is_ok_and(|m| m.len() == size).then_some(f);
            }
        } else if cache.contains(&key) {
            // Stored, not hashed by this process yet: hash it aside.
            in_background(key.clone(), move || drop(cache.open_file(&key)));
            return None;
        }
        let all_cached = self
            .chunks()
            .all(|c| c.digest.as_ref().is_some_and(|d| cache.contains(d)));
        if !all_cached {
            return None;
        }
        if inline {
            return self.assemble(&cache, &key);
        }
        let me = self.clone();
        in_background(key.clone(), move || drop(me.assemble(&cache, &key)));
        None
    }

    /// Writes every chunk, in order, into a whole file stored under `key`.
    fn assemble(&self, cache: &Arc<ChunkCache>, key: &Digest) -> Option<File> {
        let size = self.attr.size;
        let mut fill = |w: &mut dyn Write| -> io::Result<()> {
            let mut next = 0u64;
            for (k, c) in self.chunks().enumerate() {
                if c.size == 0 {
                    continue;
                }
                if c.file_offset != next {
                    return Err(io::Error::other(format!(
                        "chunk {k} starts at {}, not {next}",
                        c.file_offset
                    )));
                }
                let data = self.chunk_bytes(k, &c).map_err(io::Error::other)?;
                w.write_all(&data)?;
                next += c.size;
            }
            if next != size {
                return Err(io::Error::other(format!(
                    "chunks end at {next}, the file at {size}"
                )));
            }
            Ok(())
        };
        let f = cache.store_file(key, size, &mut fill);
        if f.is_some() {
            tracing::debug!(path = %self.path.display(), bytes = size, "assembled whole file in the cache");
        }
        f
    }
}
