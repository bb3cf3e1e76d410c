//! End to end: access recording in the daemon (Control `StartRecording` /
//! `StopRecording`) and running containers through containerd's API
//! (`lazysnap::ctrd::run`):
//!
//! - a container (busybox shell of the python test image) run to its exit on
//!   a prepared snapshot prints to a file, and the recording lists the shell
//!   (symlink, then binary) before `etc/os-release`, each once;
//! - a timeout kills the task, and task and container are gone after it;
//! - a running task pauses and resumes;
//! - an unknown key is NotFound, naming the key.
//!
//! Each test has its own namespace and removes the snapshots it prepared.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Test, env, image_info, lazysnap_log_tail, snapshotter};
use lazysnap::ctrd::Ctrd;
use lazysnap::ctrd::run::{
    ExitInfo, ImageConfigProcess, RunSpec, TaskState, container_snapshot, pause,
    prepare_run_snapshot, resume, run_to_exit, task_status,
};
use lazysnap::service::control_client::{start_recording, stop_recording};

const BUSYBOX: &str = "test/busybox:latest";
/// Has busybox at the bottom and an `etc/os-release` (busybox has none).
const PYTHON: &str = "test/python:latest";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Pulls image `name` into the test's namespace and returns (image config
/// process, top chain ID, full reference).
fn pulled(t: &Test, name: &str) -> (ImageConfigProcess, String, String) {
    let reference = t.pull(name);
    let info = image_info(name);
    let config = t.ctr_ok(&["content", "get", &info.config]);
    let process = ImageConfigProcess::from_config_json(config.as_bytes()).expect("image config");
    let top = info.chain_ids.last().expect("a layer").clone();
    (process, top, reference)
}

fn spec(t: &Test, dir: &Path, process: ImageConfigProcess, key: &str, args: &[&str]) -> RunSpec {
    RunSpec {
        id: t.new_id(),
        image_config: process,
        args_override: Some(args.iter().map(|s| s.to_string()).collect()),
        env_extra: vec!["LAZYSNAP_TEST=1".into()],
        image: String::new(),
        snapshotter: snapshotter(),
        snapshot_key: key.to_string(),
        stdout: dir.join("stdout"),
        stderr: dir.join("stderr"),
        timeout: Duration::from_secs(120),
    }
}

async fn connect(t: &Test) -> Ctrd {
    Ctrd::connect(&env().containerd_address, &t.ns)
        .await
        .expect("connect to containerd")
}

#[test]
fn run_records_shell_then_os_release() {
    let t = Test::new("e2e-record-run");
    let (process, top, _) = pulled(&t, PYTHON);
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let ctrd = connect(&t).await;
        let key = prepare_run_snapshot(&ctrd, &snapshotter(), &top, "e2e-record")
            .await
            .expect("prepare");
        let addr = &env().lazysnap_address;
        let backend = start_recording(addr, &t.ns, &key).await.expect("start");
        assert!(
            backend.starts_with(&format!("{}/", t.ns)) && backend.ends_with(&format!("/{key}")),
            "backend key {backend}"
        );
        let script = "cat /etc/os-release >/dev/null; echo hi";
        let s = spec(&t, dir.path(), process, &key, &["sh", "-c", script]);
        let info = run_to_exit(&ctrd, &s).await;
        let paths = stop_recording(addr, &t.ns, &key).await.expect("stop");
        // Recording is over: a second stop has nothing to return.
        let again = stop_recording(addr, &t.ns, &key).await.unwrap_err();
        ctrd.remove_snapshot(&snapshotter(), &key)
            .await
            .expect("remove");
        assert_eq!(
            again.code(),
            Some(tonic::Code::FailedPrecondition),
            "{again}"
        );
        let info = info.unwrap_or_else(|e| panic!("run: {e}\n{}", lazysnap_log_tail(40)));
        assert_eq!(
            info,
            ExitInfo {
                exit_status: Some(0),
                timed_out: false
            },
            "stderr: {}",
            std::fs::read_to_string(&s.stderr).unwrap_or_default()
        );
        assert_eq!(std::fs::read_to_string(&s.stdout).unwrap(), "hi\n");
        assert_eq!(std::fs::read_to_string(&s.stderr).unwrap(), "");
        let pos = |p: &str| {
            paths
                .iter()
                .position(|x| x == p)
                .unwrap_or_else(|| panic!("{p} not recorded: {paths:?}"))
        };
        // runc's init reads etc/passwd and etc/group (HOME, groups of the
        // numeric user), looks `sh` up on PATH (readlinks of the symlinks
        // sbin -> usr/sbin and bin/sh), the kernel execs bin/busybox, then
        // the script reads etc/os-release.
        assert!(pos("bin/sh") < pos("bin/busybox"), "{paths:?}");
        assert!(pos("bin/busybox") < pos("etc/os-release"), "{paths:?}");
        assert_eq!(
            paths,
            [
                "etc/passwd",
                "etc/group",
                "sbin",
                "bin/sh",
                "bin/busybox",
                "etc/os-release"
            ]
        );
        let mut dedup = paths.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), paths.len(), "duplicates in {paths:?}");
        assert!(
            paths.iter().all(|p| !p.starts_with('/') && !p.is_empty()),
            "{paths:?}"
        );
    });
}

