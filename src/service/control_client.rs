//! The CLI's side of the Control service's access recording
//! (`lazysnap.v1.Control/StartRecording`, `StopRecording`): one connection
//! to the daemon's socket per call.
//!
//! A snapshot is named as the CLI knows it through containerd: the
//! containerd `namespace` and the snapshot `key` it prepared. The daemon
//! resolves the backend key (`<namespace>/<n>/<key>`); an empty namespace
//! passes `key` as the backend key itself.

use std::path::{Path, PathBuf};

use tonic::transport::Channel;

use super::proto::lazysnap::v1::control_client::ControlClient;
use super::proto::lazysnap::v1::{
    CommitLayerRequest, CommitLayerResponse, PrepareImageRequest, StartRecordingRequest,
    StopRecordingRequest,
};
use super::serve::connect;

/// Why a Control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlClientError {
    /// Nothing answers on the daemon's socket.
    #[error("connecting to lazysnap at {}: {source}", .address.display())]
    Connect {
        /// The socket path.
        address: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The daemon answered with an error status (NotFound names the key).
    #[error("lazysnap {rpc} ({key}): {}: {}", .status.code(), .status.message())]
    Rpc {
        /// The RPC, e.g. `Control.StopRecording`.
        rpc: &'static str,
        /// The key as the caller named it (`namespace/key`, or the key).
        key: String,
        /// The status the daemon returned.
        status: Box<tonic::Status>,
    },
}

impl ControlClientError {
    /// The gRPC code, when the daemon answered with an error status.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ControlClientError::Rpc { status, .. } => Some(status.code()),
            ControlClientError::Connect { .. } => None,
        }
    }
}

async fn client(address: &Path) -> Result<ControlClient<Channel>, ControlClientError> {
    let ch = connect(address)
        .await
        .map_err(|source| ControlClientError::Connect {
            address: address.to_path_buf(),
            source,
        })?;
    Ok(ControlClient::new(ch))
}

fn shown(namespace: &str, key: &str) -> String {
    if namespace.is_empty() {
        key.to_string()
    } else {
        format!("{namespace}/{key}")
    }
}

/// Starts recording accesses to the union of snapshot `key` of containerd
/// namespace `namespace` (see the Control service's `StartRecording`; a
/// recording under way is discarded). Returns the backend key it resolved to.
///
/// # Errors
/// [`ControlClientError::Connect`] when the daemon at `address` does not
/// answer; [`ControlClientError::Rpc`] with NotFound when there is no such
/// Active/View snapshot, FailedPrecondition when it has no FUSE union.
pub async fn start_recording(
    address: &Path,
    namespace: &str,
    key: &str,
) -> Result<String, ControlClientError> {
    let r = client(address)
        .await?
        .start_recording(StartRecordingRequest {
            key: key.to_string(),
            namespace: namespace.to_string(),
        })
        .await
        .map_err(|s| ControlClientError::Rpc {
            rpc: "Control.StartRecording",
            key: shown(namespace, key),
            status: Box::new(s),
        })?;
    Ok(r.into_inner().backend_key)
}

/// Stops recording on snapshot `key` of `namespace` and returns the union
/// paths recorded: relative to the root (`bin/sh`, `etc/os-release`), regular
/// files opened and symlinks read, first access first, no duplicates.
///
/// # Errors
/// As [`start_recording`]; FailedPrecondition when no recording is under way.
pub async fn stop_recording(
    address: &Path,
    namespace: &str,
    key: &str,
) -> Result<Vec<String>, ControlClientError> {
    let r = client(address)
        .await?
        .stop_recording(StopRecordingRequest {
            key: key.to_string(),
            namespace: namespace.to_string(),
        })
        .await
        .map_err(|s| ControlClientError::Rpc {
            rpc: "Control.StopRecording",
            key: shown(namespace, key),
            status: Box::new(s),
        })?;
    Ok(r.into_inner().paths)
}

/// Asks the daemon to write the upper of Active snapshot `key` of `namespace` as one
/// layer (`format`: `estargz`, `estargz-zstd`, `zstd-chunked`; empty = eStargz) into
/// the existing directory `out_dir`; see the Control service's `CommitLayer`.
///
/// # Errors
/// [`ControlClientError::Connect`]; [`ControlClientError::Rpc`] with NotFound for an
/// unknown snapshot, InvalidArgument for a bad format or dir, Internal for I/O failures.
pub async fn commit_layer(
    address: &Path,
    namespace: &str,
    key: &str,
    format: &str,
    chunk_size: u64,
    out_dir: &Path,
) -> Result<CommitLayerResponse, ControlClientError> {
    let r = client(address)
        .await?
        .commit_layer(CommitLayerRequest {
            namespace: namespace.to_string(),
            key: key.to_string(),
            format: format.to_string(),
            chunk_size,
            out_dir: out_dir.display().to_string(),
        })
        .await
        .map_err(|s| ControlClientError::Rpc {
            rpc: "Control.CommitLayer",
            key: shown(namespace, key),
            status: Box::new(s),
        })?;
    Ok(r.into_inner())
}

/// Tells the daemon that image `reference` (platform manifest `manifest`,
/// layer digests `layers` bottom first) is about to be pulled lazily, so that
/// it resolves the layers and starts their prefetch before the Prepare calls
/// come (the Control service's `PrepareImage`). Returns how many layers the
/// daemon started.
///
/// # Errors
/// [`ControlClientError::Connect`]; [`ControlClientError::Rpc`] with
/// FailedPrecondition when the daemon does not pull lazily, InvalidArgument
/// for a digest that does not parse.
pub async fn prepare_image(
    address: &Path,
    reference: &str,
    manifest: &str,
    layers: &[String],
) -> Result<u32, ControlClientError> {
    let r = client(address)
        .await?
        .prepare_image(PrepareImageRequest {
            reference: reference.to_string(),
            manifest_digest: manifest.to_string(),
            layers: layers.to_vec(),
        })
        .await
        .map_err(|s| ControlClientError::Rpc {
            rpc: "Control.PrepareImage",
            key: reference.to_string(),
            status: Box::new(s),
        })?;
    Ok(r.into_inner().started)
}
