//! The metadata store: one record per snapshot in an embedded transactional
//! database (redb), under `<root>/metadata.redb`.
//!
//! Tables (schema version [`SCHEMA_VERSION`]):
//! - `meta`: `"schema_version"` → u64, `"next_id"` → u64.
//! - `snapshots`: backend key → JSON of [`Record`].
//!
//! Every change is one redb write transaction committed with immediate
//! durability, so a killed daemon leaves either the old or the new state,
//! never half of one.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// Version of the table layout and record encoding.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");

/// Snapshot kind (containerd `snapshots.Kind`; proto enum `Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, cannot be committed.
    View,
    /// Writable, can be committed.
    Active,
    /// Immutable; a parent for others.
    Committed,
}

impl Kind {
    /// The name containerd's filters use: `view`, `active`, `committed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// How an Active/View snapshot is presented to containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountMode {
    /// Kernel overlay (or a plain bind without parents) over the layer dirs:
    /// used for extraction snapshots whose parents are all local, so
    /// containerd 1.6 writes straight into the upper dir.
    Overlay,
    /// One lazysnap FUSE union at `<root>/mnt/<id>`, returned as a bind mount.
    Fuse,
    /// Committed snapshots are not mounted.
    None,
}

/// A remote layer a committed snapshot stands for (filled by the lazy-pull
/// work; absent for local layers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// Image reference the layer was resolved through.
    pub reference: String,
    /// Compressed layer digest (`sha256:…`).
    pub layer_digest: String,
    /// TOC digest (`containerd.io/snapshot/stargz/toc.digest` or manifest-checksum).
    pub toc_digest: String,
    /// Layer media type.
    pub media_type: String,
    /// Compressed blob size in bytes.
    pub size: u64,
    /// Blob offset of the TOC (chunk extents end there).
    #[serde(default)]
    pub toc_offset: u64,
    /// `gzip` or `zstd` members.
    #[serde(default)]
    pub compression: String,
}

/// One snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Numeric id: names `<root>/snapshots/<id>` and `<root>/mnt/<id>`.
    pub id: u64,
    /// Backend key of the parent (a Committed snapshot), if any.
    pub parent: Option<String>,
    /// Kind.
    pub kind: Kind,
    /// Labels, as containerd forwarded them.
    pub labels: BTreeMap<String, String>,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_ns: i128,
    /// Last update time, nanoseconds since the Unix epoch.
    pub updated_ns: i128,
    /// Presentation of an Active/View snapshot.
    pub mount_mode: MountMode,
    /// Remote layer, for lazily served committed snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteLayer>,
}

/// A snapshot as the API shows it (containerd `snapshots.Info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Backend key (for Committed: the name).
    pub name: String,
    /// Parent name, if any.
    pub parent: Option<String>,
    /// Kind.
    pub kind: Kind,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Created, ns since epoch.
    pub created_ns: i128,
    /// Updated, ns since epoch.
    pub updated_ns: i128,
}

impl Record {
    /// The API view of this record under `key`.
    pub fn info(&self, key: &str) -> Info {
        Info {
            name: key.to_string(),
            parent: self.parent.clone(),
            kind: self.kind,
            labels: self.labels.clone(),
            created_ns: self.created_ns,
            updated_ns: self.updated_ns,
        }
    }
}

/// Current time in ns since the Unix epoch.
pub fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// The metadata database.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

/// Changes made inside one transaction (see [`Store::write`]).
pub struct Txn<'a> {
    snapshots: redb::Table<'a, &'static str, &'static [u8]>,
    meta: redb::Table<'a, &'static str, u64>,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Txn")
    }
}

