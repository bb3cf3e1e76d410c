//! The remote-snapshot handshake (FORMATS.md §4.5, as containerd 1.6.20 runs
//! it): a Prepare whose labels name a lazily readable layer is answered by
//! creating the Committed snapshot containerd is about to ask for — same
//! parent, label `containerd.io/snapshot.ref` = the chain ID — and returning
//! AlreadyExists, so containerd neither downloads nor unpacks the layer. It
//! then finds the snapshot with `List(labels."containerd.io/snapshot.ref"==<chainID>,
//! parent==<parent>)` and `Stat`s it.
//!
//! Naming: `<namespace>/lazysnap-remote/<seq>/<chainID>`, with the namespace
//! and sequence number of containerd's backend key for the Prepare: a
//! namespace's remote snapshots are its own, removing one never touches
//! another namespace's, and a Prepare never reuses a snapshot that
//! containerd's garbage collector may be removing at that moment (an image
//! removed and pulled again). containerd records which name answered.
//!
//! A layer that cannot be served lazily (no TOC annotation, a footer or TOC
//! that does not parse or verify) falls back to a normal unpack, logged once
//! with the reason; a registry that cannot be reached fails the Prepare with
//! Unavailable naming the host.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};

use super::SnapshotError;
use super::remote::{RemoteError, ResolvedLayer, reopen_toc};
use super::snapshotter::Snapshotter;
use super::store::{Kind, MountMode, Record, RemoteLayer, now_ns};
use crate::format::Compression;
use crate::fs::Lower;
use crate::oci::Digest;
use crate::oci::labels::{self, RemoteLabels};

/// A remote snapshot's lower, kept alive here (the union finds it by its
/// layer dir), and its prefetch/background fetch task.
#[derive(Debug)]
pub struct RemoteLower {
    /// The lower, only held: the union looks it up by its layer dir.
    pub _lower: Arc<Lower>,
    /// The fetch task, aborted when the snapshot is removed.
    pub fetch: Option<tokio::task::AbortHandle>,
    /// The layer's TOC: which chunks it owns in the cache.
    pub toc: Arc<crate::format::Toc>,
    /// The layer digest and whether its last read failed.
    pub health: (Digest, Arc<super::remote::LayerHealth>),
}

/// The TOC JSON of a remote snapshot, beside its (empty) layer dir.
const TOC_FILE: &str = "toc.json";

/// Writes `dst`, the TOC file of remote snapshot `name`: the TOC JSON in
/// hand, or for a layer resolved from a mounted one
/// ([`ResolvedLayer::toc_file`]), a hard link (else a copy) of that
/// snapshot's file. When that file is gone, because its snapshot was removed
/// between the resolve and now, `again` reads the TOC afresh (verified
/// against the same anchor digest) and its JSON is written; its error is
/// the reason it could not.
///
/// # Errors
/// [`SnapshotError::Io`] when `dst` cannot be written (or linked or copied
/// from a file that is still there); [`SnapshotError::Unavailable`] when the
/// TOC cannot be read again.
fn write_toc_file(
    name: &str,
    dst: &Path,
    layer: &ResolvedLayer,
    again: impl FnOnce() -> Result<bytes::Bytes, String>,
) -> Result<(), SnapshotError> {
    let json = match &layer.toc_file {
        Some(src) if layer.toc_json.is_empty() => {
            match std::fs::hard_link(src, dst).or_else(|_| std::fs::copy(src, dst).map(drop)) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !src.exists() => {
                    warn!(name, from = %src.display(), "TOC file of the mounted layer is gone; reading the TOC again");
                    again().map_err(SnapshotError::Unavailable)?
                }
                Err(e) => return Err(SnapshotError::io(name, dst, e)),
            }
        }
        _ => layer.toc_json.clone(),
    };
    std::fs::write(dst, &json).map_err(|e| SnapshotError::io(name, dst, e))
}

