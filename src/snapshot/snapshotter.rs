//! containerd's snapshotter contract (containerd `snapshots.Snapshotter`,
//! FORMATS.md §4.3) over the metadata [`Store`] and a [`LayerMounter`].
//!
//! On-disk layout under the root:
//! - `metadata.redb`: the records;
//! - `snapshots/<id>/fs`: the snapshot's own layer (the upper while Active),
//!   in overlayfs format; `snapshots/<id>/work`: overlay workdir or the
//!   union's scratch dir;
//! - `mnt/<id>`: mount point of an Active/View snapshot's FUSE union.
//!
//! Presentation (see [`MountMode`]): an *extraction* snapshot (Prepare with
//! the `containerd.io/snapshot.ref` label, or a key whose last part starts
//! with `extract-`, as containerd's unpacker makes them) whose parents are all
//! local gets the kernel-overlay shape, so containerd 1.6 writes the layer
//! straight into `fs`, converting whiteouts itself. Every other Active or
//! View snapshot — container roots — is one FUSE union at `mnt/<id>`,
//! returned to containerd as a bind mount.
//!
//! Every method blocks (disk, mount syscalls); call them off the async
//! reactor (`spawn_blocking`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::SnapshotError;
use super::filter::{self, Adaptor, Filter};
use super::implicit::restore_implicit_dir_times;
use super::mounter::LayerMounter;
use super::mounts::{self, Mount};
use super::remote::RemoteContext;
use super::remote_prepare::RemoteLower;
use super::store::{Info, Kind, MountMode, Record, Store, now_ns};
use super::usage::disk_usage;
use crate::fs::{MountSpec, MountState};
use crate::oci::labels;

/// Counts and mounts, for the Control service's Status.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Active snapshots.
    pub active: u64,
    /// Views.
    pub view: u64,
    /// Committed snapshots.
    pub committed: u64,
    /// `(key, mountpoint, state)` of every FUSE-presented snapshot.
    pub mounts: Vec<(String, PathBuf, MountState)>,
}

/// The snapshotter.
#[derive(Debug)]
pub struct Snapshotter {
    pub(super) root: PathBuf,
    pub(super) store: Store,
    pub(super) mounter: Arc<dyn LayerMounter>,
    /// Registry + cache for lazily served layers; `None` serves local layers only.
    pub(super) remote: Option<Arc<RemoteContext>>,
    /// The remote lowers of committed remote snapshots, by snapshot id: the
    /// union finds them by layer dir; this map keeps them alive.
    pub(super) remote_lowers: Mutex<HashMap<u64, RemoteLower>>,
    /// (target chain ID, parent) → the remote snapshot last handed out for it.
    pub(super) handed: Mutex<HashMap<(String, Option<String>), String>>,
    /// Snapshot ids whose dirs exist before their record (a layer being
    /// unpacked by lazysnap): Cleanup leaves them alone.
    pub(super) reserved: Mutex<std::collections::HashSet<u64>>,
}

impl Adaptor for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.name.clone()),
            [f] if f == "parent" => Some(self.parent.clone().unwrap_or_default()),
            [f] if f == "kind" => Some(self.kind.as_str().to_string()),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
                self.labels.get(&rest.join(".")).cloned()
            }
            _ => None,
        }
    }
}

fn check_labels(map: &BTreeMap<String, String>) -> Result<(), SnapshotError> {
    for (k, v) in map {
        labels::validate(k, v).map_err(SnapshotError::InvalidArgument)?;
    }
    Ok(())
}

fn is_extraction(key: &str, labels: &BTreeMap<String, String>) -> bool {
    labels.contains_key(labels::TARGET_REF)
        || key
            .rsplit('/')
            .next()
            .is_some_and(|last| last.starts_with("extract-"))
        || key.contains("/extract-")
}

