//! Compressing whole members (gzip members, zstd frames), on the calling
//! thread or on a pool of worker threads, with output that does not depend
//! on either: a member's bytes are a function of its input bytes only.
//!
//! ```text
//! gzip member: 1f 8b 08 00 | mtime 00 00 00 00 | xfl | os ff | raw deflate | crc32 LE | isize LE
//!   xfl = 2 at level 9, 4 at level 1, else 0 (as Go's compress/gzip writes it)
//! zstd frame:  one ZSTD_compressStream2 session, content checksum on, no
//!              content size, single-threaded
//! ```
//!
//! The codec gets its input in pieces of exactly [`FEED`] bytes (the last
//! one shorter), however the caller hands the bytes over, and the same
//! scratch size, so the call sequence (and thus the output) is the same
//! whether a member is compressed at once by a worker or streamed.

use std::collections::VecDeque;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, FlushCompress, Status};
use zstd::stream::raw::{Encoder as ZstdEncoder, InBuffer, Operation, OutBuffer};

use super::sink::zstd_encoder;
use crate::format::Compression;

/// Input bytes per codec call.
pub(super) const FEED: usize = 64 << 10;
/// Output scratch per codec call.
const SCRATCH: usize = 128 << 10;

/// Which codec at which level; `Copy` so each worker builds its own.
#[derive(Debug, Clone, Copy)]
pub(super) enum CodecKind {
    Gzip { level: u32, xfl: u8 },
    Zstd { level: i32 },
}

impl CodecKind {
    /// The codec for `compression` at `level` (gzip 0–9, zstd 1–22).
    ///
    /// # Errors
    /// `InvalidInput` for a level out of range.
    pub fn new(compression: Compression, level: i32) -> io::Result<Self> {
        match compression {
            Compression::Gzip => {
                let level = u32::try_from(level)
                    .ok()
                    .filter(|l| *l <= 9)
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("gzip level {level}: want 0..=9"),
                        )
                    })?;
                let xfl = match level {
                    9 => 2,
                    1 => 4,
                    _ => 0,
                };
                Ok(CodecKind::Gzip { level, xfl })
            }
            Compression::Zstd => {
                zstd_encoder(level)?;
                Ok(CodecKind::Zstd { level })
            }
        }
    }
}

enum Codec {
    Gzip {
        deflate: Box<Compress>,
        crc: flate2::Crc,
        xfl: u8,
    },
    Zstd(Box<ZstdEncoder<'static>>),
}

/// One reusable compressor producing whole members.
pub(super) struct MemberCodec {
    codec: Codec,
    carry: Vec<u8>,
    scratch: Vec<u8>,
    open: bool,
}

impl MemberCodec {
    /// A compressor of `kind`.
    pub fn new(kind: CodecKind) -> io::Result<Self> {
        let codec = match kind {
            CodecKind::Gzip { level, xfl } => Codec::Gzip {
                deflate: Box::new(Compress::new(flate2::Compression::new(level), false)),
                crc: flate2::Crc::new(),
                xfl,
            },
            CodecKind::Zstd { level } => Codec::Zstd(Box::new(zstd_encoder(level)?)),
        };
        Ok(MemberCodec {
            codec,
            carry: Vec::with_capacity(FEED),
            scratch: vec![0; SCRATCH],
            open: false,
        })
    }

