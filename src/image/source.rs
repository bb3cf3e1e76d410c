//! Reading an image from where it lives: its root document (index or manifest), the
//! manifests an index names, configs, and layer blobs (whole, spooled to a file, or by
//! byte range).

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::oci::Digest;
use crate::registry::{Reference, RegistryClient};

use super::error::ImageError;
use super::layout::Layout;
use super::location::Location;
use super::media;

/// A manifest or index document: exact bytes, their digest and media type.
#[derive(Debug, Clone)]
pub struct Doc {
    /// Media type.
    pub media_type: String,
    /// The exact bytes.
    pub bytes: Vec<u8>,
    /// Their digest.
    pub digest: Digest,
}

impl Doc {
    /// Whether this is an index (OCI index or Docker manifest list).
    pub fn is_index(&self) -> bool {
        media::is_index(&self.media_type)
    }
}

/// A blob available as a local file: a layout's own blob file, or a temporary download
/// that is deleted when this is dropped.
#[derive(Debug)]
pub struct BlobFile {
    path: PathBuf,
    _temp: Option<tempfile::TempPath>,
}

impl BlobFile {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An image to read.
#[derive(Debug, Clone)]
pub enum Source {
    /// In a registry.
    Registry {
        /// The client (auth, mirrors, retries).
        client: RegistryClient,
        /// The reference.
        reference: Reference,
    },
    /// In an OCI image layout.
    Layout {
        /// The layout.
        layout: Layout,
        /// The ref name, or `None` for the layout's only image.
        tag: Option<String>,
    },
}

impl Source {
    /// The source at `loc`.
    ///
    /// # Errors
    /// [`ImageError::BadLayout`] when a layout directory is not a layout.
    pub fn open(loc: &Location, client: &RegistryClient) -> Result<Source, ImageError> {
        Ok(match loc {
            Location::Registry(r) => Source::Registry {
                client: client.clone(),
                reference: r.clone(),
            },
            Location::Layout { dir, tag } => Source::Layout {
                layout: Layout::open(dir)?,
                tag: tag.clone(),
            },
        })
    }

    /// The image's name for messages (`oci:DIR:REF` or the reference).
    pub fn name(&self) -> String {
        match self {
            Source::Registry { reference, .. } => reference.to_string(),
            Source::Layout { layout, tag } => match tag {
                Some(t) => format!("oci:{}:{t}", layout.dir().display()),
                None => format!("oci:{}", layout.dir().display()),
            },
        }
    }

    /// The registry reference, for a registry source.
    pub fn reference(&self) -> Option<&Reference> {
        match self {
            Source::Registry { reference, .. } => Some(reference),
            Source::Layout { .. } => None,
        }
    }

    fn reg(&self, source: crate::registry::RegistryError) -> ImageError {
        ImageError::Registry {
            image: self.name(),
            source: Box::new(source),
        }
    }

    /// The document the location names: an index or an image manifest.
    ///
    /// # Errors
    /// Registry and layout errors; [`ImageError::DigestMismatch`].
    pub async fn root(&self) -> Result<Doc, ImageError> {
        match self {
            Source::Registry { client, reference } => {
                let raw = client
                    .fetch_raw_manifest(reference, &reference.manifest_reference())
                    .await
                    .map_err(|e| self.reg(e))?;
                Ok(Doc {
                    media_type: raw.media_type,
                    bytes: raw.bytes,
                    digest: raw.digest,
                })
            }
            Source::Layout { layout, tag } => {
                let entry = layout.find(tag.as_deref())?;
                let bytes = layout.read_blob(&entry.digest)?;
                let media_type = if entry.media_type.is_empty() {
                    media::sniff(&bytes).unwrap_or_default()
                } else {
                    entry.media_type
                };
                Ok(Doc {
                    media_type,
                    bytes,
                    digest: entry.digest,
                })
            }
        }
    }

    /// A manifest (or nested index) named by digest, with the media type its
    /// descriptor gives.
    ///
    /// # Errors
    /// Registry and layout errors; [`ImageError::DigestMismatch`].
    pub async fn manifest(&self, digest: &Digest, media_type: &str) -> Result<Doc, ImageError> {
        match self {
            Source::Registry { client, reference } => {
                let raw = client
                    .fetch_raw_manifest(reference, &digest.as_str())
                    .await
                    .map_err(|e| self.reg(e))?;
                Ok(Doc {
                    media_type: raw.media_type,
                    bytes: raw.bytes,
                    digest: raw.digest,
                })
            }
            Source::Layout { layout, .. } => {
                let bytes = layout.read_blob(digest)?;
                Ok(Doc {
                    media_type: media_type.to_string(),
                    bytes,
                    digest: digest.clone(),
                })
            }
        }
    }

    /// A small blob (an image config), whole and verified.
    ///
    /// # Errors
    /// Registry and layout errors; [`ImageError::DigestMismatch`].
    pub async fn small_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        match self {
            Source::Registry { client, reference } => client
                .fetch_blob(reference, digest)
                .await
                .map(|b| b.to_vec())
                .map_err(|e| self.reg(e)),
            Source::Layout { layout, .. } => layout.read_blob(digest),
        }
    }

    /// A blob as a local file: a layout's blob in place (its digest is checked by the
    /// reader of the file), or a registry blob streamed into `spool` and verified.
    ///
    /// # Errors
    /// Registry errors ([`crate::registry::RegistryError::DigestMismatch`] for a blob that
    /// does not hash to `digest`); [`ImageError::NotFound`] for a blob missing from a layout.
    pub async fn blob_file(
        &self,
        digest: &Digest,
        spool: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<BlobFile, ImageError> {
        match self {
            Source::Registry { client, reference } => {
                let temp = tempfile::Builder::new()
                    .prefix("blob-")
                    .tempfile_in(spool)
                    .map_err(|e| ImageError::Io {
                        image: self.name(),
                        path: spool.to_path_buf(),
                        source: e,
                    })?
                    .into_temp_path();
                client
                    .fetch_blob_to_file(reference, digest, &temp, progress)
                    .await
                    .map_err(|e| self.reg(e))?;
                Ok(BlobFile {
                    path: temp.to_path_buf(),
                    _temp: Some(temp),
                })
            }
            Source::Layout { layout, .. } => {
                let path = layout.blob_path(digest);
                if !path.exists() {
                    return Err(ImageError::NotFound {
                        image: self.name(),
                        reason: format!("blob {digest} is not in the layout"),
                    });
                }
                Ok(BlobFile { path, _temp: None })
            }
        }
    }

    /// Bytes `[start, end)` of a blob (not verified: the caller checks what it reads
    /// against a digest it trusts, such as a TOC digest from the manifest).
    ///
    /// # Errors
    /// Registry and I/O errors.
    pub async fn read_range(
        &self,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<Bytes, ImageError> {
        match self {
            Source::Registry { client, reference } => client
                .read_range(reference, digest, start, end)
                .await
                .map_err(|e| self.reg(e)),
            Source::Layout { layout, .. } => {
                use std::io::{Read, Seek, SeekFrom};
                let path = layout.blob_path(digest);
                let io = |e| ImageError::Io {
                    image: self.name(),
                    path: path.clone(),
                    source: e,
                };
                let mut f = std::fs::File::open(&path).map_err(io)?;
                f.seek(SeekFrom::Start(start)).map_err(io)?;
                let mut buf = vec![0u8; end.saturating_sub(start) as usize];
                f.read_exact(&mut buf).map_err(io)?;
                Ok(Bytes::from(buf))
            }
        }
    }
}
