//! A streaming reader of layer tars that applies extension headers exactly:
//! PAX `x` records parsed by their length prefix ([`super::pax`]), GNU `L`
//! (long name) and `K` (long link) headers, GNU sparse (`S`) files
//! expanded. It reads exactly the bytes it parses (no read-ahead), so a
//! caller counting the bytes underneath knows where each entry's blocks lie.
//!
//! ```text
//! entry:  [ext header + data + padding]* main header [GNU sparse ext blocks]* data padding
//!   ext:  `x` PAX records for the next entry | `L` long name | `K` long link (NUL-terminated)
//!   name: `L` > PAX `path` > ustar prefix "/" name     (as Go's archive/tar)
//!   link: `K` > PAX `linkpath` > linkname
//!   size: PAX `size` > header size field (octal, or GNU base-256)
//! end:    the first all-zero block, or end of stream at a block boundary
//! ```
//!
//! A `g` (PAX global) header is returned as an entry of its own with its
//! records in [`TarEntry::pax`]; it is not applied to later entries (Go's
//! archive/tar does not either). Checksums are checked (unsigned or signed
//! sums, as Go accepts). Extension data is limited to [`MAX_EXTENSION`].

mod entry;

use std::io::{self, Read};

pub use entry::{Sparse, TarEntry, numeric, pax_time};
use entry::{checksum_ok, cstr, decimal, header_path};

use super::pax::{self, PaxError};

/// Tar block size in bytes.
pub const BLOCK: u64 = 512;

/// Largest payload of an `x`, `g`, `L` or `K` header: 1 MiB (Go's
/// archive/tar `maxSpecialFileSize`).
pub const MAX_EXTENSION: u64 = 1 << 20;

/// Bytes of padding after `n` bytes of data up to the next block.
pub fn pad512(n: u64) -> u64 {
    (BLOCK - n % BLOCK) % BLOCK
}

