//! Checking a user name and password against a registry before they are
//! stored (`lazysnap login`), the way `docker login` does: `GET /v2/`
//! without credentials; on a 401 with a Basic challenge, the same GET with
//! Basic auth; with a Bearer challenge, a token from the realm fetched with
//! Basic auth and no scope (plus `account=<user>`, as docker sends), then
//! the GET with that token. The credentials are good when that GET
//! answers 2xx.
//!
//! The token fetch is the client's own (`token.rs`); this file adds no
//! second Bearer implementation. Errors name the registry, the URL and the
//! HTTP status, never the password or a token.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};

use super::auth::{Challenge, parse_challenges};
use super::credentials::{Credential, Credentials, auth_key_registry};
use super::error::RegistryError;
use super::hosts::{Endpoint, Need};
use super::reference::Reference;
use super::transport::{Transport, http_builder};

/// What to log in to, and how to reach it.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// The registry: `host[:port]`, or Docker Hub as `docker.io`,
    /// `index.docker.io` or `https://index.docker.io/v1/` (a scheme and a
    /// path are dropped, as docker does).
    pub registry: String,
    /// Use plain http (loopback registries always do).
    pub plain_http: bool,
    /// containerd's registry host configuration dir: the registry's own
    /// `server` and TLS settings (`ca`, `skip_verify`, `client`) come from
    /// `<dir>/<host>/hosts.toml`; mirrors are not used for a login.
    pub hosts_dir: Option<PathBuf>,
    /// Connect timeout and longest wait for the next bytes of an answer.
    pub timeout: Duration,
}

/// How the registry checked the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginCheck {
    /// `/v2/` answered 2xx without credentials: nothing was checked.
    Anonymous,
    /// Basic auth on `/v2/` was accepted.
    Basic,
    /// The token server at `realm` issued a token that `/v2/` accepted.
    Bearer {
        /// The token endpoint from the challenge.
        realm: String,
    },
}

