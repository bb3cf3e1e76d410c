//! Shared vocabulary of the OCI and containerd specs: containerd's snapshot
//! label keys. Depends on nothing else in the crate.

pub mod labels;
