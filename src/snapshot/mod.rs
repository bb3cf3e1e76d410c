//! containerd snapshot semantics (Prepare, View, Mounts, Commit, Remove, Stat,
//! Update, List, Usage, Cleanup) over the metadata store and the mounter.
//! Must not touch tonic types or fuser; reaches the filesystem only through
//! [`LayerMounter`].

mod background;
mod commit_layer;
mod error;
pub mod filter;
mod implicit;
mod mounter;
mod mounts;
mod recording;
mod remote;
mod remote_prepare;
mod snapshotter;
pub mod store;
mod stream;
mod usage;
pub mod window;

pub use error::SnapshotError;
pub use mounter::{FuseMounter, LayerMounter};
pub use mounts::Mount;
pub use remote::{RemoteContext, RemoteError, ResolvedLayer};
pub use snapshotter::{Snapshotter, Status};
pub use store::{Info, Kind, MountMode};
