//! stub
mod error;
mod mount;
pub use error::FsError;
pub use mount::{MountHandle, MountSpec, MountState, mount, mount_state, unmount};
