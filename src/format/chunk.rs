//! Turning a fetched compressed span into verified chunk bytes.

use std::io::Read;

use crate::format::{Chunk, Compression, FormatError};
use crate::oci::Digest;

/// Decompresses `span` (the blob bytes `[chunk.offset, chunk.end)`, or a
/// prefix of them long enough), skips `chunk.inner_offset` bytes, takes
/// `chunk.size` bytes and checks them against the chunk's digest. `name`
/// is the file's name, for the error.
///
/// A chunk with `end == offset` has no compressed bytes: it is a run of
/// zeros (zstd:chunked `chunkType: "zeros"`), produced without looking at
/// `span` and checked against its digest all the same.
///
/// # Errors
/// [`FormatError::Decompress`] when the span is corrupt or too short;
/// [`FormatError::ChunkDigest`] when the bytes differ from the TOC: they are
/// then never returned.
pub fn decode_verified(
    compression: Compression,
    span: &[u8],
    chunk: &Chunk,
    name: &str,
) -> Result<Vec<u8>, FormatError> {
    if chunk.end == chunk.offset {
        let out = vec![0u8; chunk.size as usize];
        check_digest(&out, chunk, name)?;
        return Ok(out);
    }
    let want = chunk.inner_offset + chunk.size;
    let mut out = Vec::with_capacity(chunk.size as usize);
    let res = match compression {
        Compression::Gzip => flate2::read::MultiGzDecoder::new(span)
            .take(want)
            .read_to_end(&mut out),
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(span).and_then(|d| d.take(want).read_to_end(&mut out))
        }
    };
    let err = |message: String| FormatError::Decompress {
        what: format!("chunk of {name:?} at blob offset {}", chunk.offset),
        message,
    };
    res.map_err(|e| err(e.to_string()))?;
    if (out.len() as u64) < want {
        return Err(err(format!("{} of {want} bytes", out.len())));
    }
    out.drain(..chunk.inner_offset as usize);
    check_digest(&out, chunk, name)?;
    Ok(out)
}

fn check_digest(out: &[u8], chunk: &Chunk, name: &str) -> Result<(), FormatError> {
    match &chunk.digest {
        // Checked without allocating; the actual digest only for the error.
        Some(expected) if !expected.verify(out) => Err(FormatError::ChunkDigest {
            name: name.to_string(),
            file_offset: chunk.file_offset,
            expected: expected.clone(),
            actual: Digest::sha256_of(out),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gz(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn chunk(inner: u64, size: u64, data: &[u8]) -> Chunk {
        Chunk {
            offset: 0,
            end: 1,
            inner_offset: inner,
            file_offset: 0,
            size,
            digest: Some(Digest::sha256_of(data)),
        }
    }

    #[test]
    fn gzip_and_zstd_spans_decode_and_verify() {
        let payload = b"hello, lazy world";
        let mut span = gz(b"xxhello, lazy world<next tar header>");
        span.extend_from_slice(&gz(b"next member"));
        let c = chunk(2, payload.len() as u64, payload);
        assert_eq!(
            decode_verified(Compression::Gzip, &span, &c, "f").unwrap(),
            payload
        );
        let z = zstd::encode_all(&b"hello, lazy world"[..], 3).unwrap();
        let c = chunk(0, payload.len() as u64, payload);
        assert_eq!(
            decode_verified(Compression::Zstd, &z, &c, "f").unwrap(),
            payload
        );
    }

    #[test]
    fn zeros_chunks_need_no_span() {
        let mut c = chunk(0, 4096, &[0u8; 4096]);
        (c.offset, c.end) = (77, 77);
        assert_eq!(
            decode_verified(Compression::Zstd, &[], &c, "f").unwrap(),
            vec![0u8; 4096]
        );
        c.digest = Some(Digest::sha256_of(b"x"));
        let e = decode_verified(Compression::Zstd, &[], &c, "f").unwrap_err();
        assert!(matches!(e, FormatError::ChunkDigest { .. }), "{e}");
    }

    #[test]
    fn wrong_bytes_are_never_returned() {
        let span = gz(b"hello, LAZY world");
        let c = chunk(0, 17, b"hello, lazy world");
        let e = decode_verified(Compression::Gzip, &span, &c, "etc/f").unwrap_err();
        assert!(matches!(e, FormatError::ChunkDigest { .. }), "{e}");
        assert!(e.to_string().contains("etc/f"));
        // Truncated span.
        let span = gz(b"hello, lazy world");
        let e = decode_verified(Compression::Gzip, &span[..span.len() / 2], &c, "f").unwrap_err();
        assert!(matches!(e, FormatError::Decompress { .. }), "{e}");
    }
}
