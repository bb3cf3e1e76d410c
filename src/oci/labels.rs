//! containerd snapshot label keys (containerd `snapshots/snapshotter.go`,
//! `pkg/snapshotters/annotations.go`; FORMATS.md §4.4–4.6).

/// Label containerd's unpacker puts on an extraction snapshot's Prepare: the
/// name (chain ID) the snapshot will be committed under.
pub const TARGET_REF: &str = "containerd.io/snapshot.ref";

/// Prefix of labels containerd forwards to a proxy snapshotter
/// (`FilterInheritedLabels`).
pub const INHERITED_PREFIX: &str = "containerd.io/snapshot/";

/// Marks a snapshot lazysnap created for a remote layer.
pub const REMOTE: &str = "containerd.io/snapshot/remote";

/// Maximum size of one label's key plus value (containerd `labels.Validate`).
pub const MAX_LABEL_BYTES: usize = 4096;

/// Checks one label against containerd's size rule.
///
/// # Errors
/// A message naming the key when key + value exceed [`MAX_LABEL_BYTES`] or
/// the key is empty.
pub fn validate(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("label key must not be empty".to_string());
    }
    if key.len() + value.len() > MAX_LABEL_BYTES {
        return Err(format!(
            "label {key:?}: key and value are {} bytes, more than {MAX_LABEL_BYTES}",
            key.len() + value.len()
        ));
    }
    Ok(())
}

/// containerd CRI / `AppendInfoHandlerWrapper`: the image reference.
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// containerd CRI: digest of the platform image manifest.
pub const CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// containerd CRI: compressed digest of this layer.
pub const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// containerd CRI: comma-separated digests of this and the following layers.
pub const CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
/// stargz-snapshotter (`ctr-remote image rpull`): the image reference.
pub const STARGZ_REFERENCE: &str = "containerd.io/snapshot/remote/stargz.reference";
/// stargz-snapshotter: this layer's digest.
pub const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
/// stargz-snapshotter: comma-separated layer digests.
pub const STARGZ_LAYERS: &str = "containerd.io/snapshot/remote/stargz.layers";
/// Layer annotation forwarded as a label: digest of the uncompressed TOC JSON.
pub const STARGZ_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

/// What the remote-snapshot labels of one Prepare say, from either label set
/// (CRI's `cri.*`, or `ctr-remote rpull`'s `remote/stargz.*`; FORMATS.md §4.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLabels {
    /// The chain ID the layer will be committed under (`containerd.io/snapshot.ref`).
    pub target: String,
    /// The image reference.
    pub reference: String,
    /// This layer's compressed digest.
    pub layer_digest: crate::oci::Digest,
    /// The manifest digest, when the CRI set gave it.
    pub manifest_digest: Option<crate::oci::Digest>,
    /// Digests of this and the following layers, when given.
    pub layers: Vec<crate::oci::Digest>,
    /// The TOC digest, when the layer annotation was forwarded.
    pub toc_digest: Option<crate::oci::Digest>,
}

impl RemoteLabels {
    /// Reads the labels; `None` when they do not ask for a remote snapshot
    /// (no target, no reference or no layer digest).
    ///
    /// # Errors
    /// A message naming the label whose digest does not parse.
    pub fn parse(
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<RemoteLabels>, String> {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty());
        let digest = |k: &str, v: &str| {
            v.parse::<crate::oci::Digest>()
                .map_err(|e| format!("label {k}: {e}"))
        };
        let (Some(target), Some(reference), Some((dk, dv))) = (
            get(TARGET_REF),
            get(CRI_IMAGE_REF).or_else(|| get(STARGZ_REFERENCE)),
            get(CRI_LAYER_DIGEST)
                .map(|v| (CRI_LAYER_DIGEST, v))
                .or_else(|| get(STARGZ_DIGEST).map(|v| (STARGZ_DIGEST, v))),
        ) else {
            return Ok(None);
        };
        let manifest_digest = match get(CRI_MANIFEST_DIGEST) {
            Some(v) => Some(digest(CRI_MANIFEST_DIGEST, v)?),
            None => None,
        };
        let toc_digest = match get(STARGZ_TOC_DIGEST) {
            Some(v) => Some(digest(STARGZ_TOC_DIGEST, v)?),
            None => None,
        };
        let mut layers = Vec::new();
        if let Some((k, v)) = get(CRI_IMAGE_LAYERS)
            .map(|v| (CRI_IMAGE_LAYERS, v))
            .or_else(|| get(STARGZ_LAYERS).map(|v| (STARGZ_LAYERS, v)))
        {
            for d in v.split(',').filter(|s| !s.is_empty()) {
                layers.push(digest(k, d)?);
            }
        }
        Ok(Some(RemoteLabels {
            target: target.clone(),
            reference: reference.clone(),
            layer_digest: digest(dk, dv)?,
            manifest_digest,
            layers,
            toc_digest,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const D: &str = "sha256:f01f45a319987fd9828e21f5255f2eadb114900b5bcf305302c305fdd4ba03d1";

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ctr_remote_rpull_labels() {
        // As containerd 1.6.20 forwards them for `ctr-remote images rpull` (from the debug log).
        let l = map(&[
            ("containerd.io/snapshot/remote/stargz.prefetch", "10485760"),
            (STARGZ_DIGEST, D),
            (STARGZ_REFERENCE, "127.0.0.1:5000/test/busybox:latest"),
            (
                TARGET_REF,
                "sha256:9937fe20a8361436783cee0f8c60e86aa8169e6cd235071622f58c995aa10203",
            ),
            (STARGZ_LAYERS, D),
            ("containerd.io/snapshot/remote/urls", ""),
        ]);
        let r = RemoteLabels::parse(&l).unwrap().unwrap();
        assert_eq!(r.reference, "127.0.0.1:5000/test/busybox:latest");
        assert_eq!(r.layer_digest.as_str(), D);
        assert_eq!(r.layers.len(), 1);
        assert_eq!(r.manifest_digest, None);
    }

    #[test]
    fn cri_labels_and_absent_or_bad_ones() {
        let l = map(&[
            (TARGET_REF, "sha256:x"),
            (CRI_IMAGE_REF, "ghcr.io/o/i:t"),
            (CRI_LAYER_DIGEST, D),
            (CRI_MANIFEST_DIGEST, D),
            (CRI_IMAGE_LAYERS, &format!("{D},{D}")),
            (STARGZ_TOC_DIGEST, D),
        ]);
        let r = RemoteLabels::parse(&l).unwrap().unwrap();
        assert_eq!(r.layers.len(), 2);
        assert!(r.manifest_digest.is_some() && r.toc_digest.is_some());
        assert_eq!(
            RemoteLabels::parse(&map(&[(TARGET_REF, "x")])).unwrap(),
            None
        );
        let bad = map(&[
            (TARGET_REF, "x"),
            (CRI_IMAGE_REF, "r"),
            (CRI_LAYER_DIGEST, "md5:1"),
        ]);
        assert!(
            RemoteLabels::parse(&bad)
                .unwrap_err()
                .contains(CRI_LAYER_DIGEST)
        );
    }
}
