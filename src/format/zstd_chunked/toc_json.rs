//! The zstd:chunked TOC JSON (containers/storage `minimal.TOC`, FORMATS.md
//! §2.4) into a [`Toc`], with every size and offset checked.
//!
//! Chunks: a file with one chunk carries only `digest/offset/endOffset` (its
//! chunk digest is the file digest); a file with more carries chunk 0's
//! `chunkSize/chunkDigest/chunkType` on its `reg` entry and one `chunk` entry
//! per further chunk. A chunk's compressed span is `[its offset, next
//! chunk's offset)`, the last one's ends at the file's `endOffset`.
//! `chunkType: "zeros"` chunks are runs of zeros that need no fetch: they
//! become chunks with `end == offset` (no compressed bytes), which
//! [`decode_verified`](crate::format::chunk::decode_verified) turns into zeros
//! (checked against their `chunkDigest` like any chunk).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde::Deserialize;

use crate::format::toc::clean_name;
use crate::format::{Chunk, Compression, Entry, EntryKind, FormatError, Toc, rfc3339};
use crate::oci::Digest;

use super::MAX_TOC_BYTES;

/// Most entries accepted in one TOC.
pub const MAX_ENTRIES: usize = 8_000_000;
/// Largest uncompressed chunk accepted (a reader holds a chunk in memory).
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

#[derive(Deserialize)]
struct JToc {
    version: i64,
    #[serde(default)]
    entries: Vec<JEntry>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JEntry {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    link_name: String,
    mode: i64,
    size: i64,
    uid: i64,
    gid: i64,
    modtime: Option<String>,
    dev_major: i64,
    dev_minor: i64,
    xattrs: BTreeMap<String, String>,
    digest: String,
    offset: i64,
    end_offset: i64,
    chunk_size: i64,
    chunk_offset: i64,
    chunk_digest: String,
    chunk_type: String,
}

fn toc_err(name: &str, msg: impl std::fmt::Display) -> FormatError {
    FormatError::Toc(format!("entry {name:?}: {msg}"))
}

fn nonneg(v: i64, what: &str, name: &str) -> Result<u64, FormatError> {
    u64::try_from(v).map_err(|_| toc_err(name, format!("{what} {v} is negative")))
}

fn id(v: i64, what: &str, name: &str) -> Result<u32, FormatError> {
    u32::try_from(v).map_err(|_| toc_err(name, format!("{what} {v} out of range")))
}

fn digest(s: &str, name: &str) -> Result<Option<Digest>, FormatError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e| toc_err(name, e))
}

/// The regular file whose chunks are being collected.
struct Open {
    /// Its index in the entry list.
    idx: usize,
    /// Its `endOffset`, when given.
    end_offset: Option<u64>,
    /// Its chunks so far, their `end` not yet set.
    chunks: Vec<Chunk>,
    /// Per chunk: whether it is a `zeros` chunk.
    zeros: Vec<bool>,
}