#[test]
fn timeout_kills_and_cleans_up() {
    let t = Test::new("e2e-record-timeout");
    let (process, top, _) = pulled(&t, BUSYBOX);
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let ctrd = connect(&t).await;
        let key = prepare_run_snapshot(&ctrd, &snapshotter(), &top, "e2e-timeout")
            .await
            .expect("prepare");
        let mut s = spec(&t, dir.path(), process, &key, &["sleep", "100"]);
        s.timeout = Duration::from_secs(2);
        let started = Instant::now();
        let info = run_to_exit(&ctrd, &s).await;
        let took = started.elapsed();
        ctrd.remove_snapshot(&snapshotter(), &key)
            .await
            .expect("remove");
        let info = info.unwrap_or_else(|e| panic!("run: {e}\n{}", lazysnap_log_tail(40)));
        assert_eq!(
            info,
            ExitInfo {
                exit_status: Some(137),
                timed_out: true
            }
        );
        assert!(took < Duration::from_secs(60), "took {took:?}");
        let e = container_snapshot(&ctrd, &s.id).await.unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::NotFound), "{e}");
        assert_eq!(task_status(&ctrd, &s.id).await.unwrap(), None);
    });
    assert_eq!(t.ctr_ok(&["containers", "ls", "-q"]).trim(), "");
}

#[test]
fn pause_and_resume_a_running_task() {
    let t = Test::new("e2e-record-pause");
    let (process, top, reference) = pulled(&t, BUSYBOX);
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let ctrd = connect(&t).await;
        let snap = snapshotter();
        let key = prepare_run_snapshot(&ctrd, &snap, &top, "e2e-pause")
            .await
            .expect("prepare");
        let mounts = ctrd.snapshot_mounts(&snap, &key).await.expect("mounts");
        let rootfs = std::path::PathBuf::from(&mounts[0].source);
        let script = "while [ ! -e /tmp/stop ]; do sleep 1; done; echo stopped";
        let mut s = spec(&t, dir.path(), process, &key, &["sh", "-c", script]);
        s.image = reference.clone();
        let id = s.id.clone();
        let run = tokio::spawn({
            let (ctrd, s) = (ctrd.clone(), s.clone());
            async move { run_to_exit(&ctrd, &s).await }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while task_status(&ctrd, &id).await.unwrap() != Some(TaskState::Running) {
            assert!(Instant::now() < deadline, "task never ran");
            assert!(!run.is_finished(), "run ended early");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            container_snapshot(&ctrd, &id).await.unwrap(),
            (snap.clone(), key.clone(), reference.clone())
        );
        pause(&ctrd, &id).await.expect("pause");
        assert_eq!(
            task_status(&ctrd, &id).await.unwrap(),
            Some(TaskState::Paused)
        );
        resume(&ctrd, &id).await.expect("resume");
        assert_eq!(
            task_status(&ctrd, &id).await.unwrap(),
            Some(TaskState::Running)
        );
        // The host writes through the union; the container sees it and ends.
        std::fs::write(rootfs.join("tmp/stop"), b"").expect("write stop file");
        let info = run.await.unwrap();
        ctrd.remove_snapshot(&snap, &key).await.expect("remove");
        let info = info.unwrap_or_else(|e| panic!("run: {e}\n{}", lazysnap_log_tail(40)));
        assert_eq!(
            info,
            ExitInfo {
                exit_status: Some(0),
                timed_out: false
            }
        );
        assert_eq!(std::fs::read_to_string(&s.stdout).unwrap(), "stopped\n");
    });
}

#[test]
fn unknown_key_is_not_found_naming_it() {
    let t = Test::new("e2e-record-unknown");
    rt().block_on(async {
        let addr = &env().lazysnap_address;
        for e in [
            stop_recording(addr, &t.ns, "no-such-key")
                .await
                .unwrap_err(),
            start_recording(addr, &t.ns, "no-such-key")
                .await
                .unwrap_err(),
            stop_recording(addr, "", "x/1/no-such-key")
                .await
                .unwrap_err(),
        ] {
            assert_eq!(e.code(), Some(tonic::Code::NotFound), "{e}");
            assert!(e.to_string().contains("no-such-key"), "{e}");
        }
    });
}