/// Why a login check failed. Never carries the password or a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The registry name is not a valid `host[:port]`.
    #[error("login to {registry}: not a registry host: {reason}")]
    InvalidRegistry {
        /// As given.
        registry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `/v2/` answered a status other than 2xx (with the credentials or
    /// token when it had challenged, else without).
    #[error("login to {registry} failed: {url} answered HTTP {status}")]
    Refused {
        /// The registry.
        registry: String,
        /// The `/v2/` URL.
        url: String,
        /// Status code and reason, e.g. `401 Unauthorized`.
        status: StatusCode,
    },
    /// The token server did not issue a token for the credentials.
    #[error("login to {registry} failed: token server {realm}: {reason}")]
    Token {
        /// The registry.
        registry: String,
        /// The token endpoint (the challenge's realm).
        realm: String,
        /// Its status and message (`HTTP 401: …`), or what else failed.
        reason: String,
    },
    /// A 401 without a Basic or Bearer challenge.
    #[error("login to {registry} failed: {url} answered 401 without a Basic or Bearer challenge")]
    NoChallenge {
        /// The registry.
        registry: String,
        /// The `/v2/` URL.
        url: String,
    },
    /// Connecting, sending or receiving failed.
    #[error("login to {registry} failed: {url}: {source}")]
    Network {
        /// The registry.
        registry: String,
        /// The URL asked.
        url: String,
        /// The transport error (without URL).
        #[source]
        source: reqwest::Error,
    },
    /// Host configuration or HTTP client setup failed.
    #[error("login to {registry}: {source}")]
    Setup {
        /// The registry.
        registry: String,
        /// What failed.
        #[source]
        source: RegistryError,
    },
}

/// The registry a login argument names: without scheme and path, Docker
/// Hub's hosts as `docker.io` (`https://index.docker.io/v1/` → `docker.io`).
pub fn login_registry(input: &str) -> &str {
    auth_key_registry(input.trim_end_matches('/'))
}

/// Checks `username`/`password` against `opts.registry` (see the module
/// docs for the exchange).
///
/// # Errors
///
/// [`LoginError::Refused`] naming `/v2/`'s URL and status,
/// [`LoginError::Token`] naming the token endpoint and its status,
/// [`LoginError::NoChallenge`], [`LoginError::Network`],
/// [`LoginError::InvalidRegistry`], [`LoginError::Setup`].
pub async fn check_login(
    opts: &LoginOptions,
    username: &str,
    password: &str,
) -> Result<LoginCheck, LoginError> {
    let registry = login_registry(&opts.registry).to_string();
    let r: Reference =
        format!("{registry}/lazysnap/login")
            .parse()
            .map_err(|e: RegistryError| LoginError::InvalidRegistry {
                registry: registry.clone(),
                reason: e.to_string(),
            })?;
    let setup = |source: RegistryError| LoginError::Setup {
        registry: registry.clone(),
        source,
    };
    let http = http_builder(opts.timeout)
        .build()
        .map_err(|e| setup(RegistryError::ClientBuild(e)))?;
    let insecure = if opts.plain_http {
        vec![r.api_host().to_string()]
    } else {
        Vec::new()
    };
    let mut t = Transport::new(http, insecure, 0, Credentials::new(None))
        .with_hosts(opts.hosts_dir.clone(), opts.timeout);
    let ep = t
        .endpoints(&r, Need::Resolve)
        .map_err(setup)?
        .into_iter()
        .find(|e| !e.mirror)
        .unwrap_or_else(|| Endpoint::server(&r, &|h| t.plain_http_allowed(h)));
    // The token fetch reads the credentials from the transport's source.
    let cred_host = ep.credential_host(&r).to_string();
    let cred = Credential::Basic {
        username: username.to_string(),
        password: password.to_string(),
    };
    t.creds = Credentials::fixed(&cred_host, cred.clone());
    let http = t.http_for(&ep).map_err(setup)?;
    let url = Url::parse(&format!("{}://{}{}/", ep.scheme, ep.host, ep.path)).map_err(|e| {
        LoginError::InvalidRegistry {
            registry: registry.clone(),
            reason: e.to_string(),
        }
    })?;
    let v2 = V2 {
        registry: &registry,
        http: &http,
        ep: &ep,
        url: &url,
    };

    let resp = v2.get(None).await?;
    if resp.status().is_success() {
        return Ok(LoginCheck::Anonymous);
    }
    if resp.status() != StatusCode::UNAUTHORIZED {
        return Err(v2.refused(resp.status()));
    }
    let challenge = resp
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .next()
        .ok_or_else(|| LoginError::NoChallenge {
            registry: registry.clone(),
            url: url.to_string(),
        })?;
    let (auth, check) = match challenge {
        Challenge::Basic => (cred.basic_header(), LoginCheck::Basic),
        Challenge::Bearer { realm, service, .. } => {
            let token_error = |reason: String| LoginError::Token {
                registry: registry.clone(),
                realm: realm.clone(),
                reason,
            };
            // docker names the account it asks a token for; no scope: only /v2/ is asked.
            let mut asked =
                Url::parse(&realm).map_err(|e| token_error(format!("realm is not a URL: {e}")))?;
            asked.query_pairs_mut().append_pair("account", username);
            let (token, _) = t
                .fetch_token(
                    &cred_host,
                    &http,
                    &ep,
                    asked.as_str(),
                    service.as_deref(),
                    &[],
                )
                .await
                .map_err(|e| match e {
                    RegistryError::Token { reason, .. }
                    | RegistryError::Unauthorized { reason, .. } => token_error(reason),
                    RegistryError::Status { status, detail, .. } => token_error(format!(
                        "HTTP {status}{}",
                        if detail.is_empty() {
                            String::new()
                        } else {
                            format!(": {detail}")
                        }
                    )),
                    RegistryError::Network { source, .. } => token_error(source.to_string()),
                    RegistryError::Truncated { got, expected, .. } => {
                        token_error(format!("answer truncated: {got} of {expected} bytes"))
                    }
                    other => setup(other),
                })?;
            (format!("Bearer {token}"), LoginCheck::Bearer { realm })
        }
    };
    let resp = v2.get(Some(&auth)).await?;
    if resp.status().is_success() {
        Ok(check)
    } else {
        Err(v2.refused(resp.status()))
    }
}

/// The `/v2/` base of one endpoint.
struct V2<'a> {
    registry: &'a str,
    http: &'a reqwest::Client,
    ep: &'a Endpoint,
    url: &'a Url,
}

impl V2<'_> {
    /// `GET /v2/` with the endpoint's configured headers and `auth`.
    async fn get(&self, auth: Option<&str>) -> Result<reqwest::Response, LoginError> {
        let mut req = self.http.get(self.url.clone());
        for (k, v) in &self.ep.headers {
            req = req.header(k.clone(), v.clone());
        }
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        req.send().await.map_err(|e| LoginError::Network {
            registry: self.registry.to_string(),
            url: self.url.to_string(),
            source: e.without_url(),
        })
    }

    fn refused(&self, status: StatusCode) -> LoginError {
        LoginError::Refused {
            registry: self.registry.to_string(),
            url: self.url.to_string(),
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_arguments_name_registries() {
        for (arg, want) in [
            ("docker.io", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("r.example:5000", "r.example:5000"),
            ("https://r.example:5000/", "r.example:5000"),
            ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
        ] {
            assert_eq!(login_registry(arg), want, "{arg}");
        }
    }

    #[tokio::test]
    async fn refusals_name_the_url_and_status_never_the_password() {
        // A server that answers every request 403: not a challenge.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let opts = LoginOptions {
            registry: addr.to_string(),
            plain_http: false,
            hosts_dir: None,
            timeout: Duration::from_secs(5),
        };
        let e = check_login(&opts, "u", "hunter2").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("login to {addr} failed: http://{addr}/v2/ answered HTTP 403 Forbidden")
        );
        let e = check_login(
            &LoginOptions {
                registry: "bad host".into(),
                ..opts
            },
            "u",
            "hunter2",
        )
        .await
        .unwrap_err();
        assert!(matches!(e, LoginError::InvalidRegistry { .. }), "{e}");
        assert!(!format!("{e:?}").contains("hunter2"));
    }
}
