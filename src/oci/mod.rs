//! Shared vocabulary of the OCI and containerd specs: digests and
//! containerd's snapshot label keys. Depends on nothing else in the crate.

pub mod digest;
pub mod labels;
pub mod rfc3339;

pub use digest::{Digest, DigestText};
