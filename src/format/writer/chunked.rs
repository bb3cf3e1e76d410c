//! zstd:chunked (FORMATS.md §2, containers/storage `pkg/chunked/compressor`):
//! content-defined chunks, the TOC ("manifest", §2.4), and the end of the
//! blob: TOC skippable frame, tar-split skippable frame, 64-byte footer
//! (§2.2), and the descriptor annotations under both key sets (§2.3).
//!
//! Chunking: bytes are rolled through [`RollSum`]; a data chunk ends after
//! a byte where it splits, or when it reaches the chunk size ceiling (an
//! addition: containers/storage has no ceiling, readers accept any cut).
//! Zero runs of at least [`HOLE_MIN`] bytes are their own `zeros` chunks
//! (still written, compressed, so the tar stream stays whole); shorter runs
//! are data. Every chunk is its own zstd frame; the header frame after a
//! payload starts fresh.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::build::{Annotations, ChunkRec, Payload, io_err};
use super::entry::{Kind, Parsed, lossy};
use super::estargz::too_large;
use super::json::{base64_values, is_zero, rfc3339};
use super::rollsum::{HOLE_MIN, RollSum};
use super::sink::{Sink, digest_of, skippable, zstd_frame};
use super::tarsplit::TarSplit;
use crate::format::FormatError;
use crate::format::zstd_chunked::annotations::{
    LEGACY_MANIFEST_CHECKSUM, LEGACY_MANIFEST_POSITION, MANIFEST_CHECKSUM, MANIFEST_POSITION,
    TARSPLIT_POSITION,
};
use crate::format::zstd_chunked::{Footer, FooterKind, Position};
use crate::oci::Digest;

/// Obsolete (FORMATS.md §2.3: replaced by the TOC's `tarSplitDigest`) but
/// still written: containers/storage before 2023 read the tar-split checksum
/// from this annotation and fails without it when `tarsplit-position` is set.
pub(super) const TARSPLIT_CHECKSUM: &str = "io.github.containers.zstd-chunked.tarsplit-checksum";

/// One `FileMetadata`, fields in containers/storage order.
#[derive(Serialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct TocEntry {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    link_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    mode: u32,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    #[serde(skip_serializing_if = "is_zero")]
    uid: u64,
    #[serde(skip_serializing_if = "is_zero")]
    gid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    modtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accesstime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changetime: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    dev_major: u32,
    #[serde(skip_serializing_if = "is_zero")]
    dev_minor: u32,
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "base64_values"
    )]
    xattrs: BTreeMap<String, Vec<u8>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    digest: String,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    end_offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_size: u64,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_offset: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    chunk_digest: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    chunk_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JToc<'a> {
    version: u32,
    entries: &'a [TocEntry],
    tar_split_digest: String,
}

fn time(t: (i64, u32)) -> Option<String> {
    rfc3339(t.0, Some(t.1))
}

/// The TOC being collected.
#[derive(Default)]
pub(super) struct Toc {
    entries: Vec<TocEntry>,
}

impl Toc {
    /// Adds the entries of `p` (`digest` for non-empty files; `end` is the
    /// blob offset after its last payload frame).
    pub fn push(&mut self, p: &Parsed, chunks: &[ChunkRec], digest: Option<&Digest>, end: u64) {
        let name = lossy(&p.name);
        let mut e = TocEntry {
            kind: p.kind.toc_type(),
            name: name.clone(),
            mode: p.mode,
            uid: p.uid,
            gid: p.gid,
            modtime: time(p.mtime),
            accesstime: p.atime.and_then(time),
            changetime: p.ctime.and_then(time),
            xattrs: p.xattrs.iter().cloned().collect(),
            ..TocEntry::default()
        };
        // Device numbers of every entry, as Go's archive/tar reports them
        // (containers/storage compares the TOC with the tar-split headers).
        (e.dev_major, e.dev_minor) = p.dev;
        match p.kind {
            Kind::Reg => e.size = p.size,
            Kind::Symlink | Kind::Hardlink => e.link_name = lossy(&p.link),
            _ => {}
        }
        if let (Some(d), Some(first)) = (digest, chunks.first()) {
            e.digest = d.to_string();
            e.offset = first.offset;
            e.end_offset = end;
        }
        if chunks.len() <= 1 {
            self.entries.push(e);
            return;
        }
        for (i, c) in chunks.iter().enumerate() {
            if i > 0 {
                e = TocEntry {
                    kind: "chunk",
                    name: name.clone(),
                    offset: c.offset,
                    chunk_offset: c.file_offset,
                    ..TocEntry::default()
                };
            }
            e.chunk_size = c.size;
            e.chunk_digest = c.digest.to_string();
            e.chunk_type = if c.zeros { "zeros" } else { "" };
            self.entries.push(std::mem::take(&mut e));
        }
    }

