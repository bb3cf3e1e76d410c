//! The process edge: one tonic server on a unix socket (mode 0600) serving
//! containerd's Snapshots service and lazysnap's Control service; the status
//! code mapping; signals; the Prometheus metrics endpoint. No business logic:
//! proto ↔ domain conversion only.

mod control;
pub mod control_client;
mod grpc;
mod metrics;
pub mod proto;
mod serve;
mod status;

pub use control::ControlService;
pub use grpc::SnapshotsService;
pub use metrics::{METRICS_PATH, MetricsEndpoint};
pub use serve::{
    LazyOptions, ServeError, ServeOptions, connect, remote_context, serve, serve_with,
};
