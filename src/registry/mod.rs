//! The registry client: OCI distribution pulls (manifests, blobs, byte
//! ranges) with Docker token auth, redirects and retries.
//! Owns HTTP; must not know TOCs, caches or FUSE. Uses only `crate::oci`.
//!
//! - [`reference`](mod@reference): image references and platforms.
//! - [`client`]: [`RegistryClient`], the public operations.
//! - [`transport`]: one exchange: scheme, auth, redirects, status, retries.
//! - [`hosts`]: containerd `hosts.toml`: mirrors, per-host TLS and headers.
//! - [`auth`] / [`credentials`]: challenges, tokens, docker config.
//! - [`manifest`]: media types, classification, platform selection.
//! - [`range`]: [`ByteRange`] and `Content-Range` parsing.
//! - [`error`]: [`RegistryError`] and the [`Target`] it names.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod error;
pub mod hosts;
pub mod manifest;
pub mod range;
pub mod reference;
mod token;
pub mod transport;

pub use client::{ClientOptions, RegistryClient, Resolved};
pub use error::{RegistryError, Target};
pub use manifest::MAX_MANIFEST_BYTES;
pub use range::ByteRange;
pub use reference::{Platform, Reference};

#[cfg(test)]
mod fake_server;
#[cfg(test)]
mod fake_tests;
#[cfg(test)]
mod hosts_tests;
