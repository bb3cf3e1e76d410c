//! TOC JSON comes from untrusted blobs. Properties: parsing never panics; in
//! a TOC that parses, every chunk's compressed span lies before the TOC and
//! every regular file's chunks tile it exactly.
#![no_main]

use lazysnap::format::estargz::parse_toc;
use lazysnap::format::{Compression, EntryKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let toc_offset = 1 << 20;
    let Ok(toc) = parse_toc(data, toc_offset, Compression::Gzip) else { return };
    for e in &toc.entries {
        let mut at = 0;
        for c in e.chunks() {
            assert!(c.offset < c.end && c.end <= toc_offset);
            assert_eq!(c.file_offset, at);
            at += c.size;
        }
        if e.kind == EntryKind::Reg {
            assert_eq!(at, e.size);
        }
    }
});
