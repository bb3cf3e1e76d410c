//! Footers come from untrusted blobs. Properties: parsing never panics; a
//! footer that parses points inside the blob; encode → parse is the identity.
#![no_main]

use lazysnap::format::estargz::footer::{encode_gzip, encode_zstd, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let blob_size = data.len() as u64 + u64::from(data.first().copied().unwrap_or(0));
    if let Ok(f) = parse(data, blob_size) {
        let (start, end) = f.toc_range(blob_size);
        assert!(start <= end && end <= blob_size);
    }
    if data.len() >= 24 {
        let n = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap());
        let (off, clen, ulen) = (n(0) >> 8, n(8) >> 40, n(16));
        let size = off.saturating_add(clen).saturating_add(1000);
        let f = parse(&encode_gzip(off), size).unwrap();
        assert_eq!(f.toc_offset, off);
        let f = parse(&encode_zstd(off, clen, ulen), size).unwrap();
        assert_eq!((f.toc_offset, f.toc_compressed_len, f.toc_uncompressed_len), (off, clen, ulen));
    }
});
