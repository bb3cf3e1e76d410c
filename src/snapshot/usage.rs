//! Disk usage of one snapshot's own dir (containerd `fs.DiskUsage`: bytes of
//! allocated blocks and the number of inodes, each inode counted once).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `(bytes, inodes)` under `dir`, not following symlinks or crossing into
/// other filesystems.
///
/// # Errors
/// The first I/O error, with its path.
pub fn disk_usage(dir: &Path) -> Result<(i64, i64), (std::path::PathBuf, std::io::Error)> {
    let root = std::fs::symlink_metadata(dir).map_err(|e| (dir.to_path_buf(), e))?;
    let mut seen = HashSet::new();
    let mut bytes = 0i64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(|e| (p.clone(), e))?;
        if md.dev() != root.dev() {
            continue;
        }
        if seen.insert(md.ino()) {
            bytes += md.blocks() as i64 * 512;
        }
        if md.is_dir() {
            for entry in std::fs::read_dir(&p).map_err(|e| (p.clone(), e))? {
                stack.push(entry.map_err(|e| (p.clone(), e))?.path());
            }
        }
    }
    Ok((bytes, seen.len() as i64))
}
