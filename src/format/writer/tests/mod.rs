//! Round trips of the writers through our readers, the tar crate and GNU
//! tar: tars built here, no fixtures.

mod cases;
mod pax;
mod roundtrip;

use std::collections::HashMap;
use std::io::Read;

use crate::format::chunk::decode_verified;
use crate::format::estargz::{footer, parse_toc, toc_json_from_gzip_member, verify_toc};
use crate::format::tar_reader::TarReader;
use crate::format::writer::tarsplit::Crc64;
use crate::format::{Compression, EntryKind, Toc, zstd_chunked};
use crate::oci::Digest;

use super::{LayerFormat, LayerWritten, WriterOptions, write_layer};

pub(super) const FORMATS: [LayerFormat; 3] = [
    LayerFormat::Estargz,
    LayerFormat::EstargzZstd,
    LayerFormat::ZstdChunked,
];

pub(super) const MTIME: u64 = 1_700_000_000;

/// Builds test tars entry by entry with raw control over names.
pub(super) struct TarB {
    b: tar::Builder<Vec<u8>>,
}

impl TarB {
    pub fn new() -> Self {
        TarB {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// An entry with `name` (≤ 100 bytes, copied as is), type and data.
    pub fn entry(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        data: &[u8],
        f: impl FnOnce(&mut tar::Header),
    ) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root").unwrap();
        h.set_groupname("root").unwrap();
        f(&mut h);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    /// A PAX `x` header for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            crate::format::pax::encode_record(&mut data, k.as_bytes(), v);
        }
        self.entry(b"PaxHeaders/x", tar::EntryType::XHeader, &data, |_| {})
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name.as_bytes(), tar::EntryType::Directory, b"", |_| {})
    }

    pub fn file(&mut self, name: &[u8], data: &[u8]) -> &mut Self {
        self.entry(name, tar::EntryType::Regular, data, |_| {})
    }

    pub fn link(&mut self, name: &str, kind: tar::EntryType, target: &str) -> &mut Self {
        self.entry(name.as_bytes(), kind, b"", |h| {
            h.set_link_name_literal(target).unwrap();
        })
    }

    pub fn finish(&mut self) -> Vec<u8> {
        self.b.finish().unwrap();
        std::mem::take(self.b.get_mut())
    }
}

