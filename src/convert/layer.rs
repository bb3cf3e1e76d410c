//! One layer: decompress the source blob, check it against the config's `diff_id`, and
//! write it in the target lazy format into a spool file.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::format::writer::{self, LayerWritten, WriterOptions};
use crate::image::media::LayerCompression;
use crate::oci::Digest;

/// Reads through, hashing what passes.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.hasher.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            n: 0,
        }
    }
    fn digest(&self) -> Digest {
        Digest::from_sha256(self.hasher.clone().finalize().into())
    }
}

/// What a converted layer left: its summary and the spool file holding the new blob.
#[derive(Debug)]
pub struct Converted {
    /// The new blob's descriptor facts and annotations.
    pub written: LayerWritten,
    /// The new blob (deleted when dropped).
    pub blob: tempfile::TempPath,
}

/// Why a layer could not be converted (the caller adds image and layer names).
#[derive(Debug)]
pub enum LayerFault {
    /// The blob's bytes are not the descriptor's digest, or decompress to another
    /// `diff_id`, or do not decompress.
    Reason(String),
    /// The tar could not be rewritten.
    Format(crate::format::FormatError),
}

/// Converts the blob at `blob` (compressed as `compression`, digest `digest`) with
/// `opts`; the decompressed stream must hash to `diff_id` when one is given.
/// Blocking: run it on a blocking thread.
///
/// # Errors
/// [`LayerFault`] naming what did not match.
pub fn convert_blob(
    blob: &Path,
    digest: &Digest,
    compression: LayerCompression,
    diff_id: Option<&Digest>,
    opts: &WriterOptions,
    spool: &Path,
) -> Result<Converted, LayerFault> {
    let io = |what: &str, e: io::Error| LayerFault::Reason(format!("{what}: {e}"));
    let file = File::open(blob).map_err(|e| io("open blob", e))?;
    let mut compressed = Hashing::new(BufReader::with_capacity(1 << 20, file));
    let out = tempfile::Builder::new()
        .prefix("layer-")
        .tempfile_in(spool)
        .map_err(|e| io("spool file", e))?;
    let (out_file, out_path) = out.into_parts();
    let written;
    let uncompressed_digest;
    {
        let decoder: Box<dyn Read> = match compression {
            LayerCompression::None => Box::new(&mut compressed),
            LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut compressed)),
            LayerCompression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(BufReader::new(&mut compressed))
                    .map_err(|e| io("zstd", e))?,
            ),
        };
        let mut tar = Hashing::new(decoder);
        written = writer::write_layer(
            &mut tar,
            BufWriter::with_capacity(1 << 20, out_file),
            opts,
            spool,
        )
        .map_err(LayerFault::Format)?;
        // The writer stops at the end-of-archive blocks; hash what follows too.
        io::copy(&mut tar, &mut io::sink()).map_err(|e| io("decompress", e))?;
        uncompressed_digest = tar.digest();
    }
    io::copy(&mut compressed, &mut io::sink()).map_err(|e| io("read blob", e))?;
    let actual = compressed.digest();
    if actual != *digest {
        return Err(LayerFault::Reason(format!(
            "the blob's bytes hash to {actual}, not to the descriptor's digest"
        )));
    }
    if let Some(want) = diff_id
        && *want != uncompressed_digest
    {
        return Err(LayerFault::Reason(format!(
            "the uncompressed layer hashes to {uncompressed_digest}, but the config's diff_id is {want}"
        )));
    }
    Ok(Converted {
        written,
        blob: out_path,
    })
}
