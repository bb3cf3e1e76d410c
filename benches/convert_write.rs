//! Layer writer rate: `write_layer` over a synthetic ~50 MB layer tar of
//! 1,000 files (1 KiB to 96 KiB, text-like) in 25 directories, written as
//! eStargz at the default gzip level 9 and at level 6, and as zstd:chunked
//! at its default level 10, with members compressed on the calling thread
//! and on one worker per CPU; throughput in bytes/s of uncompressed input.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lazysnap::format::writer::{LayerFormat, WriterOptions, write_layer};

fn layer() -> Vec<u8> {
    let words: Vec<&[u8]> = [
        &b"lazy "[..],
        b"snapshot ",
        b"layer ",
        b"chunk ",
        b"fuse\n",
        b"0x7f3a ",
        b"registry ",
        b"digest ",
        b"toc ",
        b"{\"k\": 12} ",
    ]
    .to_vec();
    let mut b = tar::Builder::new(Vec::new());
    let mut x: u32 = 7;
    for d in 0..25 {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, format!("usr/lib/d{d}/"), &[][..])
            .unwrap();
        for f in 0..40 {
            let len = 1024 + (d * 40 + f) * 97 % (95 * 1024);
            let mut data = Vec::with_capacity(len + 16);
            while data.len() < len {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                data.extend_from_slice(words[(x >> 16) as usize % words.len()]);
                if x.is_multiple_of(7) {
                    data.extend_from_slice(&x.to_le_bytes());
                }
            }
            data.truncate(len);
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(len as u64);
            b.append_data(&mut h, format!("usr/lib/d{d}/file-{f}.so"), &data[..])
                .unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn bench(c: &mut Criterion) {
    let tar = layer();
    let spool = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("convert_write");
    g.throughput(Throughput::Bytes(tar.len() as u64));
    g.sample_size(10);
    // threads 1: members compressed on the calling thread; 0: one worker per CPU.
    let cases = [
        ("estargz_level9_1thread", LayerFormat::Estargz, 9, 1),
        ("estargz_level9_all_cpus", LayerFormat::Estargz, 9, 0),
        ("estargz_level6_all_cpus", LayerFormat::Estargz, 6, 0),
        (
            "zstd_chunked_level10_1thread",
            LayerFormat::ZstdChunked,
            10,
            1,
        ),
        (
            "zstd_chunked_level10_all_cpus",
            LayerFormat::ZstdChunked,
            10,
            0,
        ),
    ];
    for (name, format, level, threads) in cases {
        let mut opts = WriterOptions::new(format);
        opts.level = level;
        opts.threads = threads;
        g.bench_function(name, |b| {
            b.iter(|| write_layer(&tar[..], std::io::sink(), &opts, spool.path()).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
