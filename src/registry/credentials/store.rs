//! Writing credentials the way `docker login` / `docker logout` do: into a
//! credential helper (`credHelpers[<registry>]`, else `credsStore`) with its
//! `store` / `erase` protocol, else as `auths[<key>].auth` in `config.json`.
//!
//! The config file is read as a JSON object and written back with every
//! other field kept (key order becomes sorted), tab-indented as docker
//! writes it, through a temporary file renamed over it, mode 0600, in a
//! directory created with mode 0700. A symlinked config file is written
//! through (its target is replaced), as docker does.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::{DOCKER_HUB_AUTH_KEY, auth_key_registry, helper_exec, helper_message, is_not_found};
use crate::registry::reference::DOCKER_HUB;

/// Where `login` put credentials, or `logout` removed them from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialStore {
    /// The `auths` map of the docker config file at this path.
    File(PathBuf),
    /// The credential helper `docker-credential-<name>` (with an empty
    /// `auths` entry in the config file, as docker keeps one).
    Helper(String),
}

/// Why storing or erasing credentials failed. Never carries the secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading, writing or renaming the config file (or creating its directory).
    #[error("docker config {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not a JSON object (it is left as it is).
    #[error("docker config {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} ({action} for {server}): {reason}")]
    Helper {
        /// Helper name (suffix after `docker-credential-`).
        helper: String,
        /// `store`, `get` or `erase`.
        action: &'static str,
        /// The server URL the helper was asked about.
        server: String,
        /// Exit status and the helper's message.
        reason: String,
    },
    /// `logout` of a registry with no stored credentials.
    #[error("not logged in to {registry}")]
    NotLoggedIn {
        /// The registry as given (`host[:port]`, `docker.io`).
        registry: String,
    },
}

/// docker's name for a registry's credentials (the `auths` key and the
/// helpers' `ServerURL`): [`DOCKER_HUB_AUTH_KEY`] for Docker Hub (however it
/// is written), else `host[:port]` without scheme or path.
pub fn server_address(registry: &str) -> &str {
    match auth_key_registry(registry) {
        DOCKER_HUB => DOCKER_HUB_AUTH_KEY,
        h => h,
    }
}

/// The docker config file: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`; `None` without either variable.
pub fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .map(|d| PathBuf::from(d).join("config.json"))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")))
}

/// Stores `username`/`password` for `registry` as `docker login` does:
/// through the helper configured for it (`credHelpers`, else `credsStore`)
/// with `{"ServerURL","Username","Secret"}` on its stdin, leaving an empty
/// `auths` entry; else as `auths[<server address>] = {"auth": base64(user:pass)}`.
///
/// # Errors
///
/// [`StoreError::Io`] / [`StoreError::Parse`] for the config file,
/// [`StoreError::Helper`] when the helper fails.
pub async fn store_credential(
    config: &Path,
    registry: &str,
    username: &str,
    password: &str,
) -> Result<CredentialStore, StoreError> {
    let mut doc = read_doc(config)?;
    let server = server_address(registry);
    let helper = helper_for(&doc, registry);
    let entry = match &helper {
        Some(h) => {
            let input = json!({"ServerURL": server, "Username": username, "Secret": password});
            call_helper(h, "store", server, input.to_string().as_bytes()).await?;
            Map::new()
        }
        None => {
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            Map::from_iter([("auth".to_string(), Value::String(auth))])
        }
    };
    let auths = object_at(&mut doc, "auths", config)?;
    auths.insert(server.to_string(), Value::Object(entry));
    write_doc(config, &doc)?;
    Ok(match helper {
        Some(h) => CredentialStore::Helper(h),
        None => CredentialStore::File(config.to_path_buf()),
    })
}

