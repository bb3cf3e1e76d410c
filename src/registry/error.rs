//! [`RegistryError`] and the [`Target`] each error names.

use std::fmt;
use std::time::Duration;

use crate::oci::Digest;

use super::range::ByteRange;

/// What a request was about; every [`RegistryError`] that comes from a
/// request names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A manifest or index by tag or digest.
    Manifest {
        /// Registry as written in the reference (`docker.io`, `host:5000`).
        registry: String,
        /// Repository, e.g. `library/busybox`.
        repository: String,
        /// Tag or digest.
        reference: String,
    },
    /// A whole blob (or its size).
    Blob {
        /// Registry as written in the reference.
        registry: String,
        /// Repository.
        repository: String,
        /// The blob's digest.
        digest: Digest,
    },
    /// Part of a blob.
    Range {
        /// Registry as written in the reference.
        registry: String,
        /// Repository.
        repository: String,
        /// The blob's digest.
        digest: Digest,
        /// The bytes asked for.
        range: ByteRange,
    },
    /// Pushing a blob: its upload session, mount or existence check.
    Upload {
        /// Registry as written in the reference.
        registry: String,
        /// Repository pushed to.
        repository: String,
        /// The blob's digest.
        digest: Digest,
    },
    /// A Bearer token endpoint.
    Token {
        /// The realm URL from the challenge.
        realm: String,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Manifest {
                registry,
                repository,
                reference,
            } => {
                let sep = if reference.contains(':') { '@' } else { ':' };
                write!(f, "manifest {registry}/{repository}{sep}{reference}")
            }
            Target::Blob {
                registry,
                repository,
                digest,
            } => write!(f, "blob {registry}/{repository}@{digest}"),
            Target::Range {
                registry,
                repository,
                digest,
                range,
            } => write!(f, "range {range} of blob {registry}/{repository}@{digest}"),
            Target::Upload {
                registry,
                repository,
                digest,
            } => write!(f, "push of blob {registry}/{repository}@{digest}"),
            Target::Token { realm } => write!(f, "token endpoint {realm}"),
        }
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// An image reference that does not parse.
    #[error("image reference {input:?}: {reason}")]
    InvalidReference {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A platform string that does not parse.
    #[error("platform {input:?}: {reason}")]
    InvalidPlatform {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An empty or reversed byte range was asked for.
    #[error("range [{start}, {end}) of blob {digest}: empty or reversed")]
    InvalidRange {
        /// The blob.
        digest: Digest,
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
    },
    /// The HTTP client could not be built (TLS roots, options).
    #[error("building the HTTP client: {0}")]
    ClientBuild(#[source] reqwest::Error),
    /// Connecting, sending or receiving failed (refused, reset, timed out).
    #[error("{target}: {url}: {source}")]
    Network {
        /// What was being fetched.
        target: Box<Target>,
        /// The URL of the failing request (query stripped).
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The body ended before the promised length.
    #[error("{target}: body truncated: got {got} of {expected} bytes")]
    Truncated {
        /// What was being fetched.
        target: Box<Target>,
        /// Bytes received.
        got: u64,
        /// Bytes promised (Content-Length or range).
        expected: u64,
    },
    /// The registry (or a redirect target) answered with an unexpected status.
    #[error("{target}: HTTP {status} from {url}{}", detail_suffix(.detail))]
    Status {
        /// What was being fetched.
        target: Box<Target>,
        /// The status code.
        status: u16,
        /// The URL answering (query stripped).
        url: String,
        /// The registry's error codes/messages, if any.
        detail: String,
        /// `Retry-After` of a 429/503, when given in seconds.
        retry_after: Option<Duration>,
    },
    /// 404: no such manifest or blob.
    #[error("{target}: not found{}", detail_suffix(.detail))]
    NotFound {
        /// What was being fetched.
        target: Box<Target>,
        /// The registry's error codes/messages, if any.
        detail: String,
    },
    /// The registry refused our credentials (or anonymous access).
    #[error("{target}: unauthorized: {reason}")]
    Unauthorized {
        /// What was being fetched.
        target: Box<Target>,
        /// Why (challenge, missing credentials, token refused).
        reason: String,
    },
    /// Fetching a Bearer token failed.
    #[error("{target}: {reason}")]
    Token {
        /// The token endpoint.
        target: Box<Target>,
        /// What went wrong.
        reason: String,
    },
    /// Running a docker credential helper failed.
    #[error("credential helper docker-credential-{helper} for {host}: {reason}")]
    CredentialHelper {
        /// Helper name (suffix after `docker-credential-`).
        helper: String,
        /// Registry host asked about.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// A redirect that cannot be followed.
    #[error("{target}: redirect from {url}: {reason}")]
    Redirect {
        /// What was being fetched.
        target: Box<Target>,
        /// The URL that redirected (query stripped).
        url: String,
        /// Missing/invalid Location or too many hops.
        reason: String,
    },
    /// A manifest larger than [`super::MAX_MANIFEST_BYTES`].
    #[error("{target}: manifest of {size} bytes exceeds the {limit}-byte limit")]
    ManifestTooLarge {
        /// The manifest.
        target: Box<Target>,
        /// Its size (Content-Length or bytes read so far).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Content whose digest is not the one asked for.
    #[error("{target}: content digest is {actual}, want {expected}")]
    DigestMismatch {
        /// What was fetched.
        target: Box<Target>,
        /// The digest asked for.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// `Content-Type` and the body's `mediaType` disagree.
    #[error("{target}: Content-Type {header} but body mediaType {body}")]
    MediaTypeMismatch {
        /// The manifest.
        target: Box<Target>,
        /// Content-Type without parameters.
        header: String,
        /// The body's `mediaType`.
        body: String,
    },
    /// A manifest type lazysnap does not read (schema1, artifacts, …).
    #[error("{target}: unsupported media type {media_type}")]
    UnsupportedMediaType {
        /// The manifest.
        target: Box<Target>,
        /// Its media type.
        media_type: String,
    },
    /// A manifest or index that is not valid JSON of its kind.
    #[error("{target}: malformed {kind}: {reason}")]
    MalformedManifest {
        /// The manifest.
        target: Box<Target>,
        /// "image manifest" or "image index".
        kind: &'static str,
        /// The parse error.
        reason: String,
    },
    /// An index with no manifest for the platform.
    #[error(
        "no manifest for {platform} in index {index} of {registry}/{repository} (available: {available})"
    )]
    NoMatchingPlatform {
        /// The platform searched for, e.g. `linux/amd64`.
        platform: String,
        /// The index's digest (boxed: keeps the error small).
        index: Box<Digest>,
        /// Registry.
        registry: String,
        /// Repository.
        repository: String,
        /// The platforms the index lists, comma-separated (or "none").
        available: String,
    },
    /// A ranged response that is not the range asked for.
    #[error("{target}: {reason}")]
    RangeMismatch {
        /// The range asked for.
        target: Box<Target>,
        /// What the server sent instead, e.g. the Content-Range it gave.
        reason: String,
    },
    /// 416: the range is outside the blob.
    #[error("{target}: range not satisfiable{}", detail_suffix(.detail))]
    RangeNotSatisfiable {
        /// The range asked for.
        target: Box<Target>,
        /// The server's Content-Range, if any.
        detail: String,
    },
    /// A registry host configuration (containerd `hosts.toml`) that cannot be used.
    #[error("registry host configuration {}{}: {reason}", .path.display(), key_suffix(.key))]
    HostsConfig {
        /// The file (or directory) at fault.
        path: std::path::PathBuf,
        /// The key at fault, e.g. `host."https://m".capabilities` (empty: the whole file).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The blob's size could not be learnt.
    #[error("{target}: no size: {reason}")]
    NoSize {
        /// The blob.
        target: Box<Target>,
        /// Why.
        reason: String,
    },
    /// The registry broke the upload protocol (FORMATS.md §6.4): an
    /// unexpected success status, a missing or bad `Location`, a `Range`
    /// that disagrees with what was sent.
    #[error("{target}: {reason}")]
    Upload {
        /// The blob (or manifest) being pushed.
        target: Box<Target>,
        /// What the registry did, with the HTTP status.
        reason: String,
    },
    /// A local file being pushed from or downloaded into failed.
    #[error("{target}: {op} {}: {source}", .path.display())]
    File {
        /// The blob.
        target: Box<Target>,
        /// The file.
        path: std::path::PathBuf,
        /// What was being done: "opening", "reading", "writing", ….
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A blob (file or body) whose length is not the one expected.
    #[error("{target}: {actual} bytes, want {expected}")]
    SizeMismatch {
        /// The blob.
        target: Box<Target>,
        /// Bytes expected (the size given, or Content-Length).
        expected: u64,
        /// Bytes found.
        actual: u64,
    },
}

fn key_suffix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" key {key}")
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl RegistryError {
    /// Whether this is a network-level failure (refused, reset, timeout,
    /// truncated body, 5xx or 429 still failing after retries), for which
    /// callers answer gRPC `Unavailable` rather than a permanent error.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RegistryError::Network { .. } | RegistryError::Truncated { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// Whether trying again may help: the same as [`Self::is_unavailable`].
    pub(crate) fn is_retryable(&self) -> bool {
        self.is_unavailable()
    }

    /// How long the server asked us to wait (`Retry-After`).
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob() -> Target {
        Target::Blob {
            registry: "r.example:5000".into(),
            repository: "a/b".into(),
            digest: Digest::sha256_of(b"x"),
        }
    }

    #[test]
    fn messages_name_what_failed() {
        let e = RegistryError::NotFound {
            target: Box::new(blob()),
            detail: "BLOB_UNKNOWN: blob unknown to registry".into(),
        };
        let d = Digest::sha256_of(b"x");
        assert_eq!(
            e.to_string(),
            format!(
                "blob r.example:5000/a/b@{d}: not found: BLOB_UNKNOWN: blob unknown to registry"
            )
        );
        let t = Target::Manifest {
            registry: "docker.io".into(),
            repository: "library/busybox".into(),
            reference: "latest".into(),
        };
        assert_eq!(t.to_string(), "manifest docker.io/library/busybox:latest");
        let t = Target::Range {
            registry: "h".into(),
            repository: "r".into(),
            digest: d.clone(),
            range: ByteRange::new(1, 5).unwrap(),
        };
        assert_eq!(t.to_string(), format!("range [1, 5) of blob h/r@{d}"));
    }

    #[test]
    fn unavailable_classification() {
        let status = |s| RegistryError::Status {
            target: Box::new(blob()),
            status: s,
            url: "u".into(),
            detail: String::new(),
            retry_after: None,
        };
        assert!(status(503).is_unavailable());
        assert!(status(429).is_unavailable());
        assert!(!status(400).is_unavailable());
        assert!(
            !RegistryError::NotFound {
                target: Box::new(blob()),
                detail: String::new()
            }
            .is_unavailable()
        );
        assert!(
            RegistryError::Truncated {
                target: Box::new(blob()),
                got: 1,
                expected: 2
            }
            .is_unavailable()
        );
    }
}
