//! Running a container through containerd's API (Containers, Tasks and
//! Snapshots services), as `lazysnap convert --optimize` and `commit` need:
//!
//! - [`prepare_run_snapshot`]: an Active snapshot over an image's top chain
//!   ID, with a unique key;
//! - [`run_to_exit`]: container + task from a [`RunSpec`] on an already
//!   prepared snapshot, stdout/stderr to files, wait with a timeout (then
//!   SIGKILL), and always delete task and container again;
//! - [`pause`], [`resume`], [`task_status`], [`container_snapshot`] for
//!   containers someone else runs (`lazysnap commit <container>`).
//!
//! The runtime is `io.containerd.runc.v2`; the OCI runtime spec is built in
//! [`spec::build_spec`] (see there for what it holds).

mod spec;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::MountsRequest;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest, PauseTaskRequest,
    ResumeTaskRequest, StartRequest, WaitRequest,
};
use containerd_client::types::Mount;
use containerd_client::types::v1::Status as ProcStatus;
use tonic::Code;

pub use spec::{
    DEFAULT_PATH, ImageConfigProcess, build_spec, file_uri, merge_env, resolve_user, rootfs_dirs,
};

use super::plan::{random3, rfc3339};
use super::{Ctrd, CtrdError};

/// The runtime containers are created with.
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// The `Any` type URL of an OCI runtime spec in a container record (JSON).
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Snapshot label that keeps a snapshot from containerd's garbage collector.
pub const GC_ROOT: &str = "containerd.io/gc.root";
/// How long to wait for a task to exit after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// One container to run to its exit.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Container id (unique in the namespace; also the hostname).
    pub id: String,
    /// The image config's process (args, env, cwd, user).
    pub image_config: ImageConfigProcess,
    /// Replaces the whole argv (entrypoint and cmd), as `ctr run IMAGE ID
    /// ARGS…` does; `None` runs the image's.
    pub args_override: Option<Vec<String>>,
    /// `NAME=value` added to the image's env (replacing the same names).
    pub env_extra: Vec<String>,
    /// Image name recorded in the container (may be empty).
    pub image: String,
    /// Snapshotter of `snapshot_key`, e.g. `lazysnap`.
    pub snapshotter: String,
    /// An Active snapshot prepared by the caller (it stays after the run).
    pub snapshot_key: String,
    /// Absolute host path the process' stdout goes to (created or truncated).
    pub stdout: PathBuf,
    /// Absolute host path of stderr (may equal `stdout`).
    pub stderr: PathBuf,
    /// How long the process may run before it is killed.
    pub timeout: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit status (128 + signal for a signalled process, so 137 after
    /// the timeout's SIGKILL); `None` when the task did not report one.
    pub exit_status: Option<u32>,
    /// Whether the timeout ran out and the task was killed.
    pub timed_out: bool,
}

/// A task's state (containerd `task.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Stopped,
    /// Frozen.
    Paused,
    /// Being frozen.
    Pausing,
    /// containerd does not know.
    Unknown,
}

impl From<i32> for TaskState {
    fn from(v: i32) -> Self {
        match ProcStatus::try_from(v) {
            Ok(ProcStatus::Created) => TaskState::Created,
            Ok(ProcStatus::Running) => TaskState::Running,
            Ok(ProcStatus::Stopped) => TaskState::Stopped,
            Ok(ProcStatus::Paused) => TaskState::Paused,
            Ok(ProcStatus::Pausing) => TaskState::Pausing,
            _ => TaskState::Unknown,
        }
    }
}

