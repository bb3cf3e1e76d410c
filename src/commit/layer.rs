//! An upper dir written as one lazy layer: [`changes`] and [`write_tar`] on one
//! thread feed the tar, through a pipe, to [`crate::format::writer::write_layer`] on
//! this one; the blob lands in a file named by its digest. Memory does not grow with
//! the layer's size.
//!
//! Sparse files are written in full into the tar: eStargz and zstd:chunked describe
//! file data by chunks, not holes (a run of zeros compresses to almost nothing, and
//! zstd:chunked marks it as a `zeros` chunk, so readers see no data for it).

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::format::writer::{LayerWritten, WriterOptions, write_layer};

use super::{CommitError, TarOptions, TarWritten, changes, write_tar};

/// A committed layer.
#[derive(Debug)]
pub struct CommittedLayer {
    /// The blob's facts and descriptor annotations.
    pub written: LayerWritten,
    /// Where the blob is (`OUT_DIR/<hex digest>`).
    pub path: PathBuf,
    /// The tar's size and entry count.
    pub tar: TarWritten,
}

/// Why an upper could not be written as a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading the upper or writing the tar failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The layer writer failed.
    #[error("writing the layer: {0}")]
    Format(#[from] crate::format::FormatError),
    /// The output file could not be created or kept.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes the upper at `upper` as one layer of `opts.format` into `out_dir`.
/// Blocking. The upper must not change meanwhile (pause the container).
///
/// # Errors
/// [`LayerError`] naming the path that failed.
pub fn write_upper_layer(
    upper: &Path,
    opts: &WriterOptions,
    out_dir: &Path,
) -> Result<CommittedLayer, LayerError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LayerError::Io { path, source }
    };
    let list = changes(upper)?;
    let (reader, writer) = std::io::pipe().map_err(io(upper))?;
    let upper_owned = upper.to_path_buf();
    // The pipe's writer end is dropped when write_tar returns: the reader sees EOF.
    let producer = std::thread::spawn(move || {
        write_tar(
            &upper_owned,
            &list,
            BufWriter::with_capacity(1 << 20, writer),
            &TarOptions { sparse: false },
        )
    });
    let tmp = tempfile::Builder::new()
        .prefix(".layer-")
        .tempfile_in(out_dir)
        .map_err(io(out_dir))?;
    let out = BufWriter::with_capacity(1 << 20, tmp.as_file().try_clone().map_err(io(tmp.path()))?);
    let written = write_layer(reader, out, opts, out_dir);
    let tar = producer.join().expect("tar writer thread panicked");
    // A tar error is the cause of a writer error (a broken pipe or a short tar).
    let tar = tar?;
    let written = written?;
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    let path = out_dir.join(written.digest.hex());
    tmp.persist(&path).map_err(|e| LayerError::Io {
        path: path.clone(),
        source: e.error,
    })?;
    Ok(CommittedLayer { written, path, tar })
}
