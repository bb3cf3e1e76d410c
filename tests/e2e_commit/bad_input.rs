//! Bad input: an unknown container or snapshot key, a push cut off half way (the registry
//! killed by PID during the chunked upload of the new layer), wrong credentials. Each
//! failure names what was wrong, and no tag appears.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::convert::{converted, lazysnap, lazysnap_bin, manifest_status, run_ok};
use crate::common::{CTR_TIMEOUT_SECS, Test, env, image_ref};
use crate::login_harness::{self, PASSWORD, USER, b64};
use crate::support::{clean_namespace, exec_sh, pull_lazily, run_detached, tag, task_status};

/// `lazysnap ARGS` with the environment's sockets and `envs` on top (killed after
/// [`CTR_TIMEOUT_SECS`]); not yet run.
fn lazysnap_command(args: &[&str], envs: &[(&str, &Path)]) -> Command {
    let e = env();
    let mut c = Command::new("timeout");
    c.args(["--kill-after=10", &CTR_TIMEOUT_SECS.to_string()])
        .arg(lazysnap_bin())
        .args(args)
        .env("CONTAINERD_ADDRESS", &e.containerd_address)
        .env("LAZYSNAP_ADDRESS", &e.lazysnap_address)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null());
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts `out` failed and its stderr names every string of `must`; returns stderr.
fn assert_failed(out: &Output, must: &[&str]) -> String {
    let err = stderr_of(out);
    eprintln!("{}\n{err}", out.status);
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for s in must {
        assert!(err.contains(s), "the error does not name {s:?}:\n{err}");
    }
    err
}

#[test]
fn unknown_container_or_snapshot_is_named() {
    let t = Test::new("commit-unknown");
    let name = format!("committed/unknown:{}", tag("t"));
    let out = lazysnap(&[
        "commit",
        "-n",
        &t.ns,
        "no-such-container-7f3",
        &image_ref(&name),
    ]);
    assert_failed(&out, &["no-such-container-7f3", "not found"]);
    let out = lazysnap(&[
        "commit",
        "-n",
        &t.ns,
        "--snapshot",
        "no-such-key-9c1",
        &image_ref(&name),
    ]);
    assert_failed(&out, &["no-such-key-9c1"]);
    assert_eq!(manifest_status(&name), 404, "{name} exists after failures");
}

/// A `docker-registry serve` of this test on a fixed port, killed by PID and started again
/// on the same port and storage.
struct OwnRegistry {
    child: Option<Child>,
    addr: String,
    config: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl OwnRegistry {
    fn start() -> OwnRegistry {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", login_harness::free_port());
        let data = dir.path().join("data");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                data.display()
            ),
        )
        .unwrap();
        let mut r = OwnRegistry {
            child: None,
            addr,
            config,
            data,
            _dir: dir,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry");
        self.child = Some(child);
        login_harness::wait_listening(&self.addr, "docker-registry");
    }