/// Content of the chunk-spanning file: varied bytes with a zero run.
pub(super) fn big_content(n: usize) -> Vec<u8> {
    let mut x: u32 = 12345;
    let mut v: Vec<u8> = (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let z = n / 3;
    v[z..z + 3000].fill(0);
    v
}

/// The layer every round trip writes: all entry types and the odd names.
pub(super) fn sample_tar() -> (Vec<u8>, Vec<u8>) {
    let big = big_content(200_000);
    let long = format!("d/{}", "n".repeat(148));
    let mut t = TarB::new();
    t.dir("./")
        .dir("d/")
        .file(b"d/hello", b"hello, world\n")
        .file(b"d/empty", b"")
        .file(b"d/big", &big)
        .link("d/sym", tar::EntryType::Symlink, "hello")
        .link("d/hard", tar::EntryType::Link, "d/hello")
        .entry(b"d/tty", tar::EntryType::Char, b"", |h| {
            h.set_device_major(5).unwrap();
            h.set_device_minor(1).unwrap();
        })
        .entry(b"d/sda", tar::EntryType::Block, b"", |h| {
            h.set_device_major(8).unwrap();
            h.set_device_minor(0).unwrap();
        })
        .entry(b"d/fifo", tar::EntryType::Fifo, b"", |_| {})
        .pax(&[
            ("SCHILY.xattr.user.bin", &[0u8, 0xff, 1, 2]),
            ("SCHILY.xattr.security.capability", b"caps"),
        ])
        .file(b"d/xattrs", b"x")
        .pax(&[("path", long.as_bytes())])
        .file(b"d/truncated-long-name", b"long")
        .file(b"d/caf\xe9", b"latin-1 name")
        .file(b"dup", b"one")
        .file(b"dup", b"two");
    (t.finish(), big)
}

/// What a parsed layer looks like from our readers.
pub(super) struct ReadBack {
    pub toc: Toc,
    /// Regular file name → bytes decoded from its chunks (the last wins).
    pub files: HashMap<String, Vec<u8>>,
    /// The whole blob decompressed as one stream.
    pub stream: Vec<u8>,
}

/// Parses `blob` with our readers, verifying the TOC against `w` and every
/// chunk against its digest; decompresses the whole blob.
pub(super) fn read_back(format: LayerFormat, blob: &[u8], w: &LayerWritten) -> ReadBack {
    let size = blob.len() as u64;
    assert_eq!(w.size, size);
    assert_eq!(w.digest, Digest::sha256_of(blob));
    let toc = match format {
        LayerFormat::Estargz | LayerFormat::EstargzZstd => {
            let tail = &blob[blob.len().saturating_sub(footer::MAX_FOOTER_SIZE)..];
            let f = footer::parse(tail, size).unwrap();
            let (start, end) = f.toc_range(size);
            let span = &blob[start as usize..end as usize];
            let json = if format == LayerFormat::Estargz {
                assert_eq!(f.kind, footer::FooterKind::Gzip);
                toc_json_from_gzip_member(span).unwrap()
            } else {
                assert_eq!(f.kind, footer::FooterKind::Zstd);
                let j = zstd::decode_all(span).unwrap();
                assert_eq!(j.len() as u64, f.toc_uncompressed_len);
                j
            };
            verify_toc(&json, &w.toc_digest).unwrap();
            assert_eq!(
                w.annotations["containerd.io/snapshot/stargz/toc.digest"],
                w.toc_digest.to_string()
            );
            parse_toc(&json, f.toc_offset, f.compression()).unwrap()
        }
        LayerFormat::ZstdChunked => {
            let ann: HashMap<String, String> = w.annotations.clone().into_iter().collect();
            let m = zstd_chunked::ManifestRef::from_annotations(&ann)
                .unwrap()
                .unwrap();
            assert_eq!(m.checksum, w.toc_digest);
            let tail = &blob[blob.len() - zstd_chunked::footer::MAX_FOOTER_BYTES..];
            let f = zstd_chunked::footer::parse(tail, size).unwrap();
            assert_eq!(f.manifest, m.position);
            assert_eq!(f.tar_split, m.tar_split);
            let p = m.position;
            let span = &blob[p.offset as usize..p.end().unwrap() as usize];
            zstd_chunked::open_toc(span, &m.checksum, p.offset).unwrap()
        }
    };
    assert_eq!(toc.compression, format.compression());
    let mut files = HashMap::new();
    for e in &toc.entries {
        if e.kind != EntryKind::Reg {
            continue;
        }
        let mut got = Vec::new();
        for c in e.chunks() {
            let span = &blob[c.offset as usize..c.end as usize];
            got.extend(decode_verified(toc.compression, span, &c, &e.name).unwrap());
        }
        assert_eq!(got.len() as u64, e.size, "{}", e.name);
        assert_eq!(
            Some(Digest::sha256_of(&got)),
            e.digest()
                .or_else(|| { (e.size == 0).then(|| Digest::sha256_of(b"")) })
        );
        files.insert(e.name.to_string(), got);
    }
    let stream = match format.compression() {
        Compression::Gzip => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(blob)
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        Compression::Zstd => zstd::decode_all(blob).unwrap(),
    };
    assert_eq!(Digest::sha256_of(&stream), w.diff_id);
    assert_eq!(stream.len() as u64, w.uncompressed_size);
    ReadBack { toc, files, stream }
}

/// One tar entry as the tar crate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TarEntry {
    pub name: Vec<u8>,
    pub kind: u8,
    pub link: Vec<u8>,
    pub mode: u32,
    pub mtime: u64,
    pub dev: (u32, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub data: Vec<u8>,
}

/// Parses an uncompressed tar stream with our [`TarReader`] (the tar
/// crate's PAX parser splits at newlines and breaks on binary xattrs).
pub(super) fn untar(stream: &[u8]) -> Vec<TarEntry> {
    let mut r = TarReader::new(stream);
    let mut out = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        let xattrs = e
            .pax
            .iter()
            .filter(|(k, _)| k.starts_with(b"SCHILY.xattr."))
            .cloned()
            .collect();
        let h = tar::Header::from_byte_slice(&e.header);
        let mut data = Vec::new();
        r.read_to_end(&mut data).unwrap();
        let dev = match h.entry_type() {
            tar::EntryType::Char | tar::EntryType::Block => (
                h.device_major().unwrap().unwrap(),
                h.device_minor().unwrap().unwrap(),
            ),
            _ => (0, 0),
        };
        out.push(TarEntry {
            name: e.path.clone(),
            kind: e.typeflag(),
            link: e.link.clone(),
            mode: h.mode().unwrap(),
            mtime: e.mtime().unwrap().0 as u64,
            dev,
            xattrs,
            data,
        });
    }
    out
}

/// Writes `tar` with `opts` into memory.
pub(super) fn write(tar: &[u8], opts: &WriterOptions) -> (Vec<u8>, LayerWritten) {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let w = write_layer(tar, &mut out, opts, dir.path()).unwrap();
    (out, w)
}

/// Replays a zstd:chunked tar-split against the file bodies of `stream`
/// and checks it gives `stream` back, CRCs included.
pub(super) fn replay_tar_split(blob: &[u8], w: &LayerWritten, stream: &[u8]) {
    let pos = &w.annotations["io.github.containers.zstd-chunked.tarsplit-position"];
    let v: Vec<usize> = pos.split(':').map(|x| x.parse().unwrap()).collect();
    let compressed = &blob[v[0]..v[0] + v[1]];
    assert_eq!(
        w.annotations["io.github.containers.zstd-chunked.tarsplit-checksum"],
        Digest::sha256_of(compressed).to_string()
    );
    let text = zstd::decode_all(compressed).unwrap();
    assert_eq!(text.len(), v[2]);
    let bodies: Vec<Vec<u8>> = untar(stream)
        .into_iter()
        .filter(|e| !e.data.is_empty() && e.kind != b'g')
        .map(|e| e.data)
        .collect();
    let mut bodies = bodies.into_iter();
    let b64 = |s: &serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_str().unwrap())
            .unwrap()
    };
    let mut out = Vec::new();
    for (i, line) in text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let j: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(j["position"], i);
        match j["type"].as_u64().unwrap() {
            2 => out.extend(b64(&j["payload"])),
            1 if j.get("size").is_some() => {
                let body = bodies.next().unwrap();
                assert_eq!(j["size"], body.len());
                let mut c = Crc64::new();
                c.update(&body);
                assert_eq!(b64(&j["payload"]), c.sum().to_be_bytes());
                out.extend(body);
            }
            1 => assert!(j["payload"].is_null()),
            t => panic!("type {t}"),
        }
    }
    assert!(
        out == stream,
        "tar-split replay differs from the tar stream"
    );
}
