//! One blob upload session (FORMATS.md §6.4 end-4a, end-5, end-6, end-13,
//! end-14): `POST`, then one `PUT ?digest=` or `PATCH` chunks and a closing
//! `PUT`; `Location` handling, `416` recovery, digest checks and
//! cancellation. Used by [`super::push`].

use std::path::Path;

use bytes::Bytes;
use reqwest::header::{
    CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RANGE,
};
use reqwest::{Method, Response, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

use crate::oci::Digest;

use super::client::{RegistryClient, header_str};
use super::error::{RegistryError, Target};
use super::hosts::Endpoint;
use super::push::PushOptions;
use super::reference::Reference;
use super::transport::{Call, Extra, check_status, redact};

/// How often one chunk is re-sent after a `416` within one upload session.
const MAX_CHUNK_RESENDS: u32 = 3;
const OCTET_STREAM: &str = "application/octet-stream";
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
const OCI_CHUNK_MIN_LENGTH: &str = "oci-chunk-min-length";

/// Where a blob's bytes come from.
pub(super) enum Source<'a> {
    Mem(Bytes),
    File(&'a Path),
}

/// Reads a [`Source`] front to back in chunks.
enum Reader {
    Mem(Bytes),
    File(tokio::fs::File),
}

impl Reader {
    /// The next `n` bytes (the caller knows that many remain).
    async fn take(&mut self, n: u64) -> std::io::Result<Bytes> {
        match self {
            Reader::Mem(b) => Ok(b.split_to(n as usize)),
            Reader::File(f) => {
                let mut buf = vec![0u8; n as usize];
                f.read_exact(&mut buf).await?;
                Ok(Bytes::from(buf))
            }
        }
    }
}

/// One push's fixed parts: where it goes, what it is about, which scopes.
pub(super) struct Pusher<'a> {
    pub(super) client: &'a RegistryClient,
    pub(super) r: &'a Reference,
    pub(super) ep: Endpoint,
    pub(super) target: Target,
    pub(super) scopes: Vec<String>,
}

impl Pusher<'_> {
    /// Sends one request of the push; an empty body goes with an explicit
    /// `Content-Length: 0` (hyper omits it), as the upload POST needs.
    pub(super) async fn send(
        &self,
        method: Method,
        url: Url,
        mut headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<(Response, Url), RegistryError> {
        if body.as_ref().is_some_and(Bytes::is_empty) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        let call = Call {
            target: &self.target,
            reference: self.r,
            endpoint: &self.ep,
            method,
            url,
            headers,
        };
        let extra = Extra {
            scopes: self.scopes.clone(),
            body,
        };
        self.client.t().send_with(&call, &extra).await
    }

    pub(super) fn protocol(&self, reason: String) -> RegistryError {
        RegistryError::Upload {
            target: Box::new(self.target.clone()),
            reason,
        }
    }

    /// Fails unless the (successful) response has status `want`.
    pub(super) fn expect(
        &self,
        what: &str,
        url: &Url,
        resp: &Response,
        want: u16,
    ) -> Result<(), RegistryError> {
        let got = resp.status().as_u16();
        if got == want {
            return Ok(());
        }
        Err(self.protocol(format!(
            "{what} {} answered HTTP {got}, want {want}",
            redact(url)
        )))
    }

    /// The response's `Location`, resolved against the URL that answered.
    pub(super) fn location(&self, url: &Url, resp: &Response) -> Result<Url, RegistryError> {
        let status = resp.status().as_u16();
        let v = header_str(resp, LOCATION).ok_or_else(|| {
            self.protocol(format!(
                "HTTP {status} from {} without Location",
                redact(url)
            ))
        })?;
        resolve_location(url, &v).map_err(|e| {
            self.protocol(format!("HTTP {status} from {}: Location: {e}", redact(url)))
        })
    }

    /// Best-effort `DELETE` of an upload session (end-14).
    pub(super) async fn cancel(&self, session: &Url) {
        match self
            .send(Method::DELETE, session.clone(), HeaderMap::new(), None)
            .await
        {
            Ok((resp, _)) => {
                tracing::debug!(target = %self.target, status = resp.status().as_u16(), "upload session cancelled");
            }
            Err(e) => {
                tracing::debug!(target = %self.target, error = %e, "cancelling the upload session failed")
            }
        }
    }

    /// Checks a `Docker-Content-Digest` answer against `want`, when given.
    pub(super) fn check_digest(&self, resp: &Response, want: &Digest) -> Result<(), RegistryError> {
        let Some(v) = header_str(resp, DOCKER_CONTENT_DIGEST) else {
            return Ok(());
        };
        let got: Digest = v.trim().parse().map_err(|_| {
            self.protocol(format!(
                "Docker-Content-Digest {v:?} is not a sha256 digest"
            ))
        })?;
        if got != *want {
            return Err(RegistryError::DigestMismatch {
                target: Box::new(self.target.clone()),
                expected: want.clone(),
                actual: got,
            });
        }
        Ok(())
    }
}