    /// SIGKILL (by PID) and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The largest upload in progress to `repo` (bytes received so far).
    fn upload_bytes(&self, repo: &str) -> u64 {
        let dir = self
            .data
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_uploads");
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| std::fs::metadata(e.path().join("data")).ok())
                    .map(|m| m.len())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// HTTP status of the manifest GET of `repo:tag`.
    fn manifest_status(&self, name: &str) -> u16 {
        let (repo, tag) = name.rsplit_once(':').unwrap();
        let code = run_ok(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                &format!("http://{}/v2/{repo}/manifests/{tag}", self.addr),
            ],
        );
        code.trim().parse().unwrap()
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn push_cut_off_half_way_leaves_no_tag_and_a_retry_completes() {
    let t = Test::new("commit-halfway");
    let base = image_ref(&converted("busybox", "estargz"));
    clean_namespace(&t);
    pull_lazily(&t, &base);
    let id = run_detached(&t, "lazysnap", &base, &["sleep", "1000"]);
    // 60 MiB of random bytes: an incompressible layer, uploaded in 8 MiB PATCHes
    let sha = exec_sh(
        &t,
        &id,
        "head -c 62914560 /dev/urandom > /big.bin && sha256sum /big.bin | cut -d' ' -f1",
    );
    let sha = sha.trim();
    let mut reg = OwnRegistry::start();
    let repo = "halfway/busybox";
    let name = format!("{repo}:v1");
    let newref = format!("{}/{name}", reg.addr);
    let work = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (work.path().join("out"), work.path().join("err"));
    let spool = work.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let args = [
        "commit",
        "-n",
        &t.ns,
        "--tmp",
        spool.to_str().unwrap(),
        &id,
        &newref,
    ];
    let mut child = lazysnap_command(&args, &[])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("lazysnap commit");
    let t0 = Instant::now();
    let mut killed_at = None;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if killed_at.is_none() {
            let n = reg.upload_bytes(repo);
            if n >= 4 * MIB {
                reg.kill();
                killed_at = Some(n);
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(200), "commit hangs");
        std::thread::sleep(Duration::from_millis(2));
    };
    let err = std::fs::read_to_string(&err_path).unwrap();
    eprintln!("first commit: {status}, registry killed after {killed_at:?} bytes\n{err}");
    let received = killed_at.expect("the registry was not killed during the upload");
    assert!(received < 60 * MIB, "the upload was complete: {received}");
    assert!(
        !status.success(),
        "the commit succeeded with the registry killed: {}",
        std::fs::read_to_string(&out_path).unwrap()
    );
    assert!(
        err.contains(&reg.addr),
        "the error names no registry:\n{err}"
    );
    assert_eq!(
        task_status(&t, &id),
        "RUNNING",
        "container not resumed after a failed commit"
    );
    let left: Vec<_> = std::fs::read_dir(&spool).unwrap().flatten().collect();
    assert!(left.is_empty(), "temporary files left in --tmp: {left:?}");

    reg.spawn();
    assert_eq!(reg.manifest_status(&name), 404, "a tag after a failed push");

    let out = lazysnap_command(&args, &[]).output().unwrap();
    assert!(
        out.status.success(),
        "retried commit failed:\n{}",
        stderr_of(&out)
    );
    assert_eq!(reg.manifest_status(&name), 200);
    pull_lazily(&t, &newref);
    let got = t.sh_with(
        "lazysnap",
        &newref,
        "sha256sum /big.bin | cut -d' ' -f1; cat /bin/busybox >/dev/null && echo ok",
    );
    assert_eq!(got, format!("{sha}\nok\n"));
}

#[test]
fn wrong_credentials_name_registry_and_status_never_the_password() {
    let t = Test::new("commit-creds");
    let base = image_ref(&converted("busybox", "estargz"));
    clean_namespace(&t);
    pull_lazily(&t, &base);
    let id = run_detached(&t, "lazysnap", &base, &["sleep", "1000"]);
    exec_sh(&t, &id, "echo secret-free > /creds.txt");
    let dir = tempfile::tempdir().unwrap();
    let reg = login_harness::Registry::htpasswd(dir.path());
    let wrong = "not-Th3-pa55word";
    let config = |sub: &str, password: &str| {
        let d = dir.path().join(sub);
        std::fs::create_dir(&d).unwrap();
        let auth = b64(&format!("{USER}:{password}"));
        std::fs::write(
            d.join("config.json"),
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
        )
        .unwrap();
        d
    };
    let (bad, good) = (config("wrong", wrong), config("right", PASSWORD));
    let newref = format!("{}/creds/busybox:v1", reg.addr);
    let args = ["commit", "-n", &t.ns, &id, &newref];
    let out = lazysnap_command(&args, &[("DOCKER_CONFIG", &bad)])
        .output()
        .unwrap();
    let err = assert_failed(&out, &[&reg.addr, "401"]);
    for secret in [wrong.to_string(), b64(&format!("{USER}:{wrong}"))] {
        assert!(!err.contains(&secret), "the error shows {secret:?}:\n{err}");
    }
    let out = lazysnap_command(&args, &[("DOCKER_CONFIG", &good)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "commit with the right password failed:\n{}",
        stderr_of(&out)
    );
}
