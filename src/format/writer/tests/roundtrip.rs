//! Every format: our readers, our tar reader and determinism over the sample
//! layer (all entry types, binary xattrs, a 150-byte and a non-UTF-8 name,
//! duplicates, a file of many chunks).

use super::*;
use crate::format::Entry;
use crate::format::writer::Landmark;

fn expected_kind(k: u8) -> EntryKind {
    match k {
        b'5' => EntryKind::Dir,
        b'0' => EntryKind::Reg,
        b'1' => EntryKind::Hardlink,
        b'2' => EntryKind::Symlink,
        b'3' => EntryKind::Char,
        b'4' => EntryKind::Block,
        b'6' => EntryKind::Fifo,
        k => panic!("type {k}"),
    }
}

/// Checks one TOC entry against the input tar entry it came from.
fn same(toc: &Entry, t: &TarEntry) {
    let clean = crate::format::toc::clean_name(&String::from_utf8_lossy(&t.name)).unwrap();
    assert_eq!(toc.name, clean);
    assert_eq!(toc.kind, expected_kind(t.kind), "{clean}");
    assert_eq!(toc.mode, t.mode & 0o7777, "{clean}");
    assert_eq!(toc.mtime, (t.mtime as i64, 0), "{clean}");
    assert_eq!((toc.dev_major(), toc.dev_minor()), t.dev, "{clean}");
    let xattrs: Vec<(Vec<u8>, Vec<u8>)> = toc
        .xattrs()
        .iter()
        .map(|(k, v)| ([&b"SCHILY.xattr."[..], k.as_bytes()].concat(), v.clone()))
        .collect();
    let mut want = t.xattrs.clone();
    want.sort();
    assert_eq!(xattrs, want, "{clean}");
    match toc.kind {
        EntryKind::Symlink => assert_eq!(toc.link_name().as_bytes(), &t.link[..]),
        EntryKind::Hardlink => assert_eq!(toc.link_name().as_bytes(), &t.link[..]),
        EntryKind::Reg => assert_eq!(toc.size, t.data.len() as u64),
        _ => {}
    }
}

#[test]
fn every_format_round_trips_through_readers_and_tar() {
    let (tar, big) = sample_tar();
    let input = untar(&tar);
    assert_eq!(input.len(), 15);
    for format in FORMATS {
        let mut opts = WriterOptions::new(format);
        opts.chunk_size = 16 << 10;
        let (blob, w) = write(&tar, &opts);
        let rb = read_back(format, &blob, &w);
        assert_eq!(w.media_type, format.media_type());

        // (1) Our readers: the TOC lists the input entries in order, every
        // chunk verifies, and the bytes are the input's.
        let mut toc = rb.toc.entries.iter().collect::<Vec<_>>();
        if format == LayerFormat::ZstdChunked {
            assert_eq!(w.landmark, Landmark::None);
        } else {
            assert_eq!(w.landmark, Landmark::NoPrefetch);
            let lm = toc.remove(0);
            assert_eq!((lm.name.as_str(), lm.size), (".no.prefetch.landmark", 1));
            assert_eq!(rb.files[".no.prefetch.landmark"], [0x0f]);
        }
        assert_eq!(toc.len(), input.len(), "{format}");
        for (e, t) in toc.iter().zip(&input) {
            same(e, t);
        }
        assert_eq!(w.entries, rb.toc.entries.len());
        assert_eq!(rb.files["d/big"], big, "{format}");
        assert_eq!(rb.files["d/hello"], b"hello, world\n");
        assert_eq!(rb.files["d/empty"], b"");
        assert_eq!(rb.files[&format!("d/{}", "n".repeat(148))], b"long");
        assert_eq!(rb.files["d/caf\u{fffd}"], b"latin-1 name");
        // Duplicates: both kept in order; the map holds the last.
        assert_eq!(toc.iter().filter(|e| e.name == "dup").count(), 2);
        assert_eq!(rb.files["dup"], b"two");
        let big_chunks: Vec<_> = toc
            .iter()
            .find(|e| e.name == "d/big")
            .unwrap()
            .chunks()
            .collect();
        let total_chunks: usize = rb.toc.entries.iter().map(|e| e.chunk_count()).sum();
        assert_eq!(w.chunks, total_chunks);
        match format {
            // 200,000 bytes in 16 KiB chunks: 12 full, one of 3,392.
            LayerFormat::Estargz | LayerFormat::EstargzZstd => {
                assert_eq!(big_chunks.len(), 13);
                assert_eq!(big_chunks[12].size, 200_000 - 12 * 16_384);
            }
            // Content-defined under a 16 KiB ceiling, with the 3,000-zero run
            // as a chunk of its own (no bytes to fetch).
            LayerFormat::ZstdChunked => {
                assert!(big_chunks.len() >= 13, "{}", big_chunks.len());
                assert!(big_chunks.iter().all(|c| c.size <= 16 << 10));
                let z = big_chunks.iter().find(|c| c.offset == c.end).unwrap();
                assert_eq!((z.file_offset, z.size), (200_000 / 3, 3000));
            }
        }

        // (2) The whole blob as one stream is the same tar, plus eStargz's
        // landmark and TOC entries.
        let out = untar(&rb.stream);
        match format {
            LayerFormat::Estargz => {
                assert_eq!(out.len(), input.len() + 2);
                assert_eq!(out[0].name, b".no.prefetch.landmark");
                assert_eq!(out[0].data, [0x0f]);
                assert_eq!(&out[1..=input.len()], &input[..]);
                let last = out.last().unwrap();
                assert_eq!(last.name, b"stargz.index.json");
                assert_eq!(Digest::sha256_of(&last.data), w.toc_digest);
                assert!(rb.stream.ends_with(&[0u8; 1024]));
            }
            LayerFormat::EstargzZstd => {
                assert_eq!(out.len(), input.len() + 1);
                assert_eq!(&out[1..], &input[..]);
                assert!(rb.stream.ends_with(&[0u8; 1024]));
            }
            LayerFormat::ZstdChunked => {
                // Byte for byte the input: same DiffID.
                assert!(
                    rb.stream == tar,
                    "zstd:chunked stream differs from the input"
                );
                replay_tar_split(&blob, &w, &rb.stream);
            }
        }

        // (3) Deterministic, whatever the thread count (default: per CPU),
        // reordered too.
        for threads in [1, 3] {
            let (blob2, w2) = write(
                &tar,
                &WriterOptions {
                    threads,
                    ..opts.clone()
                },
            );
            assert!(blob == blob2, "{format}: {threads} threads differ");
            assert_eq!(w, w2);
        }
        let mut reordered = WriterOptions {
            threads: 1,
            ..opts.clone()
        };
        reordered.prioritized = Some(vec!["d/big".to_string()]);
        let (one, w1) = write(&tar, &reordered);
        reordered.threads = 4;
        let (four, w4) = write(&tar, &reordered);
        assert!(one == four, "{format}: reordered output depends on threads");
        assert_eq!(w1, w4);
    }
}

