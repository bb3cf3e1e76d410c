//! zstd:chunked tar-split data (FORMATS.md §2.5): vbatts/tar-split's JSON
//! lines, zstd-compressed, spooled to a temporary file while the layer is
//! written (it is appended to the blob at the end, in a skippable frame).
//!
//! ```text
//! {"type":2,"payload":"<base64 raw tar bytes>","position":0}        segment: headers, padding
//! {"type":1,"name":"etc/hosts","size":12,"payload":"<base64 crc64>","position":1}   file body
//! {"type":1,"name_raw":"<base64>","payload":null,"position":2}      non-UTF-8 name, no body
//! ```
//!
//! Replaying segments and file bodies in order gives the tar stream back;
//! `payload` of a file is its CRC-64 (Go `crc64.ISO` table, big-endian),
//! which tar-split checks when reassembling.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use zstd::stream::raw::{Encoder as ZstdEncoder, InBuffer, Operation, OutBuffer};

use super::sink::{digest_of, zstd_encoder};
use crate::oci::Digest;

/// Largest segment line (tar-split splits trailing padding in 1 MiB pieces).
const SEGMENT_MAX: usize = 1 << 20;

/// CRC-64 with Go's `crc64.ISO` table (reflected polynomial `0xD800000000000000`).
pub(super) struct Crc64 {
    table: [u64; 256],
    crc: u64,
}

impl Crc64 {
    pub fn new() -> Self {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = i as u64;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xD800_0000_0000_0000
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        Crc64 { table, crc: 0 }
    }

    pub fn update(&mut self, data: &[u8]) {
        let mut c = !self.crc;
        for &b in data {
            c = self.table[((c as u8) ^ b) as usize] ^ (c >> 8);
        }
        self.crc = !c;
    }

    pub fn sum(&self) -> u64 {
        self.crc
    }
}

/// The tar-split stream being written.
pub(super) struct TarSplit {
    file: File,
    enc: ZstdEncoder<'static>,
    hash: Sha256,
    compressed: u64,
    uncompressed: u64,
    position: u64,
    segment: Vec<u8>,
    scratch: Vec<u8>,
}

/// A finished tar-split: the spool file (rewound) and its sizes.
pub(super) struct TarSplitDone {
    pub file: File,
    pub compressed: u64,
    pub uncompressed: u64,
    /// sha256 of the compressed bytes (the TOC's `tarSplitDigest`).
    pub digest: Digest,
}

impl TarSplit {
    /// A tar-split spooled to an unnamed file in `dir`, compressed at `level`.
    pub fn new(dir: &Path, level: i32) -> io::Result<Self> {
        Ok(TarSplit {
            file: tempfile::tempfile_in(dir)?,
            enc: zstd_encoder(level)?,
            hash: Sha256::new(),
            compressed: 0,
            uncompressed: 0,
            position: 0,
            segment: Vec::new(),
            scratch: vec![0; 64 << 10],
        })
    }

    /// Raw tar bytes (padding, header blocks, end-of-archive).
    pub fn segment(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.segment.extend_from_slice(bytes);
        if self.segment.len() >= SEGMENT_MAX {
            self.flush_segment()?;
        }
        Ok(())
    }

    /// An entry's body: `size` bytes with CRC-64 `crc` (`None` for no body).
    pub fn file(&mut self, name: &[u8], size: u64, crc: Option<u64>) -> io::Result<()> {
        self.flush_segment()?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut line = String::from("{\"type\":1,");
        match std::str::from_utf8(name) {
            Ok(n) => {
                line.push_str("\"name\":");
                line.push_str(&serde_json::to_string(n).map_err(io::Error::other)?);
            }
            Err(_) => {
                line.push_str("\"name_raw\":\"");
                line.push_str(&b64.encode(name));
                line.push('"');
            }
        }
        if size > 0 {
            line.push_str(&format!(",\"size\":{size}"));
        }
        match crc {
            Some(c) => line.push_str(&format!(",\"payload\":\"{}\"", b64.encode(c.to_be_bytes()))),
            None => line.push_str(",\"payload\":null"),
        }
        self.line(line)
    }

    /// Flushes the last segment and the compressor; rewinds the spool file.
    pub fn finish(mut self) -> io::Result<TarSplitDone> {
        self.flush_segment()?;
        loop {
            let mut out = OutBuffer::around(&mut self.scratch[..]);
            let left = self.enc.finish(&mut out, true)?;
            let n = out.pos();
            self.emit(n)?;
            if left == 0 {
                break;
            }
        }
        self.file.flush()?;
        self.file.seek(SeekFrom::Start(0))?;
        Ok(TarSplitDone {
            file: self.file,
            compressed: self.compressed,
            uncompressed: self.uncompressed,
            digest: digest_of(self.hash),
        })
    }

    fn flush_segment(&mut self) -> io::Result<()> {
        while !self.segment.is_empty() {
            let n = self.segment.len().min(SEGMENT_MAX);
            let rest = self.segment.split_off(n);
            let payload = base64::engine::general_purpose::STANDARD.encode(&self.segment);
            self.segment = rest;
            self.line(format!("{{\"type\":2,\"payload\":\"{payload}\""))?;
        }
        Ok(())
    }

    /// Ends `head` with the position and a newline and compresses it.
    fn line(&mut self, mut head: String) -> io::Result<()> {
        head.push_str(&format!(",\"position\":{}}}\n", self.position));
        self.position += 1;
        let data = head.as_bytes();
        self.uncompressed += data.len() as u64;
        let mut input = InBuffer::around(data);
        while input.pos() < data.len() {
            let mut out = OutBuffer::around(&mut self.scratch[..]);
            self.enc.run(&mut input, &mut out)?;
            let n = out.pos();
            self.emit(n)?;
        }
        Ok(())
    }

    fn emit(&mut self, n: usize) -> io::Result<()> {
        let bytes = &self.scratch[..n];
        self.file.write_all(bytes)?;
        self.hash.update(bytes);
        self.compressed += n as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn crc64_go_iso_check_value() {
        let mut c = Crc64::new();
        c.update(b"1234");
        c.update(b"56789");
        // CRC-64/GO-ISO check value.
        assert_eq!(c.sum(), 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn lines_replay_to_the_tar_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut ts = TarSplit::new(dir.path(), 3).unwrap();
        ts.segment(b"HDR1").unwrap();
        ts.file(b"a", 3, Some(7)).unwrap();
        ts.segment(b"pad").unwrap();
        ts.segment(b"HDR2").unwrap();
        ts.file(b"d\xff", 0, None).unwrap();
        ts.segment(&[0u8; 4]).unwrap();
        let mut done = ts.finish().unwrap();
        let mut z = Vec::new();
        done.file.read_to_end(&mut z).unwrap();
        assert_eq!(done.compressed, z.len() as u64);
        assert_eq!(done.digest, Digest::sha256_of(&z));
        let text = String::from_utf8(zstd::decode_all(&z[..]).unwrap()).unwrap();
        assert_eq!(done.uncompressed, text.len() as u64);
        assert_eq!(
            text,
            "{\"type\":2,\"payload\":\"SERSMQ==\",\"position\":0}\n\
             {\"type\":1,\"name\":\"a\",\"size\":3,\"payload\":\"AAAAAAAAAAc=\",\"position\":1}\n\
             {\"type\":2,\"payload\":\"cGFkSERSMg==\",\"position\":2}\n\
             {\"type\":1,\"name_raw\":\"ZP8=\",\"payload\":null,\"position\":3}\n\
             {\"type\":2,\"payload\":\"AAAAAA==\",\"position\":4}\n"
        );
    }
}
