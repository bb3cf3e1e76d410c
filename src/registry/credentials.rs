//! Registry credentials from docker's `config.json`: `auths` entries
//! (`auth`, `username`/`password`, `identitytoken`), `credHelpers` and
//! `credsStore` (by running `docker-credential-<name> get`); and, in
//! `store`, writing and erasing them as `docker login` / `logout` do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use super::error::RegistryError;
use super::reference::DOCKER_HUB;

mod store;
pub use store::{
    CredentialStore, StoreError, default_config_path, erase_credential, server_address,
    store_credential,
};

/// The key Docker Hub's credentials are stored under.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// User name and password (or registry token).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`, or a helper's `<token>` user).
    IdentityToken {
        /// User name, often `<token>`.
        username: String,
        /// The refresh token.
        token: String,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::IdentityToken { username, .. } => {
                write!(f, "IdentityToken({username}, <redacted>)")
            }
        }
    }
}

impl Credential {
    /// The `Authorization: Basic` value (an identity token is the password).
    pub fn basic_header(&self) -> String {
        let (u, p) = match self {
            Credential::Basic { username, password } => (username, password),
            Credential::IdentityToken { username, token } => (username, token),
        };
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// The credential source: docker's config file, read once, with helper
/// answers cached per registry.
#[derive(Debug)]
pub struct Credentials {
    path: Option<PathBuf>,
    config: OnceLock<DockerConfig>,
    cache: Mutex<HashMap<String, Option<Credential>>>,
}

impl Credentials {
    /// Credentials from `path`, or from `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`.
    pub fn new(path: Option<PathBuf>) -> Credentials {
        Credentials {
            path: path.or_else(default_config_path),
            config: OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A source that answers `cred` for `registry` and nothing for any other
    /// registry, reading no file: for checking credentials before they are
    /// stored (`lazysnap login`).
    pub fn fixed(registry: &str, cred: Credential) -> Credentials {
        Credentials {
            path: None,
            config: OnceLock::new(),
            cache: Mutex::new(HashMap::from([(registry.to_string(), Some(cred))])),
        }
    }

    fn config(&self) -> &DockerConfig {
        self.config.get_or_init(|| match &self.path {
            Some(p) => load_config(p),
            None => DockerConfig::default(),
        })
    }

    /// The credentials for `registry` (as in the reference: `docker.io`,
    /// `host:5000`), or `None` for anonymous access.
    ///
    /// # Errors
    ///
    /// [`RegistryError::CredentialHelper`] when a configured helper fails
    /// for another reason than "no credentials".
    pub async fn get(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        if let Some(c) = self.lock().get(registry) {
            return Ok(c.clone());
        }
        let cred = self.lookup(registry).await?;
        self.lock().insert(registry.to_string(), cred.clone());
        Ok(cred)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Credential>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn lookup(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        let config = self.config();
        let server = if registry == DOCKER_HUB {
            DOCKER_HUB_AUTH_KEY
        } else {
            registry
        };
        let helper = config
            .cred_helpers
            .get(registry)
            .or_else(|| config.cred_helpers.get(server))
            .or(config.creds_store.as_ref());
        if let Some(entry) = find_auth(&config.auths, registry)
            && let Some(c) = entry_credential(entry)
        {
            return Ok(Some(c));
        }
        match helper {
            Some(h) => run_helper(Path::new(&format!("docker-credential-{h}")), h, server).await,
            None => Ok(None),
        }
    }
}

fn load_config(path: &Path) -> DockerConfig {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "docker config unreadable; pulling anonymously");
            DockerConfig::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerConfig::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "docker config unreadable; pulling anonymously");
            DockerConfig::default()
        }
    }
}

/// The `auths` entry for a registry; keys may carry a scheme and a path
/// (`https://index.docker.io/v1/`).
fn find_auth<'a>(auths: &'a HashMap<String, AuthEntry>, registry: &str) -> Option<&'a AuthEntry> {
    auths.get(registry).or_else(|| {
        auths
            .iter()
            .find(|(k, _)| auth_key_registry(k) == registry)
            .map(|(_, v)| v)
    })
}

/// The registry an `auths` key (or a `login` argument) names: without
/// scheme and path, Docker Hub's hosts as `docker.io`.
pub fn auth_key_registry(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    match k.split('/').next().unwrap_or(k) {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        h => h,
    }
}

