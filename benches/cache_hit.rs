//! Chunk cache hit paths: a memory-tier hit, and a disk hit (read the file,
//! re-verify its sha256, copy into the memory tier's place, which is off
//! here so every iteration goes to disk). Chunk sizes 4 KiB and 1 MiB;
//! throughput in bytes/s.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lazysnap::cache::{CacheMismatch, CacheOptions, ChunkCache};
use lazysnap::oci::Digest;

#[derive(Debug, Clone)]
struct NoFetch;

impl From<CacheMismatch> for NoFetch {
    fn from(_: CacheMismatch) -> NoFetch {
        NoFetch
    }
}

fn warm(rt: &tokio::runtime::Runtime, cache: &ChunkCache, len: usize) -> Digest {
    let bytes = Bytes::from((0..len).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let key = Digest::sha256_of(&bytes);
    rt.block_on(async {
        cache
            .get_or_fetch(&key, async { Ok::<_, NoFetch>(bytes) })
            .await
            .ok();
        cache.flush().await;
    });
    key
}

fn hit(rt: &tokio::runtime::Runtime, cache: &Arc<ChunkCache>, key: &Digest) -> Bytes {
    rt.block_on(cache.get_or_fetch(key, async { Err::<Bytes, _>(NoFetch) }))
        .unwrap_or_else(|_| panic!("expected a hit"))
}

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut group = c.benchmark_group("cache_hit");
    for len in [4 << 10, 1 << 20] {
        group.throughput(Throughput::Bytes(len as u64));

        let dir = tempfile::tempdir().unwrap();
        let memory = ChunkCache::open(CacheOptions {
            dir: dir.path().to_path_buf(),
            disk_budget: 64 << 20,
            memory_budget: 64 << 20,
        })
        .unwrap();
        let key = warm(&rt, &memory, len);
        group.bench_with_input(BenchmarkId::new("memory", len), &key, |b, key| {
            b.iter(|| hit(&rt, &memory, key))
        });
        drop(memory);

        let dir = tempfile::tempdir().unwrap();
        let disk = ChunkCache::open(CacheOptions {
            dir: dir.path().to_path_buf(),
            disk_budget: 64 << 20,
            memory_budget: 0,
        })
        .unwrap();
        let key = warm(&rt, &disk, len);
        group.bench_with_input(BenchmarkId::new("disk", len), &key, |b, key| {
            b.iter(|| hit(&rt, &disk, key))
        });
    }
    group.finish();
}

criterion_group!(benches, cache_hit);
criterion_main!(benches);
