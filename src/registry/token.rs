//! Fetching Bearer tokens from a challenge's realm (Docker token auth,
//! FORMATS.md §6.6): the OAuth2 POST with an identity token, else the GET.

use std::time::{Duration, SystemTime};

use reqwest::header::AUTHORIZATION;
use reqwest::{Response, Url};

use super::auth::{MAX_TOKEN_BYTES, TokenResponse};
use super::credentials::Credential;
use super::error::{RegistryError, Target};
use super::hosts::Endpoint;
use super::transport::{Transport, check_status, network, read_limited};

const CLIENT_ID: &str = "lazysnap";

impl Transport {
    /// Fetches a Bearer token: the OAuth2 POST with an identity token (falling
    /// back like containerd), else `GET realm?service=&scope=…` with Basic
    /// credentials when there are any.
    pub(super) async fn fetch_token(
        &self,
        cred_host: &str,
        http: &reqwest::Client,
        endpoint: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<(String, Duration), RegistryError> {
        let target = Target::Token {
            realm: realm.to_string(),
        };
        let bad = |reason: String| RegistryError::Token {
            target: Box::new(target.clone()),
            reason,
        };
        let mut url = Url::parse(realm).map_err(|e| bad(format!("realm is not a URL: {e}")))?;
        let host_port = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_string(),
        };
        let plain_endpoint = endpoint.scheme == "http" && endpoint.host == host_port;
        if url.scheme() != "https"
            && !(url.scheme() == "http" && (plain_endpoint || self.plain_http_allowed(&host_port)))
        {
            return Err(bad(
                "realm must be https (or http on loopback/insecure hosts)".into(),
            ));
        }
        let cred = self.creds.get(cred_host).await?;
        if let Some(Credential::IdentityToken { token, .. }) = &cred {
            let mut form = vec![
                ("grant_type", "refresh_token".to_string()),
                ("refresh_token", token.clone()),
                ("client_id", CLIENT_ID.to_string()),
                ("scope", scopes.join(" ")),
            ];
            if let Some(s) = service {
                form.push(("service", s.to_string()));
            }
            let resp = http
                .post(url.clone())
                .form(&form)
                .send()
                .await
                .map_err(|e| network(&target, &url, e))?;
            match resp.status().as_u16() {
                400 | 401 | 404 | 405 => {
                    tracing::debug!(
                        realm,
                        status = resp.status().as_u16(),
                        "token POST refused; trying GET"
                    );
                }
                _ => return self.read_token(&target, &url, resp).await,
            }
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let mut req = http.get(url.clone());
        if let Some(c) = &cred {
            req = req.header(AUTHORIZATION, c.basic_header());
        }
        let resp = req.send().await.map_err(|e| network(&target, &url, e))?;
        self.read_token(&target, &url, resp).await
    }

    async fn read_token(
        &self,
        target: &Target,
        url: &Url,
        resp: Response,
    ) -> Result<(String, Duration), RegistryError> {
        let resp = check_status(target, url, resp).await.map_err(|e| match e {
            RegistryError::Status { status, detail, .. } if status < 500 && status != 429 => {
                RegistryError::Token {
                    target: Box::new(target.clone()),
                    reason: format!(
                        "HTTP {status}{}",
                        if detail.is_empty() {
                            String::new()
                        } else {
                            format!(": {detail}")
                        }
                    ),
                }
            }
            other => other,
        })?;
        let body = read_limited(target, url, resp, MAX_TOKEN_BYTES, |size| {
            RegistryError::Token {
                target: Box::new(target.clone()),
                reason: format!(
                    "response of {size} bytes exceeds the {MAX_TOKEN_BYTES}-byte limit"
                ),
            }
        })
        .await?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Token {
                target: Box::new(target.clone()),
                reason: format!("bad JSON: {e}"),
            })?;
        parsed
            .token_and_lifetime(SystemTime::now())
            .ok_or_else(|| RegistryError::Token {
                target: Box::new(target.clone()),
                reason: "response has neither token nor access_token".into(),
            })
    }
}
