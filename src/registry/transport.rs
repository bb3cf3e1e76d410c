//! One HTTP exchange with a registry: picking http or https, authorizing
//! (Bearer tokens or Basic), following redirects by hand, turning statuses
//! into [`RegistryError`]s, reading bodies under a limit, and retrying with
//! backoff.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::header::{
    AUTHORIZATION, CONTENT_LENGTH, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode, Url};

use super::auth::{Challenge, TokenCache, parse_challenges, pull_scope};
use super::credentials::Credentials;
use super::error::{RegistryError, Target};
use super::hosts::{Endpoint, Hosts, HostsError, Need, Tls};
use super::reference::Reference;

/// Most redirect hops followed for one request.
pub const MAX_REDIRECTS: usize = 10;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);
const MAX_ERROR_BODY: u64 = 64 << 10;
/// How long an endpoint that failed at the network level is passed over
/// while a later one remains.
pub const ENDPOINT_COOLDOWN: Duration = Duration::from_secs(30);

/// The client settings every lazysnap HTTP client shares: no automatic
/// redirects, connect and read timeouts, the user agent.
pub fn http_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .user_agent(concat!("lazysnap/", env!("CARGO_PKG_VERSION")))
}

/// The connection pool, credentials and caches a `RegistryClient` shares.
#[derive(Debug)]
pub struct Transport {
    pub(super) http: reqwest::Client,
    insecure_hosts: Vec<String>,
    pub(super) retries: u32,
    pub(super) creds: Credentials,
    tokens: TokenCache,
    /// The last challenge each endpoint host answered with, to authorize up front.
    challenges: Mutex<HashMap<String, Challenge>>,
    /// Mirrors and servers per registry (containerd hosts.toml).
    hosts: Hosts,
    /// Timeout for the per-endpoint clients.
    timeout: Duration,
    /// Clients for endpoints with their own TLS settings.
    clients: Mutex<HashMap<Tls, reqwest::Client>>,
    /// Endpoints (by key) that failed at the network level, and when.
    down: Mutex<HashMap<String, Instant>>,
}

/// One request to make.
#[derive(Debug)]
pub struct Call<'a> {
    /// What it is about (for errors).
    pub target: &'a Target,
    /// Whose registry and repository (for auth).
    pub reference: &'a Reference,
    /// Where it goes: its origin gets Authorization and the configured headers.
    pub endpoint: &'a Endpoint,
    /// GET or HEAD (pushes: POST, PATCH, PUT, DELETE via [`Transport::send_with`]).
    pub method: Method,
    /// Where to send it first.
    pub url: Url,
    /// Accept / Range / Accept-Encoding; never Authorization.
    pub headers: HeaderMap,
}

/// What a request needs beyond its [`Call`]: token scopes and a body.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Token scopes (FORMATS.md §6.6 grammar), all asked for in one token
    /// request and cached together; empty means the pull scope of the
    /// call's repository.
    pub scopes: Vec<String>,
    /// The request body, sent again after a 401 and on each redirect hop.
    pub body: Option<Bytes>,
}

impl Transport {
    /// A transport over `http`.
    pub fn new(
        http: reqwest::Client,
        insecure_hosts: Vec<String>,
        retries: u32,
        creds: Credentials,
    ) -> Transport {
        Transport {
            http,
            insecure_hosts,
            retries,
            creds,
            tokens: TokenCache::default(),
            challenges: Mutex::new(HashMap::new()),
            hosts: Hosts::new(None),
            timeout: Duration::from_secs(30),
            clients: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
        }
    }

    /// Reads registry host configuration from `dir` (containerd's
    /// `config_path`); per-endpoint clients get `timeout`.
    pub fn with_hosts(mut self, dir: Option<PathBuf>, timeout: Duration) -> Transport {
        self.hosts = Hosts::new(dir);
        self.timeout = timeout;
        self
    }

