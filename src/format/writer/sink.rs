//! The compressed output: a run of gzip members or zstd frames, opened
//! lazily and closed at chunk boundaries, with the byte counts and sha256s
//! of both the compressed blob and the uncompressed stream.
//!
//! Members are written by hand around one reused deflate (or zstd) context,
//! so a layer of 100,000 small files does not allocate a compressor per
//! file, and the bytes are deterministic:
//!
//! ```text
//! gzip member: 1f 8b 08 00 | mtime 00 00 00 00 | xfl | os ff | raw deflate | crc32 LE | isize LE
//!   xfl = 2 at level 9, 4 at level 1, else 0 (as Go's compress/gzip writes it)
//! zstd frame:  one ZSTD_compressStream2 session, content checksum on, single-threaded
//! ```

use std::io::{self, Write};

use flate2::{Compress, FlushCompress, Status};
use sha2::{Digest as _, Sha256};
use zstd::stream::raw::{Encoder as ZstdEncoder, InBuffer, Operation, OutBuffer};
use zstd::zstd_safe::CParameter;

use crate::format::Compression;
use crate::oci::Digest;

const SCRATCH: usize = 128 << 10;

enum Codec {
    Gzip {
        deflate: Compress,
        crc: flate2::Crc,
        xfl: u8,
    },
    Zstd(ZstdEncoder<'static>),
}

/// The blob being written to `W`.
pub(super) struct Sink<W: Write> {
    out: W,
    pos: u64,
    blob: Sha256,
    diff: Sha256,
    uncompressed: u64,
    codec: Codec,
    open: bool,
    scratch: Vec<u8>,
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
    /// A sink compressing with `compression` at `level` (gzip 0–9, zstd 1–22).
    pub fn new(out: W, compression: Compression, level: i32) -> io::Result<Self> {
        let codec = match compression {
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
                Codec::Gzip {
                    deflate: Compress::new(flate2::Compression::new(level), false),
                    crc: flate2::Crc::new(),
                    xfl: match level {
                        9 => 2,
                        1 => 4,
                        _ => 0,
                    },
                }
            }
            Compression::Zstd => Codec::Zstd(zstd_encoder(level)?),
        };
        Ok(Sink {
            out,
            pos: 0,
            blob: Sha256::new(),
            diff: Sha256::new(),
            uncompressed: 0,
            codec,
            open: false,
            scratch: vec![0; SCRATCH],
        })
    }

    /// Compressed bytes written so far: the offset where the next member
    /// starts once the current one is closed.
    pub fn pos(&self) -> u64 {
        self.pos
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
        if !self.open {
            if let Codec::Gzip { xfl, .. } = self.codec {
                let header = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff];
                self.emit(&header)?;
            }
            self.open = true;
        }
        self.diff.update(data);
        self.uncompressed += data.len() as u64;
        match &mut self.codec {
            Codec::Gzip { deflate, crc, .. } => {
                crc.update(data);
                let mut input = data;
                loop {
                    let (i0, o0) = (deflate.total_in(), deflate.total_out());
                    deflate
                        .compress(input, &mut self.scratch, FlushCompress::None)
                        .map_err(io::Error::other)?;
                    let used = (deflate.total_in() - i0) as usize;
                    let made = (deflate.total_out() - o0) as usize;
                    input = &input[used..];
                    write_out(
                        &mut self.out,
                        &mut self.pos,
                        &mut self.blob,
                        &self.scratch[..made],
                    )?;
                    if input.is_empty() && made < self.scratch.len() {
                        return Ok(());
                    }
                }
            }
            Codec::Zstd(enc) => {
                let mut input = InBuffer::around(data);
                while input.pos() < data.len() {
                    let mut output = OutBuffer::around(&mut self.scratch[..]);
                    enc.run(&mut input, &mut output)?;
                    let made = output.pos();
                    write_out(
                        &mut self.out,
                        &mut self.pos,
                        &mut self.blob,
                        &self.scratch[..made],
                    )?;
                }
                Ok(())
            }
        }
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
        if !self.open {
            return Ok(());
        }
        self.open = false;
        match &mut self.codec {
            Codec::Gzip { deflate, crc, .. } => {
                loop {
                    let o0 = deflate.total_out();
                    let st = deflate
                        .compress(&[], &mut self.scratch, FlushCompress::Finish)
                        .map_err(io::Error::other)?;
                    let made = (deflate.total_out() - o0) as usize;
                    write_out(
                        &mut self.out,
                        &mut self.pos,
                        &mut self.blob,
                        &self.scratch[..made],
                    )?;
                    if st == Status::StreamEnd {
                        break;
                    }
                }
                let mut trailer = [0u8; 8];
                trailer[..4].copy_from_slice(&crc.sum().to_le_bytes());
                trailer[4..].copy_from_slice(&crc.amount().to_le_bytes());
                deflate.reset();
                crc.reset();
                self.emit(&trailer)
            }
            Codec::Zstd(enc) => {
                loop {
                    let mut output = OutBuffer::around(&mut self.scratch[..]);
                    let left = enc.finish(&mut output, true)?;
                    let made = output.pos();
                    write_out(
                        &mut self.out,
                        &mut self.pos,
                        &mut self.blob,
                        &self.scratch[..made],
                    )?;
                    if left == 0 {
                        break;
                    }
                }
                enc.reinit()
            }
        }
    }

    /// Writes bytes outside any member (a footer, a skippable frame); closes
    /// the current member first. They are not part of the uncompressed stream.
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.close_member()?;
        self.emit(bytes)
    }

    /// Closes the last member and returns the writer and the totals.
    pub fn finish(mut self) -> io::Result<(W, Totals)> {
        self.close_member()?;
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
        write_out(&mut self.out, &mut self.pos, &mut self.blob, bytes)
    }
}

