//! Tests of [`super::Sink`]: member layout, marks, and blobs that do not
//! depend on the thread count.

use std::io::Read;

use super::*;

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn gzip_members_are_deterministic_and_decode_as_one_stream() {
    let mut s = Sink::new(Vec::new(), Compression::Gzip, 9, 1, 1 << 20).unwrap();
    s.write(b"hello ").unwrap();
    s.close_member().unwrap();
    let second = s.mark();
    s.write(b"world").unwrap();
    s.zeros(3).unwrap();
    let end = s.pos().unwrap() as usize; // the open member is not written yet
    assert_eq!((second, s.resolve(second)), (1, end as u64));
    let (blob, t) = s.finish().unwrap();
    assert_eq!(&blob[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 0xff]);
    assert_eq!(
        &blob[end - 4..end],
        &[6, 0, 0, 0],
        "isize of the first member"
    );
    assert_eq!(&blob[end..end + 2], &[0x1f, 0x8b]);
    assert_eq!(gunzip(&blob), b"hello world\0\0\0");
    assert_eq!(t.diff_id, Digest::sha256_of(b"hello world\0\0\0"));
    assert_eq!((t.size, t.uncompressed_size), (blob.len() as u64, 14));
    assert_eq!(t.digest, Digest::sha256_of(&blob));
    // The second member alone decodes to its own bytes.
    assert_eq!(gunzip(&blob[end..]), b"world\0\0\0");
}

#[test]
fn zstd_frames_and_raw_bytes() {
    let mut s = Sink::new(Vec::new(), Compression::Zstd, 3, 2, 1 << 20).unwrap();
    s.write(b"abc").unwrap();
    s.close_member().unwrap();
    s.close_member().unwrap(); // nothing open: no empty frame
    let second = s.mark();
    s.write(b"def").unwrap();
    s.write_raw(&skippable(b"meta").unwrap()).unwrap();
    let at = s.resolve(second) as usize;
    assert_eq!(s.resolve(2), s.pos().unwrap() - 12, "after the last frame");
    let (blob, t) = s.finish().unwrap();
    assert_eq!(&blob[at..at + 4], &[0x28, 0xb5, 0x2f, 0xfd]);
    assert_eq!(zstd::decode_all(&blob[..]).unwrap(), b"abcdef");
    assert_eq!(zstd::decode_all(&blob[at..]).unwrap(), b"def");
    assert!(blob.ends_with(&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, b'm', b'e', b't', b'a']));
    assert_eq!(t.uncompressed_size, 6);
    assert_eq!(
        zstd::decode_all(&zstd_frame(b"toc", 3).unwrap()[..]).unwrap(),
        b"toc"
    );
}

#[test]
fn bad_levels_are_refused() {
    assert!(Sink::new(Vec::new(), Compression::Gzip, 10, 1, 1).is_err());
    assert!(Sink::new(Vec::new(), Compression::Zstd, 99, 2, 1).is_err());
}

/// Text-like bytes.
fn text(n: usize, seed: u32) -> Vec<u8> {
    let words: [&[u8]; 6] = [b"layer ", b"chunk ", b"toc\n", b"0x7f ", b"lazy ", b"{}"];
    let mut x = seed;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        v.extend_from_slice(words[(x >> 16) as usize % words.len()]);
        if x.is_multiple_of(5) {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    v.truncate(n);
    v
}

/// Writes members of many sizes (some past the 300 KiB member limit, so
/// streamed; fed in odd pieces) and a raw block; returns the blob and, per
/// member, its resolved offset and input.
fn run(compression: Compression, threads: usize) -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    let sizes = [
        1usize,
        512,
        70_000,
        3,
        1 << 20,
        200_000,
        900_000,
        65_536,
        131_072,
        5,
        2_500_000,
        10,
    ];
    let mut s = Sink::new(Vec::new(), compression, 6, threads, 300 << 10).unwrap();
    let mut members = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let data = text(n, i as u32);
        let mark = s.mark();
        for piece in data.chunks(7_777 + i * 1_000) {
            s.write(piece).unwrap();
        }
        s.close_member().unwrap();
        members.push((mark, data));
    }
    s.pos().unwrap();
    let members: Vec<(u64, Vec<u8>)> = members
        .into_iter()
        .map(|(m, d)| (s.resolve(m), d))
        .collect();
    s.write_raw(b"RAW").unwrap();
    let (blob, t) = s.finish().unwrap();
    assert_eq!(t.size, blob.len() as u64);
    (blob, members)
}

#[test]
fn blobs_do_not_depend_on_the_thread_count() {
    for compression in [Compression::Gzip, Compression::Zstd] {
        let (one, members) = run(compression, 1);
        for threads in [2, 3] {
            let (blob, m) = run(compression, threads);
            assert!(blob == one, "{compression:?}: {threads} threads differ");
            assert_eq!(
                m.iter().map(|x| x.0).collect::<Vec<_>>(),
                members.iter().map(|x| x.0).collect::<Vec<_>>()
            );
        }
        // Each member decodes alone at its offset to its own bytes.
        let ends: Vec<u64> = members
            .iter()
            .skip(1)
            .map(|m| m.0)
            .chain([one.len() as u64 - 3])
            .collect();
        for ((start, data), end) in members.iter().zip(ends) {
            let span = &one[*start as usize..end as usize];
            let got = match compression {
                Compression::Gzip => gunzip(span),
                Compression::Zstd => zstd::decode_all(span).unwrap(),
            };
            assert!(got == *data, "{compression:?} member at {start}");
        }
        assert!(one.ends_with(b"RAW"));
    }
}
