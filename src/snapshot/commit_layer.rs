//! Writing an Active snapshot's upper dir as a lazy layer (for the Control service's
//! `CommitLayer`, behind `lazysnap commit`). The upper is read from disk, not through
//! the mount: lower layers are never read, so nothing of them is fetched.

use std::path::Path;

use super::SnapshotError;
use super::snapshotter::Snapshotter;
use super::store::Kind;
use crate::commit::{CommittedLayer, write_upper_layer};
use crate::format::writer::WriterOptions;

impl Snapshotter {
    /// Writes the upper dir of Active snapshot `key` (a backend key, see
    /// [`Snapshotter::resolve_key`]) as one layer into `out_dir`. The caller keeps
    /// the upper still meanwhile (containers paused or stopped).
    ///
    /// # Errors
    /// `NotFound` for an unknown key, `FailedPrecondition` for a committed snapshot,
    /// `InvalidArgument` for an `out_dir` that is not a directory, `Io` for failures
    /// reading the upper or writing the layer.
    pub fn commit_layer(
        &self,
        key: &str,
        opts: &WriterOptions,
        out_dir: &Path,
    ) -> Result<CommittedLayer, SnapshotError> {
        let rec = self.get(key)?;
        if rec.kind == Kind::Committed {
            return Err(SnapshotError::FailedPrecondition {
                key: key.to_string(),
                reason: "is committed: it has no writable layer of its own".into(),
            });
        }
        if !out_dir.is_dir() {
            return Err(SnapshotError::InvalidArgument(format!(
                "output dir {} is not a directory",
                out_dir.display()
            )));
        }
        let upper = self.layer_dir(rec.id);
        let layer = write_upper_layer(&upper, opts, out_dir).map_err(|e| SnapshotError::Io {
            key: key.to_string(),
            path: upper.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        tracing::info!(
            key,
            digest = %layer.written.digest,
            size = layer.written.size,
            entries = layer.tar.entries,
            "upper written as a layer"
        );
        Ok(layer)
    }
}
