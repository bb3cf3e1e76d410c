//! The daemon's socket: one tonic server with both services on a unix socket
//! created with mode 0600; SIGTERM/SIGINT stop serving without unmounting
//! anything (mounts are reconciled on the next start). When configured, the
//! metrics endpoint (`metrics.rs`) is started first, on its TCP address.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server};
use tracing::info;

use super::metrics::MetricsEndpoint;
use super::proto::containerd::services::snapshots::v1::snapshots_server::SnapshotsServer;
use super::proto::lazysnap::v1::control_server::ControlServer;
use super::{ControlService, SnapshotsService};
use crate::cache::{CacheOptions, ChunkCache};
use crate::registry::{ClientOptions, Platform, RegistryClient, RegistryError};
use crate::snapshot::{FuseMounter, LayerMounter, RemoteContext, Snapshotter};

/// What `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// State root.
    pub root: PathBuf,
    /// Socket path.
    pub address: PathBuf,
    /// Lazy pulling; `None` serves local layers only.
    pub lazy: Option<LazyOptions>,
    /// TCP address of the Prometheus endpoint (`GET /metrics`); `None` = off.
    pub metrics_address: Option<SocketAddr>,
}

/// Settings of lazy pulling (the config file's keys of the same names).
#[derive(Debug, Clone)]
pub struct LazyOptions {
    /// Chunk cache byte budget on disk (`<root>/cache`).
    pub cache_budget: u64,
    /// Memory tier byte budget.
    pub cache_memory: u64,
    /// Hosts reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// `os/arch[/variant]` to resolve; empty = the host's.
    pub platform: String,
    /// Background fetch pace in bytes/s; `None` = off.
    pub background_rate: Option<u64>,
    /// Fetch window of a read that misses, compressed bytes; 0 = off.
    pub fetch_window: u64,
    /// Blob size up to which a lazy layer is fetched whole when resolved,
    /// bytes; 0 = never.
    pub whole_layer_limit: u64,
    /// containerd hosts.toml dir; `None` = none.
    pub hosts_dir: Option<PathBuf>,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be created.
    #[error("socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state could not be opened.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// Lazy pulling could not be set up.
    #[error("{0}")]
    Setup(String),
    /// The metrics endpoint could not listen on its address.
    #[error("metrics address {address}: {source}")]
    Metrics {
        /// The configured address.
        address: SocketAddr,
        /// The OS error (e.g. address in use).
        source: std::io::Error,
    },
    /// The server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Opens the state (reconciling mounts), then serves until SIGTERM or SIGINT.
///
/// # Errors
/// [`ServeError`] when the socket, the state or the server fails.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let endpoint = match opts.metrics_address {
        Some(address) => Some(
            MetricsEndpoint::start(address)
                .await
                .map_err(|source| ServeError::Metrics { address, source })?,
        ),
        None => None,
    };
    let rt = tokio::runtime::Handle::current();
    let mounter: Arc<dyn LayerMounter> = Arc::new(FuseMounter::new(rt.clone()));
    let remote = match &opts.lazy {
        Some(l) => Some(Arc::new(remote_context(&opts.root, l, rt)?)),
        None => None,
    };
    let root = opts.root.clone();
    let snapshotter =
        tokio::task::spawn_blocking(move || Snapshotter::open(&root, mounter, remote))
            .await
            .map_err(|e| ServeError::Socket {
                path: opts.root.clone(),
                source: std::io::Error::other(e),
            })??;
    let snapshotter = Arc::new(snapshotter);
    let served = serve_with(snapshotter, &opts, shutdown_signal()).await;
    if let Some(e) = endpoint {
        e.stop();
    }
    served
}

/// The registry client, chunk cache and platform lazy pulling uses.
///
/// # Errors
/// [`ServeError::Setup`] naming what could not be set up.
pub fn remote_context(
    root: &Path,
    l: &LazyOptions,
    rt: tokio::runtime::Handle,
) -> Result<RemoteContext, ServeError> {
    let setup = |what: &str, e: String| ServeError::Setup(format!("{what}: {e}"));
    // Checked before anything is created under `root`.
    let platform = if l.platform.is_empty() {
        Platform::host()
    } else {
        l.platform
            .parse()
            .map_err(|e: RegistryError| setup("platform", e.to_string()))?
    };
    let client = RegistryClient::new(ClientOptions {
        insecure_hosts: l.insecure_registries.clone(),
        hosts_dir: l.hosts_dir.clone(),
        ..ClientOptions::default()
    })
    .map_err(|e| setup("registry client", e.to_string()))?;
    let cache = ChunkCache::open(CacheOptions {
        dir: root.join("cache"),
        disk_budget: l.cache_budget,
        memory_budget: l.cache_memory,
    })
    .map_err(|e| setup("chunk cache", e.to_string()))?;
    cache.export_metrics();
    Ok(RemoteContext {
        client,
        cache,
        rt,
        platform,
        ahead: Default::default(),
        live: Default::default(),
        background_rate: l.background_rate,
        fetch_window: l.fetch_window,
        whole_layer_limit: l.whole_layer_limit,
    })
}

/// Serves `snapshotter` on `opts.address` until `shutdown` completes.
///
/// # Errors
/// [`ServeError`].
pub async fn serve_with(
    snapshotter: Arc<Snapshotter>,
    opts: &ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = bind(&opts.address)?;
    info!(address = %opts.address.display(), root = %opts.root.display(), "serving");
    Server::builder()
        .add_service(SnapshotsServer::new(SnapshotsService::new(
            snapshotter.clone(),
        )))
        .add_service(ControlServer::new(ControlService::new(
            snapshotter,
            opts.root.display().to_string(),
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    info!("stopped serving; mounts stay in place");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
}

/// A gRPC channel to a unix socket (for the CLI and tests).
///
/// # Errors
/// The transport error when nothing listens there.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}
