//! Pushing to a registry (FORMATS.md §6.4): blob existence checks,
//! cross-repository mounts, monolithic and chunked blob uploads, manifest
//! PUTs. Every request goes through the shared
//! [`Transport`](super::transport::Transport) (auth
//! challenges, token cache, redirects) with the push scopes
//! ([`push_scopes`]); the endpoint is the first of the registry's hosts with
//! the `push` capability (containerd `hosts.toml` semantics: mirrors listed
//! with `push` come before the server, and only the first one is used).
//!
//! An upload that fails is never resumed blindly mid-stream: a retryable
//! failure ([`RegistryError::is_unavailable`]) cancels the session
//! (`DELETE <location>`) and starts a new one with a new `POST`, within the
//! client's retry budget.

use std::path::Path;

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use crate::oci::Digest;

use super::auth::push_scopes;
use super::client::{RegistryClient, manifest_target};
use super::error::{RegistryError, Target};
use super::hosts::{Endpoint, Need};
use super::reference::Reference;
use super::transport::{check_status, content_length, redact};
use super::upload::{Pusher, Source, upload_once};

/// Blobs up to this many bytes are uploaded with one `PUT` (16 MiB).
pub const DEFAULT_MONOLITHIC_LIMIT: u64 = 16 << 20;
/// Bytes per `PATCH` of a chunked upload (8 MiB), unless the registry's
/// `OCI-Chunk-Min-Length` asks for more.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;

/// How blobs are uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushOptions {
    /// Blobs of at most this many bytes go in one `PUT <location>?digest=`;
    /// larger ones are sent in `PATCH` chunks.
    pub monolithic_limit: u64,
    /// Bytes per `PATCH` (at least 1; raised to `OCI-Chunk-Min-Length`).
    pub chunk_size: u64,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            monolithic_limit: DEFAULT_MONOLITHIC_LIMIT,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

impl RegistryClient {
    /// The first endpoint with the `push` capability.
    fn push_endpoint(&self, r: &Reference) -> Result<Endpoint, RegistryError> {
        let mut eps = self.t().endpoints(r, Need::Push)?;
        Ok(eps.swap_remove(0))
    }

