//! lazysnap's Control service (`lazysnap.v1.Control`): what the CLI asks the
//! daemon. The CLI never opens the daemon's database itself.
//!
//! - `Status`: version, root, counts and mounts.
//! - `StartRecording` / `StopRecording`: access recording of a snapshot's
//!   union (see `proto/lazysnap/v1/control.proto`; the CLI side is
//!   [`super::control_client`]).
//! - `CommitLayer`: an Active snapshot's upper written as one lazy layer.
//! - `PrepareImage`: an image's layers resolved and prefetched ahead of its
//!   Prepare calls (`lazysnap pull` sends it as soon as it has the manifest).

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::proto::lazysnap::v1 as pb;
use crate::format::writer::{LayerFormat, WriterOptions};
use crate::fs::MountState;
use crate::snapshot::{SnapshotError, Snapshotter};

/// The Control gRPC service.
#[derive(Debug, Clone)]
pub struct ControlService {
    inner: Arc<Snapshotter>,
    root: String,
    started: Instant,
}

impl ControlService {
    /// Serves status of `snapshotter`, whose state lives under `root`.
    pub fn new(snapshotter: Arc<Snapshotter>, root: String) -> Self {
        ControlService {
            inner: snapshotter,
            root,
            started: Instant::now(),
        }
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.inner.clone();
        let st = tokio::task::spawn_blocking(move || s.status())
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            root: self.root.clone(),
            snapshots_active: st.active,
            snapshots_view: st.view,
            snapshots_committed: st.committed,
            mounts: st
                .mounts
                .into_iter()
                .map(|(key, mp, state)| pb::MountStatus {
                    key,
                    mountpoint: mp.display().to_string(),
                    state: match state {
                        MountState::Live => "live",
                        MountState::Dead => "dead",
                        MountState::Absent => "absent",
                    }
                    .to_string(),
                })
                .collect(),
            uptime_seconds: self.started.elapsed().as_secs(),
        }))
    }

    async fn start_recording(
        &self,
        req: Request<pb::StartRecordingRequest>,
    ) -> Result<Response<pb::StartRecordingResponse>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        let (backend_key, restarted) = tokio::task::spawn_blocking(move || {
            let key = s.resolve_key(&r.namespace, &r.key)?;
            let restarted = s.start_recording(&key)?;
            Ok::<_, SnapshotError>((key, restarted))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::StartRecordingResponse {
            backend_key,
            restarted,
        }))
    }

    async fn stop_recording(
        &self,
        req: Request<pb::StopRecordingRequest>,
    ) -> Result<Response<pb::StopRecordingResponse>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        let (backend_key, paths) = tokio::task::spawn_blocking(move || {
            let key = s.resolve_key(&r.namespace, &r.key)?;
            let paths = s.stop_recording(&key)?;
            Ok::<_, SnapshotError>((key, paths))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::StopRecordingResponse {
            paths: paths
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            backend_key,
        }))
    }

    async fn prepare_image(
        &self,
        req: Request<pb::PrepareImageRequest>,
    ) -> Result<Response<pb::PrepareImageResponse>, Status> {
        let r = req.into_inner();
        let digest = |s: &str| {
            s.parse::<crate::oci::Digest>()
                .map_err(|e| Status::invalid_argument(e.to_string()))
        };
        let manifest = if r.manifest_digest.is_empty() {
            None
        } else {
            Some(digest(&r.manifest_digest)?)
        };
        let layers = r
            .layers
            .iter()
            .map(|l| digest(l))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(
            rpc = "PrepareImage",
            reference = r.reference,
            layers = layers.len()
        );
        let started = self.inner.prepare_image(&r.reference, manifest, layers)?;
        Ok(Response::new(pb::PrepareImageResponse {
            started: u32::try_from(started).unwrap_or(u32::MAX),
        }))
    }

    async fn commit_layer(
        &self,
        req: Request<pb::CommitLayerRequest>,
    ) -> Result<Response<pb::CommitLayerResponse>, Status> {
        let r = req.into_inner();
        let format = if r.format.is_empty() {
            LayerFormat::Estargz
        } else {
            r.format
                .parse::<LayerFormat>()
                .map_err(Status::invalid_argument)?
        };
        let mut opts = WriterOptions::new(format);
        if r.chunk_size > 0 {
            opts.chunk_size = r.chunk_size;
        }
        let s = self.inner.clone();
        let (backend_key, layer) = tokio::task::spawn_blocking(move || {
            let key = s.resolve_key(&r.namespace, &r.key)?;
            let layer = s.commit_layer(&key, &opts, std::path::Path::new(&r.out_dir))?;
            Ok::<_, SnapshotError>((key, layer))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let w = layer.written;
        Ok(Response::new(pb::CommitLayerResponse {
            backend_key,
            path: layer.path.display().to_string(),
            media_type: w.media_type,
            digest: w.digest.to_string(),
            size: w.size,
            diff_id: w.diff_id.to_string(),
            uncompressed_size: w.uncompressed_size,
            annotations: w.annotations.into_iter().collect(),
            entries: layer.tar.entries,
        }))
    }
}
