//! Commit: a container's upper dir (overlayfs format) ▶ change list ▶ OCI layer tar, with
//! whiteouts and opaque markers, sorted so the same upper gives the same bytes.
//! Must not touch FUSE sessions or gRPC types; reads the upper dir with plain syscalls
//! (through `fs`'s backing helpers for xattrs and long paths), never a live mount.
//!
//! ```text
//! upper dir ──changes()──▶ Vec<Change> ──write_tar()──▶ layer.tar (uncompressed)
//! ```
//!
//! # Policies (OCI image-spec `layer.md`, FORMATS.md §5)
//!
//! - **Whiteouts.** A 0/0 character device `DIR/NAME` becomes an empty regular
//!   file `DIR/.wh.NAME` carrying the device's mode (0 when lazysnap made it),
//!   owner and mtime. Whiteouts inside an opaque directory, at any depth, are
//!   dropped: the marker already hides those names (field case B02). A
//!   deleted lower directory is one `.wh.DIR` entry, never with children (B05).
//! - **Opaque directories.** A directory with `trusted.overlay.opaque=y` is
//!   written, then `DIR/.wh..wh..opq` (empty regular file, mode 0, the
//!   directory's owner and mtime), then its children. lazysnap never writes
//!   `user.overlay.opaque`, so that name is an ordinary user xattr here.
//! - **Private xattrs** (`trusted.overlay.*`, `trusted.lazysnap.*`, see
//!   [`crate::fs::is_overlay_xattr`]) are never written; copy-up does not
//!   copy them into the upper in the first place. A directory that exists in
//!   the upper only as the parent of a change (copied up, or implicit in its
//!   lower) is still written, with the metadata the upper holds: a layer
//!   needs its parents. Other xattrs (`security.capability`, ACLs, `user.*`,
//!   other `trusted.*`) are kept as PAX `SCHILY.xattr.NAME`, values exact.
//! - **Hardlinks.** Names of one inode in the upper: the first in write order
//!   is the file, the others hardlink entries to it. Copy-up brings a lower
//!   file's whole visible link group into the upper (B06), so old and new
//!   names of a group come out as one file plus links.
//! - **Times.** mtime as in the upper; with nanoseconds (or before 1970) a PAX
//!   `mtime` record carries the exact value. atime/ctime are not written.
//! - **Root.** The upper root is not an entry (docker and containerd write
//!   none); an opaque root gives a top-level `.wh..wh..opq`.
//! - **Not representable.** Sockets are skipped; a real entry named `.wh.*`
//!   fails the commit ([`CommitError::ReservedName`]).
//! - **Sparse files** are written in PAX sparse 1.0 (see `tar.rs`), or in
//!   full with [`TarOptions::sparse`] off.

mod diff;
mod error;
mod header;
pub mod image;
mod layer;
mod tar;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cases;
#[cfg(test)]
mod tests_sparse;

pub use diff::{Change, ChangeKind, Meta, Mtime, OPAQUE_MARKER, WHITEOUT_PREFIX, changes};
pub use error::CommitError;
pub use layer::{CommittedLayer, LayerError, write_upper_layer};
pub use tar::{TarOptions, TarWritten, write_tar};
