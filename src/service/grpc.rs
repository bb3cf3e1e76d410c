//! containerd's Snapshots service (`containerd.services.snapshots.v1`) over
//! [`Snapshotter`]: proto ↔ domain conversion, one debug log line per RPC
//! with its labels, and the blocking work moved off the reactor.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::debug;

use super::proto::containerd::services::snapshots::v1 as pb;
use super::proto::containerd::types::Mount as PbMount;
use crate::snapshot::{Info, Kind, Mount, Snapshotter};

/// containerd proxy clients batch `List` results this many per message.
const LIST_BATCH: usize = 100;

/// The Snapshots gRPC service.
#[derive(Debug, Clone)]
pub struct SnapshotsService {
    inner: Arc<Snapshotter>,
}

impl SnapshotsService {
    /// Serves `snapshotter`.
    pub fn new(snapshotter: Arc<Snapshotter>) -> Self {
        SnapshotsService { inner: snapshotter }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Snapshotter) -> Result<T, crate::snapshot::SnapshotError> + Send + 'static,
    ) -> Result<T, Status> {
        let s = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&s)).await {
            Ok(r) => r.map_err(|e| {
                debug!(error = %e, "rpc failed");
                Status::from(e)
            }),
            Err(e) => Err(Status::internal(format!("snapshot task failed: {e}"))),
        }
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn labels(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn pb_mounts(ms: Vec<Mount>) -> Vec<PbMount> {
    ms.into_iter()
        .map(|m| PbMount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn ts(ns: i128) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ns.div_euclid(1_000_000_000)) as i64,
        nanos: (ns.rem_euclid(1_000_000_000)) as i32,
    }
}

fn from_ts(t: Option<prost_types::Timestamp>) -> i128 {
    t.map(|t| t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
        .unwrap_or(0)
}

fn pb_kind(k: Kind) -> i32 {
    match k {
        Kind::View => pb::Kind::View as i32,
        Kind::Active => pb::Kind::Active as i32,
        Kind::Committed => pb::Kind::Committed as i32,
    }
}

fn pb_info(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        kind: pb_kind(i.kind),
        created_at: Some(ts(i.created_ns)),
        updated_at: Some(ts(i.updated_ns)),
        labels: i.labels.into_iter().collect(),
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        debug!(rpc = "Prepare", key = %r.key, parent = %r.parent, labels = ?r.labels);
        let (key, parent, l) = (r.key, opt(r.parent), labels(r.labels));
        let ms = self
            .run(move |s| s.prepare(&key, parent.as_deref(), l))
            .await?;
        debug!(rpc = "Prepare", mounts = ?ms, "ok");
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: pb_mounts(ms),
        }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        debug!(rpc = "View", key = %r.key, parent = %r.parent, labels = ?r.labels);
        let (key, parent, l) = (r.key, opt(r.parent), labels(r.labels));
        let ms = self
            .run(move |s| s.view(&key, parent.as_deref(), l))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: pb_mounts(ms),
        }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let key = req.into_inner().key;
        debug!(rpc = "Mounts", key = %key);
        let ms = self.run(move |s| s.mounts(&key)).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: pb_mounts(ms),
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        debug!(rpc = "Commit", name = %r.name, key = %r.key, parent = %r.parent, labels = ?r.labels);
        if !r.parent.is_empty() {
            // Rebase (containerd 2.x parallel unpack) is not advertised, so a
            // client must not ask for it; refuse rather than ignore it.
            let key = r.key.clone();
            let cur = self.run(move |s| s.stat(&key)).await?;
            if cur.parent.as_deref() != Some(r.parent.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "commit of snapshot {:?}: rebase onto parent {:?} is not supported",
                    r.key, r.parent
                )));
            }
        }
        let (name, key, l) = (r.name, r.key, labels(r.labels));
        self.run(move |s| s.commit(&name, &key, l)).await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = req.into_inner().key;
        debug!(rpc = "Remove", key = %key);
        self.run(move |s| s.remove(&key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let key = req.into_inner().key;
        debug!(rpc = "Stat", key = %key);
        let info = self.run(move |s| s.stat(&key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(pb_info(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("update: info is required"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        debug!(rpc = "Update", name = %info.name, labels = ?info.labels, paths = ?paths);
        let info = Info {
            name: info.name,
            parent: opt(info.parent),
            kind: Kind::Active,
            labels: labels(info.labels),
            created_ns: from_ts(info.created_at),
            updated_ns: from_ts(info.updated_at),
        };
        let out = self.run(move |s| s.update(info, &paths)).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(pb_info(out)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        // When a client sends its namespace (`containerd-namespace`), it gets
        // that namespace's snapshots only (backend keys start "<ns>/").
        // containerd 1.6's proxy does not send it; for its remote-snapshot
        // lookup the snapshotter orders the answer instead (`hand_out`).
        let ns = req
            .metadata()
            .get("containerd-namespace")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        let filters = req.into_inner().filters;
        debug!(rpc = "List", namespace = ?ns, filters = ?filters);
        let infos = self.run(move |s| s.list(&filters, ns.as_deref())).await?;
        debug!(rpc = "List", matched = infos.len(), "ok");
        let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|c| {
                Ok(pb::ListSnapshotsResponse {
                    info: c.iter().cloned().map(pb_info).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let key = req.into_inner().key;
        debug!(rpc = "Usage", key = %key);
        let (size, inodes) = self.run(move |s| s.usage(&key)).await?;
        Ok(Response::new(pb::UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        debug!(rpc = "Cleanup");
        self.run(|s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}
