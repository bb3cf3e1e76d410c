//! Image references (`[registry/]repository[:tag][@digest]`, docker's
//! normalisation) and platforms (`os/arch[/variant]`).

use std::fmt;
use std::str::FromStr;

use crate::oci::Digest;

use super::error::RegistryError;

/// The registry a reference without a domain names.
pub const DOCKER_HUB: &str = "docker.io";
/// The host serving Docker Hub's registry API.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
/// The tag a reference without tag or digest names.
pub const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

/// A parsed image reference, e.g. `docker.io/library/busybox:latest` or
/// `127.0.0.1:5000/t/img@sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host and optional port; `docker.io` for Docker Hub.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// Digest, when pinned.
    pub digest: Option<Digest>,
}

impl Reference {
    /// The host the registry API is served from (`registry-1.docker.io` for `docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_HOST
        } else {
            &self.registry
        }
    }

    /// The digest if pinned, else the tag: what to put after `/manifests/`.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

impl FromStr for Reference {
    type Err = RegistryError;

    /// Parses with docker's defaults: no domain means `docker.io`, a
    /// one-component Docker Hub name gets `library/`, no tag or digest
    /// means `:latest`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidReference`] naming the part that is wrong.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?),
            ),
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        let (registry, mut repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if registry == "index.docker.io" {
            return Self::from_str(&input.replacen("index.docker.io", DOCKER_HUB, 1));
        }
        validate_registry(&registry).map_err(|r| bad(&r))?;
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        validate_repository(&repository).map_err(|r| bad(&r))?;
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(bad("name longer than 255 characters"));
        }
        if let Some(t) = &tag {
            validate_tag(t).map_err(|r| bad(&r))?;
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (t, _) => t,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn validate_registry(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("registry {host:?}: unclosed '['"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("registry {host:?}: bad IPv6 address"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match host.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(n) = name {
        let ok = !n.is_empty()
            && n.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(format!("registry {host:?}: not a host name"));
        }
    }
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(format!("registry {host:?}: port {p:?} is not a number"));
    }
    Ok(())
}

/// distribution-spec: components `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`.
fn validate_repository(repo: &str) -> Result<(), String> {
    if repo.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("repository {repo:?} must be lowercase"));
    }
    for comp in repo.split('/') {
        if !component_ok(comp) {
            return Err(format!(
                "repository component {comp:?} must match [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*"
            ));
        }
    }
    Ok(())
}

fn component_ok(comp: &str) -> bool {
    let b = comp.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-+".
        let sep_start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &comp[sep_start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}"
        ))
    }
}

