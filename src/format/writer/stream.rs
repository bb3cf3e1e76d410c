//! Writing in input order, straight from the input stream: header blocks
//! and padding are recorded as [`TarReader`] reads them ([`Tap`]) and copied
//! raw; payloads are read through the reader.
//!
//! Between two entries the recording holds the previous entry's padding and
//! then the next entry's header blocks; the split point is the previous
//! entry's data end rounded up to 512. The padding is copied as read, or
//! replaced by zeros when the previous entry was re-encoded, or dropped with
//! a dropped entry (see [`Parsed::dropped`](super::entry::Parsed::dropped)). After the last entry, zstd:chunked copies the rest of
//! the input (end-of-archive blocks and any record padding) unchanged, so
//! its uncompressed stream is the input tar byte for byte; eStargz ends the
//! tar itself after its TOC entry.

use std::io::{self, Read, Write};

use super::build::{Builder, io_err};
use super::entry::{self, Kind, Names, pad512};
use super::header;
use super::tap::Tap;
use super::{Landmark, LayerFormat, LayerWritten};
use crate::format::FormatError;
use crate::format::tar_reader::TarReader;

/// What to do with the bytes after an entry's data, up to the next header.
#[derive(Clone, Copy)]
enum Trailer {
    /// Copy them (the entry went out raw).
    Raw,
    /// Write this many zeros instead (the entry was re-encoded).
    Zeros(u64),
    /// Drop them (the entry was dropped).
    Drop,
}

fn emit_trailer<W: Write>(b: &mut Builder<W>, t: Trailer, bytes: &[u8]) -> Result<(), FormatError> {
    match t {
        Trailer::Raw => b.raw(bytes),
        Trailer::Zeros(n) => b.zeros(n),
        Trailer::Drop => Ok(()),
    }
}

/// Writes the entries of `input` in order into `b` and finishes the layer.
pub(super) fn write<R: Read, W: Write>(
    input: R,
    mut b: Builder<W>,
) -> Result<LayerWritten, FormatError> {
    let estargz = b.format.is_estargz();
    if estargz {
        b.landmark(Landmark::NoPrefetch)?;
    }
    let tap = Tap::new(input);
    let mut reader = TarReader::new(&tap);
    let mut names = Names::default();
    let mut next_start = 0u64;
    let mut trailer = Trailer::Raw;
    let mut last_name = String::from("(start of the layer)");
    let end = loop {
        let rec_start = tap.pos();
        tap.record();
        let item = reader.next_entry();
        let rec = tap.take();
        let e = match item {
            Ok(Some(e)) => e,
            Ok(None) => break (rec_start, rec),
            Err(x) => {
                return Err(io_err(format!("read the tar entry after {last_name:?}"))(
                    x.into(),
                ));
            }
        };
        let split = next_start
            .checked_sub(rec_start)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|&s| s <= rec.len())
            .ok_or_else(|| io_err("read the layer tar")(io::Error::other("tar position lost")))?;
        emit_trailer(&mut b, trailer, &rec[..split])?;
        let header_bytes = &rec[split..];
        let p = entry::parse(&e)?;
        last_name = entry::lossy(&p.name);
        next_start = e.next_start();
        if p.dropped(estargz) {
            trailer = Trailer::Drop;
            continue;
        }
        names.add(&p)?;
        if p.rewrite {
            b.raw(&header::encode(&p))?;
            trailer = Trailer::Zeros(if p.kind == Kind::Reg {
                pad512(p.size)
            } else {
                0
            });
        } else {
            b.raw(header_bytes)?;
            trailer = Trailer::Raw;
        }
        b.entry(&p, &mut reader)?;
    };
    let (rec_start, rec) = end;
    let split = usize::try_from(next_start.saturating_sub(rec_start))
        .unwrap_or(usize::MAX)
        .min(rec.len());
    emit_trailer(&mut b, trailer, &rec[..split])?;
    let mut rest = &tap;
    if b.format == LayerFormat::ZstdChunked {
        // The end-of-archive and anything after it, as read.
        let mut tail = rec[split..].len() as u64;
        b.raw(&rec[split..])?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = rest
                .read(&mut buf)
                .map_err(io_err("read the end of the layer tar"))?;
            if n == 0 {
                break;
            }
            b.raw(&buf[..n])?;
            tail += n as u64;
        }
        // A tar cut short of its end-of-archive blocks gets them.
        if tail < 1024 {
            b.zeros(1024 - tail)?;
        }
    } else {
        io::copy(&mut rest, &mut io::sink()).map_err(io_err("read the end of the layer tar"))?;
    }
    b.finish()
}
