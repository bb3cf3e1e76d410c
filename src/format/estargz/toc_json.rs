//! The eStargz TOC JSON (`stargz.index.json`, FORMATS.md §1.4) into a
//! [`Toc`], with every size and offset checked.
//!
//! Chunk extents: a payload's compressed span runs from its `offset` to the
//! next larger distinct payload offset (of entries with `innerOffset == 0`)
//! or to the TOC offset; several payloads packed into one member share the
//! member's span and differ by `innerOffset`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use base64::Engine as _;
use serde::Deserialize;

use crate::format::toc::clean_name;
use crate::format::{Chunk, Compression, Entry, EntryKind, FormatError, Toc};
use crate::oci::Digest;
use crate::oci::rfc3339;

/// Largest uncompressed TOC accepted.
pub const MAX_TOC_BYTES: u64 = 512 << 20;
/// Most entries accepted in one TOC.
pub const MAX_ENTRIES: usize = 8_000_000;
/// Name of the TOC's tar entry.
pub const TOC_NAME: &str = "stargz.index.json";

#[derive(Deserialize)]
struct JToc {
    version: i64,
    entries: Vec<JEntry>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    size: i64,
    modtime: Option<String>,
    link_name: String,
    mode: i64,
    uid: i64,
    gid: i64,
    dev_major: i64,
    dev_minor: i64,
    xattrs: BTreeMap<String, String>,
    digest: String,
    offset: i64,
    inner_offset: i64,
    chunk_offset: i64,
    chunk_size: i64,
    chunk_digest: String,
}

fn nonneg(v: i64, what: &str, name: &str) -> Result<u64, FormatError> {
    u64::try_from(v)
        .map_err(|_| FormatError::Toc(format!("entry {name:?}: {what} {v} is negative")))
}

fn digest(s: &str, name: &str) -> Result<Option<Digest>, FormatError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| FormatError::Toc(format!("entry {name:?}: {e}")))
}

fn id(v: i64, what: &str, name: &str) -> Result<u32, FormatError> {
    u32::try_from(v)
        .map_err(|_| FormatError::Toc(format!("entry {name:?}: {what} {v} out of range")))
}

/// Checks `json` against the TOC digest the manifest promised.
///
/// # Errors
/// [`FormatError::TocDigest`] on a mismatch.
pub fn verify_toc(json: &[u8], expected: &Digest) -> Result<(), FormatError> {
    let actual = Digest::sha256_of(json);
    if &actual == expected {
        Ok(())
    } else {
        Err(FormatError::TocDigest {
            expected: expected.clone(),
            actual,
        })
    }
}

/// Extracts the TOC JSON from the gzip TOC member `[tocOffset, footer)`:
/// a tar header for `stargz.index.json`, its bytes, and end-of-archive.
///
/// # Errors
/// [`FormatError::Decompress`], [`FormatError::Toc`] when the member holds
/// no such tar entry, [`FormatError::TooLarge`] past [`MAX_TOC_BYTES`].
pub fn toc_json_from_gzip_member(member: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut dec = flate2::read::GzDecoder::new(member);
    let mut header = [0u8; 512];
    dec.read_exact(&mut header)
        .map_err(|e| FormatError::Decompress {
            what: "TOC member".to_string(),
            message: e.to_string(),
        })?;
    let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
    if &header[..name_end] != TOC_NAME.as_bytes() {
        return Err(FormatError::Toc(format!(
            "TOC member starts with entry {:?}, not {TOC_NAME}",
            String::from_utf8_lossy(&header[..name_end])
        )));
    }
    let size_field = std::str::from_utf8(&header[124..136])
        .unwrap_or("")
        .trim_matches(|c: char| c == '\0' || c == ' ');
    let size = u64::from_str_radix(size_field, 8).map_err(|_| {
        FormatError::Toc(format!("TOC tar header size {size_field:?} is not octal"))
    })?;
    if size > MAX_TOC_BYTES {
        return Err(FormatError::TooLarge {
            what: "TOC",
            size,
            max: MAX_TOC_BYTES,
        });
    }
    let mut json = vec![0u8; size as usize];
    dec.read_exact(&mut json)
        .map_err(|e| FormatError::Decompress {
            what: "TOC JSON".to_string(),
            message: e.to_string(),
        })?;
    Ok(json)
}

