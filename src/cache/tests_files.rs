//! Whole files in the disk store: storing, opening, budget, verification.

use std::io::{Read, Write};
use std::sync::atomic::AtomicUsize;

use super::ChunkCache;
use super::ledger::{BLOCK, charge};
use super::tests::{Fixture, Tier, chunk, chunk_path, disk_total, fetch_ok, options};
use crate::oci::Digest;

/// The digest of what `f` reads from its current offset (digests keep
/// failure messages short).
fn read_all(mut f: std::fs::File) -> Digest {
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    Digest::sha256_of(&v)
}

/// Writes `parts` in order through `store_file`.
fn store(c: &ChunkCache, key: &Digest, parts: &[&[u8]]) -> Option<std::fs::File> {
    let len = parts.iter().map(|p| p.len() as u64).sum();
    c.store_file(key, len, &mut |w: &mut dyn Write| {
        for p in parts {
            w.write_all(p)?;
        }
        Ok(())
    })
}

#[test]
fn a_stored_whole_file_opens_and_counts_against_the_budget() {
    let f = Fixture::new(Tier::Disk, 64 * BLOCK);
    let (_, a) = chunk(1, 5000);
    let (_, b) = chunk(2, 7000);
    let whole: Vec<u8> = [&a[..], &b[..]].concat();
    let key = Digest::sha256_of(&whole);
    let file = store(&f.cache, &key, &[&a, &b]).expect("stored");
    assert_eq!(read_all(file), key);
    assert!(key.verify(&std::fs::read(chunk_path(f.dir.path(), &key)).unwrap()));
    assert_eq!(f.cache.stats().bytes_on_disk, charge(12000));
    assert_eq!(disk_total(f.dir.path()), charge(12000));
    assert!(f.cache.contains(&key));
    assert!(f.cache.file_verified(&key), "hashed as it was written");
    assert_eq!(read_all(f.cache.open_file(&key).unwrap()), key);
    // A new process hashes it on its first open.
    let dir = f.dir;
    drop(f.cache);
    let cache = ChunkCache::open(options(dir.path(), Tier::Disk, 64 * BLOCK)).unwrap();
    assert!(!cache.file_verified(&key));
    assert_eq!(read_all(cache.open_file(&key).unwrap()), key);
    assert!(cache.file_verified(&key));
    let f = Fixture { dir, cache };
    // Stored once: a second store of the same key is refused.
    assert!(store(&f.cache, &key, &[&a, &b]).is_none());
    assert_eq!(f.cache.stats().entries, 1);
}

#[test]
fn wrong_bytes_or_length_are_not_stored() {
    let f = Fixture::new(Tier::Disk, 64 * BLOCK);
    let key = Digest::sha256_of(b"right bytes");
    assert!(store(&f.cache, &key, &[b"wrong bytes"]).is_none());
    assert!(store(&f.cache, &key, &[b"right bytes", b"!"]).is_none());
    let failing = f
        .cache
        .store_file(&key, 11, &mut |_w| Err(std::io::Error::other("gone")));
    assert!(failing.is_none());
    assert_eq!(f.cache.stats().bytes_on_disk, 0);
    assert_eq!(disk_total(f.dir.path()), 0);
    assert!(f.cache.open_file(&key).is_none());
    assert_eq!(
        store(&f.cache, &key, &[b"right ", b"bytes"]).map(read_all),
        Some(key.clone())
    );
}

#[test]
fn storing_evicts_least_recent_entries_and_too_big_is_refused() {
    let f = Fixture::new(Tier::Disk, 4 * BLOCK);
    let big = vec![7u8; 3 * BLOCK as usize];
    let k1 = Digest::sha256_of(&big);
    assert!(store(&f.cache, &k1, &[&big]).is_some());
    let other = vec![9u8; 2 * BLOCK as usize];
    let k2 = Digest::sha256_of(&other);
    assert!(store(&f.cache, &k2, &[&other]).is_some());
    assert!(!f.cache.contains(&k1), "evicted to make room");
    assert!(disk_total(f.dir.path()) <= 4 * BLOCK);
    let huge = vec![1u8; 5 * BLOCK as usize];
    assert!(store(&f.cache, &Digest::sha256_of(&huge), &[&huge]).is_none());
    assert!(f.cache.contains(&k2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_opens_as_a_file_and_corruption_is_caught_on_first_open() {
    let f = Fixture::new(Tier::Disk, 64 * BLOCK);
    let (k, b) = chunk(3, 9000);
    let calls = AtomicUsize::new(0);
    f.cache
        .get_or_fetch(&k, fetch_ok(b.clone(), &calls))
        .await
        .unwrap();
    f.cache.flush().await;
    std::fs::write(chunk_path(f.dir.path(), &k), b"garbage").unwrap();
    // A new process (a reopened cache) hashes on first open.
    drop(f.cache);
    let cache = ChunkCache::open(options(f.dir.path(), Tier::Disk, 64 * BLOCK)).unwrap();
    assert!(cache.open_file(&k).is_none());
    assert_eq!(cache.stats().corrupt, 1);
    assert!(!cache.contains(&k));
    assert!(!chunk_path(f.dir.path(), &k).exists());
}

#[test]
fn the_memory_only_cache_has_no_files() {
    let f = Fixture::new(Tier::Memory, 64 * BLOCK);
    let key = Digest::sha256_of(b"x");
    assert!(store(&f.cache, &key, &[b"x"]).is_none());
    assert!(f.cache.open_file(&key).is_none());
}