impl Ctrd {
    /// `Snapshots.Mounts` of active snapshot `key`.
    ///
    /// # Errors
    /// [`CtrdError::Rpc`] naming `Snapshots.Mounts` and the key.
    pub async fn snapshot_mounts(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<Vec<Mount>, CtrdError> {
        let req = MountsRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        let r = SnapshotsClient::new(self.channel())
            .mounts(self.request(req))
            .await
            .map_err(|s| CtrdError::rpc("Snapshots.Mounts", key, s))?;
        Ok(r.into_inner().mounts)
    }

    fn namespace_str(&self) -> &str {
        self.namespace.to_str().unwrap_or("default")
    }
}

/// Prepares an Active snapshot over `parent_chain_id` (an image's top chain
/// ID, [`super::plan::chain_ids`]) under the key
/// `<key_prefix>-<unix nanoseconds>-<6 random hex digits>`
/// and returns the key. It is labelled [`GC_ROOT`] so containerd's GC keeps
/// it until the caller removes it ([`Ctrd::remove_snapshot`]). The prefix
/// must not start with `extract-` (lazysnap would present an extraction
/// snapshot as a kernel overlay, not its recording union).
///
/// # Errors
/// [`CtrdError::Rpc`] naming `Snapshots.Prepare` (NotFound: the image is not
/// unpacked on that snapshotter).
pub async fn prepare_run_snapshot(
    ctrd: &Ctrd,
    snapshotter: &str,
    parent_chain_id: &str,
    key_prefix: &str,
) -> Result<String, CtrdError> {
    let now = SystemTime::now();
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let r = random3();
    let key = format!("{key_prefix}-{nanos}-{:02x}{:02x}{:02x}", r[0], r[1], r[2]);
    let mut labels = HashMap::new();
    labels.insert(GC_ROOT.to_string(), rfc3339(now));
    ctrd.prepare_snapshot(snapshotter, &key, parent_chain_id, labels)
        .await?;
    Ok(key)
}

/// Creates (or truncates) a stdio file so the shim appends to an empty one.
fn fresh_file(id: &str, path: &Path) -> Result<(), CtrdError> {
    let err = |e: std::io::Error| CtrdError::Run {
        container: id.to_string(),
        reason: format!("stdio file {}: {e}", path.display()),
    };
    if !path.is_absolute() {
        return Err(err(std::io::Error::other("not an absolute path")));
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    std::fs::File::create(path).map_err(err)?;
    Ok(())
}

/// Runs `spec` to its exit: creates the container (runtime [`RUNTIME`],
/// spec from [`build_spec`], the snapshot `spec.snapshot_key`), creates the
/// task on the snapshot's mounts (`Snapshots.Mounts`) with stdout/stderr as
/// `file://` URIs the shim writes to, starts it and waits up to
/// `spec.timeout`. On timeout the task is killed (SIGKILL, all processes)
/// and waited for. Then the task and the container are deleted, also when a
/// step failed; the snapshot stays (the caller prepared it).
///
/// The user of the image config is resolved by [`resolve_user`] (names are
/// read from the rootfs' `etc/passwd` before the task starts).
///
/// # Errors
/// [`CtrdError::Rpc`] naming the failed RPC (the first failure; a failed
/// clean-up after a good run is reported too), [`CtrdError::Run`] for a bad
/// user, stdio path or empty args.
pub async fn run_to_exit(ctrd: &Ctrd, spec: &RunSpec) -> Result<ExitInfo, CtrdError> {
    fresh_file(&spec.id, &spec.stdout)?;
    if spec.stderr != spec.stdout {
        fresh_file(&spec.id, &spec.stderr)?;
    }
    let mounts = ctrd
        .snapshot_mounts(&spec.snapshotter, &spec.snapshot_key)
        .await?;
    let (uid, gid) = resolve_user(&spec.id, &spec.image_config.user, &mounts)?;
    let oci = build_spec(spec, ctrd.namespace_str(), uid, gid)?;
    let value = serde_json::to_vec(&oci).map_err(|e| CtrdError::Run {
        container: spec.id.clone(),
        reason: format!("runtime spec: {e}"),
    })?;
    let container = Container {
        id: spec.id.clone(),
        image: spec.image.clone(),
        runtime: Some(Runtime {
            name: RUNTIME.to_string(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: SPEC_TYPE_URL.to_string(),
            value,
        }),
        snapshotter: spec.snapshotter.clone(),
        snapshot_key: spec.snapshot_key.clone(),
        ..Default::default()
    };
    ContainersClient::new(ctrd.channel())
        .create(ctrd.request(CreateContainerRequest {
            container: Some(container),
        }))
        .await
        .map_err(|s| CtrdError::rpc("Containers.Create", &spec.id, s))?;
    let ran = run_task(ctrd, spec, mounts).await;
    let cleaned = delete_task_and_container(ctrd, &spec.id).await;
    let info = ran?;
    cleaned?;
    Ok(info)
}

/// Creates, starts and waits for the task of container `spec.id`.
async fn run_task(ctrd: &Ctrd, spec: &RunSpec, mounts: Vec<Mount>) -> Result<ExitInfo, CtrdError> {
    let id = &spec.id;
    let mut tasks = TasksClient::new(ctrd.channel());
    tasks
        .create(ctrd.request(CreateTaskRequest {
            container_id: id.clone(),
            rootfs: mounts,
            stdout: file_uri(&spec.stdout),
            stderr: file_uri(&spec.stderr),
            ..Default::default()
        }))
        .await
        .map_err(|s| CtrdError::rpc("Tasks.Create", id, s))?;
    tasks
        .start(ctrd.request(StartRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        }))
        .await
        .map_err(|s| CtrdError::rpc("Tasks.Start", id, s))?;
    match tokio::time::timeout(spec.timeout, wait(ctrd, id)).await {
        Ok(status) => Ok(ExitInfo {
            exit_status: Some(status?),
            timed_out: false,
        }),
        Err(_) => {
            tracing::info!(container = %id, timeout = ?spec.timeout, "timed out; killing");
            match kill(ctrd, id).await {
                // It exited just now: nothing left to kill.
                Err(e) if e.code() == Some(Code::NotFound) => {}
                r => r?,
            }
            let status = tokio::time::timeout(KILL_WAIT, wait(ctrd, id)).await;
            Ok(ExitInfo {
                exit_status: status.ok().transpose()?,
                timed_out: true,
            })
        }
    }
}

/// `Tasks.Wait`: the exit status of the init process.
async fn wait(ctrd: &Ctrd, id: &str) -> Result<u32, CtrdError> {
    let r = TasksClient::new(ctrd.channel())
        .wait(ctrd.request(WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        }))
        .await
        .map_err(|s| CtrdError::rpc("Tasks.Wait", id, s))?;
    Ok(r.into_inner().exit_status)
}

/// `Tasks.Kill` SIGKILL to every process of the task.
async fn kill(ctrd: &Ctrd, id: &str) -> Result<(), CtrdError> {
    TasksClient::new(ctrd.channel())
        .kill(ctrd.request(KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal: libc::SIGKILL as u32,
            all: true,
        }))
        .await
        .map_err(|s| CtrdError::rpc("Tasks.Kill", id, s))?;
    Ok(())
}

