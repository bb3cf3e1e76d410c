//! Registry authentication: `WWW-Authenticate` challenges, Bearer token
//! responses and the per-(host, scope) token cache. The HTTP exchange itself
//! lives in `transport.rs`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// Token responses larger than this are refused.
pub const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// Lifetime of a token whose response has no `expires_in`.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// One parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm=…,service=…,scope=…`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter, if given.
        service: Option<String>,
        /// Scopes asked for (the `scope` param split on spaces).
        scopes: Vec<String>,
    },
    /// `Basic realm=…`.
    Basic,
}

/// Parses a `WWW-Authenticate` value (possibly several challenges) and
/// returns the challenges lazysnap understands, Bearer first.
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    for (scheme, params) in split_challenges(value) {
        let get = |k: &str| {
            params
                .iter()
                .find(|(pk, _)| pk.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        if scheme.eq_ignore_ascii_case("bearer") {
            if let Some(realm) = get("realm") {
                out.push(Challenge::Bearer {
                    realm,
                    service: get("service"),
                    scopes: get("scope")
                        .map(|s| s.split_whitespace().map(str::to_string).collect())
                        .unwrap_or_default(),
                });
            }
        } else if scheme.eq_ignore_ascii_case("basic") {
            out.push(Challenge::Basic);
        }
    }
    out.sort_by_key(|c| matches!(c, Challenge::Basic));
    out
}

/// Splits RFC 9110 §11.6.1 challenges: `scheme param=value, param="quoted", scheme2 …`.
fn split_challenges(value: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let b = value.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> String {
        let s = *i;
        while *i < b.len() && !matches!(b[*i], b' ' | b'\t' | b',' | b'=') {
            *i += 1;
        }
        value[s..*i].to_string()
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let word = token(&mut i);
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' && !out.is_empty() {
            // auth-param of the current challenge
            i = j + 1;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            let val = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    let ch = value[i..].chars().next().unwrap_or('\u{fffd}');
                    v.push(ch);
                    i += ch.len_utf8();
                }
                i += 1; // closing quote
                v
            } else {
                token(&mut i)
            };
            if let Some(last) = out.last_mut() {
                last.1.push((word, val));
            }
        } else {
            out.push((word, Vec::new()));
        }
    }
    out
}

/// A Bearer token endpoint's JSON answer.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
    issued_at: Option<String>,
}

impl TokenResponse {
    /// The token (`token`, else `access_token`) and how long it stays valid
    /// from now, or `None` when neither field is present and non-empty.
    pub fn token_and_lifetime(&self, now: SystemTime) -> Option<(String, Duration)> {
        let token = self
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .or_else(|| self.access_token.clone().filter(|t| !t.is_empty()))?;
        let lifetime = self
            .expires_in
            .filter(|&s| s > 0)
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        // Expiry counts from issued_at when it is sane (in the past, within the lifetime).
        let elapsed = self
            .issued_at
            .as_deref()
            .and_then(parse_rfc3339)
            .and_then(|issued| now.duration_since(issued).ok())
            .unwrap_or_default();
        Some((token, lifetime.saturating_sub(elapsed)))
    }
}

/// Parses an RFC 3339 timestamp (`2024-01-02T03:04:05.123Z`, `+01:00`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (secs, nanos) = crate::oci::rfc3339::parse(s).ok()?;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::new(s, nanos))
}

/// Bearer tokens per (API host, scope), valid until their expiry.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl TokenCache {
    /// The unexpired token for `(host, scope)`.
    pub fn get(&self, host: &str, scope: &str) -> Option<String> {
        let mut map = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let key = (host.to_string(), scope.to_string());
        match map.get(&key) {
            Some((t, exp)) if Instant::now() < *exp => Some(t.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Stores a token valid for `lifetime` from now.
    pub fn put(&self, host: &str, scope: &str, token: String, lifetime: Duration) {
        let mut map = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            (host.to_string(), scope.to_string()),
            (token, Instant::now() + lifetime),
        );
    }

    /// Forgets the token for `(host, scope)`.
    pub fn remove(&self, host: &str, scope: &str) {
        let mut map = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&(host.to_string(), scope.to_string()));
    }
}