impl Txn<'_> {
    /// Reads the record under `key`.
    ///
    /// # Errors
    /// [`SnapshotError::Store`] on a database or decoding failure.
    pub fn get(&self, key: &str) -> Result<Option<Record>, SnapshotError> {
        match self.snapshots.get(key)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    /// Writes `rec` under `key`.
    ///
    /// # Errors
    /// [`SnapshotError::Store`].
    pub fn put(&mut self, key: &str, rec: &Record) -> Result<(), SnapshotError> {
        let bytes = serde_json::to_vec(rec)?;
        self.snapshots.insert(key, bytes.as_slice())?;
        Ok(())
    }

    /// Deletes `key`.
    ///
    /// # Errors
    /// [`SnapshotError::Store`].
    pub fn delete(&mut self, key: &str) -> Result<(), SnapshotError> {
        self.snapshots.remove(key)?;
        Ok(())
    }

    /// Whether any snapshot names `key` as its parent.
    ///
    /// # Errors
    /// [`SnapshotError::Store`].
    pub fn has_children(&self, key: &str) -> Result<bool, SnapshotError> {
        for item in self.snapshots.iter()? {
            let (_, v) = item?;
            let rec: Record = serde_json::from_slice(v.value())?;
            if rec.parent.as_deref() == Some(key) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Checks that `parent`, the parent asked for `key`, exists and is
    /// Committed (containerd's bolt store rules).
    ///
    /// # Errors
    /// `NotFound` for a missing parent, `InvalidArgument` for one that is not
    /// Committed, [`SnapshotError::Store`].
    pub fn check_parent(&self, parent: Option<&str>, key: &str) -> Result<(), SnapshotError> {
        let Some(p) = parent else { return Ok(()) };
        let prec = self
            .get(p)?
            .ok_or_else(|| SnapshotError::NotFound(p.to_string()))?;
        if prec.kind != Kind::Committed {
            return Err(SnapshotError::InvalidArgument(format!(
                "parent {p:?} of snapshot {key:?} is not committed"
            )));
        }
        Ok(())
    }

    /// Allocates a new snapshot id.
    ///
    /// # Errors
    /// [`SnapshotError::Store`].
    pub fn next_id(&mut self) -> Result<u64, SnapshotError> {
        let id = self.meta.get("next_id")?.map(|v| v.value()).unwrap_or(1);
        self.meta.insert("next_id", id + 1)?;
        Ok(id)
    }
}

impl Store {
    /// Opens (or creates) the database at `path` and checks its schema version.
    ///
    /// # Errors
    /// [`SnapshotError::Store`] when the file is unreadable or has another
    /// schema version.
    pub fn open(path: &Path) -> Result<Store, SnapshotError> {
        // A daemon killed a moment ago may still hold the file lock while the
        // kernel tears its threads down: wait for it, as a restart would.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match Database::create(path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(SnapshotError::Store(format!("{}: {e}", path.display())));
                }
            }
        };
        let store = Store { db };
        let found = store.write(|t| {
            let v = t.meta.get("schema_version")?.map(|v| v.value());
            if v.is_none() {
                t.meta.insert("schema_version", SCHEMA_VERSION)?;
            }
            Ok(v)
        })?;
        if let Some(v) = found
            && v != SCHEMA_VERSION
        {
            return Err(SnapshotError::Store(format!(
                "{}: schema version {v}, this lazysnap reads {SCHEMA_VERSION}",
                path.display()
            )));
        }
        Ok(store)
    }

    /// Runs `f` in one write transaction and commits it when `f` returns `Ok`
    /// (an `Err` aborts: nothing `f` wrote is kept).
    ///
    /// # Errors
    /// What `f` returns, or [`SnapshotError::Store`].
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let wtx = self.db.begin_write()?;
        let out = {
            let mut txn = Txn {
                snapshots: wtx.open_table(SNAPSHOTS)?,
                meta: wtx.open_table(META)?,
            };
            f(&mut txn)
        };
        match out {
            Ok(v) => {
                wtx.commit()?;
                Ok(v)
            }
            Err(e) => {
                wtx.abort()?;
                Err(e)
            }
        }
    }

    /// Reads one record.
    ///
    /// # Errors
    /// [`SnapshotError::Store`].
    pub fn get(&self, key: &str) -> Result<Option<Record>, SnapshotError> {
        let rtx = self.db.begin_read()?;
        let table = match rtx.open_table(SNAPSHOTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.get(key)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    /// All records, ordered by key.
    ///
    /// # Errors
    /// [`SnapshotError::Store`].
    pub fn all(&self) -> Result<Vec<(String, Record)>, SnapshotError> {
        let rtx = self.db.begin_read()?;
        let table = match rtx.open_table(SNAPSHOTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), serde_json::from_slice(v.value())?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, parent: Option<&str>) -> Record {
        Record {
            id,
            parent: parent.map(str::to_string),
            kind: Kind::Committed,
            labels: BTreeMap::new(),
            created_ns: 1,
            updated_ns: 2,
            mount_mode: MountMode::None,
            remote: None,
        }
    }

    #[test]
    fn records_survive_reopen_and_aborted_txn_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.redb");
        {
            let s = Store::open(&path).unwrap();
            s.write(|t| {
                let id = t.next_id()?;
                t.put("a", &rec(id, None))
            })
            .unwrap();
            let err = s
                .write(|t| {
                    t.put("b", &rec(9, Some("a")))?;
                    Err::<(), _>(SnapshotError::InvalidArgument("boom".into()))
                })
                .unwrap_err();
            assert!(matches!(err, SnapshotError::InvalidArgument(_)));
        }
        let s = Store::open(&path).unwrap();
        let all = s.all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "a");
        assert_eq!(all[0].1, rec(1, None));
        assert_eq!(s.write(|t| t.next_id()).unwrap(), 2);
    }

    #[test]
    fn children_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("m")).unwrap();
        s.write(|t| {
            t.put("p", &rec(1, None))?;
            t.put("c", &rec(2, Some("p")))
        })
        .unwrap();
        assert!(s.write(|t| t.has_children("p")).unwrap());
        assert!(!s.write(|t| t.has_children("c")).unwrap());
    }
}
