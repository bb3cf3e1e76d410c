//! containerd's Snapshots API against the real service on a unix socket, with
//! real FUSE mounts: every RPC, every error code containerd relies on, and the
//! List filters of containerd's unpacker and remote-snapshot lookup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lazysnap::service::proto::containerd::services::snapshots::v1::{
    self as pb, snapshots_client::SnapshotsClient,
};
use lazysnap::service::{self, ServeOptions};
use lazysnap::snapshot::{FuseMounter, LayerMounter, Snapshotter};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

const REF: &str = "containerd.io/snapshot.ref";

struct Daemon {
    dir: tempfile::TempDir,
    client: SnapshotsClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    async fn start(dir: tempfile::TempDir) -> Daemon {
        let root = dir.path().join("root");
        let address = dir.path().join("ls.sock");
        let mounter: Arc<dyn LayerMounter> =
            Arc::new(FuseMounter::new(tokio::runtime::Handle::current()));
        let r2 = root.clone();
        let snapshotter = Arc::new(
            tokio::task::spawn_blocking(move || Snapshotter::open(&r2, mounter, None))
                .await
                .unwrap()
                .unwrap(),
        );
        let (tx, rx) = oneshot::channel();
        let opts = ServeOptions {
            root,
            address: address.clone(),
            lazy: None,
            metrics_address: None,
        };
        let s2 = snapshotter.clone();
        let task = tokio::spawn(async move {
            service::serve_with(s2, &opts, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let mut tries = 0;
        let ch = loop {
            match service::connect(&address).await {
                Ok(ch) => break ch,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("connect: {e}"),
            }
        };
        Daemon {
            dir,
            client: SnapshotsClient::new(ch),
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Stops serving without removing anything (mounts stay, like a daemon exit).
    async fn stop(mut self) -> tempfile::TempDir {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    async fn prepare(
        &mut self,
        key: &str,
        parent: &str,
        labels: &[(&str, &str)],
    ) -> Result<Vec<lazysnap::service::proto::containerd::types::Mount>, tonic::Status> {
        self.client
            .prepare(pb::PrepareSnapshotRequest {
                snapshotter: "lazysnap".into(),
                key: key.into(),
                parent: parent.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .await
            .map(|r| r.into_inner().mounts)
    }

    async fn commit(&mut self, name: &str, key: &str) -> Result<(), tonic::Status> {
        self.client
            .commit(pb::CommitSnapshotRequest {
                snapshotter: "lazysnap".into(),
                name: name.into(),
                key: key.into(),
                labels: HashMap::from([(REF.to_string(), name.to_string())]),
                parent: String::new(),
            })
            .await
            .map(|_| ())
    }

    async fn remove(&mut self, key: &str) -> Result<(), tonic::Status> {
        self.client
            .remove(pb::RemoveSnapshotRequest {
                snapshotter: "lazysnap".into(),
                key: key.into(),
            })
            .await
            .map(|_| ())
    }

    async fn stat(&mut self, key: &str) -> Result<pb::Info, tonic::Status> {
        self.client
            .stat(pb::StatSnapshotRequest {
                snapshotter: "lazysnap".into(),
                key: key.into(),
            })
            .await
            .map(|r| r.into_inner().info.unwrap())
    }

    async fn list(&mut self, filters: &[&str]) -> Vec<String> {
        let mut stream = self
            .client
            .list(pb::ListSnapshotsRequest {
                snapshotter: "lazysnap".into(),
                filters: filters.iter().map(|s| s.to_string()).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut names = Vec::new();
        while let Some(msg) = stream.message().await.unwrap() {
            names.extend(msg.info.into_iter().map(|i| i.name));
        }
        names
    }
}

fn opt_value<'a>(
    m: &'a lazysnap::service::proto::containerd::types::Mount,
    k: &str,
) -> Option<&'a str> {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix(&format!("{k}=")))
}

fn is_fuse_mount(p: &Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(4) == Some(&p.to_str().unwrap()) && l.contains(" - fuse.lazysnap ")
    })
}

/// Builds the chain L1 ← L2 the way containerd's unpacker does (overlay-shaped
/// extraction snapshots written directly), then checks every RPC on it.
/// Lazily unmounts whatever is still mounted below a dir when a test ends,
/// passed or failed.
struct MountSweep(PathBuf);

impl Drop for MountSweep {
    fn drop(&mut self) {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.0.to_str().unwrap().to_string();
        let mut points: Vec<String> = mi
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_api_end_to_end() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let _sweep = MountSweep(dir.path().to_path_buf());
    let mut d = Daemon::start(dir).await;

    // --- extraction of layer 1: no parent ⇒ rw bind of the layer dir
    let k1 = "default/1/extract-1-aaaa sha256:l1";
    let ms = d
        .prepare(k1, "", &[(REF, "default/2/sha256:l1")])
        .await
        .unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].r#type, "bind");
    assert_eq!(ms[0].options, vec!["rw", "rbind"]);
    let l1_dir = PathBuf::from(&ms[0].source);
    std::fs::create_dir(l1_dir.join("etc")).unwrap();
    std::fs::write(l1_dir.join("etc/a"), b"from l1").unwrap();
    std::fs::write(l1_dir.join("gone"), b"deleted by l2").unwrap();

    // Prepare of the same key again: AlreadyExists.
    assert_eq!(
        d.prepare(k1, "", &[]).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    // Mounts of the active key re-returns the same mounts.
    let again = d
        .client
        .mounts(pb::MountsRequest {
            snapshotter: String::new(),
            key: k1.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(again, ms);
    // Parent that is not committed: InvalidArgument; missing parent: NotFound.
    assert_eq!(
        d.prepare("x", k1, &[]).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        d.prepare("x", "no-such-parent", &[])
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    let l1 = "default/2/sha256:l1";
    d.commit(l1, k1).await.unwrap();
    assert_eq!(d.stat(k1).await.unwrap_err().code(), Code::NotFound);
    let info = d.stat(l1).await.unwrap();
    assert_eq!(info.kind, pb::Kind::Committed as i32);
    assert_eq!(info.labels.get(REF).map(String::as_str), Some(l1));
    // Commit again under a taken name, of a missing key.
    assert_eq!(d.commit(l1, k1).await.unwrap_err().code(), Code::NotFound);
    // Mounts of a committed snapshot: FailedPrecondition.
    let e = d
        .client
        .mounts(pb::MountsRequest {
            snapshotter: String::new(),
            key: l1.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains(l1), "{}", e.message());

    // --- extraction of layer 2 over l1: kernel overlay shape
    let k2 = "default/3/extract-2-bbbb sha256:l2";
    let ms = d
        .prepare(k2, l1, &[(REF, "default/4/sha256:l2")])
        .await
        .unwrap();
    assert_eq!(ms[0].r#type, "overlay");
    assert_eq!(
        opt_value(&ms[0], "lowerdir"),
        Some(l1_dir.to_str().unwrap())
    );
    let up = PathBuf::from(opt_value(&ms[0], "upperdir").unwrap());
    // What containerd writes for a whiteout of "gone": a 0/0 char device.
    nix::sys::stat::mknod(
        &up.join("gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        0,
    )
    .unwrap();
    std::fs::write(up.join("new"), b"from l2").unwrap();
    let l2 = "default/4/sha256:l2";
    // A commit with a taken name: AlreadyExists.
    assert_eq!(
        d.commit(l1, k2).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    d.commit(l2, k2).await.unwrap();

    // --- the remote-snapshot lookup containerd 1.6 runs (unquoted label value)
    let f = format!("labels.\"{REF}\"=={l2},parent==\"{l1}\"");
    assert_eq!(d.list(&[&f]).await, vec![l2.to_string()]);
    let f_bad_parent = format!("labels.\"{REF}\"=={l2},parent==other");
    assert!(d.list(&[&f_bad_parent]).await.is_empty());
    assert_eq!(
        d.list(&["kind==committed"]).await,
        vec![l1.to_string(), l2.to_string()]
    );
    assert_eq!(
        d.list(&["name==nope", &format!("name==\"{l1}\"")]).await,
        vec![l1.to_string()]
    );
    assert_eq!(d.list(&[]).await.len(), 2);
    // With containerd's namespace header, only that namespace's snapshots.
    for (ns, want) in [("default", 1), ("other", 0)] {
        let mut req = tonic::Request::new(pb::ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: vec![format!("labels.\"{REF}\"=={l2}")],
        });
        req.metadata_mut()
            .insert("containerd-namespace", ns.parse().unwrap());
        let mut stream = d.client.list(req).await.unwrap().into_inner();
        let mut n = 0;
        while let Some(m) = stream.message().await.unwrap() {
            n += m.info.len();
        }
        assert_eq!(n, want, "namespace {ns}");
    }
    let bad = d
        .client
        .list(pb::ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: vec!["name==".into()],
        })
        .await;
    assert_eq!(bad.err().map(|e| e.code()), Some(Code::InvalidArgument));

    // --- a container root over l2: one FUSE union, bind-mounted
    let c = "default/5/container-1";
    let ms = d.prepare(c, l2, &[]).await.unwrap();
    assert_eq!(ms[0].r#type, "bind");
    let mp = PathBuf::from(&ms[0].source);
    assert!(
        is_fuse_mount(&mp),
        "{} is not a fuse.lazysnap mount",
        mp.display()
    );
    assert_eq!(std::fs::read(mp.join("etc/a")).unwrap(), b"from l1");
    assert_eq!(std::fs::read(mp.join("new")).unwrap(), b"from l2");
    assert_eq!(
        std::fs::symlink_metadata(mp.join("gone"))
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::NotFound
    );
    std::fs::write(mp.join("etc/b"), b"written in container").unwrap();

    // A view of l2: read-only FUSE union.
    let vms = d
        .client
        .view(pb::ViewSnapshotRequest {
            snapshotter: String::new(),
            key: "default/6/view".into(),
            parent: l2.into(),
            labels: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(vms[0].options, vec!["ro", "rbind"]);
    let vmp = PathBuf::from(&vms[0].source);
    assert_eq!(std::fs::read(vmp.join("new")).unwrap(), b"from l2");
    assert!(
        std::fs::metadata(vmp.join("etc/b")).is_err(),
        "the view must not see the container's write"
    );
    // Commit of a view: FailedPrecondition.
    assert_eq!(
        d.commit("default/7/v", "default/6/view")
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );

    // Remove of a parent with children: FailedPrecondition; of a missing key: NotFound.
    let e = d.remove(l2).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains(l2));
    assert_eq!(d.remove("nope").await.unwrap_err().code(), Code::NotFound);

    // --- Update: labels by mask, immutable fields refused
    let mut info = d.stat(c).await.unwrap();
    info.labels.insert("a".into(), "1".into());
    info.labels.insert("b".into(), "2".into());
    let out = d
        .client
        .update(pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(info.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.a".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(out.labels.get("a").map(String::as_str), Some("1"));
    assert!(
        !out.labels.contains_key("b"),
        "only the masked label is set"
    );
    let e = d
        .client
        .update(pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(info.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["parent".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let out = d
        .client
        .update(pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(pb::Info {
                labels: HashMap::new(),
                ..info.clone()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert!(out.labels.is_empty());
    let e = d
        .client
        .update(pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(pb::Info {
                name: "nope".into(),
                ..info
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // --- Usage of the container's own upper: one file and its dir.
    let u = d
        .client
        .usage(pb::UsageRequest {
            snapshotter: String::new(),
            key: c.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(u.inodes >= 2, "inodes {}", u.inodes);
    assert!(u.size >= 4096, "size {}", u.size);
    assert_eq!(
        d.client
            .usage(pb::UsageRequest {
                snapshotter: String::new(),
                key: "nope".into()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // --- Commit the container: its write becomes a layer.
    let c_layer = "default/8/sha256:c";
    d.commit(c_layer, c).await.unwrap();
    assert!(!is_fuse_mount(&mp), "commit unmounts the union");
    let ms = d
        .prepare("default/9/container-2", c_layer, &[])
        .await
        .unwrap();
    let mp2 = PathBuf::from(&ms[0].source);
    assert_eq!(
        std::fs::read(mp2.join("etc/b")).unwrap(),
        b"written in container"
    );

    // --- Cleanup removes orphans, keeps owned dirs.
    let orphan = d.root().join("snapshots/9999");
    std::fs::create_dir_all(orphan.join("fs")).unwrap();
    d.client
        .cleanup(pb::CleanupRequest {
            snapshotter: String::new(),
        })
        .await
        .unwrap();
    assert!(!orphan.exists());
    assert!(l1_dir.exists());

    // --- Restart: the records survive, dead/missing mounts come back.
    let before = d.list(&[]).await;
    let dir = d.stop().await;
    lazysnap::fs::unmount(&mp2).unwrap(); // as if the old daemon's mount went away
    let mut d = Daemon::start(dir).await;
    assert_eq!(d.list(&[]).await, before);
    assert!(is_fuse_mount(&mp2), "reconcile remounts the container root");
    assert_eq!(
        std::fs::read(mp2.join("etc/b")).unwrap(),
        b"written in container"
    );

    // Remove of a mounted snapshot unmounts it and loses nothing else.
    d.remove("default/9/container-2").await.unwrap();
    assert!(!is_fuse_mount(&mp2));
    d.remove("default/6/view").await.unwrap();
    for k in [c_layer, l2, l1] {
        d.remove(k).await.unwrap();
    }
    assert!(d.list(&[]).await.is_empty());
    let _ = d.stop().await;
}
