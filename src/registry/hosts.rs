//! containerd's registry host configuration (`hosts.toml`): for a registry,
//! the ordered endpoints to try (mirrors, then the server), each with its
//! capabilities, API root path, TLS settings and extra headers.
//!
//! Layout: `<dir>/<host[:port]>/hosts.toml` (Docker Hub's directory is
//! `docker.io`), else `<dir>/_default/hosts.toml`. A host directory without
//! `hosts.toml` contributes Docker-style certificate files (`*.crt` CAs,
//! `*.cert` + `*.key` client pairs) to the server. Format (containerd
//! `docs/hosts.md`):
//!
//! ```toml
//! server = "https://registry-1.docker.io"    # default: the registry itself
//! [host."https://mirror.example:5000"]
//!   capabilities = ["pull", "resolve"]       # default: pull, resolve, push
//!   skip_verify = true
//!   ca = "/path/ca.crt"                      # or a list; relative to the dir
//!   client = [["/c.crt", "/c.key"]]          # or "both.pem", or a list of them
//!   override_path = false                    # true: the URL path is the API root
//!   [host."https://mirror.example:5000".header]
//!     x-custom = "v"                         # or a list of values
//! ```
//!
//! Top-level `capabilities`, `ca`, `client`, `skip_verify`, `header` and
//! `override_path` apply to the server. Unknown keys are ignored (logged at
//! debug), as containerd does.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use toml::{Table, Value};

use super::error::RegistryError;
use super::reference::Reference;

/// Where containerd keeps host directories by default.
pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";
/// The fallback host directory's name.
pub const DEFAULT_HOST_DIR_NAME: &str = "_default";

/// What an endpoint may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Blobs, and manifests by digest.
    pub pull: bool,
    /// Manifests by tag.
    pub resolve: bool,
    /// Pushing blobs and manifests (only the first such endpoint is used, as containerd does).
    pub push: bool,
}

impl Capabilities {
    /// pull, resolve and push: containerd's default.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };

    /// Whether `need` is among them.
    pub fn allows(self, need: Need) -> bool {
        match need {
            Need::Pull => self.pull,
            Need::Resolve => self.resolve,
            Need::Push => self.push,
        }
    }
}

/// What a request needs of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A blob or a manifest by digest.
    Pull,
    /// A manifest by tag.
    Resolve,
    /// An upload, mount or manifest PUT (and the HEAD before it).
    Push,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Need::Pull => "pull",
            Need::Resolve => "resolve",
            Need::Push => "push",
        })
    }
}

/// An endpoint's TLS settings; endpoints with equal settings share a client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Tls {
    /// Accept any server certificate.
    pub skip_verify: bool,
    /// Extra root certificates (PEM files).
    pub ca: Vec<PathBuf>,
    /// Client certificate and key files (the key may be in the certificate file).
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// The file these came from, for errors.
    pub source: Option<PathBuf>,
}

impl Tls {
    /// Whether the default client will do.
    pub fn is_default(&self) -> bool {
        !self.skip_verify && self.ca.is_empty() && self.client.is_empty()
    }
}

/// One place to send requests for a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// API root path: `/v2` normally, `/prefix/v2`, or anything with
    /// `override_path`; no trailing slash (may be empty).
    pub path: String,
    /// What it may be used for.
    pub capabilities: Capabilities,
    /// TLS settings.
    pub tls: Tls,
    /// Extra headers sent to it.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A `[host."…"]` mirror rather than the server.
    pub mirror: bool,
}

impl Endpoint {
    /// The registry's own server with default settings.
    pub fn server(r: &Reference, plain_http_ok: &dyn Fn(&str) -> bool) -> Endpoint {
        let host = r.api_host().to_string();
        Endpoint {
            scheme: if plain_http_ok(&host) {
                "http"
            } else {
                "https"
            }
            .into(),
            host,
            path: "/v2".into(),
            capabilities: Capabilities::ALL,
            tls: Tls::default(),
            headers: Vec::new(),
            mirror: false,
        }
    }

