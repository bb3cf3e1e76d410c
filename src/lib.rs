//! lazysnap: a containerd proxy snapshotter that starts containers from one
//! union FUSE filesystem per snapshot.
//!
//! # Layout
//!
//! Data flows one way; a module uses only the modules to its left:
//!
//! `oci  ←  fs  ←  snapshot  ←  service  ←  main`
//!
//! - [`oci`]: the shared vocabulary: containerd label keys, whiteout naming.
//! - [`config`]: the TOML config file, typed, with defaults and validation.
//! - [`ctrd`]: the containerd client (content, images, leases, snapshots,
//!   diff) behind `lazysnap pull`; uses only `oci` and `registry`.
//! - [`fs`]: the union filesystem: lowers (layer dirs in overlayfs format),
//!   the writable upper with copy-up and whiteouts, merge rules, the thin
//!   `fuser` adapter, one errno table, mounting and unmounting.
//! - [`snapshot`]: containerd snapshot semantics (Prepare, View, Commit, …)
//!   over the metadata store (redb) and the mounter.
//! - [`service`]: the process edge: the tonic server for containerd's
//!   Snapshots service and lazysnap's Control service on one unix socket,
//!   and the status-code mapping.
//!
//! ```text
//!  containerd ──gRPC/unix socket──▶ service ──▶ snapshot ──▶ metadata (redb)
//!                                                  │
//!                                                  ▼
//!                                   fs: one FUSE union per Active/View
//!                                   lowers: committed layer dirs
//!                                   upper:  the snapshot's own dir
//! ```
//!
//! Later issues add `registry`, `format`, `cache` (between `oci` and `fs`) and
//! `commit` (between `fs` and `snapshot`); see DESIGN.md.

#![warn(missing_docs, missing_debug_implementations)]

pub mod cache;
pub mod commit;
pub mod config;
pub mod convert;
pub mod ctrd;
pub mod format;
pub mod fs;
pub mod image;
pub mod metrics;
pub mod oci;
pub mod registry;
pub mod service;
pub mod snapshot;