/// A tar stream that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// Reading the underlying stream failed.
    #[error("read the tar stream at byte {offset}: {source}")]
    Io {
        /// Stream offset of the failed read.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The stream ends inside a header block, extension data or skipped data.
    #[error("tar stream ends inside {what} (at byte {offset})")]
    Truncated {
        /// Stream offset where it ended.
        offset: u64,
        /// What was being read.
        what: &'static str,
    },
    /// A header block is malformed; `offset` is its stream offset.
    #[error("tar header at byte {offset}: {message}")]
    Header {
        /// Stream offset of the header block.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// A PAX header's records do not parse.
    #[error("PAX header at byte {offset}: {source}")]
    Pax {
        /// Stream offset of the `x`/`g` header block.
        offset: u64,
        /// The record error.
        #[source]
        source: PaxError,
    },
}

impl From<TarError> for io::Error {
    /// Keeps the kind of an underlying I/O error; `InvalidData` otherwise.
    fn from(e: TarError) -> io::Error {
        let kind = match &e {
            TarError::Io { source, .. } => source.kind(),
            TarError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

fn header_err(offset: u64, message: impl Into<String>) -> TarError {
    TarError::Header {
        offset,
        message: message.into(),
    }
}

/// What is left of the current entry's data.
enum Data {
    Plain { left: u64 },
    Sparse { map: Sparse, seg: usize, at: u64 },
}

/// Reads entries from `R`; between [`TarReader::next_entry`] calls, reads
/// the current entry's contents (sparse files expanded) through [`Read`].
pub struct TarReader<R> {
    inner: R,
    pos: u64,
    next: u64,
    data: Data,
    ended: bool,
}

impl<R> std::fmt::Debug for TarReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarReader")
            .field("position", &self.pos)
            .field("next_entry_at", &self.next)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<R: Read> TarReader<R> {
    /// A reader whose stream starts at offset 0.
    pub fn new(inner: R) -> Self {
        Self::at(inner, 0)
    }

    /// A reader over a stream already at `offset` (where an entry starts);
    /// offsets in entries and errors count from the stream's start.
    pub fn at(inner: R, offset: u64) -> Self {
        TarReader {
            inner,
            pos: offset,
            next: offset,
            data: Data::Plain { left: 0 },
            ended: false,
        }
    }

    /// Bytes of the stream read so far (from offset 0).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The underlying reader, positioned where this one stopped.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(TarError::Io {
                        offset: self.pos,
                        source,
                    });
                }
            }
        }
        Ok(got)
    }

    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), TarError> {
        if self.fill(buf)? < buf.len() {
            return Err(TarError::Truncated {
                offset: self.pos,
                what,
            });
        }
        Ok(())
    }

    /// The next block, or `None` at a clean end of stream.
    fn block(&mut self) -> Result<Option<[u8; 512]>, TarError> {
        let mut b = [0u8; 512];
        match self.fill(&mut b)? {
            0 => Ok(None),
            512 => Ok(Some(b)),
            _ => Err(TarError::Truncated {
                offset: self.pos,
                what: "a header block",
            }),
        }
    }

    fn skip_to(&mut self, target: u64) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while self.pos < target {
            let n = (target - self.pos).min(buf.len() as u64) as usize;
            self.exact(&mut buf[..n], "entry data or padding")?;
        }
        Ok(())
    }

    /// The data and padding of an extension header at `at`.
    fn extension(&mut self, at: u64, size: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_EXTENSION {
            return Err(header_err(
                at,
                format!(
                    "extension header data of {size} bytes is over the {MAX_EXTENSION}-byte limit"
                ),
            ));
        }
        let mut data = vec![0u8; size as usize];
        self.exact(&mut data, "extension header data")?;
        let pad = self.pos + pad512(size);
        self.skip_to(pad)?;
        Ok(data)
    }

    /// Reads the sparse map of the GNU sparse header `h` at `at` (and its
    /// extension blocks); `stored` is the entry's stored size.
    fn sparse_map(&mut self, at: u64, h: &[u8; 512], stored: u64) -> Result<Sparse, TarError> {
        let mut segments = Vec::new();
        let mut done = false;
        let mut take = |slot: &[u8]| -> Result<(), TarError> {
            if done || slot[0] == 0 {
                done = true;
                return Ok(());
            }
            let off = numeric(&slot[..12]);
            let len = numeric(&slot[12..24]);
            let (Some(off), Some(len)) = (off, len) else {
                return Err(header_err(at, "bad sparse map entry"));
            };
            segments.push((off, len));
            Ok(())
        };
        for slot in h[386..482].chunks(24) {
            take(slot)?;
        }
        let mut extended = h[482] != 0;
        while extended {
            let b = self.block()?.ok_or(TarError::Truncated {
                offset: self.pos,
                what: "a sparse map block",
            })?;
            for slot in b[..504].chunks(24) {
                take(slot)?;
            }
            extended = b[504] != 0;
        }
        let real_size =
            numeric(&h[483..495]).ok_or_else(|| header_err(at, "bad sparse real size"))?;
        let (mut end, mut total) = (0u64, 0u64);
        for &(off, len) in &segments {
            let seg_end = off
                .checked_add(len)
                .filter(|&e| off >= end && e <= real_size);
            end = seg_end.ok_or_else(|| {
                header_err(
                    at,
                    "sparse segments overlap, go backwards or pass the real size",
                )
            })?;
            total += len;
        }
        if total != stored {
            return Err(header_err(
                at,
                format!("sparse segments hold {total} bytes but the entry stores {stored}"),
            ));
        }
        Ok(Sparse {
            segments,
            real_size,
        })
    }

    /// The next entry, after skipping what is left of the current one.
    /// `None` at the end-of-archive block or a clean end of stream.
    ///
    /// # Errors
    /// [`TarError`] for a failed read, a stream cut short, a bad checksum
    /// or number, malformed PAX records, extension data over
    /// [`MAX_EXTENSION`], two `x` (or `L`, `K`) headers for one entry,
    /// extension headers with no entry after them or before a `g` header,
    /// a bad sparse map.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        if self.ended {
            return Ok(None);
        }
        self.skip_to(self.next)?;
        self.data = Data::Plain { left: 0 };
        let start = self.pos;
        let mut pax_recs: Option<Vec<pax::Record>> = None;
        let (mut long_name, mut long_link): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
        loop {
            let at = self.pos;
            let pending = pax_recs.is_some() || long_name.is_some() || long_link.is_some();
            let block = match self.block()? {
                Some(b) if b.iter().any(|&x| x != 0) => b,
                _ if pending => {
                    return Err(header_err(
                        at,
                        "extension headers are not followed by an entry",
                    ));
                }
                _ => {
                    self.ended = true;
                    return Ok(None);
                }
            };
            if !checksum_ok(&block) {
                return Err(header_err(at, "checksum mismatch (not a tar header)"));
            }
            let size = numeric(&block[124..136]).ok_or_else(|| header_err(at, "bad size field"))?;
            let typeflag = block[156];
            match typeflag {
                b'x' => {
                    let data = self.extension(at, size)?;
                    let recs =
                        pax::parse(&data).map_err(|source| TarError::Pax { offset: at, source })?;
                    if pax_recs.replace(recs).is_some() {
                        return Err(header_err(at, "two PAX headers for one entry"));
                    }
                    continue;
                }
                b'L' | b'K' => {
                    let data = self.extension(at, size)?;
                    let slot = if typeflag == b'L' {
                        &mut long_name
                    } else {
                        &mut long_link
                    };
                    if slot.replace(cstr(&data).to_vec()).is_some() {
                        return Err(header_err(at, "two GNU long-name headers for one entry"));
                    }
                    continue;
                }
                b'g' => {
                    if pending {
                        return Err(header_err(at, "extension headers precede a global header"));
                    }
                    let data = self.extension(at, size)?;
                    let recs =
                        pax::parse(&data).map_err(|source| TarError::Pax { offset: at, source })?;
                    self.next = self.pos;
                    return Ok(Some(TarEntry {
                        start,
                        data_start: at + BLOCK,
                        header: block,
                        path: header_path(&block),
                        link: cstr(&block[157..257]).to_vec(),
                        pax: recs,
                        size,
                        sparse: None,
                    }));
                }
                _ => {}
            }
            let pax_recs = pax_recs.unwrap_or_default();
            let last = |key: &[u8]| {
                pax_recs
                    .iter()
                    .rev()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            };
            let size = match last(b"size") {
                Some(v) => decimal(&v).ok_or_else(|| header_err(at, "bad PAX size"))?,
                None => size,
            };
            let path = long_name
                .or_else(|| last(b"path"))
                .unwrap_or_else(|| header_path(&block));
            let link = long_link
                .or_else(|| last(b"linkpath"))
                .unwrap_or_else(|| cstr(&block[157..257]).to_vec());
            let sparse = if typeflag == b'S' {
                Some(self.sparse_map(at, &block, size)?)
            } else {
                None
            };
            let data_start = self.pos;
            self.next = data_start
                .checked_add(size)
                .and_then(|e| e.checked_add(pad512(size)))
                .ok_or_else(|| header_err(at, "size overflows"))?;
            self.data = match &sparse {
                Some(map) => Data::Sparse {
                    map: map.clone(),
                    seg: 0,
                    at: 0,
                },
                None => Data::Plain { left: size },
            };
            return Ok(Some(TarEntry {
                start,
                data_start,
                header: block,
                path,
                link,
                pax: pax_recs,
                size,
                sparse,
            }));
        }
    }

    fn read_stored(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "tar stream ends inside an entry's data (at byte {})",
                    self.pos
                ),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> Read for TarReader<R> {
    /// Reads the current entry's contents; 0 at its end.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.data {
            Data::Plain { left } => {
                let want = (*left).min(buf.len() as u64) as usize;
                if want == 0 {
                    return Ok(0);
                }
                let n = self.read_stored(&mut buf[..want])?;
                if let Data::Plain { left } = &mut self.data {
                    *left -= n as u64;
                }
                Ok(n)
            }
            Data::Sparse { map, seg, at } => loop {
                if *at >= map.real_size {
                    return Ok(0);
                }
                let (off, len) = map
                    .segments
                    .get(*seg)
                    .copied()
                    .unwrap_or((map.real_size, 0));
                if *at < off {
                    let n = (off - *at).min(buf.len() as u64) as usize;
                    buf[..n].fill(0);
                    *at += n as u64;
                    return Ok(n);
                }
                if *at < off + len {
                    let want = (off + len - *at).min(buf.len() as u64) as usize;
                    let n = self.read_stored(&mut buf[..want])?;
                    if let Data::Sparse { at, .. } = &mut self.data {
                        *at += n as u64;
                    }
                    return Ok(n);
                }
                *seg += 1;
            },
        }
    }
}

#[cfg(test)]
mod tests;