/// `Tasks.Delete`, Ok when there is no task.
async fn delete_task(ctrd: &Ctrd, id: &str) -> Result<(), CtrdError> {
    match TasksClient::new(ctrd.channel())
        .delete(ctrd.request(DeleteTaskRequest {
            container_id: id.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(CtrdError::rpc("Tasks.Delete", id, s)),
    }
}

/// Deletes the task (killing it first when it still runs) and the container;
/// missing ones are fine.
async fn delete_task_and_container(ctrd: &Ctrd, id: &str) -> Result<(), CtrdError> {
    if delete_task(ctrd, id).await.is_err() {
        match kill(ctrd, id).await {
            Err(e) if e.code() != Some(Code::NotFound) => {
                tracing::warn!(container = %id, error = %e, "kill before delete failed");
            }
            _ => {}
        }
        let _ = tokio::time::timeout(KILL_WAIT, wait(ctrd, id)).await;
        delete_task(ctrd, id).await?;
    }
    match ContainersClient::new(ctrd.channel())
        .delete(ctrd.request(DeleteContainerRequest { id: id.to_string() }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(CtrdError::rpc("Containers.Delete", id, s)),
    }
}

/// `Tasks.Pause`: freezes every process of the container's task.
///
/// # Errors
/// [`CtrdError::Rpc`] naming `Tasks.Pause` (NotFound: no task).
pub async fn pause(ctrd: &Ctrd, container_id: &str) -> Result<(), CtrdError> {
    TasksClient::new(ctrd.channel())
        .pause(ctrd.request(PauseTaskRequest {
            container_id: container_id.to_string(),
        }))
        .await
        .map_err(|s| CtrdError::rpc("Tasks.Pause", container_id, s))?;
    Ok(())
}

/// `Tasks.Resume`: thaws the container's task.
///
/// # Errors
/// [`CtrdError::Rpc`] naming `Tasks.Resume` (NotFound: no task).
pub async fn resume(ctrd: &Ctrd, container_id: &str) -> Result<(), CtrdError> {
    TasksClient::new(ctrd.channel())
        .resume(ctrd.request(ResumeTaskRequest {
            container_id: container_id.to_string(),
        }))
        .await
        .map_err(|s| CtrdError::rpc("Tasks.Resume", container_id, s))?;
    Ok(())
}

/// `Containers.Get`: the container's `(snapshotter, snapshot key, image name)`.
///
/// # Errors
/// [`CtrdError::Rpc`] naming `Containers.Get` (NotFound: no such container),
/// [`CtrdError::MissingField`] for an answer without a container.
pub async fn container_snapshot(
    ctrd: &Ctrd,
    container_id: &str,
) -> Result<(String, String, String), CtrdError> {
    let r = ContainersClient::new(ctrd.channel())
        .get(ctrd.request(GetContainerRequest {
            id: container_id.to_string(),
        }))
        .await
        .map_err(|s| CtrdError::rpc("Containers.Get", container_id, s))?;
    let c = r.into_inner().container.ok_or(CtrdError::MissingField {
        rpc: "Containers.Get",
        field: "container",
    })?;
    Ok((c.snapshotter, c.snapshot_key, c.image))
}

/// `Tasks.Get`: the state of the container's task, `None` when it has none.
///
/// # Errors
/// [`CtrdError::Rpc`] naming `Tasks.Get` for errors other than NotFound.
pub async fn task_status(ctrd: &Ctrd, container_id: &str) -> Result<Option<TaskState>, CtrdError> {
    match TasksClient::new(ctrd.channel())
        .get(ctrd.request(GetRequest {
            container_id: container_id.to_string(),
            exec_id: String::new(),
        }))
        .await
    {
        Ok(r) => Ok(r.into_inner().process.map(|p| TaskState::from(p.status))),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(CtrdError::rpc("Tasks.Get", container_id, s)),
    }
}
