//! zstd:chunked written by a tool nobody here wrote: Debian's skopeo 1.9.3
//! (`skopeo copy --dest-compress-format zstd:chunked`) on a one-layer image
//! with a small file, an all-zero file, a 132 KiB file with a 4 KiB hole
//! (several rollsum chunks and a `zeros` chunk), an empty file, a symlink and
//! a hardlink: `tests/fixtures/zstd-chunked-small.zst`, its descriptor in
//! `zstd-chunked-small.json`. Annotations (the older `io.containers.*` keys),
//! the 40-byte footer, the checksum of the compressed TOC, and every chunk
//! decoded and verified equal the layer's tar payloads.

use std::collections::HashMap;
use std::io::Read;

use lazysnap::format::chunk::decode_verified;
use lazysnap::format::zstd_chunked::{self, FooterKind, ManifestRef, footer};
use lazysnap::format::{Compression, EntryKind};
use lazysnap::oci::Digest;

const BLOB: &[u8] = include_bytes!("fixtures/zstd-chunked-small.zst");
const DESCRIPTOR: &str = include_str!("fixtures/zstd-chunked-small.json");

#[derive(serde::Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
    annotations: HashMap<String, String>,
}

/// (name, bytes) of the regular files of the layer's tar, read with a plain
/// zstd decoder (what a non-lazy runtime does).
fn tar_files() -> Vec<(String, Vec<u8>)> {
    let tar = zstd::decode_all(BLOB).unwrap();
    let mut a = tar::Archive::new(&tar[..]);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = e.path().unwrap().to_string_lossy().to_string();
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        out.push((name, b));
    }
    out
}

#[test]
fn skopeo_zstd_chunked_layer_reads_back_chunk_by_chunk() {
    let d: Descriptor = serde_json::from_str(DESCRIPTOR).unwrap();
    assert_eq!(d.size, BLOB.len() as u64);
    assert_eq!(Digest::sha256_of(BLOB).to_string(), d.digest);
    let m = ManifestRef::from_annotations(&d.annotations)
        .unwrap()
        .expect("zstd:chunked annotations");
    // The footer agrees with the annotation.
    let f = footer::parse(&BLOB[BLOB.len() - 72..], d.size).unwrap();
    assert_eq!(f.kind, FooterKind::Legacy);
    assert_eq!(f.manifest, m.position);
    let span = &BLOB[m.position.offset as usize..m.position.end().unwrap() as usize];
    let toc = zstd_chunked::open_toc(span, &m.checksum, m.position.offset).unwrap();
    assert_eq!(toc.compression, Compression::Zstd);
    let names: Vec<&str> = toc.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "etc",
            "etc/hello",
            "etc/empty",
            "etc/link",
            "etc/hard",
            "data",
            "data/zeros",
            "data/sparse.bin"
        ]
    );
    assert_eq!(toc.entries[1].mtime, (1_700_000_000, 0));
    assert_eq!(toc.entries[3].kind, EntryKind::Symlink);
    assert_eq!(*toc.entries[4].link_name(), "etc/hello");

    let files = tar_files();
    let mut zeros_chunks = 0;
    for (name, want) in &files {
        let e = toc.entries.iter().find(|e| &e.name == name).unwrap();
        assert_eq!(e.size, want.len() as u64, "{name}");
        let mut got = Vec::new();
        for c in e.chunks() {
            assert!(c.offset <= c.end && c.end <= m.position.offset);
            if c.offset == c.end {
                zeros_chunks += 1;
            }
            let span = &BLOB[c.offset as usize..c.end as usize];
            got.extend(decode_verified(toc.compression, span, &c, name).unwrap());
        }
        assert_eq!(&got, want, "{name}");
        if !want.is_empty() {
            assert_eq!(e.digest(), Some(Digest::sha256_of(want)), "{name}");
        }
    }
    assert_eq!(files.len(), 4);
    let sparse = toc.entries.last().unwrap();
    assert!(sparse.chunk_count() > 2, "{:?}", sparse.chunks());
    assert_eq!(zeros_chunks, 1);
    // A flipped byte in a chunk's span is never served.
    let c = &sparse.chunk(0);
    let mut bad = BLOB[c.offset as usize..c.end as usize].to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    assert!(decode_verified(toc.compression, &bad, c, &sparse.name).is_err());
    // And a flipped byte in the compressed TOC fails the checksum.
    let mut bad = span.to_vec();
    bad[10] ^= 1;
    assert!(zstd_chunked::open_toc(&bad, &m.checksum, m.position.offset).is_err());
}