    /// `<scheme>://<host><path>/<repository>/<rest>`.
    pub fn url(&self, repository: &str, rest: &str) -> Url {
        let s = format!(
            "{}://{}{}/{repository}/{rest}",
            self.scheme, self.host, self.path
        );
        // The base was checked when parsed; the reference is validated.
        Url::parse(&s).unwrap_or_else(|e| panic!("registry URL {s:?}: {e}"))
    }

    /// `<scheme>://<host>/`: whose origin gets Authorization and headers.
    pub fn origin(&self) -> Url {
        let s = format!("{}://{}/", self.scheme, self.host);
        Url::parse(&s).unwrap_or_else(|e| panic!("endpoint origin {s:?}: {e}"))
    }

    /// Identifies the endpoint (scheme, host and path).
    pub fn key(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.path)
    }

    /// Whether credentials are looked up under the reference's registry
    /// (the endpoint is the registry's API host) or the endpoint's host.
    pub fn credential_host<'a>(&'a self, r: &'a Reference) -> &'a str {
        if self.host == r.api_host() {
            &r.registry
        } else {
            &self.host
        }
    }
}

/// A bad host configuration: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsError {
    /// The file (or directory).
    pub path: PathBuf,
    /// The key, e.g. `host."https://m".capabilities`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl From<HostsError> for RegistryError {
    fn from(e: HostsError) -> Self {
        RegistryError::HostsConfig {
            path: e.path,
            key: e.key,
            reason: e.reason,
        }
    }
}

/// One registry's endpoints, or why they could not be read.
type Loaded = Result<Arc<Vec<Endpoint>>, HostsError>;

/// Per-registry endpoint lists read from a hosts directory, each read once.
#[derive(Debug)]
pub struct Hosts {
    dir: Option<PathBuf>,
    cache: Mutex<HashMap<String, Loaded>>,
}

