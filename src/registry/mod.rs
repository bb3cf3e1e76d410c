//! The registry client: OCI distribution pulls (manifests, blobs, byte
//! ranges) and pushes, with Docker token auth, redirects and retries.
//! Owns HTTP; must not know TOCs, caches or FUSE. Uses only `crate::oci`.
//!
//! - [`reference`](mod@reference): image references and platforms.
//! - [`client`]: [`RegistryClient`], the public operations.
//! - [`push`]: blob uploads, mounts and manifest PUTs (FORMATS.md §6.4),
//!   over `upload` (one upload session); `fetch_file`: a blob streamed
//!   into a file.
//! - [`transport`]: one exchange: scheme, auth, redirects, status, retries.
//! - [`hosts`]: containerd `hosts.toml`: mirrors, per-host TLS and headers.
//! - [`auth`] / [`credentials`]: challenges, tokens, docker config (read,
//!   and written as `docker login` does); [`login`]: checking credentials.
//! - [`manifest`]: media types, classification, platform selection.
//! - [`range`]: [`ByteRange`] and `Content-Range` parsing.
//! - [`error`]: [`RegistryError`] and the [`Target`] it names.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod error;
mod fetch_file;
pub mod hosts;
pub mod login;
pub mod manifest;
pub mod push;
pub mod range;
pub mod reference;
mod token;
pub mod transport;
mod upload;

pub use client::{ClientOptions, RawManifest, RegistryClient, Resolved};
pub use error::{RegistryError, Target};
pub use manifest::MAX_MANIFEST_BYTES;
pub use push::{DEFAULT_CHUNK_SIZE, DEFAULT_MONOLITHIC_LIMIT, PushOptions};
pub use range::ByteRange;
pub use reference::{Platform, Reference};

#[cfg(test)]
mod fake_server;
#[cfg(test)]
mod fake_tests;
#[cfg(test)]
mod hosts_tests;
#[cfg(test)]
mod push_tests;
