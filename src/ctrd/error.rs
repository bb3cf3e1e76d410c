//! [`CtrdError`]: why talking to containerd (or preparing what we hand it) failed.

use crate::oci::Digest;
use crate::registry::RegistryError;

/// Why a containerd client operation failed. Every variant names what it
/// was about: the RPC, the blob or the layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtrdError {
    /// The unix socket could not be connected.
    #[error("connecting to containerd at {address}: {source}")]
    Connect {
        /// The socket path.
        address: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A containerd RPC answered with an error status.
    #[error("containerd {rpc} ({what}): {}: {}", .status.code(), .status.message())]
    Rpc {
        /// The RPC, e.g. `Snapshots.Prepare`.
        rpc: &'static str,
        /// What it was about (a digest, a key, a name).
        what: String,
        /// The status containerd returned.
        status: Box<tonic::Status>,
    },
    /// The registry could not give a manifest or blob.
    #[error("{what}: {source}")]
    Registry {
        /// What was being fetched.
        what: String,
        /// The registry error.
        #[source]
        source: Box<RegistryError>,
    },
    /// The image config or manifest does not make sense.
    #[error("image {reference}: {reason}")]
    BadImage {
        /// The image reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// The Diff service applied a layer whose uncompressed digest is not
    /// the config's diff ID.
    #[error("layer {layer}: applied diff is {actual}, the image config says {expected}")]
    DiffIdMismatch {
        /// The layer's (compressed) digest.
        layer: Digest,
        /// The diff ID from the image config.
        expected: String,
        /// What the Diff service computed.
        actual: String,
    },
    /// A value that cannot travel as gRPC metadata (namespace, lease id).
    #[error("{what} {value:?} is not a valid gRPC metadata value")]
    BadMetadata {
        /// Which value.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A container could not be run as asked (its spec, user or stdio).
    #[error("container {container}: {reason}")]
    Run {
        /// The container id.
        container: String,
        /// What is wrong.
        reason: String,
    },
    /// containerd answered without a field it always sends.
    #[error("containerd {rpc}: the answer has no {field}")]
    MissingField {
        /// The RPC.
        rpc: &'static str,
        /// The missing field.
        field: &'static str,
    },
}

impl CtrdError {
    /// An [`CtrdError::Rpc`] from a status.
    pub fn rpc(rpc: &'static str, what: impl Into<String>, status: tonic::Status) -> CtrdError {
        CtrdError::Rpc {
            rpc,
            what: what.into(),
            status: Box::new(status),
        }
    }

    /// The gRPC code, when containerd answered with an error status.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            CtrdError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}
