//! The new image around a committed layer: the parent's config with the layer's
//! `diff_id` appended, a history entry, and `--change` instructions applied (as
//! `docker commit --change` does); the parent's manifest with the layer appended.
//! Lower layers keep their descriptors: their blobs are never read.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::ctrd::plan::rfc3339;
use crate::image::media;
use crate::oci::Digest;

/// One `--change` instruction, in Dockerfile syntax (`ENV K=V`, `CMD ["a","b"]` or
/// `CMD a b`, `ENTRYPOINT …`, `WORKDIR /d`, `LABEL k=v`, `USER u`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// `ENV KEY=VALUE` (also `ENV KEY VALUE`): replaces a variable of that name.
    Env(String, String),
    /// `CMD`.
    Cmd(Vec<String>),
    /// `ENTRYPOINT`.
    Entrypoint(Vec<String>),
    /// `WORKDIR`.
    WorkingDir(String),
    /// `LABEL KEY=VALUE`.
    Label(String, String),
    /// `USER`.
    User(String),
}

/// Why a `--change` did not parse.
#[derive(Debug, thiserror::Error)]
#[error("--change {input:?}: {reason}")]
pub struct BadChange {
    /// The instruction as given.
    pub input: String,
    /// What is wrong.
    pub reason: String,
}

impl std::str::FromStr for ConfigChange {
    type Err = BadChange;

    /// # Errors
    /// [`BadChange`] for an unknown instruction or a missing argument.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| BadChange {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let (word, rest) = s
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("no argument"))?;
        let rest = rest.trim();
        let kv = |rest: &str| -> Result<(String, String), BadChange> {
            let (k, v) = rest
                .split_once('=')
                .or_else(|| rest.split_once(char::is_whitespace))
                .ok_or_else(|| bad("want KEY=VALUE"))?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Ok((k.trim().to_string(), v.to_string()))
        };
        let argv = |rest: &str| -> Result<Vec<String>, BadChange> {
            if rest.starts_with('[') {
                serde_json::from_str(rest).map_err(|e| bad(&format!("JSON array: {e}")))
            } else {
                // Shell form, as docker: run through /bin/sh -c.
                Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
            }
        };
        Ok(match word.to_ascii_uppercase().as_str() {
            "ENV" => {
                let (k, v) = kv(rest)?;
                ConfigChange::Env(k, v)
            }
            "LABEL" => {
                let (k, v) = kv(rest)?;
                ConfigChange::Label(k, v)
            }
            "CMD" => ConfigChange::Cmd(argv(rest)?),
            "ENTRYPOINT" => ConfigChange::Entrypoint(argv(rest)?),
            "WORKDIR" => ConfigChange::WorkingDir(rest.to_string()),
            "USER" => ConfigChange::User(rest.to_string()),
            other => {
                return Err(bad(&format!(
                    "unsupported instruction {other} (ENV, CMD, ENTRYPOINT, WORKDIR, LABEL, USER)"
                )));
            }
        })
    }
}

/// The committed layer's facts the config and manifest need.
#[derive(Debug, Clone)]
pub struct NewLayer {
    /// Media type of the blob.
    pub media_type: String,
    /// Digest of the blob.
    pub digest: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Descriptor annotations (TOC digest, …).
    pub annotations: Vec<(String, String)>,
}

/// The parent's config with `layer` appended to `rootfs.diff_ids`, a history entry
/// (`created`, `created_by`, `comment`), `created` set to `now`, and `changes` applied
/// to `config`. Every other field is kept.
pub fn new_config(
    parent: &Value,
    layer: &NewLayer,
    changes: &[ConfigChange],
    now: SystemTime,
    created_by: &str,
    comment: Option<&str>,
) -> Value {
    let mut cfg = parent.clone();
    let created = rfc3339(now);
    let obj = cfg
        .as_object_mut()
        .expect("an image config is a JSON object");
    obj.insert("created".into(), json!(created));
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    if let Some(ids) = rootfs.get_mut("diff_ids").and_then(Value::as_array_mut) {
        ids.push(json!(layer.diff_id.to_string()));
    } else {
        rootfs["diff_ids"] = json!([layer.diff_id.to_string()]);
    }
    let mut h = Map::new();
    h.insert("created".into(), json!(created));
    h.insert("created_by".into(), json!(created_by));
    if let Some(c) = comment {
        h.insert("comment".into(), json!(c));
    }
    match obj.get_mut("history").and_then(Value::as_array_mut) {
        Some(list) => list.push(Value::Object(h)),
        None => {
            obj.insert("history".into(), json!([Value::Object(h)]));
        }
    }
    let config = obj.entry("config").or_insert_with(|| json!({}));
    for c in changes {
        apply_change(config, c);
    }
    cfg
}