fn write_out<W: Write>(
    out: &mut W,
    pos: &mut u64,
    blob: &mut Sha256,
    bytes: &[u8],
) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    out.write_all(bytes)?;
    blob.update(bytes);
    *pos += bytes.len() as u64;
    Ok(())
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
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn gzip_members_are_deterministic_and_decode_as_one_stream() {
        let mut s = Sink::new(Vec::new(), Compression::Gzip, 9).unwrap();
        s.write(b"hello ").unwrap();
        s.close_member().unwrap();
        let second = s.pos();
        s.write(b"world").unwrap();
        s.zeros(3).unwrap();
        let (blob, t) = s.finish().unwrap();
        assert_eq!(&blob[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 0xff]);
        assert_eq!(&blob[second as usize..second as usize + 2], &[0x1f, 0x8b]);
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello world\0\0\0");
        assert_eq!(t.diff_id, Digest::sha256_of(b"hello world\0\0\0"));
        assert_eq!((t.size, t.uncompressed_size), (blob.len() as u64, 14));
        assert_eq!(t.digest, Digest::sha256_of(&blob));
        // The second member alone decodes to its own bytes.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&blob[second as usize..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"world\0\0\0");
    }

    #[test]
    fn zstd_frames_and_raw_bytes() {
        let mut s = Sink::new(Vec::new(), Compression::Zstd, 3).unwrap();
        s.write(b"abc").unwrap();
        s.close_member().unwrap();
        s.close_member().unwrap(); // nothing open: no empty frame
        let second = s.pos();
        s.write(b"def").unwrap();
        s.write_raw(&skippable(b"meta").unwrap()).unwrap();
        let (blob, t) = s.finish().unwrap();
        assert_eq!(
            &blob[second as usize..second as usize + 4],
            &[0x28, 0xb5, 0x2f, 0xfd]
        );
        assert_eq!(zstd::decode_all(&blob[..]).unwrap(), b"abcdef");
        assert_eq!(zstd::decode_all(&blob[second as usize..]).unwrap(), b"def");
        assert!(blob.ends_with(&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, b'm', b'e', b't', b'a']));
        assert_eq!(t.uncompressed_size, 6);
        assert_eq!(
            zstd::decode_all(&zstd_frame(b"toc", 3).unwrap()[..]).unwrap(),
            b"toc"
        );
    }

    #[test]
    fn bad_levels_are_refused() {
        assert!(Sink::new(Vec::new(), Compression::Gzip, 10).is_err());
        assert!(Sink::new(Vec::new(), Compression::Zstd, 99).is_err());
    }
}
