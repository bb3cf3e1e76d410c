//! The format-independent part of writing: raw tar bytes into the current
//! member, payloads into their own members, one TOC entry per tar entry, and
//! the end of the blob handed to the format modules.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::entry::{Kind, Parsed, pad512};
use super::sink::{Sink, Totals, digest_of};
use super::tarsplit::{Crc64, TarSplit};
use super::{Landmark, LayerFormat, LayerWritten, WriterOptions, chunked, estargz, header};
use crate::format::FormatError;
use crate::oci::Digest;

/// Wraps an I/O error with what was being done.
pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FormatError {
    let what = what.into();
    move |source| FormatError::Io { what, source }
}

/// One payload chunk as written.
#[derive(Debug, Clone)]
pub(super) struct ChunkRec {
    /// Mark of the member holding it ([`Sink::mark`]); the TOC turns it
    /// into a blob offset with [`Sink::resolve`] at the end.
    pub offset: u64,
    /// Offset in the file.
    pub file_offset: u64,
    /// Uncompressed size.
    pub size: u64,
    /// sha256 of its bytes.
    pub digest: Digest,
    /// A run of zeros (zstd:chunked `chunkType: "zeros"`).
    pub zeros: bool,
}

/// Reads a regular file's payload, hashing it (whole-file sha256, and the
/// CRC-64 tar-split records) as it goes.
pub(super) struct Payload<'a> {
    r: &'a mut dyn Read,
    name: &'a [u8],
    left: u64,
    total: u64,
    pub file: Option<Sha256>,
    pub crc: Option<Crc64>,
}

impl Payload<'_> {
    /// Reads the next up to `max` bytes into `buf` (at least one while any
    /// are left; none at the end).
    pub fn read<'b>(&mut self, buf: &'b mut [u8], max: u64) -> Result<&'b [u8], FormatError> {
        let want = self.left.min(max).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(&buf[..0]);
        }
        let n = loop {
            match self.r.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(io_err(format!(
                        "read the payload of {:?}",
                        String::from_utf8_lossy(self.name)
                    ))(e));
                }
            }
        };
        if n == 0 {
            return Err(FormatError::Entry {
                name: String::from_utf8_lossy(self.name).into_owned(),
                message: format!(
                    "payload ends after {} of {} bytes",
                    self.total - self.left,
                    self.total
                ),
            });
        }
        self.left -= n as u64;
        let data = &buf[..n];
        if let Some(h) = &mut self.file {
            h.update(data);
        }
        if let Some(c) = &mut self.crc {
            c.update(data);
        }
        Ok(data)
    }

    /// Bytes not yet read.
    pub fn left(&self) -> u64 {
        self.left
    }
}

enum TocState {
    Estargz(estargz::Toc),
    Chunked(chunked::Toc, TarSplit),
}

/// A layer being written to `W`.
pub(super) struct Builder<W: Write> {
    pub format: LayerFormat,
    sink: Sink<W>,
    chunk_size: u64,
    level: i32,
    toc: TocState,
    entries: usize,
    chunks: usize,
    landmark: Landmark,
    buf: Vec<u8>,
    /// Prioritized paths not in the layer.
    pub missing: Vec<String>,
    /// Prioritized paths that could not be moved.
    pub unmovable: Vec<String>,
    /// Prioritized regular files too large to move.
    pub too_large: Vec<String>,
}