/// The platform to pick from an image index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// GOOS value, e.g. `linux`.
    pub os: String,
    /// GOARCH value, e.g. `amd64`.
    pub architecture: String,
    /// CPU variant, e.g. `v8`, `v7`.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on (linux and Go's name for the CPU).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Whether an index entry's `os`/`architecture`/`variant` names this
    /// platform. A missing variant on either side matches (arm64's default
    /// `v8` is treated as no variant).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        let norm = |v: Option<&str>| -> Option<String> {
            match v {
                None | Some("") => None,
                Some("v8") if architecture == "arm64" => None,
                Some(v) => Some(v.to_string()),
            }
        };
        self.os == os
            && self.architecture == architecture
            && match (norm(self.variant.as_deref()), norm(variant)) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl FromStr for Platform {
    type Err = RegistryError;

    /// Parses `os/arch[/variant]`, e.g. `linux/arm64/v8`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidPlatform`] when a part is missing or empty.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| RegistryError::InvalidPlatform {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = input.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(bad("want os/arch or os/arch/variant"));
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("empty part"));
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    #[test]
    fn references_parse_with_docker_defaults() {
        /// input, registry, repository, tag, has digest, display
        type Row<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, bool, &'a str);
        let table: &[Row] = &[
            // input, registry, repository, tag, has digest, display
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
                "docker.io/library/busybox:latest",
            ),
            (
                "busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                false,
                "docker.io/library/busybox:1.36",
            ),
            (
                "user/app",
                "docker.io",
                "user/app",
                Some("latest"),
                false,
                "docker.io/user/app:latest",
            ),
            (
                "docker.io/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
                "docker.io/library/busybox:latest",
            ),
            (
                "index.docker.io/library/busybox:x",
                "docker.io",
                "library/busybox",
                Some("x"),
                false,
                "docker.io/library/busybox:x",
            ),
            (
                "host:5000/a/b:t",
                "host:5000",
                "a/b",
                Some("t"),
                false,
                "host:5000/a/b:t",
            ),
            (
                "127.0.0.1:5000/t/img:1",
                "127.0.0.1:5000",
                "t/img",
                Some("1"),
                false,
                "127.0.0.1:5000/t/img:1",
            ),
            (
                "localhost/x",
                "localhost",
                "x",
                Some("latest"),
                false,
                "localhost/x:latest",
            ),
            (
                "localhost:5000/x",
                "localhost:5000",
                "x",
                Some("latest"),
                false,
                "localhost:5000/x:latest",
            ),
            (
                "[::1]:5000/x/y",
                "[::1]:5000",
                "x/y",
                Some("latest"),
                false,
                "[::1]:5000/x/y:latest",
            ),
            (
                "ghcr.io/o/r/s_t__u-v--w.x:V1.2_rc-3",
                "ghcr.io",
                "o/r/s_t__u-v--w.x",
                Some("V1.2_rc-3"),
                false,
                "ghcr.io/o/r/s_t__u-v--w.x:V1.2_rc-3",
            ),
        ];
        for &(input, registry, repository, tag, has_digest, display) in table {
            let r: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry, registry, "{input}");
            assert_eq!(r.repository, repository, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.digest.is_some(), has_digest, "{input}");
            assert_eq!(r.to_string(), display, "{input}");
            assert_eq!(r.to_string().parse::<Reference>().unwrap(), r, "{input}");
        }
    }

    #[test]
    fn digests_pin_without_default_tag() {
        let r: Reference = format!("host:5000/a/b@{D}").parse().unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().unwrap().as_str(), D);
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.to_string(), format!("host:5000/a/b@{D}"));
        let r: Reference = format!("busybox:1@{D}").parse().unwrap();
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox:1@{D}"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
    }

    #[test]
    fn invalid_references_say_why() {
        let table = [
            ("", "empty"),
            ("Busybox", "must be lowercase"),
            ("a/B", "must be lowercase"),
            ("host:5000/a//b", "component \"\""),
            ("a/-b", "component \"-b\""),
            ("a/b.", "component \"b.\""),
            ("a/b...c", "component \"b...c\""),
            ("host:99999/a", "port \"99999\""),
            ("busybox:", "tag \"\""),
            ("busybox:-x", "tag \"-x\""),
            ("busybox@sha256:abc", "digest \"sha256:abc\""),
            ("bad_host.com/a", "not a host name"),
        ];
        for (input, want) in table {
            let e = input.parse::<Reference>().expect_err(input).to_string();
            assert!(e.contains(want), "{input}: {e} lacks {want}");
            assert!(e.starts_with(&format!("image reference {input:?}")), "{e}");
        }
        let long = format!("h.io/{}", "a".repeat(300));
        assert!(
            long.parse::<Reference>()
                .unwrap_err()
                .to_string()
                .contains("255")
        );
    }

    #[test]
    fn platforms_parse_and_match() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()),
            ("linux", "arm64", Some("v8"))
        );
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.matches("linux", "arm64", None));
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(!p.matches("linux", "amd64", None));
        let arm7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!arm7.matches("linux", "arm", Some("v6")));
        assert!(arm7.matches("linux", "arm", Some("v7")));
        assert!(
            "linux"
                .parse::<Platform>()
                .unwrap_err()
                .to_string()
                .contains("want os/arch")
        );
        assert!("linux//v7".parse::<Platform>().is_err());
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(h.architecture, "amd64");
        }
    }
}
