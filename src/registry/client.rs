//! [`RegistryClient`]: resolving manifests and reading blobs, whole or by
//! range, over the shared [`Transport`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{
    ACCEPT, ACCEPT_ENCODING, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, HeaderValue, RANGE,
};
use reqwest::{Method, Response, StatusCode, Url};

use crate::oci::Digest;

use super::credentials::Credentials;
use super::error::{RegistryError, Target};
use super::hosts::{DEFAULT_HOSTS_DIR, Endpoint, Need};
use super::manifest::{self, Kind, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use super::range::{ByteRange, parse_content_range};
use super::reference::{Platform, Reference};
use super::transport::{
    Call, Transport, check_status, content_length, http_builder, network, read_limited, redact,
};

/// How a [`RegistryClient`] connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Registries (`host` or `host:port`) reached over plain http; loopback always is.
    pub insecure_hosts: Vec<String>,
    /// docker `config.json` for credentials; default `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// Connect timeout, and the longest wait for the next bytes of a response.
    pub timeout: Duration,
    /// Retries of network errors, 5xx, 429 and truncated bodies (per endpoint).
    pub retries: u32,
    /// containerd registry host configuration (`<dir>/<host[:port]>/hosts.toml`,
    /// else `<dir>/_default/hosts.toml`): mirrors tried before the registry,
    /// TLS settings, headers. Default `/etc/containerd/certs.d`; `None` = none.
    pub hosts_dir: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_hosts: Vec::new(),
            docker_config: None,
            timeout: Duration::from_secs(30),
            retries: 4,
            hosts_dir: Some(PathBuf::from(DEFAULT_HOSTS_DIR)),
        }
    }
}

/// A resolved image manifest.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Digest of `bytes`.
    pub digest: Digest,
    /// Media type (OCI or Docker schema2 manifest).
    pub media_type: String,
    /// The manifest as served.
    pub bytes: Vec<u8>,
    /// The parsed manifest.
    pub manifest: oci_spec::image::ImageManifest,
    /// The index (or manifest list) it was picked from, if any.
    pub index: Option<Digest>,
    /// That index's exact bytes and media type (verified against `index`),
    /// so that a pull can store the index itself.
    pub index_bytes: Option<(String, Vec<u8>)>,
}

/// A manifest or index exactly as the registry served it.
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// Media type (from Content-Type, or the document's `mediaType`).
    pub media_type: String,
    /// Whether it is an index / manifest list (else an image manifest).
    pub is_index: bool,
    /// The exact bytes.
    pub bytes: Vec<u8>,
    /// Their digest.
    pub digest: Digest,
}

/// (registry, repository, digest): what per-blob memory is keyed by. For
/// redirect targets the first part is the endpoint's key instead.
type BlobKey = (String, String, Digest);