/// Removes `registry`'s credentials as `docker logout` does: every `auths`
/// key naming it (with or without scheme and path), and, with a helper, the
/// helper's entry (`erase` with the server address on stdin).
///
/// # Errors
///
/// [`StoreError::NotLoggedIn`] when neither the file nor the helper had
/// any; [`StoreError::Io`], [`StoreError::Parse`], [`StoreError::Helper`].
pub async fn erase_credential(
    config: &Path,
    registry: &str,
) -> Result<CredentialStore, StoreError> {
    let mut doc = read_doc(config)?;
    let server = server_address(registry);
    let wanted = auth_key_registry(registry);
    let keys: Vec<String> = doc
        .get("auths")
        .and_then(Value::as_object)
        .map(|a| {
            a.keys()
                .filter(|k| auth_key_registry(k) == wanted)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let helper = helper_for(&doc, registry);
    let mut found = !keys.is_empty();
    if let Some(h) = &helper {
        let out = call_helper_raw(h, "get", server, server.as_bytes()).await?;
        if out.status.success() {
            found = true;
            call_helper(h, "erase", server, server.as_bytes()).await?;
        } else if !is_not_found(&helper_message(&out)) {
            return Err(helper_failed(h, "get", server, &out));
        }
    }
    if !found {
        return Err(StoreError::NotLoggedIn {
            registry: registry.to_string(),
        });
    }
    if !keys.is_empty() {
        let auths = object_at(&mut doc, "auths", config)?;
        for k in &keys {
            auths.remove(k);
        }
        write_doc(config, &doc)?;
    }
    Ok(match helper {
        Some(h) => CredentialStore::Helper(h),
        None => CredentialStore::File(config.to_path_buf()),
    })
}

/// The helper for `registry`: `credHelpers` by registry or server address,
/// else a non-empty `credsStore`.
fn helper_for(doc: &Map<String, Value>, registry: &str) -> Option<String> {
    let by_host = doc
        .get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|h| {
            h.get(auth_key_registry(registry))
                .or_else(|| h.get(server_address(registry)))
                .or_else(|| h.get(registry))
        });
    by_host
        .or_else(|| doc.get("credsStore"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

async fn call_helper_raw(
    helper: &str,
    action: &'static str,
    server: &str,
    input: &[u8],
) -> Result<std::process::Output, StoreError> {
    let program = PathBuf::from(format!("docker-credential-{helper}"));
    helper_exec(&program, action, input)
        .await
        .map_err(|reason| StoreError::Helper {
            helper: helper.to_string(),
            action,
            server: server.to_string(),
            reason,
        })
}

async fn call_helper(
    helper: &str,
    action: &'static str,
    server: &str,
    input: &[u8],
) -> Result<(), StoreError> {
    let out = call_helper_raw(helper, action, server, input).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(helper_failed(helper, action, server, &out))
    }
}

fn helper_failed(
    helper: &str,
    action: &'static str,
    server: &str,
    out: &std::process::Output,
) -> StoreError {
    StoreError::Helper {
        helper: helper.to_string(),
        action,
        server: server.to_string(),
        reason: format!("{}: {}", out.status, helper_message(out)),
    }
}

/// The config file as a JSON object; an absent or empty file is `{}`.
fn read_doc(path: &Path) -> Result<Map<String, Value>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(StoreError::Parse {
            path: path.to_path_buf(),
            reason: "not a JSON object".into(),
        }),
        Err(e) => Err(StoreError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// `doc[key]` as an object, created when absent (`null` counts as absent).
fn object_at<'a>(
    doc: &'a mut Map<String, Value>,
    key: &str,
    path: &Path,
) -> Result<&'a mut Map<String, Value>, StoreError> {
    let v = doc.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if v.is_null() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut().ok_or_else(|| StoreError::Parse {
        path: path.to_path_buf(),
        reason: format!("{key:?} is not an object"),
    })
}

/// Writes `doc` to `path` (through a symlink to its target) atomically,
/// mode 0600, creating the directory (0700).
fn write_doc(path: &Path, doc: &Map<String, Value>) -> Result<(), StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).map_err(io(path))?,
        _ => path.to_path_buf(),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".config.json.")
        .tempfile_in(&dir)
        .map_err(io(&dir))?;
    let mut text = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut text,
        serde_json::ser::PrettyFormatter::with_indent(b"\t"),
    );
    serde::Serialize::serialize(doc, &mut ser).map_err(|e| StoreError::Parse {
        path: target.clone(),
        reason: e.to_string(),
    })?;
    text.push(b'\n');
    tmp.write_all(&text).map_err(io(tmp.path()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    tmp.persist(&target).map_err(|e| StoreError::Io {
        path: target.clone(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn docker_hub_and_host_addresses() {
        for hub in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "https://index.docker.io/v1/",
        ] {
            assert_eq!(server_address(hub), DOCKER_HUB_AUTH_KEY, "{hub}");
        }
        assert_eq!(server_address("r.example:5000"), "r.example:5000");
        assert_eq!(server_address("https://r.example/v2/"), "r.example");
    }

    #[tokio::test]
    async fn file_store_keeps_other_fields_and_erases_every_alias() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            r#"{"auths":{"other.io":{"auth":"eDp5"},"http://r.io:5000/v2/":{"auth":"b2xkOm9sZA=="}},
               "proxies":{"default":{"httpProxy":"http://p:3128"}},"detachKeys":"ctrl-x"}"#,
        )
        .unwrap();
        let got = store_credential(&path, "r.io:5000", "tenancy/alice", "s:e")
            .await
            .unwrap();
        assert_eq!(got, CredentialStore::File(path.clone()));
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            v["auths"]["r.io:5000"],
            json!({"auth": "dGVuYW5jeS9hbGljZTpzOmU="})
        );
        assert_eq!(v["auths"]["other.io"], json!({"auth": "eDp5"}));
        assert_eq!(v["proxies"]["default"]["httpProxy"], "http://p:3128");
        assert_eq!(v["detachKeys"], "ctrl-x");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);

        erase_credential(&path, "r.io:5000").await.unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["auths"], json!({"other.io": {"auth": "eDp5"}}));
        let e = erase_credential(&path, "r.io:5000").await.unwrap_err();
        assert_eq!(e.to_string(), "not logged in to r.io:5000");
    }

    #[tokio::test]
    async fn new_file_and_directory_docker_hub_key_and_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/.docker/config.json");
        store_credential(&path, "docker.io", "u", "p")
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v, json!({"auths": {DOCKER_HUB_AUTH_KEY: {"auth": "dTpw"}}}));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);
        // Written through a symlink: the link stays, its target changes.
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        erase_credential(&link, "index.docker.io").await.unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v, json!({"auths": {}}));
        // A config that is not an object is refused and left alone.
        std::fs::write(&path, "[1]").unwrap();
        let e = store_credential(&path, "r.io", "u", "p").await.unwrap_err();
        assert!(e.to_string().ends_with("not a JSON object"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[1]");
    }
}
