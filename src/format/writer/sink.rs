//! The compressed output: a run of gzip members or zstd frames, opened
//! lazily and closed at chunk boundaries, with the byte counts and sha256s
//! of both the compressed blob and the uncompressed stream.
//!
//! Members are compressed in parallel ([`member`](super::member)): closed
//! members are gathered into batches of about [`BATCH`] bytes that worker
//! threads compress while the caller goes on; results are written in
//! order, so the blob is byte-identical whatever the thread count. At most
//! `2 × threads` batches are in flight; a member growing past the member
//! limit is streamed on the calling thread instead (after the batches
//! before it are written), so memory stays bounded.
//!
//! Compressed offsets are known only once the members before are written,
//! so the writer records a member's *mark* ([`Sink::mark`], its ordinal)
//! and turns it into a blob offset at the end ([`Sink::resolve`]).

use std::io::{self, Write};

use sha2::{Digest as _, Sha256};
use zstd::stream::raw::{Encoder as ZstdEncoder, InBuffer, Operation, OutBuffer};
use zstd::zstd_safe::CParameter;

use super::member::{Batch, CodecKind, Compressed, MemberCodec, Pool, compress_batch};
use crate::format::Compression;
use crate::oci::Digest;

const SCRATCH: usize = 128 << 10;

/// A batch goes to a worker once it holds this many bytes (at a member end).
pub(super) const BATCH: usize = 1 << 20;

/// The blob being written to `W`.
pub(super) struct Sink<W: Write> {
    out: W,
    pos: u64,
    blob: Sha256,
    diff: Sha256,
    uncompressed: u64,
    /// Compresses batches when there is no pool, and streamed members.
    inline: MemberCodec,
    pool: Option<Pool>,
    batch: Batch,
    /// Start in `batch.data` of the open member, while one is buffered.
    open_at: Option<usize>,
    /// The open member is streamed through `inline`.
    streaming: bool,
    member_limit: usize,
    /// Members closed so far: the mark of the next one.
    members: u64,
    /// Blob offset where each member starts, by mark, as written.
    starts: Vec<u64>,
    /// Blob offset after the last member written.
    member_end: u64,
    buf: Vec<u8>,
}

/// Totals of a finished blob.
pub(super) struct Totals {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

/// `sha256:<hex>` of a finished hasher.
pub(super) fn digest_of(h: Sha256) -> Digest {
    format!("sha256:{:x}", h.finalize())
        .parse()
        .expect("a sha256 digest is well-formed")
}

impl<W: Write> Sink<W> {
    /// A sink compressing with `compression` at `level` (gzip 0–9, zstd
    /// 1–22) on `threads` worker threads (1: on the calling thread only);
    /// members longer than `member_limit` bytes are streamed.
    pub fn new(
        out: W,
        compression: Compression,
        level: i32,
        threads: usize,
        member_limit: usize,
    ) -> io::Result<Self> {
        let kind = CodecKind::new(compression, level)?;
        let pool = if threads > 1 {
            Some(Pool::new(kind, threads, 2 * threads)?)
        } else {
            None
        };
        Ok(Sink {
            out,
            pos: 0,
            blob: Sha256::new(),
            diff: Sha256::new(),
            uncompressed: 0,
            inline: MemberCodec::new(kind)?,
            pool,
            batch: Batch::default(),
            open_at: None,
            streaming: false,
            member_limit: member_limit.max(1),
            members: 0,
            starts: Vec::new(),
            member_end: 0,
            buf: Vec::with_capacity(SCRATCH),
        })
    }

    /// The mark of the next member: call it after [`Sink::close_member`],
    /// before writing the member; [`Sink::resolve`] gives its offset.
    pub fn mark(&self) -> u64 {
        debug_assert!(self.open_at.is_none() && !self.streaming);
        self.members
    }

    /// Writes every closed member; returns the blob offset reached (where
    /// the next member starts, when none is open).
    pub fn pos(&mut self) -> io::Result<u64> {
        self.drain()?;
        Ok(self.pos)
    }

    /// The blob offset of the member with mark `mark` (after [`Sink::pos`]
    /// has written all members up to it); for the mark after the last
    /// member written, the offset after it.
    pub fn resolve(&self, mark: u64) -> u64 {
        usize::try_from(mark)
            .ok()
            .and_then(|m| self.starts.get(m).copied())
            .unwrap_or(self.member_end)
    }

    /// Uncompressed bytes written so far.
    pub fn uncompressed(&self) -> u64 {
        self.uncompressed
    }

    /// Appends uncompressed bytes to the current member, opening one if none is.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.diff.update(data);
        self.uncompressed += data.len() as u64;
        if self.streaming {
            let mut buf = std::mem::take(&mut self.buf);
            let r = self
                .inline
                .feed(data, &mut buf)
                .and_then(|()| self.emit(&buf));
            buf.clear();
            self.buf = buf;
            return r;
        }
        let at = *self.open_at.get_or_insert(self.batch.data.len());
        self.batch.data.extend_from_slice(data);
        if self.batch.data.len() - at > self.member_limit {
            self.stream_open_member(at)?;
        }
        Ok(())
    }