    fn pusher<'a>(
        &'a self,
        r: &'a Reference,
        target: Target,
        mount_from: Option<&str>,
    ) -> Result<Pusher<'a>, RegistryError> {
        Ok(Pusher {
            client: self,
            r,
            ep: self.push_endpoint(r)?,
            target,
            scopes: push_scopes(&r.repository, mount_from),
        })
    }

    /// `HEAD /v2/<name>/blobs/<digest>` at the push endpoint (with push
    /// scope, so one token serves the whole push): `Some(size in bytes)`
    /// when the registry has the blob, `None` on 404.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NoSize`] for a 2xx without `Content-Length`,
    /// status, network and auth errors after retries.
    pub async fn blob_exists(
        &self,
        r: &Reference,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let p = self.pusher(r, upload_target(r, digest), None)?;
        let p = &p;
        self.t()
            .retrying(&p.target, || async move {
                let url = p.ep.url(&r.repository, &format!("blobs/{digest}"));
                let (resp, url) = p.send(Method::HEAD, url, HeaderMap::new(), None).await?;
                if resp.status() == StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                let resp = check_status(&p.target, &url, resp).await?;
                content_length(resp.headers())
                    .map(Some)
                    .ok_or_else(|| RegistryError::NoSize {
                        target: Box::new(p.target.clone()),
                        reason: format!(
                            "HTTP {} to HEAD without Content-Length",
                            resp.status().as_u16()
                        ),
                    })
            })
            .await
    }

    /// Cross-repository mount (end-11): `POST
    /// /v2/<name>/blobs/uploads/?mount=<digest>&from=<from_repository>`,
    /// with one token for `repository:<name>:pull,push` and
    /// `repository:<from>:pull`. `true` when mounted (201); `false` when the
    /// registry started an upload instead (202; that session is cancelled).
    ///
    /// # Errors
    ///
    /// Status (e.g. 404 `NAME_UNKNOWN`), network and auth errors after
    /// retries; [`RegistryError::Upload`] for another 2xx.
    pub async fn mount_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        from_repository: &str,
    ) -> Result<bool, RegistryError> {
        let p = self.pusher(r, upload_target(r, digest), Some(from_repository))?;
        let p = &p;
        self.t()
            .retrying(&p.target, || async move {
                let mut url = p.ep.url(&r.repository, "blobs/uploads/");
                url.query_pairs_mut()
                    .append_pair("mount", &digest.as_str())
                    .append_pair("from", from_repository);
                let (resp, url) = p.send(Method::POST, url, HeaderMap::new(), Some(Bytes::new())).await?;
                let resp = check_status(&p.target, &url, resp).await?;
                match resp.status() {
                    StatusCode::CREATED => {
                        tracing::debug!(target = %p.target, from = from_repository, "blob mounted");
                        Ok(true)
                    }
                    StatusCode::ACCEPTED => {
                        let session = p.location(&url, &resp)?;
                        tracing::debug!(target = %p.target, from = from_repository, "mount refused; registry started an upload");
                        p.cancel(&session).await;
                        Ok(false)
                    }
                    _ => Err(p.protocol(format!(
                        "mount POST {} answered HTTP {}, want 201 or 202",
                        redact(&url),
                        resp.status().as_u16()
                    ))),
                }
            })
            .await
    }

    /// Uploads the `size`-byte file at `path` as blob `digest` with
    /// [`PushOptions::default`]; see [`Self::push_blob_file_with`].
    ///
    /// # Errors
    ///
    /// As [`Self::push_blob_file_with`].
    pub async fn push_blob_file(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        self.push_blob_file_with(r, digest, size, path, &PushOptions::default(), progress)
            .await
    }

    /// Uploads the `size`-byte file at `path` as blob `digest`: `POST
    /// /v2/<name>/blobs/uploads/` (end-4a), then one `PUT
    /// <location>?digest=` with the body when `size <=
    /// opts.monolithic_limit` (end-6), else `PATCH <location>` chunks with
    /// `Content-Range: <start>-<end>` (inclusive, end-5), following each new
    /// `Location`, and an empty `PUT <location>?digest=` to close. The bytes
    /// are hashed on the way and must match `digest` before the closing
    /// `PUT`; the registry's `Docker-Content-Digest` must match too.
    /// `progress` gets the bytes the registry has acknowledged so far (it
    /// starts again from 0 when the upload is restarted).
    ///
    /// # Errors
    ///
    /// [`RegistryError::File`] (open/read), [`RegistryError::SizeMismatch`]
    /// (file length is not `size`), [`RegistryError::DigestMismatch`]
    /// (content, or the registry's answer), [`RegistryError::Upload`]
    /// (protocol violations), status/network/auth errors after retries.
    pub async fn push_blob_file_with(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
        opts: &PushOptions,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        self.push_blob(r, digest, size, Source::File(path), opts, progress)
            .await
    }

    /// Uploads `bytes` as blob `digest` (monolithic up to
    /// [`DEFAULT_MONOLITHIC_LIMIT`], else chunked), checking the digest
    /// before any request.
    ///
    /// # Errors
    ///
    /// As [`Self::push_blob_file_with`], without file errors.
    pub async fn push_blob_bytes(
        &self,
        r: &Reference,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        let size = bytes.len() as u64;
        self.push_blob(
            r,
            digest,
            size,
            Source::Mem(bytes),
            &PushOptions::default(),
            &|_| {},
        )
        .await
    }

    async fn push_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        source: Source<'_>,
        opts: &PushOptions,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let p = self.pusher(r, upload_target(r, digest), None)?;
        let p = &p;
        let source = &source;
        self.t()
            .retrying(&p.target, || async move {
                upload_once(p, digest, size, source, opts, progress).await
            })
            .await
    }

    /// `PUT /v2/<name>/manifests/<ref>` (end-7a) with `Content-Type:
    /// media_type`, where `<ref>` is `r`'s tag if it has one, else its
    /// digest. When `r` names a digest, `bytes` must hash to it. Returns the
    /// digest of `bytes`, checked against the registry's
    /// `Docker-Content-Digest` when given.
    ///
    /// # Errors
    ///
    /// [`RegistryError::DigestMismatch`], [`RegistryError::Upload`] (bad
    /// media type, unexpected 2xx), status (e.g. 400 `MANIFEST_INVALID`,
    /// `MANIFEST_BLOB_UNKNOWN`; 413), network and auth errors after retries.
    pub async fn put_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let reference = r.tag.clone().unwrap_or_else(|| r.manifest_reference());
        let target = manifest_target(r, &reference);
        let digest = Digest::sha256_of(bytes);
        if let Some(want) = &r.digest
            && *want != digest
        {
            return Err(RegistryError::DigestMismatch {
                target: Box::new(target),
                expected: want.clone(),
                actual: digest,
            });
        }
        let p = self.pusher(r, target, None)?;
        let content_type = HeaderValue::from_str(media_type)
            .map_err(|_| p.protocol(format!("media type {media_type:?} is not a header value")))?;
        let body = Bytes::copy_from_slice(bytes);
        let (p, digest, reference) = (&p, &digest, &reference);
        self.t()
            .retrying(&p.target, || {
                let mut headers = HeaderMap::new();
                headers.insert(CONTENT_TYPE, content_type.clone());
                let body = body.clone();
                async move {
                    let url = p.ep.url(&r.repository, &format!("manifests/{reference}"));
                    let (resp, url) = p.send(Method::PUT, url, headers, Some(body)).await?;
                    let resp = check_status(&p.target, &url, resp).await?;
                    p.expect("manifest PUT", &url, &resp, 201)?;
                    p.check_digest(&resp, digest)?;
                    Ok(digest.clone())
                }
            })
            .await
    }
}

fn upload_target(r: &Reference, digest: &Digest) -> Target {
    Target::Upload {
        registry: r.registry.clone(),
        repository: r.repository.clone(),
        digest: digest.clone(),
    }
}
