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