impl Snapshotter {
    /// An image about to be pulled lazily (Control `PrepareImage`): starts
    /// resolving its layers (`layers`, bottom first, of the platform
    /// manifest `manifest`) and their landmark prefetch in the background;
    /// see [`RemoteContext::resolve_image_ahead`]. Returns how many layers it
    /// started. Call inside the runtime.
    ///
    /// # Errors
    /// [`SnapshotError::FailedPrecondition`] when lazy pulling is off.
    pub fn prepare_image(
        &self,
        reference: &str,
        manifest: Option<crate::oci::Digest>,
        layers: Vec<crate::oci::Digest>,
    ) -> Result<usize, SnapshotError> {
        let Some(ctx) = &self.remote else {
            return Err(SnapshotError::FailedPrecondition {
                key: reference.to_string(),
                reason: "lazy pulling is off (lazy = false)".to_string(),
            });
        };
        let Some(first) = layers.first().cloned() else {
            return Ok(0);
        };
        let labels = RemoteLabels {
            target: String::new(),
            reference: reference.to_string(),
            layer_digest: first,
            manifest_digest: manifest,
            layers,
            toc_digest: None,
        };
        Ok(ctx.resolve_image_ahead(&labels))
    }

    /// Answers a Prepare with remote-snapshot labels: `Ok(())` to go on with a
    /// normal Prepare, `Err(AlreadyExists)` when the layer is served lazily.
    pub(super) fn try_remote(
        &self,
        key: &str,
        parent: Option<&str>,
        map: &BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let Some(ctx) = &self.remote else {
            return Ok(());
        };
        let Some(rl) = RemoteLabels::parse(map).map_err(SnapshotError::InvalidArgument)? else {
            return Ok(());
        };
        let ns = key.split('/').next().unwrap_or_default();
        let seq = key.split('/').nth(1).unwrap_or_default();
        let name = format!("{ns}/lazysnap-remote/{seq}/{}", rl.target);
        if let Some(existing) = self.store.get(&name)? {
            if existing.parent.as_deref() == parent {
                return Err(self.hand_out(&rl.target, parent, &name));
            }
            warn!(
                name,
                "remote snapshot exists with another parent; unpacking normally"
            );
            return Ok(());
        }
        let layer = match ctx.rt.block_on(ctx.resolve_shared(&rl)) {
            Ok(l) => l,
            Err(e @ RemoteError::Unavailable { .. }) => {
                return Err(SnapshotError::Unavailable(e.to_string()));
            }
            Err(e @ RemoteError::NotLazy { .. }) => {
                info!(key, "{e}; fetching it whole");
                return self.unpack_whole(key, parent, map, &rl, ns);
            }
        };
        let (reader, health) = ctx.reader(&layer);
        let mut rec_labels = forwarded_labels(map, &rl.target);
        rec_labels.insert(labels::REMOTE.to_string(), "remote snapshot".to_string());
        let now = now_ns();
        let remote = RemoteLayer {
            reference: layer.reference.to_string(),
            layer_digest: layer.digest.to_string(),
            toc_digest: layer.toc_digest.to_string(),
            media_type: layer.media_type.clone(),
            size: layer.size,
            toc_offset: layer.toc_offset,
            compression: compression_name(layer.toc.compression).to_string(),
        };
        let rec = self.store.write(|t| {
            if t.get(&name)?.is_some() {
                return Ok(None);
            }
            t.check_parent(parent, key)?;
            let rec = Record {
                id: t.next_id()?,
                parent: parent.map(str::to_string),
                kind: Kind::Committed,
                labels: rec_labels,
                created_ns: now,
                updated_ns: now,
                mount_mode: MountMode::None,
                remote: Some(remote),
            };
            t.put(&name, &rec)?;
            Ok(Some(rec))
        })?;
        let Some(rec) = rec else {
            return Err(self.hand_out(&rl.target, parent, &name));
        };
        let dir = self.layer_dir(rec.id);
        let made = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::create_dir_all(self.work_dir(rec.id)))
            .map_err(|e| SnapshotError::io(&name, &dir, e))
            .and_then(|()| {
                write_toc_file(&name, &self.toc_path(rec.id), &layer, || {
                    let fresh = ctx
                        .rt
                        .block_on(ctx.resolve_layer_afresh(&rl))
                        .map_err(|e| e.to_string())?;
                    if fresh.toc_digest != layer.toc_digest {
                        return Err(format!(
                            "layer {}: its TOC read again has digest {}, the mounted one {}",
                            layer.digest, fresh.toc_digest, layer.toc_digest
                        ));
                    }
                    Ok(fresh.toc_json)
                })
            });
        let lower = made.and_then(|()| {
            Lower::remote(&dir, layer.toc.clone(), reader).map_err(|source| SnapshotError::Mount {
                key: name.clone(),
                source,
            })
        });
        match lower {
            Ok(lower) => {
                let task = ctx.rt.spawn(ctx.clone().background(
                    super::remote::ResolvedLayer {
                        toc_json: bytes::Bytes::new(),
                        toc_file: None,
                        ..layer.clone()
                    },
                    ctx.background_rate,
                ));
                self.keep_lower(
                    rec.id,
                    lower,
                    layer.toc.clone(),
                    (layer.digest.clone(), health),
                    Some(task.abort_handle()),
                );
                ctx.register_live(&layer, self.toc_path(rec.id));
                info!(name, layer = %layer.digest, entries = layer.toc.entries.len(), "remote snapshot ready");
                // containerd needs AlreadyExists to skip download and unpack.
                Err(self.hand_out(&rl.target, parent, &name))
            }
            Err(e) => {
                let _ = self.store.write(|t| t.delete(&name));
                let _ =
                    std::fs::remove_dir_all(self.root.join("snapshots").join(rec.id.to_string()));
                Err(e)
            }
        }
    }

    /// A layer that cannot be read lazily, in an image whose layers are
    /// prepared with remote labels: fetched whole by lazysnap, verified, and
    /// unpacked into a committed local snapshot (AlreadyExists), so that
    /// containerd 1.6 does not fall back to downloading every layer above it.
    /// If the fetch fails for another reason than the network, containerd
    /// unpacks it itself.
    fn unpack_whole(
        &self,
        key: &str,
        parent: Option<&str>,
        map: &BTreeMap<String, String>,
        rl: &RemoteLabels,
        ns: &str,
    ) -> Result<(), SnapshotError> {
        let Some(ctx) = &self.remote else {
            return Ok(());
        };
        let seq = key.split('/').nth(1).unwrap_or_default();
        let name = format!("{ns}/lazysnap-local/{seq}/{}", rl.target);
        if let Some(existing) = self.store.get(&name)? {
            return if existing.parent.as_deref() == parent {
                Err(self.hand_out(&rl.target, parent, &name))
            } else {
                Ok(())
            };
        }
        let (blob, media_type) = match ctx.rt.block_on(ctx.fetch_whole(rl)) {
            Ok(b) => b,
            Err(e @ RemoteError::Unavailable { .. }) => {
                return Err(SnapshotError::Unavailable(e.to_string()));
            }
            Err(e) => {
                info!(key, "{e}; containerd unpacks it");
                return Ok(());
            }
        };
        let now = now_ns();
        let rec_labels = forwarded_labels(map, &rl.target);
        let id = self.store.write(|t| t.next_id())?;
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        let _unreserve = Unreserve(self, id);
        let dir = self.layer_dir(id);
        let unpacked = std::fs::create_dir_all(self.work_dir(id))
            .map_err(|e| SnapshotError::io(&name, self.work_dir(id), e))
            .and_then(|()| {
                unpack(&blob, &media_type, &dir).map_err(|source| SnapshotError::Mount {
                    key: name.clone(),
                    source,
                })
            });
        let stored = unpacked.and_then(|stats| {
            self.store.write(|t| {
                if t.get(&name)?.is_some() {
                    return Err(SnapshotError::AlreadyExists(rl.target.clone()));
                }
                t.put(
                    &name,
                    &Record {
                        id,
                        parent: parent.map(str::to_string),
                        kind: Kind::Committed,
                        labels: rec_labels,
                        created_ns: now,
                        updated_ns: now,
                        mount_mode: MountMode::None,
                        remote: None,
                    },
                )
            })?;
            info!(name, layer = %rl.layer_digest, bytes = blob.len(), entries = stats.entries, "layer fetched whole and unpacked");
            Ok(())
        });
        match stored {
            Ok(()) => Err(self.hand_out(&rl.target, parent, &name)),
            Err(e) => {
                let _ = std::fs::remove_dir_all(self.root.join("snapshots").join(id.to_string()));
                Err(e)
            }
        }
    }

    /// Remembers that `name` answers containerd's coming lookup of
    /// (`target`, `parent`), and returns the AlreadyExists containerd needs.
    ///
    /// containerd 1.6 does not send the namespace on the List that follows
    /// (the `containerd-namespace` header is absent there), and it takes the
    /// first match; when several namespaces hold the same chain, `list` puts
    /// the snapshot handed out last for that lookup first.
    fn hand_out(&self, target: &str, parent: Option<&str>, name: &str) -> SnapshotError {
        self.handed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                (target.to_string(), parent.map(str::to_string)),
                name.to_string(),
            );
        SnapshotError::AlreadyExists(target.to_string())
    }

    fn toc_path(&self, id: u64) -> std::path::PathBuf {
        self.root
            .join("snapshots")
            .join(id.to_string())
            .join(TOC_FILE)
    }

    fn keep_lower(
        &self,
        id: u64,
        lower: Arc<Lower>,
        toc: Arc<crate::format::Toc>,
        health: (Digest, Arc<super::remote::LayerHealth>),
        fetch: Option<tokio::task::AbortHandle>,
    ) {
        self.remote_lowers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                RemoteLower {
                    _lower: lower,
                    fetch,
                    toc,
                    health,
                },
            );
    }

    /// After the remote snapshot `id` is removed: stops its fetch task and
    /// drops from the chunk cache the chunks no other live remote layer has
    /// (a chunk shared with a layer still in use stays; field case B25).
    pub(super) fn forget_remote(&self, id: u64) {
        let mut lowers = self.remote_lowers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(gone) = lowers.remove(&id) else {
            return;
        };
        if let Some(task) = gone.fetch {
            task.abort();
        }
        // Fetch windows and readahead of its reads stop delivering.
        gone.health.1.mark_removed();
        let Some(ctx) = &self.remote else { return };
        let live: std::collections::HashSet<Digest> = lowers
            .values()
            .flat_map(|l| l.toc.entries.iter())
            .flat_map(|e| e.chunks())
            .filter_map(|c| c.digest)
            .collect();
        let mut freed = 0usize;
        let layer = &gone.health.0;
        if !lowers.values().any(|l| l.health.0 == *layer) && ctx.cache.contains(layer) {
            ctx.cache.remove(layer); // a small layer's whole blob (`keep_blob`)
            freed += 1;
        }
        for d in gone
            .toc
            .entries
            .iter()
            .flat_map(|e| e.chunks())
            .filter_map(|c| c.digest)
        {
            if !live.contains(&d) && ctx.cache.contains(&d) {
                ctx.cache.remove(&d);
                freed += 1;
            }
        }
        info!(
            id,
            chunks = freed,
            "dropped the removed layer's own chunks from the cache"
        );
    }

    /// `Unavailable`, naming the layer, when a remote layer below `parent`
    /// failed its last read (its registry is gone, or its bytes don't verify):
    /// containerd then gets an error instead of a root that returns EIO.
    pub(super) fn check_remote_health(&self, parent: Option<&str>) -> Result<(), SnapshotError> {
        let mut next = parent.map(str::to_string);
        while let Some(k) = next {
            let rec = self.get(&k)?;
            if rec.remote.is_some() {
                let lowers = self.remote_lowers.lock().unwrap_or_else(|p| p.into_inner());
                match lowers.get(&rec.id) {
                    None => {
                        return Err(SnapshotError::Unavailable(format!(
                            "remote layer of snapshot {k:?} is not open (see the log of the daemon's start)"
                        )));
                    }
                    Some(l) => {
                        if let Some(why) = l.health.1.failure() {
                            return Err(SnapshotError::Unavailable(format!(
                                "remote layer {} cannot be read: {why}",
                                l.health.0
                            )));
                        }
                    }
                }
            }
            next = rec.parent;
        }
        Ok(())
    }

    /// Whether `parent` or any of its ancestors is a remote snapshot.
    pub(super) fn has_remote_ancestor(&self, parent: Option<&str>) -> Result<bool, SnapshotError> {
        let mut next = parent.map(str::to_string);
        while let Some(k) = next {
            let rec = self.get(&k)?;
            if rec.remote.is_some() {
                return Ok(true);
            }
            next = rec.parent;
        }
        Ok(false)
    }

    /// After a restart: the remote lowers of committed remote snapshots, from
    /// their stored TOC (verified again against the TOC digest).
    pub(super) fn reopen_remote_layers(&self) -> Result<(), SnapshotError> {
        let Some(ctx) = &self.remote else {
            return Ok(());
        };
        for (key, rec) in self.store.all()? {
            let Some(r) = &rec.remote else { continue };
            type Reopened = (
                Arc<Lower>,
                super::remote::ResolvedLayer,
                Arc<super::remote::LayerHealth>,
            );
            let res = (|| -> Result<Reopened, String> {
                let json = std::fs::read(self.toc_path(rec.id)).map_err(|e| e.to_string())?;
                let toc_digest: Digest = r.toc_digest.parse().map_err(|e| format!("{e}"))?;
                let compression = if r.compression == "zstd" {
                    Compression::Zstd
                } else {
                    Compression::Gzip
                };
                let toc = reopen_toc(&json, &toc_digest, r.toc_offset, compression)
                    .map_err(|e| e.to_string())?;
                let layer = super::remote::ResolvedLayer {
                    reference: r.reference.parse().map_err(|e| format!("{e}"))?,
                    digest: r.layer_digest.parse().map_err(|e| format!("{e}"))?,
                    media_type: r.media_type.clone(),
                    size: r.size,
                    toc_digest,
                    toc_json: bytes::Bytes::new(),
                    toc_file: None,
                    toc_offset: r.toc_offset,
                    toc: Arc::new(toc),
                };
                let (reader, health) = ctx.reader(&layer);
                let lower = Lower::remote(&self.layer_dir(rec.id), layer.toc.clone(), reader)
                    .map_err(|e| e.to_string())?;
                Ok((lower, layer, health))
            })();
            match res {
                Ok((lower, layer, health)) => {
                    // Resume the background fetch (cached chunks are skipped).
                    ctx.register_live(&layer, self.toc_path(rec.id));
                    let (toc, digest) = (layer.toc.clone(), layer.digest.clone());
                    let task = ctx
                        .rt
                        .spawn(ctx.clone().background(layer, ctx.background_rate));
                    self.keep_lower(
                        rec.id,
                        lower,
                        toc,
                        (digest, health),
                        Some(task.abort_handle()),
                    );
                }
                Err(e) => {
                    warn!(key, error = %e, "cannot reopen remote layer; its mounts will fail")
                }
            }
        }
        Ok(())
    }
}