    /// Appends `data` to the open member (opening one), compressed bytes to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if !self.open {
            if let Codec::Gzip { xfl, .. } = self.codec {
                out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff]);
            }
            self.open = true;
        }
        if let Codec::Gzip { crc, .. } = &mut self.codec {
            crc.update(data);
        }
        if !self.carry.is_empty() {
            let take = (FEED - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() < FEED {
                return Ok(());
            }
            let carry = std::mem::take(&mut self.carry);
            let r = self.piece(&carry, out);
            self.carry = carry;
            self.carry.clear();
            r?;
        }
        while data.len() >= FEED {
            self.piece(&data[..FEED], out)?;
            data = &data[FEED..];
        }
        self.carry.extend_from_slice(data);
        Ok(())
    }

    /// One codec call sequence over `input` (no flush).
    fn piece(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        match &mut self.codec {
            Codec::Gzip { deflate, .. } => {
                let mut input = input;
                loop {
                    let (i0, o0) = (deflate.total_in(), deflate.total_out());
                    deflate
                        .compress(input, &mut self.scratch, FlushCompress::None)
                        .map_err(io::Error::other)?;
                    let used = (deflate.total_in() - i0) as usize;
                    let made = (deflate.total_out() - o0) as usize;
                    input = &input[used..];
                    out.extend_from_slice(&self.scratch[..made]);
                    if input.is_empty() && made < self.scratch.len() {
                        return Ok(());
                    }
                }
            }
            Codec::Zstd(enc) => {
                let mut inb = InBuffer::around(input);
                while inb.pos() < input.len() {
                    let mut o = OutBuffer::around(&mut self.scratch[..]);
                    enc.run(&mut inb, &mut o)?;
                    let made = o.pos();
                    out.extend_from_slice(&self.scratch[..made]);
                }
                Ok(())
            }
        }
    }

    /// Ends the open member (nothing when none is open), its last bytes to
    /// `out`, and readies the codec for the next one.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if !self.open {
            return Ok(());
        }
        self.open = false;
        let carry = std::mem::take(&mut self.carry);
        let r = self.piece(&carry, out);
        self.carry = carry;
        self.carry.clear();
        r?;
        match &mut self.codec {
            Codec::Gzip { deflate, crc, .. } => {
                loop {
                    let o0 = deflate.total_out();
                    let st = deflate
                        .compress(&[], &mut self.scratch, FlushCompress::Finish)
                        .map_err(io::Error::other)?;
                    let made = (deflate.total_out() - o0) as usize;
                    out.extend_from_slice(&self.scratch[..made]);
                    if st == Status::StreamEnd {
                        break;
                    }
                }
                out.extend_from_slice(&crc.sum().to_le_bytes());
                out.extend_from_slice(&crc.amount().to_le_bytes());
                deflate.reset();
                crc.reset();
                Ok(())
            }
            Codec::Zstd(enc) => {
                loop {
                    let mut o = OutBuffer::around(&mut self.scratch[..]);
                    let left = enc.finish(&mut o, true)?;
                    let made = o.pos();
                    out.extend_from_slice(&self.scratch[..made]);
                    if left == 0 {
                        break;
                    }
                }
                enc.reinit()
            }
        }
    }
}

/// Consecutive whole members: their bytes back to back and where each ends.
#[derive(Default)]
pub(super) struct Batch {
    pub data: Vec<u8>,
    pub ends: Vec<usize>,
}

/// A compressed batch: the members' bytes back to back and each one's size.
pub(super) struct Compressed {
    pub bytes: Vec<u8>,
    pub sizes: Vec<usize>,
}

/// Compresses every member of `batch` with `mc`.
pub(super) fn compress_batch(mc: &mut MemberCodec, batch: &Batch) -> io::Result<Compressed> {
    let mut bytes = Vec::with_capacity(batch.data.len() / 2 + 64);
    let mut sizes = Vec::with_capacity(batch.ends.len());
    let mut start = 0;
    for &end in &batch.ends {
        let before = bytes.len();
        mc.feed(&batch.data[start..end], &mut bytes)?;
        mc.finish(&mut bytes)?;
        sizes.push(bytes.len() - before);
        start = end;
    }
    Ok(Compressed { bytes, sizes })
}

struct Job {
    batch: Batch,
    reply: SyncSender<io::Result<Compressed>>,
}

/// Worker threads compressing batches; results come back in submission order.
pub(super) struct Pool {
    tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    pending: VecDeque<Receiver<io::Result<Compressed>>>,
    window: usize,
}

fn stopped() -> io::Error {
    io::Error::other("a compression worker thread stopped")
}

impl Pool {
    /// `threads` workers compressing with `kind`; at most `window` batches
    /// in flight (each a worker's input and output: bounded memory).
    pub fn new(kind: CodecKind, threads: usize, window: usize) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let h = std::thread::Builder::new()
                .name(format!("lazysnap-compress-{i}"))
                .spawn(move || {
                    let mut mc = MemberCodec::new(kind);
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let res = match &mut mc {
                            Ok(mc) => compress_batch(mc, &job.batch),
                            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                        };
                        let _ = job.reply.send(res);
                    }
                })?;
            workers.push(h);
        }
        Ok(Pool {
            tx: Some(tx),
            workers,
            pending: VecDeque::new(),
            window: window.max(1),
        })
    }

    /// Hands `batch` to a worker. When the window is full, first returns
    /// the oldest result (waiting for it); else `None`.
    pub fn submit(&mut self, batch: Batch) -> io::Result<Option<Compressed>> {
        let done = if self.pending.len() >= self.window {
            self.next()?
        } else {
            None
        };
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(Job { batch, reply })
            .map_err(|_| stopped())?;
        self.pending.push_back(rx);
        Ok(done)
    }

    /// The oldest result, waiting for it; `None` when nothing is in flight.
    pub fn next(&mut self) -> io::Result<Option<Compressed>> {
        match self.pending.pop_front() {
            None => Ok(None),
            Some(rx) => rx.recv().map_err(|_| stopped())?.map(Some),
        }
    }

    /// Whether results are still to come.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