    /// Ends the blob after the tar stream: TOC, tar-split, footer. Returns
    /// the manifest checksum (sha256 of the compressed TOC) and the annotations.
    pub fn finish<W: Write>(
        mut self,
        sink: &mut Sink<W>,
        tar_split: TarSplit,
        level: i32,
    ) -> Result<(Digest, Annotations), FormatError> {
        let w = || io_err("write the zstd:chunked TOC");
        sink.close_member().map_err(w())?;
        let manifest_at = sink.pos().map_err(w())? + 8;
        for e in &mut self.entries {
            e.offset = sink.resolve(e.offset);
            if e.end_offset != 0 {
                e.end_offset = sink.resolve(e.end_offset);
            }
        }
        let mut ts = tar_split.finish().map_err(io_err("finish the tar-split"))?;
        let json = serde_json::to_vec(&JToc {
            version: 1,
            entries: &self.entries,
            tar_split_digest: ts.digest.to_string(),
        })
        .expect("TOC structs serialize to JSON");
        let compressed = zstd_frame(&json, level).map_err(w())?;
        let manifest = Position {
            offset: manifest_at,
            compressed_len: compressed.len() as u64,
            uncompressed_len: json.len() as u64,
        };
        let frame = skippable(&compressed).map_err(|_| too_large(compressed.len()))?;
        sink.write_raw(&frame).map_err(w())?;
        let ts_len = u32::try_from(ts.compressed).map_err(|_| FormatError::TooLarge {
            what: "compressed tar-split",
            size: ts.compressed,
            max: u64::from(u32::MAX),
        })?;
        let mut head = vec![0x50, 0x2a, 0x4d, 0x18];
        head.extend_from_slice(&ts_len.to_le_bytes());
        sink.write_raw(&head).map_err(w())?;
        let tar_split = Position {
            offset: sink.pos().map_err(w())?,
            compressed_len: ts.compressed,
            uncompressed_len: ts.uncompressed,
        };
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = ts
                .file
                .read(&mut buf)
                .map_err(io_err("read the tar-split spool"))?;
            if n == 0 {
                break;
            }
            sink.write_raw(&buf[..n]).map_err(w())?;
        }
        if sink.pos().map_err(w())? != tar_split.offset + tar_split.compressed_len {
            return Err(io_err("copy the tar-split")(io::Error::other(
                "spool file changed size",
            )));
        }
        let footer = Footer {
            kind: FooterKind::Current,
            manifest,
            tar_split: Some(tar_split),
        };
        sink.write_raw(&footer.encode()).map_err(w())?;

        let checksum = Digest::sha256_of(&compressed);
        let position = format!(
            "{}:{}:{}:1",
            manifest.offset, manifest.compressed_len, manifest.uncompressed_len
        );
        let mut ann = Annotations::new();
        for key in [MANIFEST_CHECKSUM, LEGACY_MANIFEST_CHECKSUM] {
            ann.insert(key.to_string(), checksum.to_string());
        }
        for key in [MANIFEST_POSITION, LEGACY_MANIFEST_POSITION] {
            ann.insert(key.to_string(), position.clone());
        }
        ann.insert(
            TARSPLIT_POSITION.to_string(),
            format!(
                "{}:{}:{}",
                tar_split.offset, tar_split.compressed_len, tar_split.uncompressed_len
            ),
        );
        ann.insert(TARSPLIT_CHECKSUM.to_string(), ts.digest.to_string());
        Ok((checksum, ann))
    }
}

