//! The mount records returned to containerd (`containerd.types.Mount`), in
//! the shapes containerd can mount itself (FORMATS.md §4.5).

use std::path::Path;

/// One mount (containerd `types.Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `bind` or `overlay`.
    pub kind: String,
    /// Host path, or `overlay`.
    pub source: String,
    /// fstab-style options.
    pub options: Vec<String>,
}

/// A bind mount of `source`, read-only when `ro`.
pub fn bind(source: &Path, ro: bool) -> Mount {
    Mount {
        kind: "bind".to_string(),
        source: source.display().to_string(),
        options: vec![
            if ro { "ro" } else { "rw" }.to_string(),
            "rbind".to_string(),
        ],
    }
}

/// The kernel-overlay shape over local layer dirs: a bind of `upper` when
/// there are no lowers, else `overlay` with `lowerdir` nearest parent first.
/// `upper` is `None` for a read-only view (a single lower is then bound `ro`).
pub fn overlay(lowers: &[&Path], upper: Option<(&Path, &Path)>) -> Mount {
    match (lowers, upper) {
        ([], Some((u, _))) => bind(u, false),
        ([one], None) => bind(one, true),
        (_, upper) => {
            let mut options = Vec::new();
            if let Some((u, w)) = upper {
                options.push(format!("workdir={}", w.display()));
                options.push(format!("upperdir={}", u.display()));
            }
            let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
            options.push(format!("lowerdir={}", lower.join(":")));
            Mount {
                kind: "overlay".to_string(),
                source: "overlay".to_string(),
                options,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let u = Path::new("/r/s/3/fs");
        let w = Path::new("/r/s/3/work");
        assert_eq!(overlay(&[], Some((u, w))).options, vec!["rw", "rbind"]);
        let m = overlay(&[Path::new("/a"), Path::new("/b")], Some((u, w)));
        assert_eq!(m.kind, "overlay");
        assert_eq!(
            m.options,
            vec![
                "workdir=/r/s/3/work",
                "upperdir=/r/s/3/fs",
                "lowerdir=/a:/b"
            ]
        );
        assert_eq!(
            overlay(&[Path::new("/a")], None).options,
            vec!["ro", "rbind"]
        );
    }
}
