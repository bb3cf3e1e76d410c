//! Writing an image where it goes: blobs first (skipped when present, mounted across
//! repositories of the same registry when possible, else uploaded), then the manifests,
//! the tagged root last — so a failure never leaves a tag pointing at a broken image.

use std::path::Path;

use bytes::Bytes;
use serde_json::json;

use crate::oci::Digest;
use crate::registry::{Reference, RegistryClient};

use super::error::ImageError;
use super::layout::{Layout, REF_NAME};
use super::location::Location;
use super::source::Source;

/// How a blob got to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// It was there already (`HEAD` answered, or the layout had it).
    Existed,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Uploaded (or copied into the layout).
    Uploaded,
}

/// An image destination.
#[derive(Debug, Clone)]
pub enum Dest {
    /// A registry reference (its tag, or its digest, names the root).
    Registry {
        /// The client.
        client: RegistryClient,
        /// The reference to push to.
        reference: Reference,
    },
    /// An OCI image layout (created when missing).
    Layout {
        /// The layout.
        layout: Layout,
        /// The ref name to give the root, if any.
        tag: Option<String>,
    },
}

impl Dest {
    /// The destination at `loc`; a layout directory is created when missing.
    ///
    /// # Errors
    /// Layout creation errors.
    pub fn open(loc: &Location, client: &RegistryClient) -> Result<Dest, ImageError> {
        Ok(match loc {
            Location::Registry(r) => Dest::Registry {
                client: client.clone(),
                reference: r.clone(),
            },
            Location::Layout { dir, tag } => Dest::Layout {
                layout: Layout::create(dir)?,
                tag: tag.clone(),
            },
        })
    }

    /// The destination's name for messages.
    pub fn name(&self) -> String {
        match self {
            Dest::Registry { reference, .. } => reference.to_string(),
            Dest::Layout { layout, tag } => match tag {
                Some(t) => format!("oci:{}:{t}", layout.dir().display()),
                None => format!("oci:{}", layout.dir().display()),
            },
        }
    }

    fn reg(&self, source: crate::registry::RegistryError) -> ImageError {
        ImageError::Registry {
            image: self.name(),
            source: Box::new(source),
        }
    }

    /// Whether the destination has the blob.
    ///
    /// # Errors
    /// Registry errors other than "not found".
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool, ImageError> {
        match self {
            Dest::Registry { client, reference } => Ok(client
                .blob_exists(reference, digest)
                .await
                .map_err(|e| self.reg(e))?
                .is_some()),
            Dest::Layout { layout, .. } => Ok(layout.blob_size(digest).is_some()),
        }
    }

    /// Puts a blob held in a local file (verified against `digest` on the way).
    ///
    /// # Errors
    /// Registry and layout errors.
    pub async fn put_blob_file(
        &self,
        digest: &Digest,
        size: u64,
        path: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Put, ImageError> {
        if self.has_blob(digest).await? {
            progress(size);
            return Ok(Put::Existed);
        }
        match self {
            Dest::Registry { client, reference } => {
                client
                    .push_blob_file(reference, digest, size, path, progress)
                    .await
                    .map_err(|e| self.reg(e))?;
            }
            Dest::Layout { layout, .. } => {
                let (layout, digest, path) = (layout.clone(), digest.clone(), path.to_path_buf());
                tokio::task::spawn_blocking(move || layout.put_blob_file(&digest, &path))
                    .await
                    .expect("blob copy task panicked")?;
                progress(size);
            }
        }
        Ok(Put::Uploaded)
    }

    /// Puts a small blob (a config); returns its digest.
    ///
    /// # Errors
    /// Registry and layout errors.
    pub async fn put_blob_bytes(&self, bytes: &[u8]) -> Result<(Digest, Put), ImageError> {
        let digest = Digest::sha256_of(bytes);
        if self.has_blob(&digest).await? {
            return Ok((digest, Put::Existed));
        }
        match self {
            Dest::Registry { client, reference } => client
                .push_blob_bytes(reference, &digest, Bytes::copy_from_slice(bytes))
                .await
                .map_err(|e| self.reg(e))?,
            Dest::Layout { layout, .. } => {
                layout.put_blob_bytes(bytes)?;
            }
        }
        Ok((digest, Put::Uploaded))
    }

    /// Copies blob `digest` of `src` unchanged: present → nothing; same registry →
    /// a cross-repository mount; else downloaded into `spool` (verified) and uploaded.
    ///
    /// # Errors
    /// Registry and layout errors of either side.
    pub async fn copy_blob(
        &self,
        src: &Source,
        digest: &Digest,
        size: u64,
        spool: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Put, ImageError> {
        if self.has_blob(digest).await? {
            progress(size);
            return Ok(Put::Existed);
        }
        if let (Dest::Registry { client, reference }, Some(from)) = (self, src.reference())
            && from.registry == reference.registry
            && from.repository != reference.repository
            && client
                .mount_blob(reference, digest, &from.repository)
                .await
                .map_err(|e| self.reg(e))?
        {
            progress(size);
            return Ok(Put::Mounted);
        }
        let file = src.blob_file(digest, spool, &|_| {}).await?;
        self.put_blob_file(digest, size, file.path(), progress)
            .await
    }

    /// Puts a manifest or index that the root refers to (by digest, untagged).
    ///
    /// # Errors
    /// Registry and layout errors.
    pub async fn put_child_manifest(
        &self,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, ImageError> {
        match self {
            Dest::Registry { client, reference } => {
                let mut by_digest = reference.clone();
                by_digest.tag = None;
                by_digest.digest = Some(Digest::sha256_of(bytes));
                client
                    .put_manifest(&by_digest, media_type, bytes)
                    .await
                    .map_err(|e| self.reg(e))
            }
            Dest::Layout { layout, .. } => layout.put_blob_bytes(bytes),
        }
    }

    /// Puts the root manifest or index and tags it: the registry reference's tag (or by
    /// digest when the reference has none), or the layout's `index.json` entry with the
    /// ref name. Call it last.
    ///
    /// # Errors
    /// Registry and layout errors.
    pub async fn put_root(&self, media_type: &str, bytes: &[u8]) -> Result<Digest, ImageError> {
        match self {
            Dest::Registry { client, reference } => {
                let mut r = reference.clone();
                if r.tag.is_none() && r.digest.is_none() {
                    r.digest = Some(Digest::sha256_of(bytes));
                }
                client
                    .put_manifest(&r, media_type, bytes)
                    .await
                    .map_err(|e| self.reg(e))
            }
            Dest::Layout { layout, tag } => {
                let digest = layout.put_blob_bytes(bytes)?;
                let mut desc = json!({
                    "mediaType": media_type,
                    "digest": digest.to_string(),
                    "size": bytes.len(),
                });
                if let Some(t) = tag {
                    desc["annotations"] = json!({ REF_NAME: t });
                }
                layout.set_entry(desc)?;
                Ok(digest)
            }
        }
    }
}
