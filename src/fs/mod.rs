//! The union filesystem: owns the FUSE mounts, the merge of lowers and upper,
//! copy-up and whiteouts. Must not touch gRPC or the snapshot metadata; it is
//! the only module that imports `fuser`.
//!
//! Public contract used by `snapshot`:
//! - [`MountSpec`] describes one union (lowers nearest-first, optional upper).
//! - [`mount`] starts a FUSE session serving it at `spec.mountpoint`.
//! - [`unmount`] detaches a mount point (lazily when busy).
//! - [`mount_state`] tells whether a mount point is served, dead or absent.
//! - [`Recorder`] (from [`MountHandle::recorder`]) records the union paths
//!   of regular files opened and symlinks read, first access first (`record`).
//!
//! Layout: `lower` (read-only layers, shared per path: local dirs, or
//! remote layers indexed from their TOC in `remote` and read through a
//! [`ChunkReader`] in `remote_file`), `backing` (syscalls on
//! a local overlayfs-format dir), `union` (merge rules), `inode` (node ids,
//! `st_ino` scheme, persistent origin map), `upper` (copying entries into the
//! upper), `copyup` (copy-up policies), `ops*` ([`UnionFs`], one method per
//! FUSE operation), `fuse_adapter` (the thin fuser impl) and `fuse_reply`
//! (its conversions and open replies), `passthrough` (the I/O mode of each
//! open file), `remote_local` (remote files assembled into whole local
//! files for passthrough), `errno` (the one errno table), `mount`, `error`.
//!
//! # Policies (what the upper holds, for the commit step and for users)
//!
//! - **Format.** The upper is in overlayfs format: a deleted lower name is a
//!   0/0 character device, a directory replacing lower content carries
//!   `trusted.overlay.opaque=y`; no redirect or origin xattrs are written, so
//!   the upper can be a lower of this union or of kernel overlayfs as is.
//!   A 0/0 character device cannot be created through the union (EPERM, as
//!   in kernel overlayfs).
//! - **Renamed lower directories** are copied up whole (recursively), the
//!   new directory is opaque, the old name a whiteout.
//! - **Hardlinks** keep their group on copy-up: one copy of the data, every
//!   visible name linked to it; `st_nlink` = number of names sharing `st_ino`.
//! - **`st_ino`** is derived from (layer, backing inode) and kept across
//!   copy-up and restarts by a map in `work` (see `inode.rs`); directories
//!   merged from several layers report `st_nlink` 1, like overlayfs.
//! - **Consistency.** No writeback cache: a write reaches the upper file
//!   before it is acknowledged, so after `syncfs` (of the upper's filesystem)
//!   a reader of the upper dir sees a consistent tree. The kernel caches
//!   entries, attributes, directory listings and pages for a long time, which
//!   is safe because the upper changes only through this filesystem and
//!   lowers are immutable.
//! - **Data path.** Where the kernel offers FUSE passthrough (Linux ≥ 6.9),
//!   opens of upper files, and in read-only unions also of lower files (a
//!   local lower's file, or a remote file whose chunks are all cached,
//!   assembled into one file in the chunk cache), hand the kernel the backing
//!   file: reads, writes and mmap then bypass the daemon. Lower files of a
//!   writable union are served by the daemon through the page cache, so that
//!   a descriptor opened before a copy-up reads the upper copy after it
//!   (field case B08). That costs speed where the kernel's FUSE page cache
//!   holds only 4 KiB pages (Linux 6.18 here: cached sequential reads at
//!   0.7–0.9× ext4, whose page cache uses large folios; see the "large
//!   folios %" column of `scripts/bench-fio.sh`). Passing such a file
//!   through cannot keep B08: the kernel gives all open files of an inode
//!   one backing file, so after a copy-up a reader that opened the lower
//!   file would keep reading it, and a writer opened then would share that
//!   backing, whose mmap would reach the lower file itself (shared by every
//!   container). See `passthrough.rs` for the kernel's rules on mixing
//!   modes. Requests are up to 1 MiB, with a 1 MiB readahead window.
//! - **Locks** (POSIX and `flock`) are kept by the kernel, locally.

pub mod apply;
mod backing;
mod copyup;
mod errno;
mod error;
mod fuse_adapter;
mod fuse_reply;
mod inode;
mod lower;
mod mount;
mod ops;
mod ops_attr;
mod ops_io;
mod ops_ns;
mod passthrough;
mod record;
mod remote;
mod remote_file;
mod remote_local;
mod union;
mod upper;

#[cfg(test)]
mod mount_tests;
#[cfg(test)]
mod remote_fake;
#[cfg(test)]
mod remote_tests;

pub use backing::{
    BPath, EntryAttr, EntryKind, OPAQUE_XATTR, get_xattr, is_overlay_xattr, list_xattrs,
};
pub use error::FsError;
pub use lower::{Lower, LowerFile, LowerKind};
pub use mount::{MountHandle, MountSpec, MountState, mount, mount_state, unmount};
pub use ops::{Ctx, DirSnapEnt, Entry, FsStats, NodeAttr, UnionFs};
pub use ops_attr::{SetAttr, TimeSet};
pub use passthrough::{IoStats, set_passthrough};
pub use record::Recorder;
pub use remote_file::{ChunkReader, READAHEAD_CHUNKS, RemoteFile};
pub use remote_local::ASSEMBLE_INLINE_MAX;