/// Parses TOC JSON of a blob whose TOC starts at `toc_offset`, with members
/// compressed by `compression`.
///
/// # Errors
/// [`FormatError::Toc`] naming the entry for: bad JSON, an unknown type, a
/// negative or out-of-blob offset, a `chunk` without a preceding regular file
/// of that name, chunks that do not tile the file, a bad digest or xattr.
pub fn parse_toc(
    json: &[u8],
    toc_offset: u64,
    compression: Compression,
) -> Result<Toc, FormatError> {
    if json.len() as u64 > MAX_TOC_BYTES {
        return Err(FormatError::TooLarge {
            what: "TOC",
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
    // Distinct payload member starts, for the compressed extents.
    let mut starts = BTreeSet::new();
    for e in &jtoc.entries {
        if (e.kind == "reg" && e.size > 0 || e.kind == "chunk") && e.inner_offset == 0 {
            starts.insert(nonneg(e.offset, "offset", &e.name)?);
        }
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(jtoc.entries.len());
    // The last regular file (its index in `entries`) and its chunks so far:
    // its `chunk` entries follow it directly.
    let mut open: Option<(usize, Vec<Chunk>)> = None;
    for je in &jtoc.entries {
        let name = clean_name(&je.name).map_err(FormatError::Toc)?;
        if je.kind == "chunk" {
            let Some((i, chunks)) = open.as_mut().filter(|(i, _)| entries[*i].name == name) else {
                return Err(FormatError::Toc(format!(
                    "chunk entry {name:?} does not follow a regular file of that name"
                )));
            };
            let file = &entries[*i];
            let c = chunk(
                je,
                &name,
                file.size,
                toc_offset,
                &starts,
                file.digest().as_ref(),
            )?;
            chunks.push(c);
            continue;
        }
        if let Some((i, chunks)) = open.take() {
            finish(&mut entries[i], chunks)?;
        }
        let kind = match je.kind.as_str() {
            "dir" => EntryKind::Dir,
            "reg" => EntryKind::Reg,
            "symlink" => EntryKind::Symlink,
            "hardlink" => EntryKind::Hardlink,
            "char" => EntryKind::Char,
            "block" => EntryKind::Block,
            "fifo" => EntryKind::Fifo,
            other => {
                return Err(FormatError::Toc(format!(
                    "entry {name:?}: unknown type {other:?}"
                )));
            }
        };
        let size = nonneg(je.size, "size", &name)?;
        let mut xattrs = BTreeMap::new();
        for (k, v) in &je.xattrs {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| FormatError::Toc(format!("entry {name:?}: xattr {k:?}: {e}")))?;
            xattrs.insert(k.clone(), bytes);
        }
        let link_name = match kind {
            EntryKind::Hardlink => clean_name(&je.link_name).map_err(FormatError::Toc)?,
            _ => je.link_name.clone(),
        };
        let mtime = match je.modtime.as_deref() {
            None | Some("") => (0, 0),
            Some(t) => {
                rfc3339::parse(t).map_err(|e| FormatError::Toc(format!("entry {name:?}: {e}")))?
            }
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
        if kind == EntryKind::Reg {
            let mut chunks = Vec::new();
            if size > 0 {
                let c = chunk(
                    je,
                    &entry.name,
                    size,
                    toc_offset,
                    &starts,
                    file_digest.as_ref(),
                )?;
                chunks.push(c);
            }
            open = Some((entries.len(), chunks));
        }
        entries.push(entry);
    }
    if let Some((i, chunks)) = open.take() {
        finish(&mut entries[i], chunks)?;
    }
    entries.shrink_to_fit();
    Ok(Toc {
        compression,
        entries,
    })
}

/// Checks that `chunks` tile the regular file `e` and stores them in it.
/// A single chunk without a per-chunk digest is checked by the file's (and
/// then, like one whose digest equals the file's, stored compactly).
fn finish(e: &mut Entry, mut chunks: Vec<Chunk>) -> Result<(), FormatError> {
    check_tiling(&e.name, e.size, &chunks)?;
    if let [c] = chunks.as_mut_slice()
        && c.digest.is_none()
    {
        c.digest = e.digest();
    }
    e.set_chunks(chunks);
    Ok(())
}

fn chunk(
    je: &JEntry,
    name: &str,
    file_size: u64,
    toc_offset: u64,
    starts: &BTreeSet<u64>,
    file_digest: Option<&Digest>,
) -> Result<Chunk, FormatError> {
    let offset = nonneg(je.offset, "offset", name)?;
    let file_offset = nonneg(je.chunk_offset, "chunkOffset", name)?;
    let mut size = nonneg(je.chunk_size, "chunkSize", name)?;
    if size == 0 {
        size = file_size.checked_sub(file_offset).ok_or_else(|| {
            FormatError::Toc(format!(
                "entry {name:?}: chunkOffset {file_offset} past size {file_size}"
            ))
        })?;
    }
    if offset >= toc_offset {
        return Err(FormatError::Toc(format!(
            "entry {name:?}: offset {offset} is not before the TOC at {toc_offset}"
        )));
    }
    let end = starts
        .range(offset + 1..)
        .next()
        .copied()
        .unwrap_or(toc_offset)
        .min(toc_offset);
    Ok(Chunk {
        offset,
        end,
        inner_offset: nonneg(je.inner_offset, "innerOffset", name)?,
        file_offset,
        size,
        // The usual case, equal to the file's: not parsed again.
        digest: match file_digest {
            Some(d) if d.as_str() == je.chunk_digest => Some(d.clone()),
            _ => digest(&je.chunk_digest, name)?,
        },
    })
}

/// The chunks of regular file `name` must cover `[0, size)` in order,
/// without gaps.
fn check_tiling(name: &str, size: u64, chunks: &[Chunk]) -> Result<(), FormatError> {
    let mut at = 0u64;
    for c in chunks {
        if c.file_offset != at || c.size == 0 {
            return Err(FormatError::Toc(format!(
                "entry {name:?}: chunk at file offset {} (size {}) where {at} was expected",
                c.file_offset, c.size
            )));
        }
        at = at
            .checked_add(c.size)
            .ok_or_else(|| FormatError::Toc(format!("entry {name:?}: chunk sizes overflow")))?;
    }
    if at != size {
        return Err(FormatError::Toc(format!(
            "entry {name:?}: chunks cover {at} of {size} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
    const D2: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000002";

    fn toc(entries: &str) -> String {
        format!("{{\"version\":1,\"entries\":[{entries}]}}")
    }

    #[test]
    fn entries_chunks_and_extents() {
        let j = toc(&format!(
            r#"{{"name":"./","type":"dir","mode":16877}},
               {{"name":"bin/","type":"dir","mode":493,"modtime":"2023-11-14T22:13:20Z"}},
               {{"name":"bin/big","type":"reg","size":10,"mode":2541,"uid":1000,"gid":1000,"offset":100,"chunkSize":6,"chunkDigest":"{D1}","digest":"{D2}","xattrs":{{"user.t":"AQI="}}}},
               {{"name":"bin/big","type":"chunk","offset":200,"chunkOffset":6,"chunkDigest":"{D2}"}},
               {{"name":"bin/sh","type":"symlink","linkName":"big"}},
               {{"name":"./bin/hl","type":"hardlink","linkName":"./bin/big"}},
               {{"name":"empty","type":"reg"}},
               {{"name":"dev/null","type":"char","devMajor":1,"devMinor":3}}"#
        ));
        let t = parse_toc(j.as_bytes(), 500, Compression::Gzip).unwrap();
        let names: Vec<&str> = t.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "", "bin", "bin/big", "bin/sh", "bin/hl", "empty", "dev/null"
            ]
        );
        let big = &t.entries[2];
        assert_eq!(big.mode, 0o4755);
        assert_eq!((big.uid, big.gid, big.size), (1000, 1000, 10));
        assert_eq!(big.xattrs()["user.t"], vec![1, 2]);
        assert_eq!(big.chunk_count(), 2);
        assert_eq!(
            (big.chunk(0).offset, big.chunk(0).end, big.chunk(0).size),
            (100, 200, 6)
        );
        assert_eq!(
            (big.chunk(1).offset, big.chunk(1).end, big.chunk(1).size),
            (200, 500, 4)
        );
        assert_eq!(big.chunk(1).file_offset, 6);
        assert_eq!(t.entries[1].mtime, (1_700_000_000, 0));
        assert_eq!(*t.entries[4].link_name(), "bin/big");
        assert_eq!(t.entries[5].chunk_count(), 0);
        assert_eq!((t.entries[6].dev_major(), t.entries[6].dev_minor()), (1, 3));
    }

    #[test]
    fn single_chunk_file_falls_back_to_file_digest() {
        let j = toc(&format!(
            r#"{{"name":"f","type":"reg","size":3,"offset":10,"digest":"{D1}"}}"#
        ));
        let t = parse_toc(j.as_bytes(), 50, Compression::Zstd).unwrap();
        assert_eq!(t.entries[0].chunk(0).digest.unwrap().as_str(), D1);
    }

    #[test]
    fn equal_or_differing_file_and_chunk_digests() {
        let j = toc(&format!(
            r#"{{"name":"f","type":"reg","size":3,"offset":10,"digest":"{D1}","chunkDigest":"{D1}"}},
               {{"name":"g","type":"reg","size":3,"offset":20,"digest":"{D1}","chunkDigest":"{D2}"}}"#
        ));
        let t = parse_toc(j.as_bytes(), 50, Compression::Gzip).unwrap();
        let f = &t.entries[0];
        assert_eq!(f.digest().unwrap().as_str(), D1);
        assert_eq!(f.chunk(0).digest, f.digest());
        // A differing chunk digest is kept as given.
        let g = &t.entries[1];
        assert_eq!(g.digest().unwrap().as_str(), D1);
        assert_eq!(g.chunk(0).digest.unwrap().as_str(), D2);
        assert_eq!((g.chunk(0).offset, g.chunk(0).end), (20, 50));
    }

    #[test]
    fn malformed_tocs_name_the_entry() {
        let cases = [
            (
                toc(r#"{"name":"f","type":"chunk","offset":1}"#),
                "does not follow",
            ),
            (toc(r#"{"name":"f","type":"weird"}"#), "unknown type"),
            (
                toc(r#"{"name":"f","type":"reg","size":5,"offset":900}"#),
                "not before the TOC",
            ),
            (
                toc(r#"{"name":"f","type":"reg","size":5,"offset":10,"chunkSize":2}"#),
                "cover 2 of 5",
            ),
            (toc(r#"{"name":"f","type":"reg","size":-1}"#), "negative"),
            (toc(r#"{"name":"../x","type":"dir"}"#), "above the root"),
            (
                toc(r#"{"name":"f","type":"reg","digest":"md5:x"}"#),
                "md5:x",
            ),
            ("{\"version\":2,\"entries\":[]}".to_string(), "version 2"),
            ("not json".to_string(), "JSON"),
        ];
        for (j, want) in cases {
            let e = parse_toc(j.as_bytes(), 100, Compression::Gzip)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{j}: {e}");
        }
    }

    #[test]
    fn toc_digest_is_checked_over_exact_bytes() {
        let j = b"{\"version\":1,\"entries\":[]}";
        verify_toc(j, &Digest::sha256_of(j)).unwrap();
        let e = verify_toc(b" {\"version\":1,\"entries\":[]}", &Digest::sha256_of(j)).unwrap_err();
        assert!(matches!(e, FormatError::TocDigest { .. }));
    }

    #[test]
    fn toc_member_round_trip() {
        use std::io::Write;
        let json = b"{\"version\":1,\"entries\":[]}";
        let mut tar = vec![0u8; 512];
        tar[..TOC_NAME.len()].copy_from_slice(TOC_NAME.as_bytes());
        tar[124..135].copy_from_slice(format!("{:011o}", json.len()).as_bytes());
        tar.extend_from_slice(json);
        tar.resize(512 + 512 + 1024, 0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let member = gz.finish().unwrap();
        assert_eq!(toc_json_from_gzip_member(&member).unwrap(), json);
        let mut other = tar.clone();
        other[..3].copy_from_slice(b"xyz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&other).unwrap();
        assert!(toc_json_from_gzip_member(&gz.finish().unwrap()).is_err());
    }
}