    /// The endpoints to try for `r`, in order, that may serve `need`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::HostsConfig`] for a bad configuration or when no
    /// endpoint has the capability.
    pub fn endpoints(&self, r: &Reference, need: Need) -> Result<Vec<Endpoint>, RegistryError> {
        let all = self.hosts.endpoints(r, &|h| self.plain_http_allowed(h))?;
        let eps: Vec<Endpoint> = all
            .iter()
            .filter(|e| e.capabilities.allows(need))
            .cloned()
            .collect();
        if eps.is_empty() {
            return Err(HostsError {
                path: all
                    .iter()
                    .find_map(|e| e.tls.source.clone())
                    .unwrap_or_else(|| PathBuf::from("hosts.toml")),
                key: "capabilities".into(),
                reason: format!("no host of {} has the {need} capability", r.registry),
            }
            .into());
        }
        Ok(eps)
    }

    /// Whether `ep` failed at the network level within [`ENDPOINT_COOLDOWN`].
    pub fn is_down(&self, ep: &Endpoint) -> bool {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match down.get(&ep.key()) {
            Some(t) if t.elapsed() < ENDPOINT_COOLDOWN => true,
            Some(_) => {
                down.remove(&ep.key());
                false
            }
            None => false,
        }
    }

    /// Records that `ep` is (`true`) or is not (`false`) failing.
    pub fn mark_down(&self, ep: &Endpoint, is_down: bool) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if is_down {
            down.insert(ep.key(), Instant::now());
        } else {
            down.remove(&ep.key());
        }
    }

    /// The HTTP client for `ep`: the shared one, or one built (once per TLS
    /// setting) with its `skip_verify`, `ca` and `client` certificates.
    ///
    /// # Errors
    ///
    /// [`RegistryError::HostsConfig`] for unreadable or invalid certificate files.
    pub fn http_for(&self, ep: &Endpoint) -> Result<reqwest::Client, RegistryError> {
        if ep.tls.is_default() {
            return Ok(self.http.clone());
        }
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&ep.tls) {
            return Ok(c.clone());
        }
        let tls = &ep.tls;
        let source = tls.source.clone().unwrap_or_default();
        let bad = |key: &str, reason: String| -> RegistryError {
            HostsError {
                path: source.clone(),
                key: key.into(),
                reason,
            }
            .into()
        };
        let read = |key: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| bad(key, format!("{}: {e}", p.display())))
        };
        let mut b = http_builder(self.timeout).danger_accept_invalid_certs(tls.skip_verify);
        for p in &tls.ca {
            let certs = reqwest::Certificate::from_pem_bundle(&read("ca", p)?)
                .map_err(|e| bad("ca", format!("{}: {e}", p.display())))?;
            if certs.is_empty() {
                return Err(bad("ca", format!("{}: no PEM certificate", p.display())));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some((cert, key)) = tls.client.first() {
            let mut pem = read("client", cert)?;
            if let Some(k) = key {
                pem.push(b'\n');
                pem.extend(read("client", k)?);
            }
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| bad("client", format!("{}: {e}", cert.display())))?;
            b = b.identity(id);
            if tls.client.len() > 1 {
                tracing::debug!(source = %source.display(), "only the first client certificate pair is used");
            }
        }
        let c = b.build().map_err(RegistryError::ClientBuild)?;
        clients.insert(tls.clone(), c.clone());
        Ok(c)
    }

    /// Whether plain http may be used for `host[:port]`: loopback or listed insecure.
    pub fn plain_http_allowed(&self, host_port: &str) -> bool {
        let host = strip_port(host_port);
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            || self
                .insecure_hosts
                .iter()
                .any(|h| h == host_port || h == host)
    }

    /// `<scheme>://<api host>/v2/<repository>/<rest>`: the registry's own
    /// server, ignoring host configuration.
    pub fn url(&self, r: &Reference, rest: &str) -> Url {
        Endpoint::server(r, &|h| self.plain_http_allowed(h)).url(&r.repository, rest)
    }

    /// Sends `call`, authorizing and following redirects; returns the final
    /// response (any status but a registry 401 we could answer) and its URL.
    ///
    /// # Errors
    ///
    /// Network errors, bad redirects, [`RegistryError::Unauthorized`] when a
    /// second 401 follows a fresh token, token endpoint failures.
    pub async fn send(&self, call: &Call<'_>) -> Result<(Response, Url), RegistryError> {
        self.send_with(call, &Extra::default()).await
    }

    /// [`Self::send`] asking for `extra.scopes` (pull of the call's
    /// repository when empty) and sending `extra.body`.
    ///
    /// # Errors
    ///
    /// As [`Self::send`].
    pub async fn send_with(
        &self,
        call: &Call<'_>,
        extra: &Extra,
    ) -> Result<(Response, Url), RegistryError> {
        let r = call.reference;
        let ep = call.endpoint;
        let host = ep.host.as_str();
        let cred_host = ep.credential_host(r);
        let http = self.http_for(ep)?;
        let scopes = if extra.scopes.is_empty() {
            vec![pull_scope(&r.repository)]
        } else {
            extra.scopes.clone()
        };
        // The cache key of the token covering all of them.
        let scope = scopes.join(" ");
        let origin = ep.origin();
        let mut reauthorized = false;
        loop {
            let auth = self.authorization(call, &http, &scope, &scopes).await?;
            let (resp, url) = self
                .follow(call, &http, &origin, auth.as_ref(), extra.body.as_ref())
                .await?;
            if resp.status() != StatusCode::UNAUTHORIZED || url.origin() != origin.origin() {
                return Ok((resp, url));
            }
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_challenges)
                .collect();
            let unauthorized = |reason: String| RegistryError::Unauthorized {
                target: Box::new(call.target.clone()),
                reason,
            };
            if reauthorized {
                return Err(unauthorized(format!(
                    "still 401 after authorizing ({})",
                    if auth.is_some() {
                        "credentials or token refused"
                    } else {
                        "no credentials"
                    }
                )));
            }
            let Some(challenge) = challenges.into_iter().next() else {
                return Err(unauthorized(
                    "401 without a Bearer or Basic challenge".into(),
                ));
            };
            reauthorized = true;
            self.tokens.remove(host, &scope);
            if let Challenge::Bearer {
                realm,
                service,
                scopes: asked,
            } = &challenge
            {
                let mut all = asked.clone();
                for s in &scopes {
                    if !all.contains(s) {
                        all.push(s.clone());
                    }
                }
                let (token, lifetime) = self
                    .fetch_token(cred_host, &http, ep, realm, service.as_deref(), &all)
                    .await?;
                self.tokens.put(host, &scope, token, lifetime);
            } else if self.creds.get(cred_host).await?.is_none() {
                return Err(unauthorized(format!(
                    "Basic challenge and no credentials for {cred_host} in the docker config"
                )));
            }
            self.lock_challenges().insert(host.to_string(), challenge);
        }
    }

    fn lock_challenges(&self) -> std::sync::MutexGuard<'_, HashMap<String, Challenge>> {
        self.challenges.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Authorization value to send up front: a cached token, a token
    /// fetched because the host challenged before, or Basic credentials.
    async fn authorization(
        &self,
        call: &Call<'_>,
        http: &reqwest::Client,
        scope: &str,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let ep = call.endpoint;
        let host = ep.host.as_str();
        let cred_host = ep.credential_host(call.reference);
        if let Some(t) = self.tokens.get(host, scope) {
            return Ok(HeaderValue::from_str(&format!("Bearer {t}")).ok());
        }
        let known = self.lock_challenges().get(host).cloned();
        match known {
            Some(Challenge::Bearer { realm, service, .. }) => {
                let (t, lifetime) = self
                    .fetch_token(cred_host, http, ep, &realm, service.as_deref(), scopes)
                    .await?;
                self.tokens.put(host, scope, t.clone(), lifetime);
                Ok(HeaderValue::from_str(&format!("Bearer {t}")).ok())
            }
            Some(Challenge::Basic) => Ok(self
                .creds
                .get(cred_host)
                .await?
                .and_then(|c| HeaderValue::from_str(&c.basic_header()).ok())),
            None => Ok(None),
        }
    }

    /// Sends, following up to [`MAX_REDIRECTS`] redirects; Authorization and
    /// the endpoint's configured headers go only to the endpoint's own
    /// origin; the call's headers go everywhere.
    async fn follow(
        &self,
        call: &Call<'_>,
        http: &reqwest::Client,
        registry: &Url,
        auth: Option<&HeaderValue>,
        body: Option<&Bytes>,
    ) -> Result<(Response, Url), RegistryError> {
        let mut url = call.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = http
                .request(call.method.clone(), url.clone())
                .headers(call.headers.clone());
            if let Some(b) = body {
                req = req.body(b.clone());
            }
            if url.origin() == registry.origin() {
                for (k, v) in &call.endpoint.headers {
                    req = req.header(k.clone(), v.clone());
                }
                if let Some(a) = auth {
                    req = req.header(AUTHORIZATION, a.clone());
                }
            }
            let resp = req
                .send()
                .await
                .map_err(|e| network(call.target, &url, e))?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok((resp, url));
            }
            let bad = |reason: String| RegistryError::Redirect {
                target: Box::new(call.target.clone()),
                url: redact(&url),
                reason,
            };
            let loc = resp
                .headers()
                .get(LOCATION)
                .ok_or_else(|| bad(format!("HTTP {} without Location", resp.status().as_u16())))?
                .to_str()
                .map_err(|_| bad("Location is not ASCII".into()))?;
            let next = url
                .join(loc)
                .map_err(|e| bad(format!("Location {loc:?}: {e}")))?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(bad(format!("Location scheme {} refused", next.scheme())));
            }
            tracing::debug!(from = %redact(&url), to = %redact(&next), "following redirect");
            url = next;
        }
        Err(RegistryError::Redirect {
            target: Box::new(call.target.clone()),
            url: redact(&url),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// Runs `op` until it succeeds, fails for good, or `retries` retries of
    /// retryable failures ([`RegistryError::is_unavailable`]) are spent.
    pub async fn retrying<T, F, Fut>(&self, what: &Target, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut attempt = 0u32;
        loop {
            match op().await {
                Err(e) if e.is_retryable() && attempt < self.retries => {
                    let wait = e
                        .retry_after()
                        .map_or_else(|| backoff(attempt), |d| d.min(RETRY_AFTER_CAP));
                    tracing::warn!(%what, attempt = attempt + 1, ?wait, error = %e, "retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// `100 ms × 2^attempt`, capped at 5 s, of which a random half (clock nanos) is waited.
pub fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_BASE
        .checked_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .unwrap_or(BACKOFF_CAP)
        .min(BACKOFF_CAP);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let half = full / 2;
    half + half.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

fn strip_port(host_port: &str) -> &str {
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match host_port.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    }
}

/// A URL without its query (signed URLs carry secrets there).
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

/// A transport error for `target` at `url`.
pub fn network(target: &Target, url: &Url, source: reqwest::Error) -> RegistryError {
    RegistryError::Network {
        target: Box::new(target.clone()),
        url: redact(url),
        source: source.without_url(),
    }
}

/// Passes 2xx through; turns other statuses into errors, with the
/// registry's error codes read from the body.
///
/// # Errors
///
/// [`RegistryError::NotFound`] (404), [`RegistryError::RangeNotSatisfiable`]
/// (416), [`RegistryError::Unauthorized`] (401), else [`RegistryError::Status`].
pub async fn check_status(
    target: &Target,
    url: &Url,
    resp: Response,
) -> Result<Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let content_range = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let detail = error_detail(resp).await;
    Err(match status.as_u16() {
        404 => RegistryError::NotFound {
            target: Box::new(target.clone()),
            detail,
        },
        416 => RegistryError::RangeNotSatisfiable {
            target: Box::new(target.clone()),
            detail: content_range
                .map(|c| format!("Content-Range {c}"))
                .unwrap_or(detail),
        },
        401 => RegistryError::Unauthorized {
            target: Box::new(target.clone()),
            reason: format!(
                "HTTP 401 from {}{}",
                redact(url),
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            ),
        },
        s => RegistryError::Status {
            target: Box::new(target.clone()),
            status: s,
            url: redact(url),
            detail,
            retry_after,
        },
    })
}

/// `CODE: message; …` from a distribution error body, else its start.
async fn error_detail(mut resp: Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > MAX_ERROR_BODY {
            break;
        }
    }
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&body) {
        return e
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; ");
    }
    String::from_utf8_lossy(&body)
        .trim()
        .chars()
        .take(200)
        .collect()
}

/// The `Content-Length` header (reqwest's `content_length()` is 0 for HEAD).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the whole body, refusing more than `limit` bytes (by
/// Content-Length up front, then by count) with `too_big(size)`.
///
/// # Errors
///
/// `too_big`, [`RegistryError::Network`] on a transport error mid-body,
/// [`RegistryError::Truncated`] when fewer bytes than Content-Length came.
pub async fn read_limited(
    target: &Target,
    url: &Url,
    mut resp: Response,
    limit: u64,
    too_big: impl Fn(u64) -> RegistryError,
) -> Result<Vec<u8>, RegistryError> {
    let expected = content_length(resp.headers());
    if let Some(n) = expected
        && n > limit
    {
        return Err(too_big(n));
    }
    let mut body = Vec::with_capacity(expected.unwrap_or(0) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| network(target, url, e))? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > limit {
            return Err(too_big(body.len() as u64));
        }
    }
    if let Some(n) = expected
        && (body.len() as u64) < n
    {
        return Err(RegistryError::Truncated {
            target: Box::new(target.clone()),
            got: body.len() as u64,
            expected: n,
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(insecure: &[&str]) -> Transport {
        Transport::new(
            reqwest::Client::new(),
            insecure.iter().map(|s| s.to_string()).collect(),
            3,
            Credentials::new(None),
        )
    }

    #[test]
    fn plain_http_only_for_loopback_and_insecure() {
        let t = transport(&["reg.lan:5000", "other.lan"]);
        for ok in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:80",
            "[::1]:5000",
            "reg.lan:5000",
            "other.lan",
            "other.lan:443",
        ] {
            assert!(t.plain_http_allowed(ok), "{ok}");
        }
        for no in [
            "reg.lan",
            "reg.lan:5001",
            "10.0.0.1:5000",
            "docker.io",
            "[::2]:5000",
        ] {
            assert!(!t.plain_http_allowed(no), "{no}");
        }
        let r: Reference = "127.0.0.1:5000/t/img:1".parse().unwrap();
        assert_eq!(
            t.url(&r, "manifests/1").as_str(),
            "http://127.0.0.1:5000/v2/t/img/manifests/1"
        );
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(
            t.url(&r, "blobs/x").as_str(),
            "https://registry-1.docker.io/v2/library/busybox/blobs/x"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        for n in 0..12 {
            let b = backoff(n);
            let full =
                (Duration::from_millis(100) * 2u32.pow(n.min(10))).min(Duration::from_secs(5));
            assert!(b >= full / 2 && b <= full, "{n}: {b:?}");
        }
        assert!(backoff(40) <= Duration::from_secs(5));
    }

    #[test]
    fn redact_drops_query() {
        let u = Url::parse("https://s3.example/b/k?X-Amz-Signature=secret").unwrap();
        assert_eq!(redact(&u), "https://s3.example/b/k");
    }
}