fn entry_credential(e: &AuthEntry) -> Option<Credential> {
    let (mut user, mut pass) = (e.username.clone(), e.password.clone());
    if let Some(a) = e.auth.as_deref().filter(|a| !a.is_empty())
        && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(a.trim())
        && let Ok(s) = String::from_utf8(raw)
        && let Some((u, p)) = s.split_once(':')
    {
        user = Some(u.to_string());
        pass = Some(p.to_string());
    }
    if let Some(t) = e.identitytoken.clone().filter(|t| !t.is_empty()) {
        return Some(Credential::IdentityToken {
            username: user.unwrap_or_else(|| "<token>".to_string()),
            token: t,
        });
    }
    match (user, pass) {
        (Some(username), Some(password)) if !username.is_empty() => {
            Some(Credential::Basic { username, password })
        }
        _ => None,
    }
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `<program> get` with `server` on stdin.
///
/// # Errors
///
/// [`RegistryError::CredentialHelper`] when the helper cannot run, times
/// out, fails (other than "credentials not found") or prints bad JSON.
pub async fn run_helper(
    program: &Path,
    name: &str,
    server: &str,
) -> Result<Option<Credential>, RegistryError> {
    let fail = |reason: String| RegistryError::CredentialHelper {
        helper: name.to_string(),
        host: server.to_string(),
        reason,
    };
    let out = helper_exec(program, "get", server.as_bytes())
        .await
        .map_err(fail)?;
    if !out.status.success() {
        let msg = helper_message(&out);
        if is_not_found(&msg) {
            return Ok(None);
        }
        return Err(fail(format!("{}: {msg}", out.status)));
    }
    let a: HelperAnswer =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("bad JSON: {e}")))?;
    if a.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if a.username == "<token>" {
        Credential::IdentityToken {
            username: a.username,
            token: a.secret,
        }
    } else {
        Credential::Basic {
            username: a.username,
            password: a.secret,
        }
    }))
}

/// Runs `<program> <action>` with `input` on stdin, under [`HELPER_TIMEOUT`].
/// The error names what failed (never the input, which may be a secret).
async fn helper_exec(
    program: &Path,
    action: &str,
    input: &[u8],
) -> Result<std::process::Output, String> {
    let mut child = tokio::process::Command::new(program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .await
            .map_err(|e| format!("writing stdin: {e}"))?;
    }
    tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("no answer in {HELPER_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())
}

/// A failed helper's stdout and stderr, trimmed (helpers print their
/// errors on either).
fn helper_message(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
        + String::from_utf8_lossy(&out.stderr).trim()
}

/// Whether a helper's error is docker-credential-helpers' "credentials not
/// found in native keychain".
fn is_not_found(msg: &str) -> bool {
    msg.to_ascii_lowercase().contains("credentials not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[tokio::test]
    async fn auths_entries_by_host_and_docker_hub_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let cfg = format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "r.example:5000":{{"auth":"{}"}},
                "https://other.io/v2/":{{"username":"u","password":"p"}},
                "tok.io":{{"auth":"{}","identitytoken":"refresh-me"}}
            }}}}"#,
            b64("hub:pw"),
            b64("me:se:cret"),
            b64("tu:")
        );
        std::fs::write(&path, cfg).unwrap();
        let c = Credentials::new(Some(path));
        let basic = |u: &str, p: &str| {
            Some(Credential::Basic {
                username: u.into(),
                password: p.into(),
            })
        };
        assert_eq!(c.get("docker.io").await.unwrap(), basic("hub", "pw"));
        assert_eq!(
            c.get("r.example:5000").await.unwrap(),
            basic("me", "se:cret")
        );
        assert_eq!(c.get("other.io").await.unwrap(), basic("u", "p"));
        assert_eq!(
            c.get("tok.io").await.unwrap(),
            Some(Credential::IdentityToken {
                username: "tu".into(),
                token: "refresh-me".into()
            })
        );
        assert_eq!(c.get("nowhere.io").await.unwrap(), None);
        assert_eq!(
            basic("me", "se:cret").unwrap().basic_header(),
            format!("Basic {}", b64("me:se:cret"))
        );
        let missing = Credentials::new(Some(dir.path().join("none.json")));
        assert_eq!(missing.get("docker.io").await.unwrap(), None);
    }

    #[tokio::test]
    async fn helper_protocol() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-fake");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread host\nif [ \"$host\" = r.io ]; then echo '{\"ServerURL\":\"r.io\",\"Username\":\"hu\",\"Secret\":\"hs\"}'; \
             elif [ \"$host\" = t.io ]; then echo '{\"Username\":\"<token>\",\"Secret\":\"idt\"}'; \
             elif [ \"$host\" = bad.io ]; then echo 'boom' >&2; exit 3; \
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            run_helper(&helper, "fake", "r.io").await.unwrap(),
            Some(Credential::Basic {
                username: "hu".into(),
                password: "hs".into()
            })
        );
        assert_eq!(
            run_helper(&helper, "fake", "t.io").await.unwrap(),
            Some(Credential::IdentityToken {
                username: "<token>".into(),
                token: "idt".into()
            })
        );
        assert_eq!(run_helper(&helper, "fake", "x.io").await.unwrap(), None);
        let e = run_helper(&helper, "fake", "bad.io")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("credential helper docker-credential-fake for bad.io"),
            "{e}"
        );
        assert!(e.contains("boom"), "{e}");
        let e = run_helper(&dir.path().join("nope"), "nope", "r.io")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot run"), "{e}");
    }
}