/// `loc` (absolute, or relative to `base`) keeping its query (`_state`).
///
/// # Errors
///
/// The parse error, or a scheme other than http(s).
pub(super) fn resolve_location(base: &Url, loc: &str) -> Result<Url, String> {
    let u = base.join(loc.trim()).map_err(|e| format!("{loc:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("{loc:?}: scheme {} refused", u.scheme()));
    }
    Ok(u)
}

/// `session` with `digest=<digest>` appended to its query (`?` or `&`).
pub(super) fn with_digest(session: &Url, digest: &Digest) -> Url {
    let mut u = session.clone();
    u.query_pairs_mut().append_pair("digest", &digest.as_str());
    u
}

fn octet_stream() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM));
    h
}

/// The first number of a `Range: 0-<end>` upload status, as the count of
/// bytes the registry holds (`end + 1`).
fn range_received(v: &str) -> Option<u64> {
    let v = v.trim();
    let v = v.strip_prefix("bytes=").unwrap_or(v);
    let (start, end) = v.split_once('-')?;
    let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    (start == 0).then_some(end + 1)
}

/// One upload session: POST, then PUT or PATCHes + PUT; cancelled on failure.
pub(super) async fn upload_once(
    p: &Pusher<'_>,
    digest: &Digest,
    size: u64,
    source: &Source<'_>,
    opts: &PushOptions,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), RegistryError> {
    let file_err = |path: &Path, op, source| RegistryError::File {
        target: Box::new(p.target.clone()),
        path: path.to_path_buf(),
        op,
        source,
    };
    let monolithic = size <= opts.monolithic_limit;
    // Open (and, when small, read and check) the source before the POST.
    let reader = match source {
        Source::Mem(b) => {
            if b.len() as u64 != size {
                return Err(size_mismatch(p, size, b.len() as u64));
            }
            Reader::Mem(b.clone())
        }
        Source::File(path) if monolithic => {
            let b = tokio::fs::read(path)
                .await
                .map_err(|e| file_err(path, "reading", e))?;
            if b.len() as u64 != size {
                return Err(size_mismatch(p, size, b.len() as u64));
            }
            Reader::Mem(Bytes::from(b))
        }
        Source::File(path) => {
            let f = tokio::fs::File::open(path)
                .await
                .map_err(|e| file_err(path, "opening", e))?;
            let len = f
                .metadata()
                .await
                .map_err(|e| file_err(path, "reading", e))?
                .len();
            if len != size {
                return Err(size_mismatch(p, size, len));
            }
            Reader::File(f)
        }
    };
    if let Reader::Mem(b) = &reader
        && monolithic
    {
        let actual = Digest::sha256_of(b);
        if actual != *digest {
            return Err(digest_mismatch(p, digest, actual));
        }
    }
    let start = p.ep.url(&p.r.repository, "blobs/uploads/");
    let (resp, url) = p
        .send(Method::POST, start, HeaderMap::new(), Some(Bytes::new()))
        .await?;
    let resp = check_status(&p.target, &url, resp).await?;
    p.expect("upload POST", &url, &resp, 202)?;
    let mut session = p.location(&url, &resp)?;
    let min_chunk =
        header_str(&resp, OCI_CHUNK_MIN_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
    drop(resp);
    let result = if monolithic {
        let Reader::Mem(body) = reader else {
            unreachable!("small sources are read up front")
        };
        close(p, &session, digest, body)
            .await
            .inspect(|()| progress(size))
    } else {
        let chunk = opts.chunk_size.max(min_chunk.unwrap_or(0)).max(1);
        send_chunks(
            p,
            &mut session,
            digest,
            size,
            reader,
            chunk,
            source,
            progress,
        )
        .await
    };
    if let Err(e) = &result {
        tracing::debug!(target = %p.target, error = %e, "upload failed; cancelling its session");
        p.cancel(&session).await;
    }
    result
}

/// `PUT <session>?digest=` with `body` (the whole blob, or empty after PATCHes).
async fn close(
    p: &Pusher<'_>,
    session: &Url,
    digest: &Digest,
    body: Bytes,
) -> Result<(), RegistryError> {
    let url = with_digest(session, digest);
    let (resp, url) = p.send(Method::PUT, url, octet_stream(), Some(body)).await?;
    let resp = check_status(&p.target, &url, resp).await?;
    p.expect("upload PUT", &url, &resp, 201)?;
    p.check_digest(&resp, digest)
}

/// The chunked part of an upload: PATCH every chunk in order, then close.
#[allow(clippy::too_many_arguments)]
async fn send_chunks(
    p: &Pusher<'_>,
    session: &mut Url,
    digest: &Digest,
    size: u64,
    mut reader: Reader,
    chunk: u64,
    source: &Source<'_>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), RegistryError> {
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    while offset < size {
        let n = chunk.min(size - offset);
        let body = reader.take(n).await.map_err(|e| match source {
            Source::File(path) => RegistryError::File {
                target: Box::new(p.target.clone()),
                path: path.to_path_buf(),
                op: "reading",
                source: e,
            },
            Source::Mem(_) => size_mismatch(p, size, offset),
        })?;
        let mut resends = 0;
        loop {
            match patch(p, session, offset, body.clone()).await? {
                Patched::Done => break,
                // The registry holds everything before this chunk: send it again.
                Patched::Holds(held) if held == offset && resends < MAX_CHUNK_RESENDS => {
                    resends += 1
                }
                // The chunk landed although its answer was lost.
                Patched::Holds(held) if held == offset + n => break,
                Patched::Holds(held) => {
                    return Err(p.protocol(format!(
                        "registry holds {held} bytes after a 416, cannot resume at {offset}"
                    )));
                }
            }
        }
        hasher.update(&body);
        offset += n;
        progress(offset);
    }
    let actual = Digest::from_sha256(hasher.finalize().into());
    if actual != *digest {
        return Err(digest_mismatch(p, digest, actual));
    }
    close(p, session, digest, Bytes::new()).await
}

enum Patched {
    /// 202: accepted (the session URL was updated).
    Done,
    /// 416 and the upload status says the registry holds this many bytes
    /// (the session URL was updated).
    Holds(u64),
}

/// `PATCH <session>` with `Content-Range: <offset>-<offset+len-1>`.
async fn patch(
    p: &Pusher<'_>,
    session: &mut Url,
    offset: u64,
    body: Bytes,
) -> Result<Patched, RegistryError> {
    let end = offset + body.len() as u64 - 1;
    let mut headers = octet_stream();
    headers.insert(
        HeaderName::from_static("content-range"),
        HeaderValue::from_str(&format!("{offset}-{end}")).expect("digits and '-'"),
    );
    let (resp, url) = p
        .send(Method::PATCH, session.clone(), headers, Some(body))
        .await?;
    if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
        drop(resp);
        tracing::debug!(target = %p.target, offset, "PATCH answered 416; asking for the upload status");
        let (resp, url) = p
            .send(Method::GET, session.clone(), HeaderMap::new(), None)
            .await?;
        let resp = check_status(&p.target, &url, resp).await?;
        p.expect("upload status GET", &url, &resp, 204)?;
        let held = header_str(&resp, RANGE)
            .and_then(|v| range_received(&v))
            .unwrap_or(0);
        if header_str(&resp, LOCATION).is_some() {
            *session = p.location(&url, &resp)?;
        }
        return Ok(Patched::Holds(held));
    }
    let resp = check_status(&p.target, &url, resp).await?;
    p.expect("upload PATCH", &url, &resp, 202)?;
    if let Some(held) = header_str(&resp, RANGE).and_then(|v| range_received(&v))
        && held != end + 1
    {
        return Err(p.protocol(format!(
            "PATCH of bytes {offset}-{end} answered Range 0-{}, want 0-{end}",
            held.saturating_sub(1)
        )));
    }
    if header_str(&resp, LOCATION).is_some() {
        *session = p.location(&url, &resp)?;
    }
    Ok(Patched::Done)
}

fn size_mismatch(p: &Pusher<'_>, expected: u64, actual: u64) -> RegistryError {
    RegistryError::SizeMismatch {
        target: Box::new(p.target.clone()),
        expected,
        actual,
    }
}

fn digest_mismatch(p: &Pusher<'_>, expected: &Digest, actual: Digest) -> RegistryError {
    RegistryError::DigestMismatch {
        target: Box::new(p.target.clone()),
        expected: expected.clone(),
        actual,
    }
}