/// The chunk being written.
struct Open {
    offset: u64,
    file_offset: u64,
    size: u64,
    hash: Sha256,
}

/// Chunk state of one file.
struct Chunker<'s, W: Write> {
    sink: &'s mut Sink<W>,
    max: u64,
    rs: RollSum,
    at: u64,
    open: Option<Open>,
    chunks: Vec<ChunkRec>,
}

impl<W: Write> Chunker<'_, W> {
    fn write(&mut self, data: &[u8]) -> Result<(), FormatError> {
        if data.is_empty() {
            return Ok(());
        }
        if self.open.is_none() {
            self.sink
                .close_member()
                .map_err(io_err("write the layer"))?;
            self.open = Some(Open {
                offset: self.sink.mark(),
                file_offset: self.at,
                size: 0,
                hash: Sha256::new(),
            });
        }
        let o = self.open.as_mut().expect("opened above");
        o.hash.update(data);
        o.size += data.len() as u64;
        self.at += data.len() as u64;
        self.sink.write(data).map_err(io_err("write the layer"))
    }

    fn end(&mut self, zeros: bool) {
        if let Some(o) = self.open.take() {
            self.chunks.push(ChunkRec {
                offset: o.offset,
                file_offset: o.file_offset,
                size: o.size,
                digest: digest_of(o.hash),
                zeros,
            });
        }
    }

    /// Data bytes: rolled one by one, cut where the checksum splits or the
    /// chunk is full.
    fn data(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let mut start = 0;
        let mut size = self.open.as_ref().map_or(0, |o| o.size);
        for (i, &b) in bytes.iter().enumerate() {
            self.rs.roll(b);
            size += 1;
            if self.rs.on_split() || size == self.max {
                self.write(&bytes[start..=i])?;
                self.end(false);
                start = i + 1;
                size = 0;
            }
        }
        self.write(&bytes[start..])
    }

    /// A run of `n` zeros just read.
    fn zeros(&mut self, n: u64) -> Result<(), FormatError> {
        const Z: [u8; 4096] = [0; 4096];
        if n < HOLE_MIN {
            return self.data(&Z[..n as usize]);
        }
        self.end(false);
        self.rs.roll_zeros(n);
        let mut left = n;
        while left > 0 {
            let piece = left.min(self.max);
            let mut k = piece;
            while k > 0 {
                let m = k.min(Z.len() as u64) as usize;
                self.write(&Z[..m])?;
                k -= m as u64;
            }
            self.end(true);
            left -= piece;
        }
        Ok(())
    }
}

/// Writes a regular file's payload as content-defined chunks, each in its
/// own frame; returns them. The caller closes the last frame.
pub(super) fn payload<W: Write>(
    sink: &mut Sink<W>,
    payload: &mut Payload<'_>,
    max: u64,
    buf: &mut [u8],
) -> Result<Vec<ChunkRec>, FormatError> {
    let mut c = Chunker {
        sink,
        max,
        rs: RollSum::new(),
        at: 0,
        open: None,
        chunks: Vec::new(),
    };
    let mut run = 0u64; // zeros seen, not yet written
    while payload.left() > 0 {
        let data = payload.read(buf, u64::MAX)?;
        let mut i = 0;
        while i < data.len() {
            if data[i] == 0 {
                let j = data[i..]
                    .iter()
                    .position(|&b| b != 0)
                    .map_or(data.len(), |k| i + k);
                run += (j - i) as u64;
                i = j;
                continue;
            }
            if run > 0 {
                c.zeros(run)?;
                run = 0;
            }
            let j = data[i..]
                .iter()
                .position(|&b| b == 0)
                .map_or(data.len(), |k| i + k);
            c.data(&data[i..j])?;
            i = j;
        }
    }
    if run > 0 {
        c.zeros(run)?;
    }
    c.end(false);
    Ok(c.chunks)
}
