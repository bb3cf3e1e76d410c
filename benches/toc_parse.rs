//! TOC parse rate: an eStargz TOC of 100,000 entries (a large image layer),
//! parsed into the format-neutral TOC; and containerd List filter parsing.
//! Prints entries/s through criterion's throughput.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lazysnap::format::Compression;
use lazysnap::format::estargz::parse_toc;
use lazysnap::snapshot::filter;

fn toc_json(n: usize) -> Vec<u8> {
    let mut s = String::from("{\"version\":1,\"entries\":[");
    let digest = format!("sha256:{}", "ab".repeat(32));
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        if i % 10 == 0 {
            s.push_str(&format!(
                "{{\"name\":\"usr/share/d{i}/\",\"type\":\"dir\",\"mode\":493,\"modtime\":\"2023-11-14T22:13:20Z\"}}"
            ));
        } else {
            s.push_str(&format!(
                "{{\"name\":\"usr/share/d{}/file-{i}.txt\",\"type\":\"reg\",\"size\":4096,\"mode\":420,\"modtime\":\"2023-11-14T22:13:20Z\",\"offset\":{},\"digest\":\"{digest}\",\"chunkDigest\":\"{digest}\"}}",
                i / 10 * 10,
                (i + 1) * 1000
            ));
        }
    }
    s.push_str("]}");
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let n = 100_000;
    let json = toc_json(n);
    let mut g = c.benchmark_group("estargz_toc");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.bench_function("parse_100k_entries", |b| {
        b.iter(|| parse_toc(&json, (n as u64 + 10) * 1000, Compression::Gzip).unwrap())
    });
    g.finish();
    let f = r#"labels."containerd.io/snapshot.ref"==sha256:abcdef,parent=="default/2/sha256:p""#;
    c.bench_function("list_filter_parse", |b| {
        b.iter(|| filter::parse(f).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