impl<W: Write> Builder<W> {
    /// A builder for `opts`; zstd:chunked spools its tar-split in `spool_dir`.
    ///
    /// # Errors
    /// [`FormatError::Io`] for a zero chunk size, a bad level, or when the
    /// spool file cannot be created.
    pub fn new(out: W, opts: &WriterOptions, spool_dir: &Path) -> Result<Self, FormatError> {
        if opts.chunk_size == 0 {
            return Err(io_err("writer options")(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk size 0",
            )));
        }
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // Payload members are at most a chunk; longer ones (runs of headers,
        // the TOC, chunks past 32 MiB) are streamed on this thread.
        let member_limit = opts.chunk_size.clamp(1 << 20, 32 << 20) as usize + (64 << 10);
        let sink = Sink::new(
            out,
            opts.format.compression(),
            opts.level,
            threads,
            member_limit,
        )
        .map_err(io_err("writer options"))?;
        let toc = match opts.format {
            LayerFormat::ZstdChunked => TocState::Chunked(
                chunked::Toc::default(),
                TarSplit::new(spool_dir, opts.level).map_err(io_err(format!(
                    "create the tar-split spool file in {}",
                    spool_dir.display()
                )))?,
            ),
            _ => TocState::Estargz(estargz::Toc::new(opts.chunk_size)),
        };
        Ok(Builder {
            format: opts.format,
            sink,
            chunk_size: opts.chunk_size,
            level: opts.level,
            toc,
            entries: 0,
            chunks: 0,
            landmark: Landmark::None,
            buf: vec![0; 256 << 10],
            missing: Vec::new(),
            unmovable: Vec::new(),
            too_large: Vec::new(),
        })
    }

    /// Raw tar bytes between payloads (padding, header blocks, end-of-archive)
    /// into the current member.
    pub fn raw(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        self.sink.write(bytes).map_err(io_err("write the layer"))?;
        if let TocState::Chunked(_, ts) = &mut self.toc {
            ts.segment(bytes).map_err(io_err("write the tar-split"))?;
        }
        Ok(())
    }

    /// `n` zero bytes, as [`Builder::raw`].
    pub fn zeros(&mut self, n: u64) -> Result<(), FormatError> {
        const Z: [u8; 1024] = [0; 1024];
        let mut n = n;
        while n > 0 {
            let k = n.min(Z.len() as u64);
            self.raw(&Z[..k as usize])?;
            n -= k;
        }
        Ok(())
    }

    /// The payload (regular files) and TOC entry of `p`, whose header blocks
    /// were just passed to [`Builder::raw`]; reads `p.size` bytes from `r`.
    pub fn entry(&mut self, p: &Parsed, r: &mut dyn Read) -> Result<(), FormatError> {
        let size = if p.kind == Kind::Reg { p.size } else { 0 };
        let chunked = matches!(self.toc, TocState::Chunked(..));
        let mut payload = Payload {
            r,
            name: &p.name,
            left: size,
            total: size,
            file: (chunked || size > self.chunk_size).then(Sha256::new),
            crc: (chunked && size > 0).then(Crc64::new),
        };
        let write = io_err("write the layer");
        let chunks = if size == 0 {
            Vec::new()
        } else if chunked {
            let c = chunked::payload(&mut self.sink, &mut payload, self.chunk_size, &mut self.buf)?;
            self.sink.close_member().map_err(write)?;
            c
        } else {
            fixed_chunks(&mut self.sink, &mut payload, self.chunk_size, &mut self.buf)?
        };
        let file_digest = match (payload.file.take(), chunks.as_slice()) {
            (Some(h), _) => digest_of(h),
            (None, [one]) => one.digest.clone(),
            (None, _) => Digest::sha256_of(b""),
        };
        // zstd:chunked closed the payload's last frame: the next one's mark.
        let end = if chunked && size > 0 {
            self.sink.mark()
        } else {
            0
        };
        self.chunks += chunks.len();
        self.entries += 1;
        match &mut self.toc {
            TocState::Estargz(toc) => toc.push(p, &chunks, &file_digest),
            TocState::Chunked(toc, ts) => {
                toc.push(p, &chunks, (size > 0).then_some(&file_digest), end);
                let crc = payload.crc.as_ref().map(Crc64::sum);
                ts.file(&p.name, size, crc)
                    .map_err(io_err("write the tar-split"))?;
            }
        }
        Ok(())
    }

    /// Writes a landmark file (eStargz): header, the byte `0x0f`, padding.
    pub fn landmark(&mut self, which: Landmark) -> Result<(), FormatError> {
        let name = match which {
            Landmark::Prefetch => ".prefetch.landmark",
            Landmark::NoPrefetch => ".no.prefetch.landmark",
            Landmark::None => return Ok(()),
        };
        self.raw(&header::synthetic(name, 1))?;
        let p = Parsed {
            name: name.as_bytes().to_vec(),
            clean: name.as_bytes().to_vec(),
            kind: Kind::Reg,
            link: Vec::new(),
            link_clean: Vec::new(),
            size: 1,
            mode: 0,
            uid: 0,
            gid: 0,
            uname: Vec::new(),
            gname: Vec::new(),
            mtime: (0, 0),
            atime: None,
            ctime: None,
            dev: (0, 0),
            pax: Vec::new(),
            xattrs: Vec::new(),
            rewrite: true,
        };
        self.entry(&p, &mut &[0x0fu8][..])?;
        self.zeros(pad512(1))?;
        self.landmark = which;
        Ok(())
    }

    /// Writes the TOC (and tar-split) and footer; returns what was written.
    ///
    /// eStargz ends the tar stream itself; for zstd:chunked the caller has
    /// already passed the end-of-archive bytes to [`Builder::raw`].
    pub fn finish(self) -> Result<LayerWritten, FormatError> {
        let mut sink = self.sink;
        let uncompressed_before = sink.uncompressed();
        let (toc_digest, mut annotations) = match self.toc {
            TocState::Estargz(toc) => toc.finish(&mut sink, self.format, self.level)?,
            TocState::Chunked(toc, ts) => toc.finish(&mut sink, ts, self.level)?,
        };
        debug_assert!(sink.uncompressed() >= uncompressed_before);
        let (_, t): (W, Totals) = sink.finish().map_err(io_err("write the layer"))?;
        if self.format != LayerFormat::ZstdChunked {
            annotations.insert(
                estargz::UNCOMPRESSED_SIZE.to_string(),
                t.uncompressed_size.to_string(),
            );
        }
        Ok(LayerWritten {
            media_type: self.format.media_type().to_string(),
            digest: t.digest,
            size: t.size,
            diff_id: t.diff_id,
            uncompressed_size: t.uncompressed_size,
            toc_digest,
            annotations,
            entries: self.entries,
            chunks: self.chunks,
            landmark: self.landmark,
            prioritized_missing: self.missing,
            prioritized_unmovable: self.unmovable,
            prioritized_too_large: self.too_large,
        })
    }
}

/// eStargz chunking: a new member for every `chunk_size` bytes.
fn fixed_chunks<W: Write>(
    sink: &mut Sink<W>,
    payload: &mut Payload<'_>,
    chunk_size: u64,
    buf: &mut [u8],
) -> Result<Vec<ChunkRec>, FormatError> {
    let write = |e| io_err("write the layer")(e);
    let mut chunks = Vec::new();
    let mut at = 0;
    while payload.left() > 0 {
        sink.close_member().map_err(write)?;
        let offset = sink.mark();
        let mut h = Sha256::new();
        let mut size = 0;
        while size < chunk_size && payload.left() > 0 {
            let data = payload.read(buf, chunk_size - size)?;
            h.update(data);
            sink.write(data).map_err(write)?;
            size += data.len() as u64;
        }
        chunks.push(ChunkRec {
            offset,
            file_offset: at,
            size,
            digest: digest_of(h),
            zeros: false,
        });
        at += size;
    }
    Ok(chunks)
}

/// Annotations as a sorted map.
pub(super) type Annotations = BTreeMap<String, String>;