fn apply_change(config: &mut Value, c: &ConfigChange) {
    if !config.is_object() {
        *config = json!({});
    }
    let o = config.as_object_mut().expect("made an object above");
    match c {
        ConfigChange::Env(k, v) => {
            let env = o.entry("Env").or_insert_with(|| json!([]));
            if !env.is_array() {
                *env = json!([]);
            }
            let list = env.as_array_mut().expect("made an array above");
            let prefix = format!("{k}=");
            list.retain(|e| !e.as_str().is_some_and(|s| s.starts_with(&prefix) || s == k));
            list.push(json!(format!("{k}={v}")));
        }
        ConfigChange::Cmd(a) => {
            o.insert("Cmd".into(), json!(a));
        }
        ConfigChange::Entrypoint(a) => {
            o.insert("Entrypoint".into(), json!(a));
        }
        ConfigChange::WorkingDir(d) => {
            o.insert("WorkingDir".into(), json!(d));
        }
        ConfigChange::User(u) => {
            o.insert("User".into(), json!(u));
        }
        ConfigChange::Label(k, v) => {
            let labels = o.entry("Labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            labels[k.as_str()] = json!(v);
        }
    }
}

/// An OCI manifest: the parent's layers (Docker layer media types mapped to their OCI
/// equivalents, bytes unchanged) plus `layer`, the new config, the parent's annotations.
pub fn new_manifest(
    parent: &Value,
    config_digest: &Digest,
    config_size: usize,
    layer: &NewLayer,
) -> Value {
    let mut layers: Vec<Value> = parent
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for l in &mut layers {
        if let Some(mt) = l.get("mediaType").and_then(Value::as_str) {
            l["mediaType"] = json!(media::oci_layer_type(mt));
        }
    }
    let mut desc = json!({
        "mediaType": layer.media_type,
        "digest": layer.digest.to_string(),
        "size": layer.size,
    });
    if !layer.annotations.is_empty() {
        desc["annotations"] = Value::Object(
            layer
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect(),
        );
    }
    layers.push(desc);
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config_size},
        "layers": layers,
    });
    if let Some(a) = parent.get("annotations") {
        m["annotations"] = a.clone();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> NewLayer {
        NewLayer {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Digest::sha256_of(b"blob"),
            size: 4,
            diff_id: Digest::sha256_of(b"tar"),
            annotations: vec![(
                "containerd.io/snapshot/stargz/toc.digest".into(),
                Digest::sha256_of(b"toc").to_string(),
            )],
        }
    }

    #[test]
    fn changes_parse_like_docker() {
        assert_eq!(
            "ENV A=b c".parse::<ConfigChange>().unwrap(),
            ConfigChange::Env("A".into(), "b c".into())
        );
        assert_eq!(
            "env A b".parse::<ConfigChange>().unwrap(),
            ConfigChange::Env("A".into(), "b".into())
        );
        assert_eq!(
            r#"CMD ["python3", "-c", "print(1)"]"#.parse::<ConfigChange>().unwrap(),
            ConfigChange::Cmd(vec!["python3".into(), "-c".into(), "print(1)".into()])
        );
        assert_eq!(
            "ENTRYPOINT echo hi".parse::<ConfigChange>().unwrap(),
            ConfigChange::Entrypoint(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(
            r#"LABEL a="b""#.parse::<ConfigChange>().unwrap(),
            ConfigChange::Label("a".into(), "b".into())
        );
        assert!("RUN x".parse::<ConfigChange>().is_err());
        assert!("CMD [bad".parse::<ConfigChange>().is_err());
        assert!("ENV".parse::<ConfigChange>().is_err());
    }

    #[test]
    fn config_gets_the_layer_history_and_changes() {
        let parent = json!({
            "architecture": "amd64", "os": "linux", "x-extra": 1,
            "config": {"Env": ["PATH=/bin", "A=old"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]},
            "history": [{"created_by": "base"}]
        });
        let changes = vec![
            ConfigChange::Env("A".into(), "new".into()),
            ConfigChange::Cmd(vec!["python3".into()]),
            ConfigChange::Label("k".into(), "v".into()),
            ConfigChange::WorkingDir("/app".into()),
        ];
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let c = new_config(
            &parent,
            &layer(),
            &changes,
            t,
            "lazysnap commit",
            Some("msg"),
        );
        assert_eq!(
            c["rootfs"]["diff_ids"],
            json!(["sha256:aa", Digest::sha256_of(b"tar").to_string()])
        );
        assert_eq!(c["config"]["Env"], json!(["PATH=/bin", "A=new"]));
        assert_eq!(c["config"]["Cmd"], json!(["python3"]));
        assert_eq!(c["config"]["Labels"], json!({"k": "v"}));
        assert_eq!(c["config"]["WorkingDir"], json!("/app"));
        assert_eq!(c["x-extra"], json!(1));
        assert_eq!(c["created"], json!("2023-11-14T22:13:20Z"));
        assert_eq!(
            c["history"],
            json!([{"created_by": "base"}, {"created": "2023-11-14T22:13:20Z", "created_by": "lazysnap commit", "comment": "msg"}])
        );
    }

    #[test]
    fn manifest_keeps_lower_descriptors_and_appends() {
        let parent = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:00", "size": 1},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:11", "size": 5}]
        });
        let cd = Digest::sha256_of(b"cfg");
        let m = new_manifest(&parent, &cd, 3, &layer());
        assert_eq!(m["mediaType"], json!(media::OCI_MANIFEST));
        assert_eq!(m["config"]["digest"], json!(cd.to_string()));
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(
            layers[0],
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:11", "size": 5})
        );
        assert_eq!(
            layers[1]["digest"],
            json!(Digest::sha256_of(b"blob").to_string())
        );
        assert!(layers[1]["annotations"]["containerd.io/snapshot/stargz/toc.digest"].is_string());
    }
}
