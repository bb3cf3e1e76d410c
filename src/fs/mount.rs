//! stub
use super::FsError;
use std::path::{Path, PathBuf};
/// s
#[derive(Debug, Clone)]
pub struct MountSpec {
    /// l
    pub lowers: Vec<PathBuf>,
    /// u
    pub upper: Option<PathBuf>,
    /// w
    pub work: PathBuf,
    /// m
    pub mountpoint: PathBuf,
    /// f
    pub fsname: String,
}
/// h
#[derive(Debug)]
pub struct MountHandle;
/// s
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountState {
    /// l
    Live,
    /// d
    Dead,
    /// a
    Absent,
}
/// m
pub fn mount(_spec: MountSpec, _rt: tokio::runtime::Handle) -> Result<MountHandle, FsError> {
    Ok(MountHandle)
}
/// u
pub fn unmount(_m: &Path) -> Result<(), FsError> {
    Ok(())
}
/// s
pub fn mount_state(_m: &Path) -> MountState {
    MountState::Absent
}