/// Parses the (decompressed) TOC JSON of a blob whose compressed TOC starts
/// at `toc_offset`; every payload lies before it.
///
/// # Errors
/// [`FormatError::Toc`] naming the entry for: bad JSON, a version other
/// than 1, an unknown type or chunk type, a negative or out-of-blob offset,
/// a `chunk` without a preceding regular file of that name, chunks that do
/// not tile the file, a missing or bad digest, a bad xattr or time;
/// [`FormatError::TooLarge`] past [`MAX_TOC_BYTES`], [`MAX_ENTRIES`] or
/// [`MAX_CHUNK_SIZE`].
pub fn parse_toc(json: &[u8], toc_offset: u64) -> Result<Toc, FormatError> {
    if json.len() as u64 > MAX_TOC_BYTES {
        return Err(FormatError::TooLarge {
            what: "zstd:chunked TOC",
            size: json.len() as u64,
            max: MAX_TOC_BYTES,
        });
    }
    let jtoc: JToc =
        serde_json::from_slice(json).map_err(|e| FormatError::Toc(format!("JSON: {e}")))?;
    if jtoc.version != 1 {
        return Err(FormatError::Toc(format!(
            "version {}, want 1",
            jtoc.version
        )));
    }
    if jtoc.entries.len() > MAX_ENTRIES {
        return Err(FormatError::TooLarge {
            what: "TOC entry list",
            size: jtoc.entries.len() as u64,
            max: MAX_ENTRIES as u64,
        });
    }
    // Payload frame starts, to end a last chunk when `endOffset` is missing.
    let mut starts = BTreeSet::new();
    for e in &jtoc.entries {
        if e.kind == "reg" && e.size > 0 || e.kind == "chunk" {
            starts.insert(nonneg(e.offset, "offset", &e.name)?);
        }
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(jtoc.entries.len());
    let mut open: Option<Open> = None;
    for je in &jtoc.entries {
        let name = clean_name(&je.name).map_err(FormatError::Toc)?;
        if je.kind == "chunk" {
            let Some(o) = open.as_mut().filter(|o| entries[o.idx].name == name) else {
                return Err(FormatError::Toc(format!(
                    "chunk entry {name:?} does not follow a regular file of that name"
                )));
            };
            let file = &entries[o.idx];
            let (c, zero) = chunk(je, &name, file.size, toc_offset, file.digest().as_ref())?;
            o.chunks.push(c);
            o.zeros.push(zero);
            continue;
        }
        if let Some(o) = open.take() {
            finish(&mut entries[o.idx], o, toc_offset, &starts)?;
        }
        let kind = match je.kind.as_str() {
            "dir" => EntryKind::Dir,
            "reg" => EntryKind::Reg,
            "symlink" => EntryKind::Symlink,
            "hardlink" => EntryKind::Hardlink,
            "char" => EntryKind::Char,
            "block" => EntryKind::Block,
            "fifo" => EntryKind::Fifo,
            other => return Err(toc_err(&name, format!("unknown type {other:?}"))),
        };
        let size = nonneg(je.size, "size", &name)?;
        let mut xattrs = BTreeMap::new();
        for (k, v) in &je.xattrs {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| toc_err(&name, format!("xattr {k:?}: {e}")))?;
            xattrs.insert(k.clone(), bytes);
        }
        let link_name = match kind {
            EntryKind::Hardlink => clean_name(&je.link_name).map_err(FormatError::Toc)?,
            _ => je.link_name.clone(),
        };
        let mtime = match je.modtime.as_deref() {
            None | Some("") => (0, 0),
            Some(t) => rfc3339::parse(t).map_err(|e| toc_err(&name, e))?,
        };
        let mut entry = Entry::new(name, kind);
        entry.size = if kind == EntryKind::Reg { size } else { 0 };
        entry.mode = (je.mode & 0o7777) as u32;
        entry.uid = id(je.uid, "uid", &entry.name)?;
        entry.gid = id(je.gid, "gid", &entry.name)?;
        entry.mtime = mtime;
        entry.set_link_name(link_name);
        entry.set_dev(
            id(je.dev_major, "devMajor", &entry.name)?,
            id(je.dev_minor, "devMinor", &entry.name)?,
        );
        entry.set_xattrs(xattrs);
        let file_digest = digest(&je.digest, &entry.name)?;
        entry.set_digest(file_digest.clone());
        if kind == EntryKind::Reg && size > 0 {
            let (c, zero) = chunk(je, &entry.name, size, toc_offset, file_digest.as_ref())?;
            let end_offset = match je.end_offset {
                0 => None,
                v => Some(nonneg(v, "endOffset", &entry.name)?),
            };
            open = Some(Open {
                idx: entries.len(),
                end_offset,
                chunks: vec![c],
                zeros: vec![zero],
            });
        }
        entries.push(entry);
    }
    if let Some(o) = open.take() {
        finish(&mut entries[o.idx], o, toc_offset, &starts)?;
    }
    entries.shrink_to_fit();
    Ok(Toc {
        compression: Compression::Zstd,
        entries,
    })
}

/// One chunk from a `reg` or `chunk` entry, its `end` not yet known; and
/// whether it is a `zeros` chunk.
fn chunk(
    je: &JEntry,
    name: &str,
    file_size: u64,
    toc_offset: u64,
    file_digest: Option<&Digest>,
) -> Result<(Chunk, bool), FormatError> {
    let offset = nonneg(je.offset, "offset", name)?;
    let file_offset = nonneg(je.chunk_offset, "chunkOffset", name)?;
    let mut size = nonneg(je.chunk_size, "chunkSize", name)?;
    if size == 0 {
        size = file_size.checked_sub(file_offset).ok_or_else(|| {
            toc_err(
                name,
                format!("chunkOffset {file_offset} past size {file_size}"),
            )
        })?;
    }
    if size > MAX_CHUNK_SIZE {
        return Err(FormatError::TooLarge {
            what: "zstd:chunked chunk",
            size,
            max: MAX_CHUNK_SIZE,
        });
    }
    let zero = match je.chunk_type.as_str() {
        "" => false,
        "zeros" => true,
        other => return Err(toc_err(name, format!("unknown chunkType {other:?}"))),
    };
    if offset >= toc_offset {
        return Err(toc_err(
            name,
            format!("offset {offset} is not before the TOC at {toc_offset}"),
        ));
    }
    Ok((
        Chunk {
            offset,
            end: offset,
            inner_offset: 0,
            file_offset,
            size,
            // The usual case, equal to the file's: not parsed again.
            digest: match file_digest {
                Some(d) if d.as_str() == je.chunk_digest => Some(d.clone()),
                _ => digest(&je.chunk_digest, name)?,
            },
        },
        zero,
    ))
}

