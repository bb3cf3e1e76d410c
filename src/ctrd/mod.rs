//! The containerd client: content, images, leases, snapshots and diff over
//! containerd's gRPC API (the `containerd-client` crate's generated clients),
//! for `lazysnap pull` (and later commit and optimize).
//! Uses only `crate::oci` and `crate::registry`.
//!
//! - [`Ctrd`]: one connection, bound to a namespace and optionally a lease;
//!   every request carries `containerd-namespace` (and `containerd-lease`).
//! - [`content`]: the content store's streaming Write, label updates.
//! - [`services`]: thin wrappers of the Snapshots, Diff, Images and Leases
//!   RPCs that name what failed.
//! - [`plan`]: the pure parts: chain IDs, GC and snapshot labels, keys.
//! - [`run`]: running a container to its exit (Containers + Tasks), pause,
//!   resume, task state, a container's snapshot.
//! - [`pull`](mod@pull): [`pull()`](fn@pull), containerd 1.6's client pull with
//!   unpack (`client.Pull` + `WithPullUnpack`) done from here.
//! - [`error`](mod@error): [`CtrdError`].

pub mod content;
pub mod error;
pub mod import;
pub mod plan;
pub mod pull;
pub mod run;
pub mod services;

use std::path::Path;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;

pub use error::CtrdError;
pub use pull::{LayerOutcome, LayerProgress, PullOptions, Pulled, ResolvedImage, pull, pull_with};

/// gRPC metadata key of the namespace (containerd `namespaces/grpc.go`).
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// gRPC metadata key of the lease (containerd `leases/grpc.go`).
pub const LEASE_HEADER: &str = "containerd-lease";

/// A connection to containerd, bound to one namespace (and maybe a lease).
/// Cheap to clone: clones share the channel.
#[derive(Debug, Clone)]
pub struct Ctrd {
    channel: Channel,
    namespace: AsciiMetadataValue,
    lease: Option<AsciiMetadataValue>,
}

impl Ctrd {
    /// Connects to containerd's socket; requests go to `namespace`.
    ///
    /// # Errors
    ///
    /// [`CtrdError::BadMetadata`] for a namespace that cannot be a header
    /// value, [`CtrdError::Connect`] when the socket does not answer.
    pub async fn connect(address: &Path, namespace: &str) -> Result<Ctrd, CtrdError> {
        let namespace = metadata("namespace", namespace)?;
        let channel = containerd_client::connect(address)
            .await
            .map_err(|source| CtrdError::Connect {
                address: address.display().to_string(),
                source,
            })?;
        Ok(Ctrd {
            channel,
            namespace,
            lease: None,
        })
    }

    /// The same connection, with every request made under lease `id`.
    ///
    /// # Errors
    ///
    /// [`CtrdError::BadMetadata`] for an id that cannot be a header value.
    pub fn with_lease(&self, id: &str) -> Result<Ctrd, CtrdError> {
        Ok(Ctrd {
            lease: Some(metadata("lease id", id)?),
            ..self.clone()
        })
    }

    /// The channel, for clients of services not wrapped here.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `msg` as a request carrying the namespace and lease headers.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        let md = req.metadata_mut();
        md.insert(NAMESPACE_HEADER, self.namespace.clone());
        if let Some(l) = &self.lease {
            md.insert(LEASE_HEADER, l.clone());
        }
        req
    }
}

fn metadata(what: &'static str, value: &str) -> Result<AsciiMetadataValue, CtrdError> {
    MetadataValue::try_from(value).map_err(|_| CtrdError::BadMetadata {
        what,
        value: value.to_string(),
    })
}
