//! Registering a locally built image in containerd (`lazysnap commit --import`): its
//! config, manifest and new layer blobs go into the content store under a lease, each
//! layer not yet unpacked on the snapshotter is applied by containerd's Diff service
//! onto a snapshot over its parent and committed under its chain ID, and the image
//! record points at the manifest. The config carries the GC label that keeps the
//! top snapshot (as after a pull), so `ctr run --snapshotter S NAME` works at once.
//!
//! Layers already unpacked (the parent image's) need no blob: their snapshots exist.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use containerd_client::types::Descriptor;
use tonic::Code;

use super::plan::{
    GC_REF_SNAPSHOT, UNCOMPRESSED, chain_ids, manifest_gc_labels, random3, unpack_key,
};
use super::{Ctrd, CtrdError};
use crate::oci::Digest;

/// How long the import's lease lives if it is never deleted.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

/// One layer of the image to import, bottom first.
#[derive(Debug, Clone)]
pub struct ImportLayer {
    /// Blob digest.
    pub digest: Digest,
    /// Blob media type.
    pub media_type: String,
    /// Blob size in bytes.
    pub size: u64,
    /// Uncompressed digest (the config's diff_id).
    pub diff_id: Digest,
    /// The blob, when it is local (the committed layer); `None` for layers whose
    /// snapshot must already exist.
    pub blob: Option<PathBuf>,
}

/// The image to import.
#[derive(Debug, Clone)]
pub struct ImportImage {
    /// The image name (reference) to create or update.
    pub name: String,
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// The manifest's exact bytes.
    pub manifest: Vec<u8>,
    /// The config's exact bytes.
    pub config: Vec<u8>,
    /// The layers, bottom first (their diff_ids are the config's).
    pub layers: Vec<ImportLayer>,
    /// The snapshotter to unpack on.
    pub snapshotter: String,
}

/// Imports `img`; returns the top snapshot's chain ID.
///
/// # Errors
/// [`CtrdError::Rpc`] naming the failed RPC; [`CtrdError::BadImage`] when a layer's
/// snapshot is missing and its blob is not local, or a blob file cannot be read;
/// [`CtrdError::DiffIdMismatch`] when an applied layer is not its diff_id.
pub async fn import_image(ctrd: &Ctrd, img: &ImportImage) -> Result<String, CtrdError> {
    let lease = ctrd.create_lease(LEASE_EXPIRY).await?;
    let result = import_leased(&ctrd.with_lease(&lease)?, img).await;
    if let Err(e) = ctrd.delete_lease(&lease).await {
        tracing::warn!(lease, "{e}");
    }
    result
}

async fn import_leased(ctrd: &Ctrd, img: &ImportImage) -> Result<String, CtrdError> {
    let bad = |reason: String| CtrdError::BadImage {
        reference: img.name.clone(),
        reason,
    };
    let diff_ids: Vec<String> = img.layers.iter().map(|l| l.diff_id.to_string()).collect();
    let chain = chain_ids(&diff_ids);
    let top = chain
        .last()
        .cloned()
        .ok_or_else(|| bad("the image has no layers".into()))?;
    let sn = &img.snapshotter;
    for (i, l) in img.layers.iter().enumerate() {
        if ctrd.stat_snapshot(sn, &chain[i]).await?.is_some() {
            continue;
        }
        let Some(path) = &l.blob else {
            return Err(bad(format!(
                "layer {} is not unpacked on {sn} and its blob is not local",
                l.digest
            )));
        };
        let data = tokio::fs::read(path)
            .await
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let labels = HashMap::from([(UNCOMPRESSED.to_string(), l.diff_id.to_string())]);
        ctrd.write_blob(&format!("layer-{}", l.digest), &l.digest, &data, labels)
            .await?;
        let key = unpack_key(&chain[i], std::time::SystemTime::now(), random3());
        let parent = if i == 0 { "" } else { chain[i - 1].as_str() };
        let mounts = ctrd
            .prepare_snapshot(sn, &key, parent, HashMap::new())
            .await?;
        let desc = Descriptor {
            media_type: l.media_type.clone(),
            digest: l.digest.to_string(),
            size: i64::try_from(l.size).unwrap_or(i64::MAX),
            annotations: HashMap::new(),
        };
        let applied = match ctrd.apply_diff(desc, mounts).await {
            Ok(a) => a,
            Err(e) => {
                let _ = ctrd.remove_snapshot(sn, &key).await;
                return Err(e);
            }
        };
        if applied.digest != l.diff_id.as_str() {
            let _ = ctrd.remove_snapshot(sn, &key).await;
            return Err(CtrdError::DiffIdMismatch {
                layer: l.digest.clone(),
                expected: l.diff_id.to_string(),
                actual: applied.digest,
            });
        }
        match ctrd
            .commit_snapshot(sn, &chain[i], &key, HashMap::new())
            .await
        {
            Ok(()) => {}
            Err(e) if e.code() == Some(Code::AlreadyExists) => {
                let _ = ctrd.remove_snapshot(sn, &key).await;
            }
            Err(e) => return Err(e),
        }
    }
    let config_digest = Digest::sha256_of(&img.config);
    let manifest_digest = Digest::sha256_of(&img.manifest);
    let layer_digests: Vec<Digest> = img.layers.iter().map(|l| l.digest.clone()).collect();
    let cfg_labels = HashMap::from([(format!("{GC_REF_SNAPSHOT}.{sn}"), top.clone())]);
    ctrd.write_blob(
        &format!("config-{config_digest}"),
        &config_digest,
        &img.config,
        cfg_labels,
    )
    .await?;
    ctrd.write_blob(
        &format!("manifest-{manifest_digest}"),
        &manifest_digest,
        &img.manifest,
        manifest_gc_labels(&config_digest, &layer_digests),
    )
    .await?;
    let target = Descriptor {
        media_type: img.manifest_media_type.clone(),
        digest: manifest_digest.to_string(),
        size: img.manifest.len() as i64,
        annotations: HashMap::new(),
    };
    ctrd.create_or_update_image(&img.name, target, HashMap::new())
        .await?;
    Ok(top)
}
