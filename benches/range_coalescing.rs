//! Range coalescing: how fast a read that misses plans its fetch window
//! (`snapshot::window`): the layer's chunks put in blob order once
//! (`blob_order`, 100,000 one-chunk files), then, per miss, the missed chunk
//! and the chunks after it up to the window (`window_items`) for windows of
//! 0, 256 KiB and 1 MiB of compressed bytes (about 8 KiB per chunk here, so
//! up to ~128 chunks coalesced into one range). Prints misses/s through
//! criterion's throughput.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lazysnap::format::Compression;
use lazysnap::format::estargz::parse_toc;
use lazysnap::snapshot::window::{blob_order, window_items};

/// An eStargz TOC of `n` regular files of 16 KiB, each one chunk whose
/// compressed span is 8 KiB, every digest distinct.
fn toc_json(n: usize) -> Vec<u8> {
    let mut s = String::from("{\"version\":1,\"entries\":[");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        let digest = format!("sha256:{:064x}", i + 1);
        s.push_str(&format!(
            "{{\"name\":\"usr/lib/d{}/f{i}\",\"type\":\"reg\",\"size\":16384,\"mode\":420,\"modtime\":\"2023-11-14T22:13:20Z\",\"offset\":{},\"digest\":\"{digest}\",\"chunkDigest\":\"{digest}\"}}",
            i / 100,
            i * 8192
        ));
    }
    s.push_str("]}");
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let n = 100_000;
    let json = toc_json(n);
    let toc = parse_toc(&json, n as u64 * 8192, Compression::Gzip).expect("synthetic TOC");
    let mut g = c.benchmark_group("range_coalescing");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("blob_order_100k_chunks", |b| b.iter(|| blob_order(&toc)));
    let order = blob_order(&toc);
    g.throughput(Throughput::Elements(1));
    g.sample_size(50);
    for window in [0u64, 256 << 10, 1 << 20] {
        g.bench_with_input(
            BenchmarkId::new("window_of_a_miss", window),
            &window,
            |b, &w| {
                let mut i = 0usize;
                b.iter(|| {
                    // Misses spread over the layer, as a start's are.
                    i = (i + 7919) % n;
                    window_items(&toc, &order, i, 0, w)
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