/// Sets the compressed ends of a file's chunks, fills in a single chunk's
/// digest (the file's), checks the chunks tile the file, and stores them in
/// it.
fn finish(
    e: &mut Entry,
    o: Open,
    toc_offset: u64,
    starts: &BTreeSet<u64>,
) -> Result<(), FormatError> {
    let Open {
        end_offset,
        mut chunks,
        zeros,
        ..
    } = o;
    let n = chunks.len();
    if let [c] = chunks.as_mut_slice()
        && c.digest.is_none()
    {
        c.digest = e.digest();
    }
    for i in 0..n {
        let offset = chunks[i].offset;
        if chunks[i].digest.is_none() {
            return Err(toc_err(
                &e.name,
                format!(
                    "chunk at file offset {} has no digest",
                    chunks[i].file_offset
                ),
            ));
        }
        if zeros[i] {
            // No compressed bytes to fetch: `end == offset` marks zeros.
            continue;
        }
        let end = if i + 1 < n {
            chunks[i + 1].offset
        } else {
            end_offset.unwrap_or_else(|| {
                starts
                    .range(offset + 1..)
                    .next()
                    .copied()
                    .unwrap_or(toc_offset)
            })
        };
        if end <= offset || end > toc_offset {
            return Err(toc_err(
                &e.name,
                format!(
                    "chunk at blob offset {offset} ends at {end}, outside ({offset}, {toc_offset}]"
                ),
            ));
        }
        chunks[i].end = end;
    }
    let mut at = 0u64;
    for c in &chunks {
        if c.file_offset != at || c.size == 0 {
            return Err(toc_err(
                &e.name,
                format!(
                    "chunk at file offset {} (size {}) where {at} was expected",
                    c.file_offset, c.size
                ),
            ));
        }
        at = at
            .checked_add(c.size)
            .ok_or_else(|| toc_err(&e.name, "chunk sizes overflow"))?;
    }
    if at != e.size {
        return Err(toc_err(
            &e.name,
            format!("chunks cover {at} of {} bytes", e.size),
        ));
    }
    e.set_chunks(chunks);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
    const D2: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000002";
    const D3: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000003";

    fn toc(entries: &str) -> String {
        format!("{{\"version\":1,\"entries\":[{entries}]}}")
    }

    #[test]
    fn entries_chunks_zeros_and_extents() {
        let j = toc(&format!(
            r#"{{"type":"dir","name":"bin/","mode":493,"modtime":"2023-11-14T22:13:20Z","accesstime":"0001-01-01T00:00:00Z"}},
               {{"type":"reg","name":"bin/big","mode":2541,"size":10,"uid":1000,"gid":1000,"digest":"{D3}","offset":100,"endOffset":300,"chunkSize":4,"chunkDigest":"{D1}","xattrs":{{"user.t":"AQI="}}}},
               {{"type":"chunk","name":"bin/big","offset":150,"chunkSize":3,"chunkOffset":4,"chunkDigest":"{D2}","chunkType":"zeros"}},
               {{"type":"chunk","name":"bin/big","offset":160,"chunkSize":3,"chunkOffset":7,"chunkDigest":"{D2}"}},
               {{"type":"reg","name":"one","size":5,"digest":"{D1}","offset":310,"endOffset":330}},
               {{"type":"reg","name":"empty"}},
               {{"type":"symlink","name":"bin/sh","linkName":"big"}},
               {{"type":"hardlink","name":"bin/hl","linkName":"bin/big"}},
               {{"type":"char","name":"dev/null","devMajor":1,"devMinor":3}},
               {{"type":"fifo","name":"p"}},
               {{"type":"block","name":"b"}}"#
        ));
        let t = parse_toc(j.as_bytes(), 500).unwrap();
        assert_eq!(t.compression, Compression::Zstd);
        let names: Vec<&str> = t.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin", "bin/big", "one", "empty", "bin/sh", "bin/hl", "dev/null", "p", "b"
            ]
        );
        assert_eq!(t.entries[0].mtime, (1_700_000_000, 0));
        let big = &t.entries[1];
        assert_eq!((big.mode, big.uid, big.size), (0o4755, 1000, 10));
        assert_eq!(big.xattrs()["user.t"], vec![1, 2]);
        let spans: Vec<(u64, u64, u64, u64)> = big
            .chunks()
            .map(|c| (c.offset, c.end, c.file_offset, c.size))
            .collect();
        assert_eq!(
            spans,
            [(100, 150, 0, 4), (150, 150, 4, 3), (160, 300, 7, 3)]
        );
        assert_eq!(big.chunk(0).digest.unwrap().as_str(), D1);
        // Single chunk: the file digest, span to endOffset.
        let one = &t.entries[2];
        assert_eq!((one.chunk(0).offset, one.chunk(0).end), (310, 330));
        assert_eq!(one.chunk(0).digest.unwrap().as_str(), D1);
        assert_eq!(one.chunk(0).digest, one.digest());
        assert_eq!(t.entries[3].chunk_count(), 0);
        assert_eq!(*t.entries[5].link_name(), "bin/big");
        assert_eq!((t.entries[6].dev_major(), t.entries[6].dev_minor()), (1, 3));
        assert_eq!(t.entries[7].kind, EntryKind::Fifo);
    }

    #[test]
    fn missing_end_offset_falls_back_to_next_payload_or_toc() {
        let j = toc(&format!(
            r#"{{"type":"reg","name":"a","size":3,"digest":"{D1}","offset":10}},
               {{"type":"reg","name":"b","size":3,"digest":"{D2}","offset":40}}"#
        ));
        let t = parse_toc(j.as_bytes(), 90).unwrap();
        assert_eq!(t.entries[0].chunk(0).end, 40);
        assert_eq!(t.entries[1].chunk(0).end, 90);
    }

    #[test]
    fn malformed_tocs_name_the_entry() {
        let cases = [
            (
                toc(r#"{"type":"chunk","name":"f","offset":1}"#),
                "does not follow",
            ),
            (toc(r#"{"type":"weird","name":"f"}"#), "unknown type"),
            (
                toc(&format!(
                    r#"{{"type":"reg","name":"f","size":5,"offset":900,"digest":"{D1}"}}"#
                )),
                "not before the TOC",
            ),
            (
                toc(&format!(
                    r#"{{"type":"reg","name":"f","size":5,"offset":10,"endOffset":200,"digest":"{D1}"}}"#
                )),
                "outside",
            ),
            (
                toc(&format!(
                    r#"{{"type":"reg","name":"f","size":5,"offset":10,"chunkSize":2,"chunkDigest":"{D1}"}}"#
                )),
                "cover 2 of 5",
            ),
            (
                toc(&format!(
                    r#"{{"type":"reg","name":"f","size":5,"offset":10,"chunkSize":2,"chunkDigest":"{D1}"}},
                       {{"type":"chunk","name":"f","offset":5,"chunkOffset":2,"chunkSize":3,"chunkDigest":"{D1}"}}"#
                )),
                "ends at 5",
            ),
            (
                toc(&format!(
                    r#"{{"type":"reg","name":"f","size":5,"offset":10,"chunkSize":2,"chunkDigest":"{D1}"}},
                       {{"type":"chunk","name":"f","offset":20,"chunkOffset":2,"chunkSize":3,"chunkType":"ones","chunkDigest":"{D1}"}}"#
                )),
                "chunkType",
            ),
            (
                toc(r#"{"type":"reg","name":"f","size":5,"offset":10}"#),
                "no digest",
            ),
            (toc(r#"{"type":"reg","name":"f","size":-1}"#), "negative"),
            (toc(r#"{"type":"dir","name":"../x"}"#), "above the root"),
            (
                toc(r#"{"type":"reg","name":"f","digest":"md5:x"}"#),
                "md5:x",
            ),
            (
                toc(r#"{"type":"dir","name":"d","xattrs":{"user.a":"!!"}}"#),
                "xattr",
            ),
            (
                toc(r#"{"type":"dir","name":"d","modtime":"yesterday"}"#),
                "RFC 3339",
            ),
            ("{\"version\":2,\"entries\":[]}".to_string(), "version 2"),
            ("not json".to_string(), "JSON"),
        ];
        for (j, want) in cases {
            let e = parse_toc(j.as_bytes(), 100).unwrap_err().to_string();
            assert!(e.contains(want), "{j}: {e}");
        }
        let huge = toc(&format!(
            r#"{{"type":"reg","name":"f","size":{},"offset":10,"digest":"{D1}"}}"#,
            MAX_CHUNK_SIZE + 1
        ));
        assert!(matches!(
            parse_toc(huge.as_bytes(), 100),
            Err(FormatError::TooLarge { .. })
        ));
    }
}
