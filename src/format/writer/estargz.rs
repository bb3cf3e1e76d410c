//! The eStargz TOC (`stargz.index.json`, FORMATS.md §1.4) and the end of an
//! eStargz blob: the TOC member and 51-byte footer (§1.2), or for the zstd
//! variant the end-of-archive frame, the TOC in a skippable frame and the
//! 40-byte footer (§1.3); plus the descriptor annotations (§1.6).
//!
//! Entry fields are written in the Go `TOCEntry` order with `omitempty`
//! semantics, tab-indented like `json.MarshalIndent(toc, "", "\t")`; the
//! TOC digest is taken over exactly those bytes.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use serde::Serialize;

use super::build::{Annotations, ChunkRec, io_err};
use super::entry::{Parsed, lossy, pad512};
use super::json::{base64_values, is_zero, rfc3339, to_tab_indented};
use super::sink::{Sink, skippable, zstd_frame};
use super::{LayerFormat, header};
use crate::format::FormatError;
use crate::format::estargz::footer::{encode_gzip, encode_zstd};
use crate::format::estargz::toc_json::TOC_NAME;
use crate::format::zstd_chunked::annotations::{
    LEGACY_MANIFEST_CHECKSUM, LEGACY_MANIFEST_POSITION,
};
use crate::oci::Digest;
use crate::oci::labels::STARGZ_TOC_DIGEST;

/// `io.containers.estargz.uncompressed-size`: decimal size of the layer tar.
pub(super) const UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";

/// One TOC entry, fields in Go `TOCEntry` order.
#[derive(Serialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct TocEntry {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    modtime: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    link_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    mode: u32,
    #[serde(skip_serializing_if = "is_zero")]
    uid: u64,
    #[serde(skip_serializing_if = "is_zero")]
    gid: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    user_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    group_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
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
    chunk_offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    chunk_digest: String,
}

#[derive(Serialize)]
struct JToc<'a> {
    version: u32,
    entries: &'a [TocEntry],
}

/// The TOC being collected.
pub(super) struct Toc {
    chunk_size: u64,
    entries: Vec<TocEntry>,
    last_uname: HashMap<u64, String>,
    last_gname: HashMap<u64, String>,
}

/// `name` unless it is what `id` was last called (Go `nameIfChanged`).
fn if_changed(last: &mut HashMap<u64, String>, id: u64, name: &[u8]) -> String {
    if name.is_empty() {
        return String::new();
    }
    let name = lossy(name);
    if last.get(&id) == Some(&name) {
        return String::new();
    }
    last.insert(id, name.clone());
    name
}

/// Go `formatModtime`: whole seconds, rounded; empty for Unix time 0.
fn modtime((secs, nanos): (i64, u32)) -> String {
    if secs == 0 {
        return String::new();
    }
    let secs = secs + i64::from(nanos >= 500_000_000);
    rfc3339(secs, None).unwrap_or_default()
}

impl Toc {
    /// An empty TOC for files chunked at `chunk_size`.
    pub fn new(chunk_size: u64) -> Self {
        Toc {
            chunk_size,
            entries: Vec::new(),
            last_uname: HashMap::new(),
            last_gname: HashMap::new(),
        }
    }