/// The pull scope of a repository.
pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// The push scope of a repository: `repository:<repository>:pull,push`
/// (FORMATS.md §6.4, §6.6; a push also reads, e.g. `HEAD` before upload).
pub fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// The scopes a push to `repository` asks for in one token request: its
/// [`push_scope`], plus the [`pull_scope`] of `mount_from` for a
/// cross-repository mount (FORMATS.md §6.4), as Docker does.
pub fn push_scopes(repository: &str, mount_from: Option<&str>) -> Vec<String> {
    let mut v = vec![push_scope(repository)];
    if let Some(from) = mount_from
        && from != repository
    {
        v.push(pull_scope(from));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_params() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scopes: vec!["repository:library/busybox:pull".into()],
            }]
        );
    }

    #[test]
    fn challenge_variants() {
        // Spaces, escapes, unquoted values, several scopes, error param.
        let c = parse_challenges(
            r#"bearer  realm = "http://127.0.0.1:1/t?x=\"y\"" , scope="a:b:pull b:c:pull,push", error=insufficient_scope"#,
        );
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: r#"http://127.0.0.1:1/t?x="y""#.into(),
                service: None,
                scopes: vec!["a:b:pull".into(), "b:c:pull,push".into()],
            }]
        );
        assert_eq!(
            parse_challenges(r#"Basic realm="Registry""#),
            vec![Challenge::Basic]
        );
        // Several challenges in one header: Bearer is preferred.
        let c = parse_challenges(r#"Basic realm="x", Bearer realm="https://a/t",service=s"#);
        assert_eq!(c.len(), 2);
        assert!(
            matches!(&c[0], Challenge::Bearer { realm, service: Some(s), .. } if realm == "https://a/t" && s == "s")
        );
        assert_eq!(c[1], Challenge::Basic);
        // Bearer without realm and unknown schemes are dropped.
        assert!(parse_challenges(r#"Bearer service="x""#).is_empty());
        assert!(parse_challenges("Negotiate abc").is_empty());
        assert!(parse_challenges("").is_empty());
    }

    #[test]
    fn token_response_fields() {
        let now = SystemTime::now();
        let r: TokenResponse = serde_json::from_str(r#"{"token":"t1"}"#).unwrap();
        assert_eq!(
            r.token_and_lifetime(now),
            Some(("t1".into(), Duration::from_secs(60)))
        );
        let r: TokenResponse =
            serde_json::from_str(r#"{"access_token":"t2","expires_in":300}"#).unwrap();
        assert_eq!(
            r.token_and_lifetime(now),
            Some(("t2".into(), Duration::from_secs(300)))
        );
        let r: TokenResponse = serde_json::from_str(
            r#"{"token":"t3","expires_in":300,"issued_at":"2024-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let at = parse_rfc3339("2024-01-01T00:01:40Z").unwrap();
        assert_eq!(
            r.token_and_lifetime(at),
            Some(("t3".into(), Duration::from_secs(200)))
        );
        let r: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(r.token_and_lifetime(now), None);
    }

    #[test]
    fn rfc3339() {
        let t = |s| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(t("2024-01-01T00:00:00Z"), Some(1_704_067_200));
        assert_eq!(t("2024-03-01T12:30:15.123456789Z"), Some(1_709_296_215));
        assert_eq!(t("2024-01-01T01:00:00+01:00"), Some(1_704_067_200));
        assert_eq!(t("2024-01-01"), None);
        assert_eq!(t("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn push_scopes_add_the_mount_source() {
        assert_eq!(push_scope("a/b"), "repository:a/b:pull,push");
        assert_eq!(push_scopes("a/b", None), vec!["repository:a/b:pull,push"]);
        assert_eq!(
            push_scopes("a/b", Some("c")),
            vec!["repository:a/b:pull,push", "repository:c:pull"]
        );
        assert_eq!(
            push_scopes("a/b", Some("a/b")),
            vec!["repository:a/b:pull,push"]
        );
    }

    #[test]
    fn cache_expires() {
        let c = TokenCache::default();
        c.put("h", "s", "t".into(), Duration::from_secs(60));
        assert_eq!(c.get("h", "s").as_deref(), Some("t"));
        assert_eq!(c.get("h", "other"), None);
        c.put("h", "s", "t".into(), Duration::ZERO);
        assert_eq!(c.get("h", "s"), None);
    }
}