impl Hosts {
    /// Reads from `dir` (`None`: every registry is just its server).
    pub fn new(dir: Option<PathBuf>) -> Hosts {
        Hosts {
            dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// All endpoints of `r`'s registry in order (mirrors, then the server).
    ///
    /// # Errors
    ///
    /// [`HostsError`] for an unreadable or malformed configuration.
    pub fn endpoints(
        &self,
        r: &Reference,
        plain_http_ok: &dyn Fn(&str) -> bool,
    ) -> Result<Arc<Vec<Endpoint>>, HostsError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = cache.get(&r.registry) {
            return hit.clone();
        }
        let got = self.load(r, plain_http_ok).map(Arc::new);
        if let Ok(eps) = &got {
            tracing::debug!(registry = %r.registry, endpoints = ?eps.iter().map(Endpoint::key).collect::<Vec<_>>(), "registry endpoints");
        }
        cache.insert(r.registry.clone(), got.clone());
        got
    }

    fn load(
        &self,
        r: &Reference,
        plain_http_ok: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Endpoint>, HostsError> {
        let Some(root) = &self.dir else {
            return Ok(vec![Endpoint::server(r, plain_http_ok)]);
        };
        for name in [r.registry.as_str(), DEFAULT_HOST_DIR_NAME] {
            let dir = root.join(name);
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => return load_dir(&dir, r, plain_http_ok),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(HostsError {
                        path: dir,
                        key: String::new(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(vec![Endpoint::server(r, plain_http_ok)])
    }
}

/// The endpoints a host directory gives: `hosts.toml`, else cert files.
fn load_dir(
    dir: &Path,
    r: &Reference,
    plain_http_ok: &dyn Fn(&str) -> bool,
) -> Result<Vec<Endpoint>, HostsError> {
    let file = dir.join("hosts.toml");
    let io_err = |path: &Path, e: std::io::Error| HostsError {
        path: path.to_path_buf(),
        key: String::new(),
        reason: e.to_string(),
    };
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => parse(&text, &file, dir, r, plain_http_ok),
        Ok(_) => cert_files(dir, r, plain_http_ok).map_err(|e| io_err(dir, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            cert_files(dir, r, plain_http_ok).map_err(|e| io_err(dir, e))
        }
        Err(e) => Err(io_err(&file, e)),
    }
}

/// Docker's certs.d layout: `*.crt` CAs, `*.cert` (+ `*.key`) client pairs.
fn cert_files(
    dir: &Path,
    r: &Reference,
    plain_http_ok: &dyn Fn(&str) -> bool,
) -> std::io::Result<Vec<Endpoint>> {
    let mut server = Endpoint::server(r, plain_http_ok);
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .map(|e| e.path())
        .collect();
    names.sort();
    for p in names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => server.tls.ca.push(p),
            Some("cert") => {
                let key = p.with_extension("key");
                let key = key.exists().then_some(key);
                server.tls.client.push((p, key));
            }
            _ => {}
        }
    }
    if !server.tls.is_default() {
        server.tls.source = Some(dir.to_path_buf());
    }
    Ok(vec![server])
}

const HOST_KEYS: &[&str] = &[
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "header",
    "override_path",
];

/// Parses `hosts.toml` text from `file` (relative paths resolve against
/// `dir`) into the endpoint list for `r`.
///
/// # Errors
///
/// [`HostsError`] naming `file` and the offending key.
pub fn parse(
    text: &str,
    file: &Path,
    dir: &Path,
    r: &Reference,
    plain_http_ok: &dyn Fn(&str) -> bool,
) -> Result<Vec<Endpoint>, HostsError> {
    let err = |key: &str, reason: String| HostsError {
        path: file.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        err(
            "",
            e.to_string().trim().replace('\n', " ").replace("  ", " "),
        )
    })?;
    for k in table.keys() {
        if !HOST_KEYS.contains(&k.as_str()) && k != "server" && k != "host" {
            tracing::debug!(file = %file.display(), key = %k, "ignoring unknown hosts.toml key");
        }
    }
    let mut out = Vec::new();
    if let Some(hosts) = table.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| err("host", "must be a table of URL → settings".into()))?;
        for url in host_order(text, hosts) {
            let key = format!("host.{url:?}");
            let settings = hosts[&url]
                .as_table()
                .ok_or_else(|| err(&key, "must be a table".into()))?;
            let ep = endpoint(
                Some(&url),
                settings,
                &key,
                true,
                file,
                dir,
                r,
                plain_http_ok,
            )?;
            out.push(ep);
        }
    }
    let server = match table.get("server") {
        None => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(v) => {
            return Err(err(
                "server",
                format!("must be a string, not {}", v.type_str()),
            ));
        }
    };
    out.push(endpoint(
        server.as_deref(),
        &table,
        "",
        false,
        file,
        dir,
        r,
        plain_http_ok,
    )?);
    Ok(out)
}

/// The `[host."…"]` keys in file order: table headers scanned from the
/// text (as containerd does); keys found only in the parsed table (inline
/// tables, unusual quoting) follow in sorted order.
fn host_order(text: &str, hosts: &Table) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if !line.starts_with('[') || line.starts_with("[[") {
            continue;
        }
        let parts = dotted_key(&line[1..]);
        if parts.len() >= 2
            && parts[0] == "host"
            && hosts.contains_key(&parts[1])
            && !order.contains(&parts[1])
        {
            order.push(parts[1].clone());
        }
    }
    for k in hosts.keys() {
        if !order.contains(k) {
            order.push(k.clone());
        }
    }
    order
}

/// The parts of a dotted TOML key up to `]`: bare, `"basic"` (with simple
/// escapes) or `'literal'`.
fn dotted_key(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ']' => break,
            '.' => parts.push(std::mem::take(&mut cur)),
            ' ' | '\t' => {}
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(e) = chars.next() {
                                cur.push(match e {
                                    'n' => '\n',
                                    't' => '\t',
                                    other => other,
                                });
                            }
                        }
                        c => cur.push(c),
                    }
                }
            }
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts
}

