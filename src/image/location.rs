//! Where an image lives: a registry reference, or an OCI image layout directory.
//!
//! Syntax as skopeo (containers/image transports) writes it:
//! - `oci:DIR[:REF]` — an OCI image layout (image-spec `image-layout.md`); `REF` is the
//!   `org.opencontainers.image.ref.name` annotation of an entry of its `index.json`. The
//!   path ends at the first `:` after `oci:`, so `REF` may itself contain `:` and `/`
//!   (`oci:/cache/oci:test/busybox:latest`).
//! - `docker://REF` or a plain `REF` — a registry reference with docker's defaults.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::registry::Reference;

use super::error::ImageError;

/// An image location parsed from a command-line argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A registry reference.
    Registry(Reference),
    /// An OCI image layout directory and, optionally, the ref name of one of its images.
    Layout {
        /// The layout directory (holds `oci-layout`, `index.json`, `blobs/`).
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to read or write; `None` reads the
        /// layout's only image and writes an untagged entry.
        tag: Option<String>,
    },
}

impl FromStr for Location {
    type Err = ImageError;

    /// # Errors
    /// [`ImageError::BadLocation`] for an empty layout path or an invalid reference.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = match rest.split_once(':') {
                Some((d, t)) => (d, (!t.is_empty()).then(|| t.to_string())),
                None => (rest, None),
            };
            if dir.is_empty() {
                return Err(ImageError::BadLocation {
                    input: s.to_string(),
                    reason: "the OCI layout path is empty (oci:DIR[:REF])".into(),
                });
            }
            return Ok(Location::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        let r = s.strip_prefix("docker://").unwrap_or(s);
        r.parse::<Reference>()
            .map(Location::Registry)
            .map_err(|e| ImageError::BadLocation {
                input: s.to_string(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Registry(r) => write!(f, "{r}"),
            Location::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            Location::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_split_at_the_first_colon() {
        let l: Location = "oci:/var/cache/x:test/busybox:latest".parse().unwrap();
        assert_eq!(
            l,
            Location::Layout {
                dir: "/var/cache/x".into(),
                tag: Some("test/busybox:latest".into())
            }
        );
        let l: Location = "oci:rel/dir".parse().unwrap();
        assert_eq!(
            l,
            Location::Layout {
                dir: "rel/dir".into(),
                tag: None
            }
        );
        assert!("oci:".parse::<Location>().is_err());
        assert!("oci::tag".parse::<Location>().is_err());
    }

    #[test]
    fn references_take_docker_defaults() {
        let Location::Registry(r) = "docker://127.0.0.1:5000/a/b:t".parse().unwrap() else {
            panic!("not a registry location")
        };
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "a/b")
        );
        assert_eq!(r.tag.as_deref(), Some("t"));
        let Location::Registry(r) = "busybox".parse().unwrap() else {
            panic!("not a registry location")
        };
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert!("a/Bad".parse::<Location>().is_err());
    }
}
