//! Thin wrappers of the Leases, Snapshots, Diff and Images RPCs: each makes
//! the request with the namespace and lease headers and names what failed.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Info as SnapshotInfo, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, CreateRequest as CreateLeaseRequest,
    DeleteRequest as DeleteLeaseRequest, GetImageRequest, Image, ListImagesRequest,
    UpdateImageRequest,
};
use containerd_client::types::{Descriptor, Mount};
use tonic::Code;

use super::plan::{GC_EXPIRE, random3, rfc3339};
use super::{Ctrd, CtrdError};

impl Ctrd {
    /// Creates a lease that containerd's GC drops after `expire` even if it
    /// is never deleted (label `containerd.io/gc.expire`); returns its id.
    ///
    /// # Errors
    ///
    /// [`CtrdError::Rpc`] naming `Leases.Create`.
    pub async fn create_lease(&self, expire: Duration) -> Result<String, CtrdError> {
        use base64::Engine as _;
        let now = SystemTime::now();
        let nanos = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let id = format!(
            "lazysnap-pull-{nanos}-{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random3())
        );
        let mut labels = HashMap::new();
        labels.insert(GC_EXPIRE.to_string(), rfc3339(now + expire));
        LeasesClient::new(self.channel())
            .create(self.request(CreateLeaseRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(|s| CtrdError::rpc("Leases.Create", &id, s))?;
        Ok(id)
    }

    /// Deletes lease `id` (what it held becomes collectable unless
    /// referenced otherwise).
    ///
    /// # Errors
    ///
    /// [`CtrdError::Rpc`] naming `Leases.Delete`.
    pub async fn delete_lease(&self, id: &str) -> Result<(), CtrdError> {
        LeasesClient::new(self.channel())
            .delete(self.request(DeleteLeaseRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await
            .map_err(|s| CtrdError::rpc("Leases.Delete", id, s))?;
        Ok(())
    }

    /// `Snapshots.Stat`: the snapshot's info, `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// [`CtrdError::Rpc`] for errors other than NotFound.
    pub async fn stat_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<Option<SnapshotInfo>, CtrdError> {
        let req = StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        match SnapshotsClient::new(self.channel())
            .stat(self.request(req))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(CtrdError::rpc("Snapshots.Stat", key, s)),
        }
    }

    /// `Snapshots.Prepare`: the mounts of the new active snapshot.
    ///
    /// # Errors
    ///
    /// [`CtrdError::Rpc`] naming `Snapshots.Prepare` and the key (AlreadyExists
    /// included: the caller decides what it means).
    pub async fn prepare_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, CtrdError> {
        let req = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels,
        };
        let r = SnapshotsClient::new(self.channel())
            .prepare(self.request(req))
            .await
            .map_err(|s| CtrdError::rpc("Snapshots.Prepare", key, s))?;
        Ok(r.into_inner().mounts)
    }

    /// `Snapshots.Commit` of active `key` as `name`.
    ///
    /// # Errors
    ///
    /// [`CtrdError::Rpc`] naming `Snapshots.Commit` and the name.
    pub async fn commit_snapshot(
        &self,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), CtrdError> {
        let req = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: name.to_string(),
            key: key.to_string(),
            labels,
        };
        SnapshotsClient::new(self.channel())
            .commit(self.request(req))
            .await
            .map_err(|s| CtrdError::rpc("Snapshots.Commit", name, s))?;
        Ok(())
    }

    /// `Snapshots.Remove` of `key`.
    ///
    /// # Errors
    ///
    /// [`CtrdError::Rpc`] naming `Snapshots.Remove` and the key.
    pub async fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Result<(), CtrdError> {
        let req = RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        SnapshotsClient::new(self.channel())
            .remove(self.request(req))
            .await
            .map_err(|s| CtrdError::rpc("Snapshots.Remove", key, s))?;
        Ok(())
    }

    /// `Diff.Apply`: extracts the layer blob `layer` (already in the content
    /// store) onto `mounts`; returns the descriptor of what was applied (its
    /// digest is the uncompressed digest).
    ///
    /// # Errors
    ///
    /// [`CtrdError::Rpc`] naming `Diff.Apply` and the layer digest,
    /// [`CtrdError::MissingField`] for an answer without a descriptor.
    pub async fn apply_diff(
        &self,
        layer: Descriptor,
        mounts: Vec<Mount>,
    ) -> Result<Descriptor, CtrdError> {
        let what = layer.digest.clone();
        let req = ApplyRequest {
            diff: Some(layer),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        };
        let r = DiffClient::new(self.channel())
            .apply(self.request(req))
            .await
            .map_err(|s| CtrdError::rpc("Diff.Apply", what, s))?;
        r.into_inner().applied.ok_or(CtrdError::MissingField {
            rpc: "Diff.Apply",
            field: "applied",
        })
    }

    /// Creates image `name` pointing at `target`, or updates it (target and
    /// labels) when it exists, as containerd's client does after a pull.
    ///
    /// # Errors
    ///
    /// [`CtrdError::Rpc`] naming `Images.Create` or `Images.Update` and the name.
    pub async fn create_or_update_image(
        &self,
        name: &str,
        target: Descriptor,
        labels: HashMap<String, String>,
    ) -> Result<(), CtrdError> {
        let image = Image {
            name: name.to_string(),
            labels,
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let mut client = ImagesClient::new(self.channel());
        let created = client
            .create(self.request(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                client
                    .update(self.request(UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    }))
                    .await
                    .map_err(|s| CtrdError::rpc("Images.Update", name, s))?;
                Ok(())
            }
            Err(s) => Err(CtrdError::rpc("Images.Create", name, s)),
        }
    }

    /// Image `name` of the namespace, if it exists.
    ///
    /// # Errors
    /// [`CtrdError::Rpc`] naming `Images.Get` (other than NotFound).
    pub async fn get_image(&self, name: &str) -> Result<Option<Image>, CtrdError> {
        match ImagesClient::new(self.channel())
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(CtrdError::rpc("Images.Get", name, s)),
        }
    }

    /// The names of the namespace's images.
    ///
    /// # Errors
    /// [`CtrdError::Rpc`] naming `Images.List`.
    pub async fn list_image_names(&self) -> Result<Vec<String>, CtrdError> {
        let r = ImagesClient::new(self.channel())
            .list(self.request(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(|s| CtrdError::rpc("Images.List", "", s))?;
        Ok(r.into_inner().images.into_iter().map(|i| i.name).collect())
    }
}