#[test]
fn annotations_per_format() {
    let (tar, _) = sample_tar();
    let keys = |f: LayerFormat| {
        let (_, w) = write(&tar, &WriterOptions::new(f));
        w.annotations.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(
        keys(LayerFormat::Estargz),
        [
            "containerd.io/snapshot/stargz/toc.digest",
            "io.containers.estargz.uncompressed-size"
        ]
    );
    assert_eq!(
        keys(LayerFormat::EstargzZstd),
        [
            "containerd.io/snapshot/stargz/toc.digest",
            "io.containers.estargz.uncompressed-size",
            "io.containers.zstd-chunked.manifest-checksum",
            "io.containers.zstd-chunked.manifest-position",
        ]
    );
    let (blob, w) = write(&tar, &WriterOptions::new(LayerFormat::ZstdChunked));
    let a = &w.annotations;
    assert_eq!(
        a.keys().cloned().collect::<Vec<_>>(),
        [
            "io.containers.zstd-chunked.manifest-checksum",
            "io.containers.zstd-chunked.manifest-position",
            "io.github.containers.zstd-chunked.manifest-checksum",
            "io.github.containers.zstd-chunked.manifest-position",
            "io.github.containers.zstd-chunked.tarsplit-checksum",
            "io.github.containers.zstd-chunked.tarsplit-position",
        ]
    );
    assert_eq!(
        a["io.containers.zstd-chunked.manifest-checksum"],
        a["io.github.containers.zstd-chunked.manifest-checksum"]
    );
    // The TOC names its tar-split by digest; the blob ends with the
    // 64-byte footer in its skippable frame.
    let pos: Vec<usize> = a["io.github.containers.zstd-chunked.manifest-position"]
        .split(':')
        .map(|x| x.parse().unwrap())
        .collect();
    let json = zstd::decode_all(&blob[pos[0]..pos[0] + pos[1]]).unwrap();
    let j: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        j["tarSplitDigest"].as_str().unwrap(),
        a["io.github.containers.zstd-chunked.tarsplit-checksum"]
    );
    assert_eq!(
        &blob[blob.len() - 72..blob.len() - 64],
        &[0x50, 0x2a, 0x4d, 0x18, 64, 0, 0, 0]
    );
    assert!(blob.ends_with(b"GNUlInUx"));
}

