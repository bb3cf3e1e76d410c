//! OCI image layout directories (image-spec `image-layout.md`): an `oci-layout` file
//! (`{"imageLayoutVersion":"1.0.0"}`), an `index.json` whose `manifests` name the images
//! (tagged by the `org.opencontainers.image.ref.name` annotation), and content-addressed
//! blobs at `blobs/<alg>/<hex>`.
//!
//! Writes are atomic per file (temp file + rename), blobs are verified against their
//! digest before they are renamed into place, and `index.json` is rewritten last, so an
//! interrupted write never leaves a ref pointing at missing blobs.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::oci::Digest;

use super::error::ImageError;

/// The annotation that tags an entry of `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The layout version we read and write.
pub const LAYOUT_VERSION: &str = "1.0.0";
/// Media type of `index.json`.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One entry of `index.json`: a descriptor (media type, digest, size, annotations…) kept as
/// JSON so unknown fields survive a rewrite.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The descriptor's media type.
    pub media_type: String,
    /// The descriptor's digest.
    pub digest: Digest,
    /// The descriptor's size in bytes.
    pub size: u64,
    /// Its ref name, if tagged.
    pub ref_name: Option<String>,
    /// The whole descriptor as found.
    pub json: Value,
}

/// An OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Opens an existing layout.
    ///
    /// # Errors
    /// [`ImageError::BadLayout`] when `oci-layout` is missing or names another version.
    pub fn open(dir: &Path) -> Result<Layout, ImageError> {
        let l = Layout {
            dir: dir.to_path_buf(),
        };
        let path = dir.join("oci-layout");
        let text = fs::read(&path).map_err(|e| l.bad(format!("{}: {e}", path.display())))?;
        let v: Value =
            serde_json::from_slice(&text).map_err(|e| l.bad(format!("{}: {e}", path.display())))?;
        match v.get("imageLayoutVersion").and_then(Value::as_str) {
            Some(LAYOUT_VERSION) => Ok(l),
            other => Err(l.bad(format!(
                "imageLayoutVersion is {other:?}, expected {LAYOUT_VERSION:?}"
            ))),
        }
    }

    /// Opens the layout at `dir`, creating the directory, `oci-layout` and an empty
    /// `index.json` when they do not exist.
    ///
    /// # Errors
    /// I/O errors; [`ImageError::BadLayout`] when `dir` holds a layout of another version.
    pub fn create(dir: &Path) -> Result<Layout, ImageError> {
        if dir.join("oci-layout").exists() {
            return Layout::open(dir);
        }
        let l = Layout {
            dir: dir.to_path_buf(),
        };
        fs::create_dir_all(dir.join("blobs/sha256")).map_err(|e| l.io(dir, e))?;
        l.write_atomic(
            "index.json",
            &serde_json::to_vec(
                &json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}),
            )
            .expect("static JSON"),
        )?;
        l.write_atomic(
            "oci-layout",
            format!("{{\"imageLayoutVersion\":\"{LAYOUT_VERSION}\"}}").as_bytes(),
        )?;
        Ok(l)
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entries of `index.json`, in file order.
    ///
    /// # Errors
    /// I/O errors, [`ImageError::BadLayout`] for a malformed `index.json`.
    pub fn entries(&self) -> Result<Vec<Entry>, ImageError> {
        let path = self.dir.join("index.json");
        let bytes = fs::read(&path).map_err(|e| self.io(&path, e))?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| self.bad(format!("index.json: {e}")))?;
        let list = v
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| self.bad("index.json has no manifests array".into()))?;
        list.iter()
            .map(|d| {
                let field = |k: &str| d.get(k).and_then(Value::as_str);
                let digest = field("digest")
                    .and_then(|s| s.parse::<Digest>().ok())
                    .ok_or_else(|| {
                        self.bad(format!("index.json entry without a valid digest: {d}"))
                    })?;
                Ok(Entry {
                    media_type: field("mediaType").unwrap_or_default().to_string(),
                    size: d.get("size").and_then(Value::as_u64).unwrap_or(0),
                    ref_name: d
                        .get("annotations")
                        .and_then(|a| a.get(REF_NAME))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    digest,
                    json: d.clone(),
                })
            })
            .collect()
    }

    /// The entry tagged `tag`; with `None`, the only entry of the layout.
    ///
    /// # Errors
    /// [`ImageError::NotFound`] when no entry has that ref name, or when `tag` is `None`
    /// and the layout holds zero or several entries.
    pub fn find(&self, tag: Option<&str>) -> Result<Entry, ImageError> {
        let entries = self.entries()?;
        match tag {
            Some(t) => entries
                .into_iter()
                .find(|e| e.ref_name.as_deref() == Some(t))
                .ok_or_else(|| ImageError::NotFound {
                    image: self.name(),
                    reason: format!("no image with ref name {t:?} in index.json"),
                }),
            None if entries.len() == 1 => Ok(entries.into_iter().next().expect("one entry")),
            None => Err(ImageError::NotFound {
                image: self.name(),
                reason: format!(
                    "index.json has {} images; name one with oci:DIR:REF",
                    entries.len()
                ),
            }),
        }
    }

    /// Where a blob lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let (text, hex) = (d.as_str(), d.hex());
        let (alg, hex) = text.split_once(':').unwrap_or(("sha256", &hex));
        self.dir.join("blobs").join(alg).join(hex)
    }

    /// Whether the blob is present (its size when it is).
    pub fn blob_size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(d)).ok().map(|m| m.len())
    }

    /// A small blob (manifest, index, config) read whole and verified.
    ///
    /// # Errors
    /// I/O errors; [`ImageError::DigestMismatch`].
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(d);
        let bytes = fs::read(&path).map_err(|e| self.io(&path, e))?;
        let actual = Digest::sha256_of(&bytes);
        if actual != *d {
            return Err(ImageError::DigestMismatch {
                image: self.name(),
                expected: d.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Stores bytes as a blob; returns its digest.
    ///
    /// # Errors
    /// I/O errors.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, ImageError> {
        let d = Digest::sha256_of(bytes);
        if self.blob_size(&d) != Some(bytes.len() as u64) {
            self.put_blob_reader(&d, bytes)?;
        }
        Ok(d)
    }

    /// Copies a blob from `r` into the layout, checking that it hashes to `d`; nothing
    /// is left behind when it does not.
    ///
    /// # Errors
    /// I/O errors; [`ImageError::DigestMismatch`].
    pub fn put_blob_reader(&self, d: &Digest, mut r: impl Read) -> Result<u64, ImageError> {
        let path = self.blob_path(d);
        let parent = path.parent().expect("blob paths have a parent");
        fs::create_dir_all(parent).map_err(|e| self.io(parent, e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(|e| self.io(parent, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = r.read(&mut buf).map_err(|e| self.io(&path, e))?;
            if k == 0 {
                break;
            }
            hasher.update(&buf[..k]);
            tmp.write_all(&buf[..k])
                .map_err(|e| self.io(tmp.path(), e))?;
            n += k as u64;
        }
        let actual = Digest::from_sha256(hasher.finalize().into());
        if actual != *d {
            return Err(ImageError::DigestMismatch {
                image: self.name(),
                expected: d.clone(),
                actual,
            });
        }
        tmp.as_file().sync_all().map_err(|e| self.io(&path, e))?;
        tmp.persist(&path).map_err(|e| self.io(&path, e.error))?;
        Ok(n)
    }

    /// Copies the file at `src` in as blob `d` (verified).
    ///
    /// # Errors
    /// As [`Layout::put_blob_reader`].
    pub fn put_blob_file(&self, d: &Digest, src: &Path) -> Result<u64, ImageError> {
        let f = File::open(src).map_err(|e| self.io(src, e))?;
        self.put_blob_reader(d, std::io::BufReader::new(f))
    }

    /// Adds `descriptor` to `index.json`, replacing an entry with the same ref name (or,
    /// untagged, the same digest). Call it after every blob the descriptor reaches is in.
    ///
    /// # Errors
    /// I/O errors, a malformed `index.json`.
    pub fn set_entry(&self, descriptor: Value) -> Result<(), ImageError> {
        let path = self.dir.join("index.json");
        let bytes = fs::read(&path).map_err(|e| self.io(&path, e))?;
        let mut index: Value =
            serde_json::from_slice(&bytes).map_err(|e| self.bad(format!("index.json: {e}")))?;
        let name = |d: &Value| {
            d.get("annotations")
                .and_then(|a| a.get(REF_NAME))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let new_name = name(&descriptor);
        let list = index
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| self.bad("index.json has no manifests array".into()))?;
        list.retain(|d| match &new_name {
            Some(n) => name(d).as_deref() != Some(n),
            None => name(d).is_some() || d.get("digest") != descriptor.get("digest"),
        });
        list.push(descriptor);
        let out = serde_json::to_vec(&index).expect("JSON values serialize");
        self.write_atomic("index.json", &out)
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let mut tmp =
            tempfile::NamedTempFile::new_in(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        tmp.write_all(bytes).map_err(|e| self.io(tmp.path(), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| self.io(tmp.path(), e))?;
        let path = self.dir.join(name);
        tmp.persist(&path).map_err(|e| self.io(&path, e.error))?;
        Ok(())
    }

    fn name(&self) -> String {
        format!("oci:{}", self.dir.display())
    }

    fn io(&self, path: &Path, source: std::io::Error) -> ImageError {
        ImageError::Io {
            image: self.name(),
            path: path.to_path_buf(),
            source,
        }
    }

    fn bad(&self, reason: String) -> ImageError {
        ImageError::BadLayout {
            image: self.name(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_put_tag_and_find() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::create(&dir.path().join("lay")).unwrap();
        assert_eq!(
            fs::read_to_string(l.dir().join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        let d = l.put_blob_bytes(b"{}").unwrap();
        assert_eq!(d, Digest::sha256_of(b"{}"));
        assert_eq!(l.read_blob(&d).unwrap(), b"{}");
        let desc = |tag: &str| {
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": d.to_string(), "size": 2,
                   "annotations": {REF_NAME: tag}})
        };
        l.set_entry(desc("a:1")).unwrap();
        l.set_entry(desc("b:2")).unwrap();
        l.set_entry(desc("a:1")).unwrap();
        let names: Vec<_> = l
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.ref_name)
            .collect();
        assert_eq!(
            names,
            vec![Some("b:2".to_string()), Some("a:1".to_string())]
        );
        assert_eq!(l.find(Some("b:2")).unwrap().digest, d);
        assert!(matches!(
            l.find(Some("c")),
            Err(ImageError::NotFound { .. })
        ));
        assert!(matches!(l.find(None), Err(ImageError::NotFound { .. })));
        let reopened = Layout::open(l.dir()).unwrap();
        assert_eq!(reopened.entries().unwrap().len(), 2);
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::create(dir.path()).unwrap();
        let want = Digest::sha256_of(b"right");
        let err = l.put_blob_reader(&want, &b"wrong"[..]).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert!(!l.blob_path(&want).exists());
        let leftovers = fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_directory_without_oci_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Layout::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("oci-layout"), "{err}");
    }
}
