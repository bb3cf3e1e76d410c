//! Manifest media types, the `Accept` header, and the pure parts of
//! resolving: classifying a manifest response, parsing image manifests
//! (OCI or Docker schema2) and picking a platform from an index.

use serde::Deserialize;

use crate::oci::Digest;

use super::error::{RegistryError, Target};
use super::reference::Platform;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema1 (signed), refused.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header sent for manifests (containerd's list, `*/*` last).
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, */*";

/// Manifests larger than this are refused (distribution-spec: registries accept ≥ 4 MB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// What a manifest response turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image manifest (OCI or Docker schema2).
    Image,
    /// An index (OCI index or Docker manifest list).
    Index,
}

/// The fields every manifest JSON may carry that tell its kind.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    media_type: Option<String>,
    schema_version: Option<u32>,
    manifests: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
}

/// Decides the media type and kind of a manifest body.
///
/// `Content-Type` (parameters ignored) is trusted when it is a manifest
/// type; the body's `mediaType`, when present, must agree with it. A generic
/// or missing `Content-Type` falls back to the body's `mediaType`, then to
/// the shape (`manifests` → index, `layers` → image manifest).
///
/// # Errors
///
/// [`RegistryError::MediaTypeMismatch`], [`RegistryError::UnsupportedMediaType`]
/// (schema1, unknown types), [`RegistryError::MalformedManifest`] (not JSON).
pub fn classify(
    target: &Target,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(String, Kind), RegistryError> {
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| RegistryError::MalformedManifest {
            target: Box::new(target.clone()),
            kind: "manifest",
            reason: e.to_string(),
        })?;
    let header = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|c| !c.is_empty());
    let header_known = header.as_deref().and_then(kind_of).is_some()
        || header.as_deref() == Some(DOCKER_SCHEMA1_SIGNED);
    if let (Some(h), Some(b)) = (&header, &probe.media_type)
        && header_known
        && h != b
    {
        return Err(RegistryError::MediaTypeMismatch {
            target: Box::new(target.clone()),
            header: h.clone(),
            body: b.clone(),
        });
    }
    let media_type = match (header, probe.media_type) {
        (Some(h), _) if header_known => h,
        (_, Some(b)) => b,
        (h, None) => {
            if probe.schema_version == Some(1) {
                DOCKER_SCHEMA1_SIGNED.to_string()
            } else if probe.manifests.is_some() {
                OCI_INDEX.to_string()
            } else if probe.layers.is_some() {
                OCI_MANIFEST.to_string()
            } else {
                h.unwrap_or_else(|| "(none)".to_string())
            }
        }
    };
    match kind_of(&media_type) {
        Some(kind) => Ok((media_type, kind)),
        None => Err(RegistryError::UnsupportedMediaType {
            target: Box::new(target.clone()),
            media_type,
        }),
    }
}

fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Image),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Some(Kind::Index),
        _ => None,
    }
}

/// Parses an image manifest (OCI, or Docker schema2: the same JSON shape).
///
/// # Errors
///
/// [`RegistryError::MalformedManifest`] with serde's reason.
pub fn parse_image(
    target: &Target,
    body: &[u8],
) -> Result<oci_spec::image::ImageManifest, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::MalformedManifest {
        target: Box::new(target.clone()),
        kind: "image manifest",
        reason: e.to_string(),
    })
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: Option<String>,
    digest: String,
    platform: Option<IndexPlatform>,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

#[derive(Deserialize)]
struct IndexPlatform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    variant: Option<String>,
}

/// The index entry selected for a platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// The manifest's digest.
    pub digest: Digest,
    /// The media type the index gave it, if any.
    pub media_type: Option<String>,
}

/// Picks the image manifest for `platform` from an index body.
///
/// Skips entries that are not image manifests, have no platform, name
/// `unknown/unknown` (BuildKit attestations) or carry
/// `vnd.docker.reference.type`. Among matches, one whose variant equals the
/// wanted variant wins over one without a variant.
///
/// # Errors
///
/// [`RegistryError::MalformedManifest`] for a body that is not an index or
/// a selected digest that is not `sha256:`; [`RegistryError::NoMatchingPlatform`]
/// naming the platform searched and the platforms available.
pub fn select_platform(
    target: &Target,
    index_digest: &Digest,
    body: &[u8],
    platform: &Platform,
) -> Result<Selected, RegistryError> {
    let malformed = |reason: String| RegistryError::MalformedManifest {
        target: Box::new(target.clone()),
        kind: "image index",
        reason,
    };
    let index: Index = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    let mut available = Vec::new();
    let mut best: Option<(&IndexEntry, bool)> = None;
    for entry in &index.manifests {
        let Some(p) = &entry.platform else { continue };
        let is_image = entry
            .media_type
            .as_deref()
            .is_none_or(|m| kind_of(m) == Some(Kind::Image));
        if !is_image
            || (p.os == "unknown" && p.architecture == "unknown")
            || entry.annotations.contains_key("vnd.docker.reference.type")
        {
            continue;
        }
        let name = match &p.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", p.os, p.architecture),
            _ => format!("{}/{}", p.os, p.architecture),
        };
        if !available.contains(&name) {
            available.push(name);
        }
        if platform.matches(&p.os, &p.architecture, p.variant.as_deref()) {
            let exact = p.variant == platform.variant;
            match best {
                Some((_, true)) => {}
                Some((_, false)) if !exact => {}
                _ => best = Some((entry, exact)),
            }
        }
    }
    let Some((entry, _)) = best else {
        let (registry, repository) = match target {
            Target::Manifest {
                registry,
                repository,
                ..
            } => (registry.clone(), repository.clone()),
            other => (other.to_string(), String::new()),
        };
        return Err(RegistryError::NoMatchingPlatform {
            platform: platform.to_string(),
            index: Box::new(index_digest.clone()),
            registry,
            repository,
            available: if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            },
        });
    };
    let digest = entry
        .digest
        .parse()
        .map_err(|e: crate::oci::digest::BadDigest| malformed(e.to_string()))?;
    Ok(Selected {
        digest,
        media_type: entry.media_type.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::Manifest {
            registry: "r.io".into(),
            repository: "a/b".into(),
            reference: "1".into(),
        }
    }

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn index() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,
                "platform":{{"architecture":"unknown","os":"unknown"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,
                "platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,
                "platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,
                "annotations":{{"vnd.docker.reference.type":"attestation-manifest"}},
                "platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,
                "platform":{{"architecture":"arm","os":"linux","variant":"v6"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,
                "platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}}
            ]}}"#,
            d(1),
            d(2),
            d(3),
            d(4),
            d(5),
            d(6)
        )
    }

    #[test]
    fn picks_the_platform_and_never_unknown() {
        let body = index();
        let idx = Digest::sha256_of(body.as_bytes());
        let pick = |p: &str| {
            select_platform(&target(), &idx, body.as_bytes(), &p.parse().unwrap())
                .map(|s| s.digest.to_string())
        };
        assert_eq!(pick("linux/amd64").unwrap(), d(3));
        assert_eq!(pick("linux/arm64").unwrap(), d(2));
        assert_eq!(pick("linux/arm64/v8").unwrap(), d(2));
        assert_eq!(pick("linux/arm/v7").unwrap(), d(6));
        assert_eq!(pick("linux/arm/v6").unwrap(), d(5));
        let e = pick("unknown/unknown").unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "no manifest for unknown/unknown in index {idx} of r.io/a/b \
                 (available: linux/arm64/v8, linux/amd64, linux/arm/v6, linux/arm/v7)"
            )
        );
        let e = pick("linux/s390x").unwrap_err().to_string();
        assert!(
            e.starts_with("no manifest for linux/s390x in index sha256:"),
            "{e}"
        );
    }

    #[test]
    fn empty_index_names_platform() {
        let body = br#"{"schemaVersion":2,"manifests":[]}"#;
        let idx = Digest::sha256_of(body);
        let e = select_platform(&target(), &idx, body, &"linux/amd64".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("no manifest for linux/amd64 in index {idx} of r.io/a/b (available: none)")
        );
    }

    #[test]
    fn classify_trusts_content_type_and_checks_body() {
        let t = target();
        let body = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#);
        let (mt, k) = classify(
            &t,
            Some(&format!("{OCI_MANIFEST}; charset=utf-8")),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!((mt.as_str(), k), (OCI_MANIFEST, Kind::Image));
        let e = classify(&t, Some(OCI_INDEX), body.as_bytes()).unwrap_err();
        assert!(matches!(e, RegistryError::MediaTypeMismatch { .. }), "{e}");
        // Generic Content-Type: the body decides.
        let (mt, k) = classify(&t, Some("application/json"), body.as_bytes()).unwrap();
        assert_eq!((mt.as_str(), k), (OCI_MANIFEST, Kind::Image));
        // No mediaType in the body: the header decides.
        let (mt, k) = classify(&t, Some(DOCKER_MANIFEST_LIST), br#"{"manifests":[]}"#).unwrap();
        assert_eq!((mt.as_str(), k), (DOCKER_MANIFEST_LIST, Kind::Index));
        // Nothing: the shape decides.
        let (_, k) = classify(&t, None, br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
        assert_eq!(k, Kind::Index);
        let e = classify(&t, Some(DOCKER_SCHEMA1_SIGNED), br#"{"schemaVersion":1}"#).unwrap_err();
        assert!(
            e.to_string().contains(
                "unsupported media type application/vnd.docker.distribution.manifest.v1+prettyjws"
            ),
            "{e}"
        );
        assert!(classify(&t, None, b"not json").is_err());
    }

    #[test]
    fn docker_schema2_parses_as_image_manifest() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":7,"digest":"{}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":10,"digest":"{}"}}]}}"#,
            d(7),
            d(8)
        );
        let m = parse_image(&target(), body.as_bytes()).unwrap();
        assert_eq!(m.layers().len(), 1);
        assert_eq!(m.layers()[0].size(), 10);
        assert_eq!(m.layers()[0].digest().to_string(), d(8));
        assert_eq!(m.config().digest().to_string(), d(7));
    }
}