#[test]
fn toc_json_field_order_matches_the_go_writers() {
    let mut t = TarB::new();
    t.file(b"a", b"abc");
    let tar = t.finish();
    let (blob, w) = write(&tar, &WriterOptions::new(LayerFormat::Estargz));
    let rb = read_back(LayerFormat::Estargz, &blob, &w);
    let json = untar(&rb.stream).pop().unwrap().data;
    let text = String::from_utf8(json).unwrap();
    let d = Digest::sha256_of(b"abc");
    let entry = format!(
        "\t\t{{\n\t\t\t\"name\": \"a\",\n\t\t\t\"type\": \"reg\",\n\t\t\t\"size\": 3,\n\
         \t\t\t\"modtime\": \"2023-11-14T22:13:20Z\",\n\t\t\t\"mode\": 420,\n\
         \t\t\t\"userName\": \"root\",\n\t\t\t\"groupName\": \"root\",\n\
         \t\t\t\"offset\": {},\n\t\t\t\"digest\": \"{d}\",\n\t\t\t\"chunkDigest\": \"{d}\"\n\t\t}}",
        rb.toc.entries[1].chunk(0).offset
    );
    assert!(
        text.starts_with("{\n\t\"version\": 1,\n\t\"entries\": [\n"),
        "{text}"
    );
    assert!(text.contains(&entry), "{text}");

    let (blob, w) = write(&tar, &WriterOptions::new(LayerFormat::ZstdChunked));
    let p: Vec<usize> = w.annotations["io.github.containers.zstd-chunked.manifest-position"]
        .split(':')
        .map(|x| x.parse().unwrap())
        .collect();
    let text = String::from_utf8(zstd::decode_all(&blob[p[0]..p[0] + p[1]]).unwrap()).unwrap();
    let toc = zstd_chunked::parse_toc(text.as_bytes(), p[0] as u64).unwrap();
    let c = &toc.entries[0].chunk(0);
    assert_eq!(
        text,
        format!(
            "{{\"version\":1,\"entries\":[{{\"type\":\"reg\",\"name\":\"a\",\"mode\":420,\"size\":3,\
             \"modtime\":\"2023-11-14T22:13:20Z\",\"digest\":\"{d}\",\"offset\":{},\"endOffset\":{}}}],\
             \"tarSplitDigest\":\"{}\"}}",
            c.offset, c.end, w.annotations["io.github.containers.zstd-chunked.tarsplit-checksum"]
        )
    );
}

#[test]
fn a_file_of_exactly_one_chunk_and_chunk_sizes() {
    // Go sets chunkSize only while a whole chunk remains: a file of exactly
    // chunk_size bytes has it, the short last chunk has none.
    let mut t = TarB::new();
    t.file(b"exact", &[7u8; 4096]).file(b"more", &[9u8; 4097]);
    let tar = t.finish();
    let mut opts = WriterOptions::new(LayerFormat::Estargz);
    opts.chunk_size = 4096;
    let (blob, w) = write(&tar, &opts);
    let rb = read_back(LayerFormat::Estargz, &blob, &w);
    let json = String::from_utf8(untar(&rb.stream).pop().unwrap().data).unwrap();
    assert_eq!(json.matches("\"chunkSize\": 4096").count(), 2, "{json}");
    assert_eq!(json.matches("\"type\": \"chunk\"").count(), 1);
    assert_eq!(rb.files["more"], [9u8; 4097]);
}

#[test]
fn gnu_long_names_and_links_pass_through_raw() {
    // The tar crate writes GNU `L`/`K` records for long names in GNU headers.
    let long_dir = "l".repeat(120);
    let target = format!("{long_dir}/{}", "t".repeat(90));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o640);
    h.set_mtime(MTIME);
    b.append_data(&mut h, &target, &b"abc"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_mtime(MTIME);
    b.append_link(&mut h, "s", &target).unwrap();
    let tar = b.into_inner().unwrap();
    assert!(tar.windows(13).any(|w| w == b"././@LongLink"));
    for format in FORMATS {
        let (blob, w) = write(&tar, &WriterOptions::new(format));
        let rb = read_back(format, &blob, &w);
        assert_eq!(rb.files[&target], b"abc");
        let s = rb.toc.entries.iter().find(|e| e.name == "s").unwrap();
        assert_eq!(*s.link_name(), target);
        let out = untar(&rb.stream);
        let i = usize::from(format != LayerFormat::ZstdChunked);
        assert_eq!(&out[i..i + 2], &untar(&tar)[..], "{format}");
        if format == LayerFormat::ZstdChunked {
            assert!(rb.stream == tar);
            replay_tar_split(&blob, &w, &rb.stream);
        }
    }
}
