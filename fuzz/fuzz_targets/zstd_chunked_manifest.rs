//! zstd:chunked TOC JSON, footers and position annotations come from
//! untrusted blobs and manifests. Properties: parsing never panics; a TOC
//! that parses has every chunk's compressed span inside the blob before the
//! TOC (`offset <= end <= toc_offset`, `offset < end` unless it is a zeros
//! chunk) and every regular file's chunks tiling it exactly; a footer that
//! parses encodes back to the same bytes; a position that parses fits.
#![no_main]

use lazysnap::format::EntryKind;
use lazysnap::format::zstd_chunked::{MAX_TOC_BYTES, footer, parse_position, parse_toc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let toc_offset = 1 << 20;
    if let Ok(toc) = parse_toc(data, toc_offset) {
        for e in &toc.entries {
            let mut at = 0u64;
            for c in e.chunks() {
                assert!(c.offset <= c.end && c.end <= toc_offset);
                assert!(c.digest.is_some());
                assert_eq!(c.file_offset, at);
                assert!(c.size > 0);
                at += c.size;
            }
            if e.kind == EntryKind::Reg {
                assert_eq!(at, e.size);
            }
        }
    }
    let blob_size = data.len() as u64 + 4096;
    if let Ok(f) = footer::parse(data, blob_size) {
        let enc = f.encode();
        assert!(data.ends_with(&enc));
        assert!(f.manifest.end().is_some_and(|e| e <= blob_size - f.size()));
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(p) = parse_position(s)
    {
        assert!(p.end().is_some() && p.compressed_len <= MAX_TOC_BYTES);
    }
});
