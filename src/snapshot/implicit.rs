//! Times of implicit parent directories after containerd unpacks a layer.
//!
//! The OCI layer spec does not require entries for a file's parent
//! directories (umoci omits unchanged ones; field case B27). containerd's
//! applier then creates the missing parents in the new layer dir, copying
//! mode and owner from the layer below, but adding the layer's files bumps
//! their times to "now", so the merged view would show the unpack time
//! instead of the image's. After an extraction lazysnap therefore gives
//! every directory of the new layer that was touched during the unpack
//! (mtime at or after the Prepare) and that is a directory in the parent
//! chain the times of the nearest parent's directory. Directories the layer
//! names itself have had their tar times restored by containerd, which lie
//! before the Prepare; a future-dated tar directory entry is the one case
//! this rule would rewrite.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

/// Margin between the Prepare timestamp and file times (coarse kernel clock).
const CLOCK_SLACK_NS: i128 = 2_000_000_000;

/// Applies the rule above to `layer` (a committed extraction's dir), with
/// `lowers` the parent chain's layer dirs, nearest first, and `since_ns` the
/// Prepare time. Returns how many directories were fixed.
///
/// # Errors
/// The first I/O error, with its path.
pub fn restore_implicit_dir_times(
    layer: &Path,
    lowers: &[PathBuf],
    since_ns: i128,
) -> Result<usize, (PathBuf, std::io::Error)> {
    let mut fixed = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = layer.join(&rel);
        for entry in std::fs::read_dir(&dir).map_err(|e| (dir.clone(), e))? {
            let entry = entry.map_err(|e| (dir.clone(), e))?;
            let md = entry.metadata().map_err(|e| (entry.path(), e))?;
            if md.is_dir() {
                stack.push(rel.join(entry.file_name()));
            }
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let md = std::fs::symlink_metadata(&dir).map_err(|e| (dir.clone(), e))?;
        let mtime_ns = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
        // File times come from the kernel's coarse clock, which may lag the
        // Prepare timestamp by a tick: allow a margin.
        if mtime_ns < since_ns - CLOCK_SLACK_NS {
            continue;
        }
        // The nearest parent layer that has anything at this path decides.
        let below = lowers
            .iter()
            .find_map(|l| std::fs::symlink_metadata(l.join(&rel)).ok());
        let Some(below) = below.filter(|m| m.is_dir()) else {
            continue;
        };
        let at = TimeSpec::new(below.atime(), below.atime_nsec());
        let mt = TimeSpec::new(below.mtime(), below.mtime_nsec());
        utimensat(None, &dir, &at, &mt, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| (dir.clone(), std::io::Error::from(e)))?;
        fixed += 1;
    }
    Ok(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mtime(p: &Path, secs: i64) {
        let t = TimeSpec::new(secs, 0);
        utimensat(None, p, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
    }

    #[test]
    fn implicit_parents_take_the_lower_times_explicit_ones_keep_theirs() {
        let d = tempfile::tempdir().unwrap();
        let (l1, l2) = (d.path().join("l1"), d.path().join("l2"));
        std::fs::create_dir_all(l1.join("usr/bin")).unwrap();
        set_mtime(&l1.join("usr/bin"), 1_600_000_001);
        set_mtime(&l1.join("usr"), 1_600_000_000);
        let since = crate::snapshot::store::now_ns();
        // What containerd leaves: implicit usr, usr/bin (times = now), an
        // explicit etc (tar time restored) and a new implicit opt.
        std::fs::create_dir_all(l2.join("usr/bin")).unwrap();
        std::fs::write(l2.join("usr/bin/b"), b"b").unwrap();
        std::fs::create_dir_all(l2.join("etc")).unwrap();
        set_mtime(&l2.join("etc"), 1_500_000_000);
        std::fs::create_dir_all(l2.join("opt/tool")).unwrap();
        let n = restore_implicit_dir_times(&l2, std::slice::from_ref(&l1), since).unwrap();
        assert_eq!(n, 2);
        let m = |p: &str| std::fs::metadata(l2.join(p)).unwrap().mtime();
        assert_eq!(m("usr"), 1_600_000_000);
        assert_eq!(m("usr/bin"), 1_600_000_001);
        assert_eq!(m("etc"), 1_500_000_000);
        assert!(m("opt") as i128 * 1_000_000_000 >= since - CLOCK_SLACK_NS);
    }
}