#[allow(clippy::too_many_arguments)]
fn endpoint(
    url: Option<&str>,
    settings: &Table,
    prefix: &str,
    mirror: bool,
    file: &Path,
    dir: &Path,
    r: &Reference,
    plain_http_ok: &dyn Fn(&str) -> bool,
) -> Result<Endpoint, HostsError> {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    let err = |k: &str, reason: String| HostsError {
        path: file.to_path_buf(),
        key: key(k),
        reason,
    };
    if mirror {
        for k in settings.keys() {
            if !HOST_KEYS.contains(&k.as_str()) {
                tracing::debug!(file = %file.display(), key = %key(k), "ignoring unknown hosts.toml key");
            }
        }
    }
    let override_path = match settings.get("override_path") {
        None => false,
        Some(Value::Boolean(b)) => *b,
        Some(v) => {
            return Err(err(
                "override_path",
                format!("must be a boolean, not {}", v.type_str()),
            ));
        }
    };
    let skip_verify = match settings.get("skip_verify") {
        None => false,
        Some(Value::Boolean(b)) => *b,
        Some(v) => {
            return Err(err(
                "skip_verify",
                format!("must be a boolean, not {}", v.type_str()),
            ));
        }
    };
    let capabilities = match settings.get("capabilities") {
        None => Capabilities::ALL,
        Some(Value::Array(a)) if !a.is_empty() => {
            let mut c = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
            for v in a {
                match v.as_str().map(str::to_ascii_lowercase).as_deref() {
                    Some("pull") => c.pull = true,
                    Some("resolve") => c.resolve = true,
                    Some("push") => c.push = true,
                    _ => {
                        return Err(err(
                            "capabilities",
                            format!(
                                "unknown capability {v} (want \"pull\", \"resolve\" or \"push\")"
                            ),
                        ));
                    }
                }
            }
            c
        }
        Some(Value::Array(_)) => Capabilities::ALL,
        Some(v) => {
            return Err(err(
                "capabilities",
                format!("must be a list of strings, not {}", v.type_str()),
            ));
        }
    };
    let abs = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let strings = |k: &str, v: &Value| -> Result<Vec<String>, HostsError> {
        match v {
            Value::String(s) => Ok(vec![s.clone()]),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(k, format!("{x} is not a string")))
                })
                .collect(),
            other => Err(err(
                k,
                format!(
                    "must be a string or a list of strings, not {}",
                    other.type_str()
                ),
            )),
        }
    };
    let ca = match settings.get("ca") {
        None => Vec::new(),
        Some(v) => strings("ca", v)?.iter().map(|s| abs(s)).collect(),
    };
    let mut client = Vec::new();
    match settings.get("client") {
        None => {}
        Some(Value::String(s)) => client.push((abs(s), None)),
        Some(Value::Array(a)) => {
            for item in a {
                match item {
                    Value::String(s) => client.push((abs(s), None)),
                    Value::Array(pair) => match pair.as_slice() {
                        [Value::String(c), Value::String(k)] => client.push((abs(c), Some(abs(k)))),
                        _ => {
                            return Err(err(
                                "client",
                                format!("{item} is not a [certificate, key] pair of strings"),
                            ));
                        }
                    },
                    other => {
                        return Err(err(
                            "client",
                            format!("{other} is not a file or a [certificate, key] pair"),
                        ));
                    }
                }
            }
        }
        Some(v) => {
            return Err(err(
                "client",
                format!("must be a string or a list, not {}", v.type_str()),
            ));
        }
    }
    let mut headers = Vec::new();
    match settings.get("header") {
        None => {}
        Some(Value::Table(t)) => {
            for (name, v) in t {
                let hk = format!("header.{name}");
                let hname = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| err(&hk, format!("not a header name: {e}")))?;
                for value in strings(&hk, v)? {
                    let hv = HeaderValue::from_str(&value)
                        .map_err(|e| err(&hk, format!("not a header value: {e}")))?;
                    headers.push((hname.clone(), hv));
                }
            }
        }
        Some(v) => {
            return Err(err(
                "header",
                format!("must be a table, not {}", v.type_str()),
            ));
        }
    }
    let (scheme, host, path) = match url {
        None => {
            // As containerd: the default server is always `/v2`.
            let s = Endpoint::server(r, plain_http_ok);
            (s.scheme, s.host, s.path)
        }
        Some(u) => {
            let url_key = if mirror {
                prefix.to_string()
            } else {
                "server".into()
            };
            let bad = |reason: String| HostsError {
                path: file.to_path_buf(),
                key: url_key.clone(),
                reason,
            };
            let (scheme, rest) = match u.split_once("://") {
                Some((s, rest)) => (Some(s.to_ascii_lowercase()), rest),
                None => (None, u),
            };
            let parsed = Url::parse(&format!(
                "{}://{rest}",
                scheme.as_deref().unwrap_or("https")
            ))
            .map_err(|e| bad(format!("{u:?} is not a URL: {e}")))?;
            let host = match (parsed.host_str(), parsed.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                (None, _) => return Err(bad(format!("{u:?} has no host"))),
            };
            let scheme = match scheme.as_deref() {
                Some("http") | Some("https") => scheme.unwrap_or_default(),
                Some(other) => return Err(bad(format!("scheme {other:?} (want http or https)"))),
                None if plain_http_ok(&host) => "http".into(),
                None => "https".into(),
            };
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(bad(format!("{u:?} has a query or fragment")));
            }
            let mut path = parsed.path().trim_end_matches('/').to_string();
            if !override_path && !path.ends_with("/v2") {
                path.push_str("/v2");
            }
            (scheme, host, path)
        }
    };
    let tls = Tls {
        skip_verify,
        ca,
        client,
        source: None,
    };
    let tls = if tls.is_default() {
        tls
    } else {
        Tls {
            source: Some(file.to_path_buf()),
            ..tls
        }
    };
    Ok(Endpoint {
        scheme,
        host,
        path,
        capabilities,
        tls,
        headers,
        mirror,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(h: &str) -> bool {
        h.starts_with("127.") || h.starts_with("localhost")
    }

    fn parse_for(reference: &str, text: &str) -> Result<Vec<Endpoint>, HostsError> {
        let r: Reference = reference.parse().unwrap();
        parse(
            text,
            Path::new("/etc/certs.d/x/hosts.toml"),
            Path::new("/etc/certs.d/x"),
            &r,
            &loopback,
        )
    }

    #[test]
    fn containerd_docs_example() {
        let eps = parse_for(
            "docker.io/library/busybox:1",
            r#"
server = "https://registry-1.docker.io"

[host."https://mirror.example:5000"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "ca.crt"
  client = [["/c.crt", "/c.key"], "/both.pem"]
  dial_timeout = "3s"
  [host."https://mirror.example:5000".header]
    x-custom = "v"
    x-multi = ["a", "b"]

[host."http://a-second.example/prefix"]
  capabilities = ["pull", "resolve"]
"#,
        )
        .unwrap();
        assert_eq!(eps.len(), 3);
        let m = &eps[0];
        assert_eq!(m.key(), "https://mirror.example:5000/v2");
        assert!(m.mirror);
        assert_eq!(
            m.capabilities,
            Capabilities {
                pull: true,
                resolve: false,
                push: false
            }
        );
        assert!(m.capabilities.allows(Need::Pull) && !m.capabilities.allows(Need::Resolve));
        assert!(m.tls.skip_verify);
        assert_eq!(m.tls.ca, vec![PathBuf::from("/etc/certs.d/x/ca.crt")]);
        assert_eq!(
            m.tls.client,
            vec![
                ("/c.crt".into(), Some("/c.key".into())),
                ("/both.pem".into(), None)
            ]
        );
        let hs: Vec<(String, String)> = m
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            hs,
            vec![
                ("x-custom".into(), "v".into()),
                ("x-multi".into(), "a".into()),
                ("x-multi".into(), "b".into())
            ]
        );
        assert_eq!(eps[1].key(), "http://a-second.example/prefix/v2");
        assert_eq!(
            eps[1].url("library/busybox", "manifests/1").as_str(),
            "http://a-second.example/prefix/v2/library/busybox/manifests/1"
        );
        let s = &eps[2];
        assert!(!s.mirror);
        assert_eq!(s.key(), "https://registry-1.docker.io/v2");
        assert_eq!(s.capabilities, Capabilities::ALL);
        assert!(s.tls.is_default());
    }

    #[test]
    fn order_is_file_order_not_sorted() {
        let eps = parse_for(
            "reg.example/a:1",
            r#"
[host."https://zz.example"]
[host."https://aa.example"]
  [host."https://aa.example".header]
  x = "1"
[host.'https://mm.example']
"#,
        )
        .unwrap();
        let keys: Vec<String> = eps.iter().map(Endpoint::key).collect();
        assert_eq!(
            keys,
            [
                "https://zz.example/v2",
                "https://aa.example/v2",
                "https://mm.example/v2",
                "https://reg.example/v2"
            ]
        );
    }

    #[test]
    fn server_defaults_to_the_registry() {
        let eps = parse_for("docker.io/library/busybox:1", "").unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].key(), "https://registry-1.docker.io/v2");
        let eps = parse_for("127.0.0.1:5000/t/img:1", "skip_verify = false\n").unwrap();
        assert_eq!(eps[0].key(), "http://127.0.0.1:5000/v2");
        // Top-level settings apply to the server.
        let eps = parse_for(
            "reg.example/a:1",
            "capabilities = [\"pull\"]\nca = [\"/a.crt\", \"b.crt\"]\n[header]\nx-a = \"1\"\n",
        )
        .unwrap();
        assert!(!eps[0].capabilities.resolve);
        assert_eq!(
            eps[0].tls.ca,
            vec![PathBuf::from("/a.crt"), "/etc/certs.d/x/b.crt".into()]
        );
        assert_eq!(eps[0].headers.len(), 1);
    }

    #[test]
    fn schemes_and_paths() {
        let eps = parse_for(
            "reg.example/a:1",
            r#"
server = "https://other.example:8443/v2/"
[host."mirror.example"]
[host."127.0.0.1:5000"]
[host."https://127.0.0.1:5001"]
[host."https://ovr.example/api/x"]
  override_path = true
[host."https://ovr2.example"]
  override_path = true
"#,
        )
        .unwrap();
        let keys: Vec<String> = eps.iter().map(Endpoint::key).collect();
        assert_eq!(
            keys,
            [
                "https://mirror.example/v2",
                "http://127.0.0.1:5000/v2",
                "https://127.0.0.1:5001/v2",
                "https://ovr.example/api/x",
                "https://ovr2.example",
                "https://other.example:8443/v2"
            ]
        );
        assert_eq!(
            eps[3].url("a", "blobs/sha256:00").as_str(),
            "https://ovr.example/api/x/a/blobs/sha256:00"
        );
        assert_eq!(
            eps[4].url("a", "manifests/1").as_str(),
            "https://ovr2.example/a/manifests/1"
        );
    }

    #[test]
    fn malformed_names_file_and_key() {
        let e = parse_for(
            "reg.example/a:1",
            "[host.\"https://m\"]\ncapabilities = [\"pul\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.path, Path::new("/etc/certs.d/x/hosts.toml"));
        assert_eq!(e.key, "host.\"https://m\".capabilities");
        assert!(e.reason.contains("unknown capability"), "{}", e.reason);
        let msg = RegistryError::from(e).to_string();
        assert!(
            msg.contains("/etc/certs.d/x/hosts.toml") && msg.contains("capabilities"),
            "{msg}"
        );

        let e = parse_for("reg.example/a:1", "skip_verify = \"yes\"\n").unwrap_err();
        assert_eq!(e.key, "skip_verify");
        let e = parse_for("reg.example/a:1", "server = 5\n").unwrap_err();
        assert_eq!(e.key, "server");
        let e = parse_for("reg.example/a:1", "[host.\"ftp://m\"]\n").unwrap_err();
        assert_eq!(e.key, "host.\"ftp://m\"");
        let e = parse_for(
            "reg.example/a:1",
            "[host.\"https://m\".header]\n\"bad name\" = \"v\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "host.\"https://m\".header.bad name");
        let e = parse_for("reg.example/a:1", "server = \"https://x\n").unwrap_err();
        assert_eq!(e.key, "");
        assert!(!e.reason.is_empty());
        let e = parse_for(
            "reg.example/a:1",
            "[host.\"https://m\"]\nclient = [[\"a\"]]\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "host.\"https://m\".client");
    }

    #[test]
    fn directory_lookup_and_default_fallback() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path();
        std::fs::create_dir_all(d.join("docker.io")).unwrap();
        std::fs::write(
            d.join("docker.io/hosts.toml"),
            "[host.\"https://hub-mirror.example\"]\n",
        )
        .unwrap();
        std::fs::create_dir_all(d.join("reg.example:5000")).unwrap();
        std::fs::write(
            d.join("reg.example:5000/hosts.toml"),
            "[host.\"http://10.0.0.1:65001\"]\ncapabilities = [\"pull\"]\n",
        )
        .unwrap();
        std::fs::create_dir_all(d.join("certs.example")).unwrap();
        std::fs::write(d.join("certs.example/ca.crt"), "x").unwrap();
        std::fs::write(d.join("certs.example/me.cert"), "x").unwrap();
        std::fs::write(d.join("certs.example/me.key"), "x").unwrap();
        let hosts = Hosts::new(Some(d.to_path_buf()));
        let keys = |r: &str| -> Vec<String> {
            let r: Reference = r.parse().unwrap();
            hosts
                .endpoints(&r, &loopback)
                .unwrap()
                .iter()
                .map(Endpoint::key)
                .collect()
        };
        assert_eq!(
            keys("busybox"),
            [
                "https://hub-mirror.example/v2",
                "https://registry-1.docker.io/v2"
            ]
        );
        assert_eq!(
            keys("reg.example:5000/a:1"),
            ["http://10.0.0.1:65001/v2", "https://reg.example:5000/v2"]
        );
        assert_eq!(
            keys("elsewhere.example/a:1"),
            ["https://elsewhere.example/v2"]
        );
        let r: Reference = "certs.example/a:1".parse().unwrap();
        let eps = hosts.endpoints(&r, &loopback).unwrap();
        assert_eq!(eps[0].tls.ca, vec![d.join("certs.example/ca.crt")]);
        assert_eq!(
            eps[0].tls.client,
            vec![(
                d.join("certs.example/me.cert"),
                Some(d.join("certs.example/me.key"))
            )]
        );

        // _default applies to registries without their own directory.
        std::fs::create_dir_all(d.join("_default")).unwrap();
        std::fs::write(
            d.join("_default/hosts.toml"),
            "[host.\"http://127.0.0.1:4001\"]\n",
        )
        .unwrap();
        let hosts = Hosts::new(Some(d.to_path_buf()));
        let r: Reference = "elsewhere.example/a:1".parse().unwrap();
        let keys: Vec<String> = hosts
            .endpoints(&r, &loopback)
            .unwrap()
            .iter()
            .map(Endpoint::key)
            .collect();
        assert_eq!(
            keys,
            ["http://127.0.0.1:4001/v2", "https://elsewhere.example/v2"]
        );

        // A malformed file is an error every time, not a panic.
        std::fs::write(d.join("docker.io/hosts.toml"), "server = [").unwrap();
        let hosts = Hosts::new(Some(d.to_path_buf()));
        let r: Reference = "busybox".parse().unwrap();
        for _ in 0..2 {
            let e = hosts.endpoints(&r, &loopback).unwrap_err();
            assert_eq!(e.path, d.join("docker.io/hosts.toml"));
        }
        // No directory configured: just the server.
        let none = Hosts::new(None);
        assert_eq!(
            none.endpoints(&r, &loopback).unwrap()[0].key(),
            "https://registry-1.docker.io/v2"
        );
    }
}