    /// Adds the entries of `p`: one, or for a file of several chunks, a
    /// `reg` entry for the first and a `chunk` entry for each other.
    pub fn push(&mut self, p: &Parsed, chunks: &[ChunkRec], file_digest: &Digest) {
        let name = lossy(&p.name);
        let kind = p.kind.toc_type();
        let mut e = TocEntry {
            name: name.clone(),
            kind,
            modtime: modtime(p.mtime),
            mode: p.mode,
            uid: p.uid,
            gid: p.gid,
            user_name: if_changed(&mut self.last_uname, p.uid, &p.uname),
            group_name: if_changed(&mut self.last_gname, p.gid, &p.gname),
            xattrs: p.xattrs.iter().cloned().collect(),
            ..TocEntry::default()
        };
        match p.kind {
            super::entry::Kind::Reg => {
                e.size = p.size;
                e.digest = file_digest.to_string();
            }
            super::entry::Kind::Symlink | super::entry::Kind::Hardlink => {
                e.link_name = lossy(&p.link)
            }
            super::entry::Kind::Char | super::entry::Kind::Block => {
                (e.dev_major, e.dev_minor) = p.dev
            }
            _ => {}
        }
        if chunks.is_empty() {
            self.entries.push(e);
            return;
        }
        for (i, c) in chunks.iter().enumerate() {
            if i > 0 {
                e = TocEntry {
                    name: name.clone(),
                    kind: "chunk",
                    ..TocEntry::default()
                };
            }
            e.offset = c.offset;
            e.chunk_offset = c.file_offset;
            // Go sets chunkSize only while a whole chunk remained.
            e.chunk_size = if c.size == self.chunk_size { c.size } else { 0 };
            e.chunk_digest = c.digest.to_string();
            self.entries.push(std::mem::take(&mut e));
        }
    }

    /// Ends the blob: TOC, footer. Returns the TOC digest (sha256 of the
    /// JSON) and the annotations (without the uncompressed size).
    pub fn finish<W: Write>(
        mut self,
        sink: &mut Sink<W>,
        format: LayerFormat,
        level: i32,
    ) -> Result<(Digest, Annotations), FormatError> {
        // Every payload member is closed; once written, marks become offsets.
        sink.pos().map_err(io_err("write the layer"))?;
        for e in &mut self.entries {
            e.offset = sink.resolve(e.offset);
        }
        let json = to_tab_indented(&JToc {
            version: 1,
            entries: &self.entries,
        });
        let toc_digest = Digest::sha256_of(&json);
        let mut ann = Annotations::new();
        ann.insert(STARGZ_TOC_DIGEST.to_string(), toc_digest.to_string());
        let w = io_err("write the TOC");
        if format == LayerFormat::Estargz {
            // One member: the TOC's tar entry and the end-of-archive.
            let toc_offset = sink.close_member().and_then(|()| sink.pos()).map_err(w)?;
            let w = io_err("write the TOC");
            sink.write(&header::synthetic(TOC_NAME, json.len() as u64))
                .and_then(|()| sink.write(&json))
                .and_then(|()| sink.zeros(pad512(json.len() as u64) + 1024))
                .and_then(|()| sink.write_raw(&encode_gzip(toc_offset)))
                .map_err(w)?;
        } else {
            // End-of-archive in the last frame, then the TOC and footer frames.
            let compressed = sink
                .zeros(1024)
                .and_then(|()| sink.close_member())
                .and_then(|()| zstd_frame(&json, level))
                .map_err(w)?;
            let toc_offset = sink.pos().map_err(io_err("write the TOC"))? + 8;
            let w = io_err("write the TOC");
            sink.write_raw(&skippable(&compressed).map_err(|_| too_large(compressed.len()))?)
                .and_then(|()| {
                    sink.write_raw(&encode_zstd(
                        toc_offset,
                        compressed.len() as u64,
                        json.len() as u64,
                    ))
                })
                .map_err(w)?;
            // What stargz's zstdchunked compressor adds (older containers/storage keys).
            ann.insert(
                LEGACY_MANIFEST_CHECKSUM.to_string(),
                Digest::sha256_of(&compressed).to_string(),
            );
            ann.insert(
                LEGACY_MANIFEST_POSITION.to_string(),
                format!("{toc_offset}:{}:{}:1", compressed.len(), json.len()),
            );
        }
        Ok((toc_digest, ann))
    }
}

pub(super) fn too_large(size: usize) -> FormatError {
    FormatError::TooLarge {
        what: "compressed TOC",
        size: size as u64,
        max: u64::from(u32::MAX),
    }
}