/// A registry client; cheap to clone, clones share connections, tokens and
/// per-blob memory.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: Transport,
    /// Where a blob's GET was redirected to, for range reads.
    redirects: Mutex<HashMap<BlobKey, Url>>,
    /// Blobs whose server answered a Range with the whole body.
    ignores_range: Mutex<HashSet<BlobKey>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RegistryClient {
    /// A client with its own connection pool.
    ///
    /// # Errors
    ///
    /// [`RegistryError::ClientBuild`] when the TLS setup fails.
    pub fn new(opts: ClientOptions) -> Result<Self, RegistryError> {
        let http = http_builder(opts.timeout)
            .build()
            .map_err(RegistryError::ClientBuild)?;
        let transport = Transport::new(
            http,
            opts.insecure_hosts,
            opts.retries,
            Credentials::new(opts.docker_config),
        )
        .with_hosts(opts.hosts_dir, opts.timeout);
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                transport,
                redirects: Mutex::new(HashMap::new()),
                ignores_range: Mutex::new(HashSet::new()),
            }),
        })
    }

    pub(super) fn t(&self) -> &Transport {
        &self.inner.transport
    }

    /// Runs `op` (with retries) against each endpoint of `r`'s registry that
    /// may serve `need`, in order, going on to the next one when an endpoint
    /// is unavailable after retries, or a mirror has not got the content
    /// (404, wrong digest). Endpoints that were unavailable in the last
    /// [`super::transport::ENDPOINT_COOLDOWN`] are passed over while a later
    /// one remains.
    pub(super) async fn across<T, F, Fut>(
        &self,
        r: &Reference,
        need: Need,
        target: &Target,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let eps = self.t().endpoints(r, need)?;
        let last = eps.len() - 1;
        let mut skipped_down = false;
        for (i, ep) in eps.into_iter().enumerate() {
            if i < last && self.t().is_down(&ep) {
                skipped_down = true;
                continue;
            }
            let ep = Arc::new(ep);
            match self.t().retrying(target, || op(ep.clone())).await {
                Ok(v) => {
                    self.t().mark_down(&ep, false);
                    return Ok(v);
                }
                Err(e) if i < last && fall_through(&e, &ep) => {
                    if e.is_unavailable() {
                        self.t().mark_down(&ep, true);
                    }
                    tracing::warn!(%target, endpoint = %ep.key(), error = %e, "trying the next registry host");
                }
                Err(e) => {
                    if e.is_unavailable() && skipped_down {
                        tracing::debug!(%target, "last host failed too; hosts passed over as down may be retried next time");
                    }
                    return Err(e);
                }
            }
        }
        unreachable!("the last endpoint always returns")
    }

    /// Resolves a tag or digest to the image manifest for `platform`,
    /// following an index (skipping attestation and `unknown/unknown`
    /// entries). Verifies the bytes when `r` names a digest; the result's
    /// digest is always that of the manifest bytes.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotFound`], [`RegistryError::DigestMismatch`],
    /// [`RegistryError::NoMatchingPlatform`], media type and parse errors,
    /// and network/auth errors after retries.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future only abandons the requests.
    pub async fn resolve(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<Resolved, RegistryError> {
        let reference = r.manifest_reference();
        let target = manifest_target(r, &reference);
        let (media_type, kind, bytes) = self.get_manifest(r, &reference, &target).await?;
        let digest = Digest::sha256_of(&bytes);
        if let Some(want) = &r.digest
            && *want != digest
        {
            return Err(RegistryError::DigestMismatch {
                target: Box::new(target),
                expected: want.clone(),
                actual: digest,
            });
        }
        match kind {
            Kind::Image => Ok(Resolved {
                manifest: manifest::parse_image(&target, &bytes)?,
                digest,
                media_type,
                bytes,
                index: None,
                index_bytes: None,
            }),
            Kind::Index => {
                let selected = manifest::select_platform(&target, &digest, &bytes, platform)?;
                tracing::debug!(%r, %platform, index = %digest, manifest = %selected.digest, "picked from index");
                let mut resolved = self.fetch_manifest(r, &selected.digest).await?;
                resolved.index = Some(digest);
                resolved.index_bytes = Some((media_type, bytes));
                Ok(resolved)
            }
        }
    }

    /// The image manifest with this digest, verified.
    ///
    /// # Errors
    ///
    /// As [`Self::resolve`]; [`RegistryError::UnsupportedMediaType`] when the
    /// digest names an index.
    pub async fn fetch_manifest(
        &self,
        r: &Reference,
        digest: &Digest,
    ) -> Result<Resolved, RegistryError> {
        let target = manifest_target(r, &digest.as_str());
        let (media_type, kind, bytes) = self.get_manifest(r, &digest.as_str(), &target).await?;
        let actual = Digest::sha256_of(&bytes);
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                target: Box::new(target),
                expected: digest.clone(),
                actual,
            });
        }
        if kind != Kind::Image {
            return Err(RegistryError::UnsupportedMediaType {
                target: Box::new(target),
                media_type,
            });
        }
        Ok(Resolved {
            manifest: manifest::parse_image(&target, &bytes)?,
            digest: actual,
            media_type,
            bytes,
            index: None,
            index_bytes: None,
        })
    }

    /// The manifest or index `reference` (a tag or a digest) names, as served: media type,
    /// exact bytes and their digest, checked against the digest when one is given
    /// (`r.digest` or a digest `reference`). An index is returned as is, not resolved to a
    /// platform (for tools that rewrite every platform, such as `lazysnap convert`).
    ///
    /// # Errors
    /// As [`Self::resolve`].
    pub async fn fetch_raw_manifest(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<RawManifest, RegistryError> {
        let target = manifest_target(r, reference);
        let (media_type, kind, bytes) = self.get_manifest(r, reference, &target).await?;
        let digest = Digest::sha256_of(&bytes);
        let want = reference
            .parse::<Digest>()
            .ok()
            .or_else(|| r.digest.clone());
        if let Some(want) = want
            && want != digest
        {
            return Err(RegistryError::DigestMismatch {
                target: Box::new(target),
                expected: want,
                actual: digest,
            });
        }
        Ok(RawManifest {
            is_index: kind == Kind::Index,
            media_type,
            bytes,
            digest,
        })
    }

    async fn get_manifest(
        &self,
        r: &Reference,
        reference: &str,
        target: &Target,
    ) -> Result<(String, Kind, Vec<u8>), RegistryError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let need = if reference.parse::<Digest>().is_ok() {
            Need::Pull
        } else {
            Need::Resolve
        };
        let headers = &headers;
        self.across(r, need, target, |ep| async move {
                let call = Call {
                    target,
                    reference: r,
                    endpoint: &ep,
                    method: Method::GET,
                    url: ep.url(&r.repository, &format!("manifests/{reference}")),
                    headers: headers.clone(),
                };
                let (resp, url) = self.t().send(&call).await?;
                let resp = check_status(target, &url, resp).await?;
                let content_type = header_str(&resp, CONTENT_TYPE);
                let served = header_str(&resp, "docker-content-digest");
                let bytes = read_limited(target, &url, resp, MAX_MANIFEST_BYTES, |size| {
                    RegistryError::ManifestTooLarge {
                        target: Box::new(target.clone()),
                        size,
                        limit: MAX_MANIFEST_BYTES,
                    }
                })
                .await?;
                let (media_type, kind) = manifest::classify(target, content_type.as_deref(), &bytes)?;
                if let Some(s) = served
                    && s != Digest::sha256_of(&bytes).as_str()
                {
                    tracing::warn!(%target, header = %s, "Docker-Content-Digest differs from the body's digest");
                }
                Ok((media_type, kind, bytes))
            })
            .await
    }

    /// The blob's size: `HEAD`, or `GET Range: bytes=0-0` and its
    /// `Content-Range` when HEAD fails or gives no length.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotFound`], [`RegistryError::NoSize`], network/auth errors.
    pub async fn blob_size(&self, r: &Reference, digest: &Digest) -> Result<u64, RegistryError> {
        let target = blob_target(r, digest);
        let target = &target;
        self.across(r, Need::Pull, target, |ep| async move {
                let head = Call {
                    target,
                    reference: r,
                    endpoint: &ep,
                    method: Method::HEAD,
                    url: ep.url(&r.repository, &format!("blobs/{digest}")),
                    headers: HeaderMap::new(),
                };
                let (resp, final_url) = self.t().send(&head).await?;
                let status = resp.status();
                if status.is_success()
                    && let Some(n) = content_length(resp.headers())
                {
                    return Ok(n);
                }
                if matches!(status.as_u16(), 404 | 429) || status.is_server_error() {
                    check_status(target, &final_url, resp).await?;
                }
                tracing::debug!(%target, status = status.as_u16(), "HEAD gave no size; trying GET bytes=0-0");
                let mut headers = identity_headers();
                headers.insert(RANGE, HeaderValue::from_static("bytes=0-0"));
                let get = Call { method: Method::GET, headers, ..head };
                let (resp, final_url) = self.t().send(&get).await?;
                let resp = check_status(target, &final_url, resp).await?;
                let no_size = |reason: String| RegistryError::NoSize { target: Box::new(target.clone()), reason };
                match resp.status() {
                    StatusCode::PARTIAL_CONTENT => {
                        let v = header_str(&resp, CONTENT_RANGE).ok_or_else(|| no_size("206 without Content-Range".into()))?;
                        parse_content_range(&v)
                            .map_err(|e| no_size(format!("Content-Range {v:?}: {e}")))?
                            .total
                            .ok_or_else(|| no_size(format!("Content-Range {v:?} has no total")))
                    }
                    _ => content_length(resp.headers()).ok_or_else(|| no_size("200 without Content-Length".into())),
                }
            })
            .await
    }

    /// The whole blob, verified against `digest`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::DigestMismatch`], [`RegistryError::NotFound`],
    /// network/auth errors after retries.
    pub async fn fetch_blob(&self, r: &Reference, digest: &Digest) -> Result<Bytes, RegistryError> {
        let target = blob_target(r, digest);
        let target = &target;
        self.across(r, Need::Pull, target, |ep| async move {
            let call = Call {
                target,
                reference: r,
                endpoint: &ep,
                method: Method::GET,
                url: ep.url(&r.repository, &format!("blobs/{digest}")),
                headers: identity_headers(),
            };
            let (resp, url) = self.t().send(&call).await?;
            let resp = check_status(target, &url, resp).await?;
            let bytes = read_limited(target, &url, resp, u64::MAX, |_| unreachable_limit()).await?;
            let actual = Digest::sha256_of(&bytes);
            if actual != *digest {
                return Err(RegistryError::DigestMismatch {
                    target: Box::new(target.clone()),
                    expected: digest.clone(),
                    actual,
                });
            }
            Ok(Bytes::from(bytes))
        })
        .await
    }

    /// Whether the registry answered a range read of this blob with the
    /// whole body (so callers may prefer [`Self::fetch_blob`]).
    pub fn ignores_ranges(&self, r: &Reference, digest: &Digest) -> bool {
        lock(&self.inner.ignores_range).contains(&blob_key(r, digest))
    }

    /// Exactly the bytes `[start, end)` of the blob (empty when `start == end`),
    /// by one `Range` GET. A 206 must carry the matching `Content-Range`; a
    /// 200 with the whole body is read up to `end` and then dropped (and the
    /// blob remembered as ignoring ranges). Redirect targets are cached per
    /// blob and re-resolved once when they answer 403.
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidRange`] for `start > end`,
    /// [`RegistryError::RangeMismatch`] for a wrong Content-Range or length,
    /// [`RegistryError::RangeNotSatisfiable`], network/auth errors after retries.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn read_range(
        &self,
        r: &Reference,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<Bytes, RegistryError> {
        self.read_range_progressive(r, digest, start, end, &|_| {})
            .await
    }

    /// [`Self::read_range`], telling `progress` what has arrived as it
    /// arrives: after each piece of the body, `progress` gets the bytes of
    /// the range received so far in this attempt (a prefix of
    /// `[start, end)`, growing). A retried attempt starts again from an
    /// empty prefix, so `progress` must tolerate seeing the same prefix
    /// twice. Lets a caller use the first chunks of a long range before the
    /// last ones have arrived.
    ///
    /// # Errors
    ///
    /// As [`Self::read_range`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn read_range_progressive(
        &self,
        r: &Reference,
        digest: &Digest,
        start: u64,
        end: u64,
        progress: &Progress<'_>,
    ) -> Result<Bytes, RegistryError> {
        if start == end {
            return Ok(Bytes::new());
        }
        let range = ByteRange::new(start, end).ok_or_else(|| RegistryError::InvalidRange {
            digest: digest.clone(),
            start,
            end,
        })?;
        let target = Target::Range {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            digest: digest.clone(),
            range,
        };
        let target = &target;
        self.across(r, Need::Pull, target, |ep| async move {
            self.range_once(r, &ep, digest, range, target, progress)
                .await
        })
        .await
    }

    async fn range_once(
        &self,
        r: &Reference,
        ep: &Endpoint,
        digest: &Digest,
        range: ByteRange,
        target: &Target,
        progress: &Progress<'_>,
    ) -> Result<Bytes, RegistryError> {
        let mut headers = identity_headers();
        let value = HeaderValue::from_str(&range.to_http_header())
            .expect("digits and '-' are a valid header value");
        headers.insert(RANGE, value);
        let key = blob_key(r, digest);
        let redirect_key = (ep.key(), r.repository.clone(), digest.clone());
        let registry_url = ep.url(&r.repository, &format!("blobs/{digest}"));
        let cached = lock(&self.inner.redirects).get(&redirect_key).cloned();
        if let Some(url) = cached {
            let call = Call {
                target,
                reference: r,
                endpoint: ep,
                method: Method::GET,
                url,
                headers: headers.clone(),
            };
            let (resp, final_url) = self.t().send(&call).await?;
            if !matches!(resp.status().as_u16(), 401 | 403) {
                return self
                    .take_range(&key, target, range, &final_url, resp, progress)
                    .await;
            }
            tracing::info!(%target, url = %redact(&final_url), status = resp.status().as_u16(), "cached redirect refused; re-resolving via the registry");
            lock(&self.inner.redirects).remove(&redirect_key);
        }
        let call = Call {
            target,
            reference: r,
            endpoint: ep,
            method: Method::GET,
            url: registry_url.clone(),
            headers,
        };
        let (resp, final_url) = self.t().send(&call).await?;
        if final_url != registry_url && resp.status().is_success() {
            lock(&self.inner.redirects).insert(redirect_key, final_url.clone());
        }
        self.take_range(&key, target, range, &final_url, resp, progress)
            .await
    }

    /// Checks a range response and reads exactly the range from it.
    async fn take_range(
        &self,
        key: &BlobKey,
        target: &Target,
        range: ByteRange,
        url: &Url,
        resp: Response,
        progress: &Progress<'_>,
    ) -> Result<Bytes, RegistryError> {
        let resp = check_status(target, url, resp).await?;
        let mismatch = |reason: String| RegistryError::RangeMismatch {
            target: Box::new(target.clone()),
            reason,
        };
        let status = resp.status();
        let content_range = header_str(&resp, CONTENT_RANGE);
        match (status, content_range) {
            (StatusCode::PARTIAL_CONTENT | StatusCode::OK, Some(v)) => {
                let cr = parse_content_range(&v).map_err(|e| {
                    mismatch(format!(
                        "HTTP {} with bad Content-Range {v:?}: {e}",
                        status.as_u16()
                    ))
                })?;
                if cr.range != range {
                    return Err(mismatch(format!(
                        "asked {}, got Content-Range {v:?} (start {} end {}, want start {} end {})",
                        range.to_http_header(),
                        cr.range.start(),
                        cr.range.end(),
                        range.start(),
                        range.end()
                    )));
                }
                let span = Span {
                    skip: 0,
                    len: range.len(),
                    exact: true,
                    promised: true,
                };
                read_span(target, url, resp, span, progress).await
            }
            (StatusCode::PARTIAL_CONTENT, None) => {
                Err(mismatch("206 without Content-Range".into()))
            }
            (StatusCode::OK, None) => {
                let total = content_length(resp.headers());
                if lock(&self.inner.ignores_range).insert(key.clone()) {
                    tracing::warn!(%target, url = %redact(url), "registry ignores Range: answered 200 with the whole body (no Content-Range); reading up to the range end and dropping the rest");
                }
                if let Some(t) = total
                    && t < range.end()
                {
                    return Err(mismatch(format!(
                        "200 with the whole blob of {t} bytes, range ends past it"
                    )));
                }
                let span = Span {
                    skip: range.start(),
                    len: range.len(),
                    exact: false,
                    promised: total.is_some(),
                };
                read_span(target, url, resp, span, progress).await
            }
            (s, _) => Err(mismatch(format!("HTTP {} to a range request", s.as_u16()))),
        }
    }
}

/// Told the bytes of a range received so far; see
/// [`RegistryClient::read_range_progressive`].
pub type Progress<'a> = dyn Fn(&[u8]) + Send + Sync + 'a;

/// Which part of a response body is the range: `len` bytes after `skip`;
/// `exact` when the body must be exactly that (a 206), `promised` when the
/// length was announced (Content-Range or Content-Length).
#[derive(Debug, Clone, Copy)]
struct Span {
    skip: u64,
    len: u64,
    exact: bool,
    promised: bool,
}

/// Reads `len` bytes after skipping `skip`, then drops the response (and
/// its connection), telling `progress` the prefix received after each
/// piece. A body ending early is [`RegistryError::Truncated`]
/// when the length was promised, else a mismatch; a 206 body longer than
/// the range is a mismatch when `exact` (a 206), else the rest is dropped.
async fn read_span(
    target: &Target,
    url: &Url,
    mut resp: Response,
    span: Span,
    progress: &Progress<'_>,
) -> Result<Bytes, RegistryError> {
    let Span {
        skip,
        len,
        exact,
        promised,
    } = span;
    let mut out = BytesMut::with_capacity(len as usize);
    let mut to_skip = skip;
    while let Some(mut chunk) = resp.chunk().await.map_err(|e| network(target, url, e))? {
        if to_skip > 0 {
            let n = to_skip.min(chunk.len() as u64);
            to_skip -= n;
            chunk = chunk.slice(n as usize..);
        }
        let want = (len - out.len() as u64) as usize;
        if chunk.len() > want && exact {
            return Err(RegistryError::RangeMismatch {
                target: Box::new(target.clone()),
                reason: format!("body longer than the {len} bytes asked for"),
            });
        }
        out.extend_from_slice(&chunk[..chunk.len().min(want)]);
        if !chunk.is_empty() {
            progress(&out);
        }
        if out.len() as u64 == len && !exact {
            return Ok(out.freeze());
        }
    }
    if (out.len() as u64) < len {
        let got = out.len() as u64 + skip - to_skip;
        if promised {
            return Err(RegistryError::Truncated {
                target: Box::new(target.clone()),
                got,
                expected: skip + len,
            });
        }
        return Err(RegistryError::RangeMismatch {
            target: Box::new(target.clone()),
            reason: format!(
                "body ended after {got} bytes, before the range end {}",
                skip + len
            ),
        });
    }
    Ok(out.freeze())
}

/// Whether a failure at `ep` sends the request on to the next endpoint:
/// unavailable after retries, or a mirror without (the right) content.
fn fall_through(e: &RegistryError, ep: &Endpoint) -> bool {
    e.is_unavailable()
        || (ep.mirror
            && matches!(
                e,
                RegistryError::NotFound { .. } | RegistryError::DigestMismatch { .. }
            ))
}

fn unreachable_limit() -> RegistryError {
    unreachable!("a u64::MAX limit is never exceeded")
}

pub(super) fn identity_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    h
}

pub(super) fn header_str(
    resp: &Response,
    name: impl reqwest::header::AsHeaderName,
) -> Option<String> {
    resp.headers().get(name)?.to_str().ok().map(str::to_string)
}

fn blob_key(r: &Reference, digest: &Digest) -> BlobKey {
    (r.registry.clone(), r.repository.clone(), digest.clone())
}

pub(super) fn manifest_target(r: &Reference, reference: &str) -> Target {
    Target::Manifest {
        registry: r.registry.clone(),
        repository: r.repository.clone(),
        reference: reference.to_string(),
    }
}

pub(super) fn blob_target(r: &Reference, digest: &Digest) -> Target {
    Target::Blob {
        registry: r.registry.clone(),
        repository: r.repository.clone(),
        digest: digest.clone(),
    }
}
