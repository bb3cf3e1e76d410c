//! [`RegistryClient::fetch_blob_to_file`]: a whole blob streamed into a
//! file (FORMATS.md §6.2 end-2), hashed on the way, never held in memory.

use std::path::Path;

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::oci::Digest;

use super::client::{RegistryClient, blob_target, identity_headers};
use super::error::{RegistryError, Target};
use super::hosts::Need;
use super::reference::Reference;
use super::transport::{Call, check_status, content_length, network};

impl RegistryClient {
    /// `GET /v2/<name>/blobs/<digest>` streamed into `path` (created or
    /// truncated), checking the byte count against `Content-Length` and the
    /// sha256 against `digest` before returning the size in bytes. Mirrors
    /// and retries are used as for [`Self::fetch_blob`]; each attempt
    /// rewrites the file from the start and `progress` gets the bytes
    /// written by the current attempt. On any failure the partial file is
    /// removed.
    ///
    /// # Errors
    ///
    /// [`RegistryError::DigestMismatch`] (naming the reference and both
    /// digests), [`RegistryError::SizeMismatch`] (body longer than
    /// `Content-Length`), [`RegistryError::Truncated`] (shorter),
    /// [`RegistryError::File`], [`RegistryError::NotFound`], network and
    /// auth errors after retries.
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe: dropping the future may leave a partial file.
    pub async fn fetch_blob_to_file(
        &self,
        r: &Reference,
        digest: &Digest,
        path: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, RegistryError> {
        let target = blob_target(r, digest);
        let target = &target;
        self.across(r, Need::Pull, target, |ep| async move {
            let call = Call {
                target,
                reference: r,
                endpoint: &ep,
                method: reqwest::Method::GET,
                url: ep.url(&r.repository, &format!("blobs/{digest}")),
                headers: identity_headers(),
            };
            let (resp, url) = self.t().send(&call).await?;
            let resp = check_status(target, &url, resp).await?;
            let mut file = tokio::fs::File::create(path)
                .await
                .map_err(|e| file_err(target, path, "creating", e))?;
            let result = stream_to_file(target, &url, resp, digest, &mut file, path, progress).await;
            if result.is_err() {
                drop(file);
                if let Err(e) = tokio::fs::remove_file(path).await
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(%target, path = %path.display(), error = %e, "removing the partial download failed");
                }
            }
            result
        })
        .await
    }
}

fn file_err(
    target: &Target,
    path: &Path,
    op: &'static str,
    source: std::io::Error,
) -> RegistryError {
    RegistryError::File {
        target: Box::new(target.clone()),
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Copies the body into `file`, checking length and digest.
async fn stream_to_file(
    target: &Target,
    url: &reqwest::Url,
    mut resp: reqwest::Response,
    digest: &Digest,
    file: &mut tokio::fs::File,
    path: &Path,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, RegistryError> {
    let expected = content_length(resp.headers());
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| network(target, url, e))? {
        written += chunk.len() as u64;
        if let Some(n) = expected
            && written > n
        {
            return Err(RegistryError::SizeMismatch {
                target: Box::new(target.clone()),
                expected: n,
                actual: written,
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| file_err(target, path, "writing", e))?;
        progress(written);
    }
    file.flush()
        .await
        .map_err(|e| file_err(target, path, "writing", e))?;
    if let Some(n) = expected
        && written < n
    {
        return Err(RegistryError::Truncated {
            target: Box::new(target.clone()),
            got: written,
            expected: n,
        });
    }
    let actual = Digest::from_sha256(hasher.finalize().into());
    if actual != *digest {
        return Err(RegistryError::DigestMismatch {
            target: Box::new(target.clone()),
            expected: digest.clone(),
            actual,
        });
    }
    Ok(written)
}
