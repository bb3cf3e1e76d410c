//! stub
/// e
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// m
    #[error("mount {path}: {source}")]
    Mount {
        /// p
        path: std::path::PathBuf,
        /// s
        source: std::io::Error,
    },
}