impl Snapshotter {
    /// Opens the state under `root` (creating it), then reconciles: FUSE
    /// mounts of Active/View snapshots that are dead (ENOTCONN) are detached
    /// and mounted again at the same path, missing ones are mounted, and dirs
    /// that no record owns are removed.
    ///
    /// # Errors
    /// [`SnapshotError`] when the root or the database cannot be opened.
    pub fn open(
        root: &Path,
        mounter: Arc<dyn LayerMounter>,
        remote: Option<Arc<RemoteContext>>,
    ) -> Result<Self, SnapshotError> {
        for d in [root.to_path_buf(), root.join("snapshots"), root.join("mnt")] {
            std::fs::create_dir_all(&d).map_err(|e| SnapshotError::io("", &d, e))?;
        }
        let store = Store::open(&root.join("metadata.redb"))?;
        let s = Snapshotter {
            root: root.to_path_buf(),
            store,
            mounter,
            remote,
            remote_lowers: Mutex::new(HashMap::new()),
            handed: Mutex::new(HashMap::new()),
            reserved: Mutex::new(Default::default()),
        };
        s.reopen_remote_layers()?;
        s.reconcile()?;
        Ok(s)
    }

    pub(super) fn layer_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string()).join("fs")
    }
    pub(super) fn work_dir(&self, id: u64) -> PathBuf {
        self.root
            .join("snapshots")
            .join(id.to_string())
            .join("work")
    }
    pub(super) fn mount_point(&self, id: u64) -> PathBuf {
        self.root.join("mnt").join(id.to_string())
    }

    /// Layer dirs of `parent` and its ancestors, nearest first.
    pub(super) fn lower_dirs(&self, parent: Option<&str>) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut out = Vec::new();
        let mut next = parent.map(str::to_string);
        while let Some(key) = next {
            let rec = self
                .store
                .get(&key)?
                .ok_or_else(|| SnapshotError::NotFound(key.clone()))?;
            out.push(self.layer_dir(rec.id));
            next = rec.parent;
        }
        Ok(out)
    }

    fn fuse_spec(&self, key: &str, rec: &Record) -> Result<MountSpec, SnapshotError> {
        Ok(MountSpec {
            lowers: self.lower_dirs(rec.parent.as_deref())?,
            upper: (rec.kind == Kind::Active).then(|| self.layer_dir(rec.id)),
            work: self.work_dir(rec.id),
            mountpoint: self.mount_point(rec.id),
            fsname: format!("lazysnap:{}", truncate_key(key)),
        })
    }

    fn mounts_of(&self, rec: &Record) -> Result<Vec<Mount>, SnapshotError> {
        Ok(match rec.mount_mode {
            MountMode::Fuse => vec![mounts::bind(
                &self.mount_point(rec.id),
                rec.kind == Kind::View,
            )],
            MountMode::Overlay | MountMode::None => {
                let lowers = self.lower_dirs(rec.parent.as_deref())?;
                let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
                let (u, w) = (self.layer_dir(rec.id), self.work_dir(rec.id));
                let upper = (rec.kind == Kind::Active).then_some((u.as_path(), w.as_path()));
                if upper.is_none() && lowers.is_empty() {
                    // A view of nothing: an empty read-only dir.
                    vec![mounts::bind(&self.layer_dir(rec.id), true)]
                } else {
                    vec![mounts::overlay(&lowers, upper)]
                }
            }
        })
    }

    /// Creates an Active snapshot `key` over `parent` and returns its mounts.
    ///
    /// # Errors
    /// `AlreadyExists` for a taken key, `NotFound` for a missing parent,
    /// `InvalidArgument` for a parent that is not Committed or bad labels,
    /// `Mount` when the union cannot be mounted (nothing is kept then).
    pub fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::Active, key, parent, labels)
    }

    /// Creates a read-only View `key` of `parent` and returns its mounts.
    ///
    /// # Errors
    /// As [`Snapshotter::prepare`].
    pub fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument(
                "snapshot key must not be empty".to_string(),
            ));
        }
        check_labels(&labels)?;
        if kind == Kind::Active {
            self.try_remote(key, parent, &labels)?;
        }
        // Containerd writes an extraction straight into the upper of a kernel
        // overlay, which only works over local layer dirs; over a remote
        // parent it applies the layer through the union instead.
        let mode = if kind == Kind::Active
            && is_extraction(key, &labels)
            && !self.has_remote_ancestor(parent)?
        {
            MountMode::Overlay
        } else {
            MountMode::Fuse
        };
        let now = now_ns();
        let rec = self.store.write(|t| {
            if t.get(key)?.is_some() {
                return Err(SnapshotError::AlreadyExists(key.to_string()));
            }
            t.check_parent(parent, key)?;
            let rec = Record {
                id: t.next_id()?,
                parent: parent.map(str::to_string),
                kind,
                labels,
                created_ns: now,
                updated_ns: now,
                mount_mode: mode,
                remote: None,
            };
            t.put(key, &rec)?;
            Ok(rec)
        })?;
        let result = self.materialize(key, &rec);
        if let Err(e) = result {
            warn!(key, error = %e, "prepare failed; removing the new snapshot");
            let _ = self.store.write(|t| t.delete(key));
            self.remove_dirs(rec.id);
            return Err(e);
        }
        self.mounts_of(&rec)
    }

    /// Creates the dirs of a new record and mounts its union if it has one.
    fn materialize(&self, key: &str, rec: &Record) -> Result<(), SnapshotError> {
        for d in [self.layer_dir(rec.id), self.work_dir(rec.id)] {
            std::fs::create_dir_all(&d).map_err(|e| SnapshotError::io(key, &d, e))?;
        }
        if rec.mount_mode == MountMode::Fuse {
            self.mount_union(key, rec)?;
        }
        Ok(())
    }

    /// Unmounts the FUSE union of `rec` (lazily when busy), if it has one.
    fn unmount_union(&self, key: &str, rec: &Record) -> Result<(), SnapshotError> {
        if rec.mount_mode != MountMode::Fuse {
            return Ok(());
        }
        self.mounter
            .unmount(&self.mount_point(rec.id))
            .map_err(|source| SnapshotError::Mount {
                key: key.to_string(),
                source,
            })
    }

    /// Mounts the FUSE union of `rec` at its mount point.
    fn mount_union(&self, key: &str, rec: &Record) -> Result<(), SnapshotError> {
        let mp = self.mount_point(rec.id);
        std::fs::create_dir_all(&mp).map_err(|e| SnapshotError::io(key, &mp, e))?;
        let spec = self.fuse_spec(key, rec)?;
        self.mounter
            .mount(spec)
            .map_err(|source| SnapshotError::Mount {
                key: key.to_string(),
                source,
            })
    }

    /// Mounts of an Active or View snapshot.
    ///
    /// # Errors
    /// `NotFound`, or `FailedPrecondition` for a Committed snapshot.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let rec = self.get(key)?;
        if rec.kind == Kind::Committed {
            return Err(SnapshotError::FailedPrecondition {
                key: key.to_string(),
                reason: "is committed, not active or view: it has no mounts".to_string(),
            });
        }
        self.check_remote_health(rec.parent.as_deref())?;
        self.mounts_of(&rec)
    }

    pub(super) fn get(&self, key: &str) -> Result<Record, SnapshotError> {
        self.store
            .get(key)?
            .ok_or_else(|| SnapshotError::NotFound(key.to_string()))
    }

    /// Commits Active `key` as `name` (its layer dir becomes immutable and
    /// the key disappears); `labels` replace the snapshot's labels.
    ///
    /// # Errors
    /// `NotFound` for a missing key, `FailedPrecondition` when it is not
    /// Active, `AlreadyExists` when `name` is taken, `Mount` when its union
    /// cannot be unmounted.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        if name.is_empty() {
            return Err(SnapshotError::InvalidArgument(format!(
                "commit of snapshot {key:?}: name must not be empty"
            )));
        }
        check_labels(&labels)?;
        let rec = self.get(key)?;
        if rec.kind != Kind::Active {
            return Err(SnapshotError::FailedPrecondition {
                key: key.to_string(),
                reason: format!(
                    "is {}, only an active snapshot can be committed",
                    rec.kind.as_str()
                ),
            });
        }
        if self.store.get(name)?.is_some() {
            return Err(SnapshotError::AlreadyExists(name.to_string()));
        }
        if rec.mount_mode == MountMode::Overlay && rec.parent.is_some() {
            let lowers = self.lower_dirs(rec.parent.as_deref())?;
            let dir = self.layer_dir(rec.id);
            match restore_implicit_dir_times(&dir, &lowers, rec.created_ns) {
                Ok(n) if n > 0 => info!(
                    key,
                    dirs = n,
                    "implicit parent dirs keep the parent layer's times"
                ),
                Ok(_) => {}
                Err((p, e)) => return Err(SnapshotError::io(key, p, e)),
            }
        }
        // The upper becomes a lower: nothing may write to it any more.
        self.unmount_union(key, &rec)?;
        let _ = std::fs::remove_dir(self.mount_point(rec.id));
        let now = now_ns();
        self.store.write(|t| {
            let cur = t
                .get(key)?
                .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
            if t.get(name)?.is_some() {
                return Err(SnapshotError::AlreadyExists(name.to_string()));
            }
            let committed = Record {
                kind: Kind::Committed,
                labels,
                updated_ns: now,
                created_ns: now,
                mount_mode: MountMode::None,
                ..cur
            };
            t.delete(key)?;
            t.put(name, &committed)
        })?;
        info!(key, name, "committed");
        Ok(())
    }

    /// Removes `key` (any kind): unmounts its union (lazily when busy), drops
    /// the record, then deletes its dirs.
    ///
    /// # Errors
    /// `NotFound`, or `FailedPrecondition` when another snapshot has it as
    /// parent.
    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let rec = self.get(key)?;
        if self.store.write(|t| t.has_children(key))? {
            return Err(SnapshotError::FailedPrecondition {
                key: key.to_string(),
                reason: "cannot remove snapshot with child".to_string(),
            });
        }
        self.unmount_union(key, &rec)?;
        self.store.write(|t| {
            if t.has_children(key)? {
                return Err(SnapshotError::FailedPrecondition {
                    key: key.to_string(),
                    reason: "cannot remove snapshot with child".to_string(),
                });
            }
            t.delete(key)
        })?;
        // Removing the snapshot stops its background fetch and frees its chunks.
        self.forget_remote(rec.id);
        self.remove_dirs(rec.id);
        info!(key, "removed");
        Ok(())
    }

    fn remove_dirs(&self, id: u64) {
        let mp = self.mount_point(id);
        if mp.exists()
            && self.mounter.state(&mp) != MountState::Absent
            && let Err(e) = self.mounter.unmount(&mp)
        {
            warn!(path = %mp.display(), error = %e, "cannot unmount; leaving dir");
            return;
        }
        let _ = std::fs::remove_dir(&mp);
        let dir = self.root.join("snapshots").join(id.to_string());
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %dir.display(), error = %e, "cannot remove snapshot dir; Cleanup retries");
        }
    }

    /// Info of `key`.
    ///
    /// # Errors
    /// `NotFound`.
    pub fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        Ok(self.get(key)?.info(key))
    }

    /// Updates the mutable fields of `info.name` named by `paths` (`labels`
    /// replaces all labels, `labels.<key>` sets or deletes one; an empty list
    /// means all mutable fields, i.e. the labels).
    ///
    /// # Errors
    /// `NotFound`, or `InvalidArgument` for an immutable or unknown field.
    pub fn update(&self, info: Info, paths: &[String]) -> Result<Info, SnapshotError> {
        check_labels(&info.labels)?;
        let key = info.name.clone();
        self.store.write(|t| {
            let mut rec = t
                .get(&key)?
                .ok_or_else(|| SnapshotError::NotFound(key.clone()))?;
            if paths.is_empty() {
                rec.labels = info.labels.clone();
            }
            for p in paths {
                if p == "labels" {
                    rec.labels = info.labels.clone();
                } else if let Some(k) = p.strip_prefix("labels.") {
                    match info.labels.get(k) {
                        Some(v) => rec.labels.insert(k.to_string(), v.clone()),
                        None => rec.labels.remove(k),
                    };
                } else {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "cannot update {p:?} field of snapshot {key:?}: only labels are mutable"
                    )));
                }
            }
            rec.updated_ns = now_ns();
            t.put(&key, &rec)?;
            Ok(rec.info(&key))
        })
    }

    /// Infos matching any of `filters` (all when empty), ordered by name;
    /// only those of `namespace` (keys starting `<namespace>/`) when given.
    ///
    /// # Errors
    /// `InvalidArgument` for a filter that does not parse.
    pub fn list(
        &self,
        filters: &[String],
        namespace: Option<&str>,
    ) -> Result<Vec<Info>, SnapshotError> {
        let prefix = namespace.map(|ns| format!("{ns}/"));
        let parsed: Vec<Filter> = filters
            .iter()
            .map(|f| filter::parse(f).map_err(SnapshotError::InvalidArgument))
            .collect::<Result<_, _>>()?;
        Ok(self
            .store
            .all()?
            .into_iter()
            .filter(|(k, _)| prefix.as_deref().is_none_or(|p| k.starts_with(p)))
            .map(|(k, r)| r.info(&k))
            .filter(|i| filter::matches_any(&parsed, i))
            .collect::<Vec<_>>())
        .map(|mut infos| {
            // The snapshot just handed out for a lookup comes first (see
            // `hand_out`); the order is otherwise by name.
            let handed = self.handed.lock().unwrap_or_else(|p| p.into_inner());
            infos.sort_by_key(|i| {
                let target = i
                    .labels
                    .get(labels::TARGET_REF)
                    .cloned()
                    .unwrap_or_default();
                handed.get(&(target, i.parent.clone())) != Some(&i.name)
            });
            infos
        })
    }

    /// `(bytes, inodes)` of the snapshot's own layer dir.
    ///
    /// # Errors
    /// `NotFound`, or `Io` when the dir cannot be walked.
    pub fn usage(&self, key: &str) -> Result<(i64, i64), SnapshotError> {
        let rec = self.get(key)?;
        disk_usage(&self.layer_dir(rec.id)).map_err(|(p, e)| SnapshotError::io(key, p, e))
    }

    /// Removes dirs under `snapshots/` and `mnt/` that no record owns.
    ///
    /// # Errors
    /// `Store` on a database failure.
    pub fn cleanup(&self) -> Result<(), SnapshotError> {
        // List the dirs first, then read the records: a snapshot created in
        // between has its record by then (records are written before their
        // dirs, except for ids reserved while a layer is being unpacked).
        let mut found = Vec::new();
        for sub in ["snapshots", "mnt"] {
            let Ok(rd) = std::fs::read_dir(self.root.join(sub)) else {
                continue;
            };
            for e in rd.flatten() {
                let id = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok());
                found.push((e.path(), id));
            }
        }
        let ids: std::collections::HashSet<u64> =
            self.store.all()?.into_iter().map(|(_, r)| r.id).collect();
        let reserved = self
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (path, id) in found {
            match id {
                Some(id) if ids.contains(&id) || reserved.contains(&id) => {}
                Some(id) => {
                    info!(path = %path.display(), "removing orphaned dir");
                    self.remove_dirs(id);
                }
                None => warn!(path = %path.display(), "unexpected entry in state root"),
            }
        }
        Ok(())
    }

    /// Counts and mount states.
    ///
    /// # Errors
    /// `Store`.
    pub fn status(&self) -> Result<Status, SnapshotError> {
        let mut st = Status::default();
        for (key, rec) in self.store.all()? {
            match rec.kind {
                Kind::Active => st.active += 1,
                Kind::View => st.view += 1,
                Kind::Committed => st.committed += 1,
            }
            if rec.mount_mode == MountMode::Fuse {
                let mp = self.mount_point(rec.id);
                let state = self.mounter.state(&mp);
                st.mounts.push((key, mp, state));
            }
        }
        Ok(st)
    }

    fn reconcile(&self) -> Result<(), SnapshotError> {
        for (key, rec) in self.store.all()? {
            if rec.mount_mode != MountMode::Fuse {
                continue;
            }
            let mp = self.mount_point(rec.id);
            match self.mounter.state(&mp) {
                MountState::Live => continue,
                MountState::Dead => {
                    info!(key, path = %mp.display(), "detaching dead mount");
                    if let Err(e) = self.mounter.unmount(&mp) {
                        warn!(key, error = %e, "cannot detach dead mount");
                        continue;
                    }
                }
                MountState::Absent => {}
            }
            match self.mount_union(&key, &rec) {
                Ok(()) => info!(key, path = %mp.display(), "remounted"),
                Err(e) => warn!(key, error = %e, "cannot remount snapshot"),
            }
        }
        self.cleanup()
    }
}

/// fsname must fit the kernel's option buffer and contain no commas.
fn truncate_key(key: &str) -> String {
    let s: String = key
        .chars()
        .map(|c| {
            if c == ',' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    s.chars().take(96).collect()
}