    /// Moves the open member (buffered from `at`) to the inline codec.
    fn stream_open_member(&mut self, at: usize) -> io::Result<()> {
        let head = self.batch.data.split_off(at);
        self.open_at = None;
        self.drain()?;
        self.streaming = true;
        self.starts.push(self.pos);
        let mut buf = std::mem::take(&mut self.buf);
        let r = self
            .inline
            .feed(&head, &mut buf)
            .and_then(|()| self.emit(&buf));
        buf.clear();
        self.buf = buf;
        r
    }

    /// Appends `n` zero bytes to the current member.
    pub fn zeros(&mut self, mut n: u64) -> io::Result<()> {
        const Z: [u8; 4096] = [0; 4096];
        while n > 0 {
            let k = n.min(Z.len() as u64) as usize;
            self.write(&Z[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Closes the current member, if one is open. Nothing is written when
    /// none is: members are never empty.
    pub fn close_member(&mut self) -> io::Result<()> {
        if self.streaming {
            self.streaming = false;
            self.members += 1;
            let mut buf = std::mem::take(&mut self.buf);
            let r = self.inline.finish(&mut buf).and_then(|()| self.emit(&buf));
            buf.clear();
            self.buf = buf;
            self.member_end = self.pos;
            return r;
        }
        if self.open_at.take().is_none() {
            return Ok(());
        }
        self.members += 1;
        self.batch.ends.push(self.batch.data.len());
        if self.batch.data.len() >= BATCH {
            self.submit()?;
        }
        Ok(())
    }

    /// Hands the closed members gathered so far to the pool (or compresses
    /// them here without one).
    fn submit(&mut self) -> io::Result<()> {
        if self.batch.ends.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        if let Some(at) = self.open_at {
            // The open member stays behind, at the start of the next batch.
            self.batch.data = batch.data.split_off(at);
            self.open_at = Some(0);
        }
        let done = match &mut self.pool {
            Some(pool) => pool.submit(batch)?,
            None => Some(compress_batch(&mut self.inline, &batch)?),
        };
        if let Some(c) = done {
            self.put(c)?;
        }
        Ok(())
    }

    /// Writes a compressed batch, recording where each member starts.
    fn put(&mut self, c: Compressed) -> io::Result<()> {
        let mut at = self.pos;
        for size in &c.sizes {
            self.starts.push(at);
            at += *size as u64;
        }
        self.emit(&c.bytes)?;
        self.member_end = self.pos;
        Ok(())
    }

    /// Compresses and writes every closed member.
    fn drain(&mut self) -> io::Result<()> {
        self.submit()?;
        while let Some(pool) = &mut self.pool {
            if !pool.busy() {
                break;
            }
            if let Some(c) = pool.next()? {
                self.put(c)?;
            }
        }
        Ok(())
    }

    /// Writes bytes outside any member (a footer, a skippable frame); closes
    /// the current member first. They are not part of the uncompressed stream.
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.close_member()?;
        self.drain()?;
        self.emit(bytes)
    }

    /// Closes the last member and returns the writer and the totals.
    pub fn finish(mut self) -> io::Result<(W, Totals)> {
        self.close_member()?;
        self.drain()?;
        self.out.flush()?;
        let totals = Totals {
            digest: digest_of(self.blob),
            size: self.pos,
            diff_id: digest_of(self.diff),
            uncompressed_size: self.uncompressed,
        };
        Ok((self.out, totals))
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.out.write_all(bytes)?;
        self.blob.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }
}

/// A single-threaded zstd context at `level` with frame checksums on (as
/// klauspost/compress writes them for containers/storage and stargz).
pub(super) fn zstd_encoder(level: i32) -> io::Result<ZstdEncoder<'static>> {
    if !zstd::compression_level_range().contains(&level) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("zstd level {level} is out of range"),
        ));
    }
    let mut enc = ZstdEncoder::new(level)?;
    enc.set_parameter(CParameter::ChecksumFlag(true))?;
    Ok(enc)
}

/// `data` compressed into one zstd frame (for the TOC and footers' neighbours).
pub(super) fn zstd_frame(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut enc = zstd_encoder(level)?;
    let mut out = Vec::with_capacity(data.len() / 4 + 64);
    let mut scratch = vec![0u8; SCRATCH];
    let mut input = InBuffer::around(data);
    while input.pos() < data.len() {
        let mut o = OutBuffer::around(&mut scratch[..]);
        enc.run(&mut input, &mut o)?;
        let n = o.pos();
        out.extend_from_slice(&scratch[..n]);
    }
    loop {
        let mut o = OutBuffer::around(&mut scratch[..]);
        let left = enc.finish(&mut o, true)?;
        let n = o.pos();
        out.extend_from_slice(&scratch[..n]);
        if left == 0 {
            return Ok(out);
        }
    }
}

/// A zstd skippable frame (`50 2a 4d 18`, u32 LE length) around `payload`.
///
/// # Errors
/// When `payload` is 4 GiB or more.
pub(super) fn skippable(payload: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "skippable frame payload of 4 GiB or more",
        )
    })?;
    let mut f = Vec::with_capacity(payload.len() + 8);
    f.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18]);
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(payload);
    Ok(f)
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