/// The labels a snapshot made for a Prepare keeps: those containerd
/// forwards (`containerd.io/snapshot/…`), with the target chain ID.
fn forwarded_labels(map: &BTreeMap<String, String>, target: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = map
        .iter()
        .filter(|(k, _)| k.starts_with(labels::INHERITED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.insert(labels::TARGET_REF.to_string(), target.to_string());
    out
}

/// Releases a reserved snapshot id when the unpack ends, however it ends.
struct Unreserve<'a>(&'a Snapshotter, u64);

impl Drop for Unreserve<'_> {
    fn drop(&mut self) {
        self.0
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// Decompresses `blob` by its media type and applies it to `dir`.
fn unpack(
    blob: &[u8],
    media_type: &str,
    dir: &std::path::Path,
) -> Result<crate::fs::apply::ApplyStats, crate::fs::FsError> {
    let io = |e: std::io::Error| crate::fs::FsError::remote(format!("decompress layer: {e}"));
    if media_type.ends_with("gzip") {
        crate::fs::apply::apply_layer(flate2::read::MultiGzDecoder::new(blob), dir)
    } else if media_type.ends_with("zstd") {
        crate::fs::apply::apply_layer(zstd::stream::read::Decoder::new(blob).map_err(io)?, dir)
    } else {
        crate::fs::apply::apply_layer(blob, dir)
    }
}

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(json: &[u8], file: Option<std::path::PathBuf>) -> ResolvedLayer {
        ResolvedLayer {
            reference: "127.0.0.1:5000/t/x:1".parse().unwrap(),
            digest: Digest::sha256_of(b"blob"),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".to_string(),
            size: 4,
            toc_digest: Digest::sha256_of(b"{\"toc\":1}"),
            toc_json: bytes::Bytes::copy_from_slice(json),
            toc_file: file,
            toc_offset: 0,
            toc: Arc::new(crate::format::Toc {
                compression: Compression::Gzip,
                entries: Vec::new(),
            }),
        }
    }

    #[test]
    fn toc_file_is_linked_from_the_mounted_layer_or_read_again_when_it_is_gone() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("mounted.json");
        std::fs::write(&src, b"{\"toc\":1}").unwrap();
        // In hand: written as is, nothing read again.
        let dst = d.path().join("a.json");
        let never = || -> Result<bytes::Bytes, String> { panic!("read again") };
        write_toc_file("a", &dst, &layer(b"{\"toc\":1}", None), never).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"{\"toc\":1}");
        // From a mounted layer: a hard link of its file.
        let dst = d.path().join("b.json");
        write_toc_file("b", &dst, &layer(b"", Some(src.clone())), never).unwrap();
        assert_eq!(
            std::fs::metadata(&dst).unwrap().ino(),
            std::fs::metadata(&src).unwrap().ino()
        );
        // The mounted layer's file went away after the resolve: read again.
        std::fs::remove_file(&src).unwrap();
        let dst = d.path().join("c.json");
        let again = || Ok(bytes::Bytes::from_static(b"{\"toc\":1}"));
        write_toc_file("c", &dst, &layer(b"", Some(src.clone())), again).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"{\"toc\":1}");
        // A file that is there but cannot be linked or copied (here: the
        // destination's dir is missing) is an I/O error, not read again.
        let src2 = d.path().join("mounted2.json");
        std::fs::write(&src2, b"{\"toc\":1}").unwrap();
        let nodir = d.path().join("no/such/dir/e.json");
        match write_toc_file("e", &nodir, &layer(b"", Some(src2)), never) {
            Err(SnapshotError::Io { path, .. }) => assert_eq!(path, nodir),
            other => panic!("want Io, got {other:?}"),
        }
        // And the read fails: Unavailable with its reason, no file left.
        let dst = d.path().join("d.json");
        let fails = || {
            Err(RemoteError::NotLazy {
                reference: "127.0.0.1:9/t/x:1".to_string(),
                layer: "sha256:ab".to_string(),
                reason: "TOC digest mismatch".to_string(),
            }
            .to_string())
        };
        match write_toc_file("d", &dst, &layer(b"", Some(src)), fails) {
            Err(SnapshotError::Unavailable(why)) => {
                assert!(
                    why.contains("127.0.0.1:9") && why.contains("mismatch"),
                    "{why}"
                )
            }
            other => panic!("want Unavailable, got {other:?}"),
        }
        assert!(!dst.exists());
    }
}
