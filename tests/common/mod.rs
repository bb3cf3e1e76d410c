//! Harness shared by the end-to-end tests (`tests/e2e_*.rs`).
//!
//! Environment: if `LAZYSNAP_TEST_ENV` names a directory with an `env` file (written by
//! `scripts/env-up.sh`; `scripts/test.sh` starts one for all test binaries), the tests use it.
//! Otherwise the first test of a binary starts one in a temporary directory and it is stopped
//! (`scripts/env-down.sh --rm`) when the test process exits.
//!
//! Every test gets its own containerd namespace (see [`Test::new`]). Tests that restart the
//! daemon take the environment exclusively ([`Test::exclusive`]); the others share it.
//!
//! `LAZYSNAP_E2E_SNAPSHOTTER=overlayfs` runs the same tests through containerd's overlayfs
//! snapshotter: that is how the test images and the expectations were checked against the
//! kernel's union filesystem. Tests of lazysnap-only behaviour fail in that mode.
//!
//! Missing prerequisites fail the test with a message; nothing is skipped silently.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub mod convert;
pub mod tree;

/// Seconds after which a single `ctr` call is considered hung (it is then killed and the
/// test fails instead of hanging forever on a stuck mount).
pub const CTR_TIMEOUT_SECS: u32 = 300;

/// The running test environment (registry, lazysnap, containerd).
#[derive(Debug)]
pub struct Env {
    /// The directory the environment lives in.
    pub dir: PathBuf,
    /// `host:port` of the local registry.
    pub registry: String,
    /// containerd's gRPC socket.
    pub containerd_address: PathBuf,
    /// lazysnap's socket.
    pub lazysnap_address: PathBuf,
    /// lazysnap's state root.
    pub lazysnap_root: PathBuf,
    /// lazysnap's log file (debug level).
    pub lazysnap_log: PathBuf,
    /// containerd's state dir (task bundles live below it).
    pub containerd_state: PathBuf,
    /// The values of the env file, for anything not above.
    pub vars: BTreeMap<String, String>,
    /// Whether this process started the environment (and stops it at exit).
    owned: bool,
}

static ENV: OnceLock<Env> = OnceLock::new();
static OWNED_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
static IMAGES_PUSHED: OnceLock<Result<(), String>> = OnceLock::new();
/// Shared by ordinary tests, taken exclusively by tests that stop or restart the daemon.
static DAEMON_LOCK: RwLock<()> = RwLock::new(());
static SEQ: AtomicU32 = AtomicU32::new(0);

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script(name: &str) -> PathBuf {
    repo().join("scripts").join(name)
}

fn parse_env_file(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim_start().trim_start_matches("export ").split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn check_prerequisites() {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (containerd, runc and FUSE mounts need it)".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".to_string());
    }
    for tool in [
        "containerd",
        "ctr",
        "ctr-remote",
        "runc",
        "docker-registry",
        "skopeo",
        "umoci",
        "timeout",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            missing.push(format!("{tool} (run scripts/setup.sh)"));
        }
    }
    let bin = release_bin();
    if !bin.exists() {
        missing.push(format!("{} (run cargo build --release)", bin.display()));
    }
    assert!(
        missing.is_empty(),
        "end-to-end test prerequisites missing: {}",
        missing.join(", ")
    );
}

extern "C" fn stop_owned_env() {
    let dir = OWNED_DIR.lock().ok().and_then(|mut g| g.take());
    if let Some(dir) = dir {
        let _ = Command::new(script("env-down.sh"))
            .arg("--rm")
            .arg(&dir)
            .stdin(Stdio::null())
            .status();
    }
}

/// The environment: the one named by `LAZYSNAP_TEST_ENV`, or one started for this process.
pub fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let (dir, owned) = match std::env::var_os("LAZYSNAP_TEST_ENV") {
            Some(d) if !d.is_empty() => {
                let dir = PathBuf::from(d);
                assert!(
                    dir.join("env").exists(),
                    "LAZYSNAP_TEST_ENV={} has no env file: start it with scripts/env-up.sh",
                    dir.display()
                );
                (dir, false)
            }
            _ => {
                check_prerequisites();
                let dir = tempfile::Builder::new()
                    .prefix("lazysnap-e2e-")
                    .tempdir()
                    .expect("temp dir")
                    .keep();
                *OWNED_DIR.lock().unwrap() = Some(dir.clone());
                // SAFETY: registering a plain extern "C" fn with no captured state.
                unsafe { libc::atexit(stop_owned_env) };
                let out = Command::new(script("env-up.sh"))
                    .arg(&dir)
                    .stdin(Stdio::null())
                    .output()
                    .expect("run scripts/env-up.sh");
                assert!(
                    out.status.success(),
                    "scripts/env-up.sh {} failed:\n{}{}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                (dir, true)
            }
        };
        let vars = parse_env_file(&dir.join("env"));
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{}/env has no {k}", dir.display()))
        };
        Env {
            registry: get("REGISTRY"),
            containerd_address: get("CONTAINERD_ADDRESS").into(),
            lazysnap_address: get("LAZYSNAP_ADDRESS").into(),
            lazysnap_root: get("LAZYSNAP_ROOT").into(),
            lazysnap_log: get("LAZYSNAP_LOG").into(),
            containerd_state: get("CONTAINERD_STATE").into(),
            dir,
            vars,
            owned,
        }
    })
}

/// Push the test images (scripts/images.sh push) to the environment's registry, once.
pub fn push_images() {
    let r = IMAGES_PUSHED.get_or_init(|| {
        let out = Command::new(script("images.sh"))
            .arg("push")
            .arg(&env().dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run scripts/images.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/images.sh push failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// The full reference of a test image in the environment's registry, e.g.
/// `image_ref("test/busybox:latest")` → `127.0.0.1:5000/test/busybox:latest`.
pub fn image_ref(name: &str) -> String {
    format!("{}/{}", env().registry, name)
}

/// The snapshotter under test (`lazysnap`, or `LAZYSNAP_E2E_SNAPSHOTTER`).
pub fn snapshotter() -> String {
    std::env::var("LAZYSNAP_E2E_SNAPSHOTTER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "lazysnap".to_string())
}

/// Whether the tests run against lazysnap (not the overlayfs cross-check mode).
pub fn is_lazysnap() -> bool {
    snapshotter() == "lazysnap"
}

/// The last `n` lines of the daemon's log, for failure messages.
pub fn lazysnap_log_tail(n: usize) -> String {
    let text = std::fs::read(&env().lazysnap_log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether the daemon answers `lazysnap status`.
pub fn daemon_answers() -> bool {
    let e = env();
    let bin = e
        .vars
        .get("LAZYSNAP_BIN")
        .cloned()
        .unwrap_or_else(|| release_bin().display().to_string());
    Command::new("timeout")
        .args(["10", &bin, "status", "--lazysnap-address"])
        .arg(&e.lazysnap_address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Keep one failed test from failing all later ones: if an earlier test left the daemon
/// dead, say so and start it again (a failure to start fails this test).
fn ensure_daemon_up() {
    static REVIVE: Mutex<()> = Mutex::new(());
    let _g = REVIVE.lock().unwrap_or_else(|e| e.into_inner());
    if daemon_answers() {
        return;
    }
    eprintln!("note: lazysnap does not answer (an earlier test left it down); starting it again");
    let dir = &env().dir;
    let _ = Command::new(script("env-lazysnap.sh"))
        .arg(dir)
        .arg("stop")
        .status();
    let out = Command::new(script("env-lazysnap.sh"))
        .arg(dir)
        .arg("start")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/env-lazysnap.sh");
    assert!(
        out.status.success(),
        "lazysnap is down and does not start again:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

enum Guard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// One test's view of the environment: its own containerd namespace.
pub struct Test {
    /// The containerd namespace of this test.
    pub ns: String,
    _guard: Guard,
}

impl std::fmt::Debug for Test {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Test").field("ns", &self.ns).finish()
    }
}

fn namespace_for(name: &str) -> String {
    let mut ns = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            ns.push(c.to_ascii_lowercase());
        } else if !ns.is_empty() && !ns.ends_with('-') {
            ns.push('-');
        }
    }
    ns.trim_end_matches('-').to_string()
}

impl Test {
    /// A test sharing the environment with the other tests, in namespace `name`.
    pub fn new(name: &str) -> Test {
        env();
        let guard = DAEMON_LOCK.read().unwrap_or_else(|e| e.into_inner());
        Test::with_guard(name, Guard::Shared(guard))
    }

    /// A test that has the environment to itself (it may stop or restart the daemon).
    pub fn exclusive(name: &str) -> Test {
        env();
        let guard = DAEMON_LOCK.write().unwrap_or_else(|e| e.into_inner());
        Test::with_guard(name, Guard::Exclusive(guard))
    }

    fn with_guard(name: &str, guard: Guard) -> Test {
        if is_lazysnap() {
            ensure_daemon_up();
        }
        let t = Test {
            ns: namespace_for(name),
            _guard: guard,
        };
        t.remove_containers();
        t
    }

    /// `ctr -a <containerd> -n <ns> ARGS` (killed after [`CTR_TIMEOUT_SECS`]).
    pub fn ctr(&self, args: &[&str]) -> Output {
        let e = env();
        Command::new("timeout")
            .args([
                "--kill-after=10",
                &CTR_TIMEOUT_SECS.to_string(),
                "ctr",
                "-a",
            ])
            .arg(&e.containerd_address)
            .args(["-n", &self.ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Like [`Test::ctr`], but panics (with the daemon's log tail) unless it succeeds; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        if !out.status.success() {
            panic!(
                "ctr {} failed ({}):\nstdout: {}\nstderr: {}\n--- lazysnap log (tail) ---\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                lazysnap_log_tail(40)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Push the test images if needed and pull `name` (e.g. `test/busybox:latest`) with the
    /// snapshotter under test. Returns the full reference.
    pub fn pull(&self, name: &str) -> String {
        push_images();
        let r = image_ref(name);
        let snap = snapshotter();
        self.ctr_ok(&["images", "pull", "--plain-http", "--snapshotter", &snap, &r]);
        r
    }

    /// Pull `name` through containerd's client pull with unpack and snapshot labels
    /// (`ctr-remote image rpull`): the path on which a remote snapshotter can serve layers
    /// lazily (containerd 1.6's `ctr images pull` never is lazy). A snapshotter that does not
    /// take the remote path gets an ordinary unpack. Returns the full reference.
    pub fn rpull(&self, name: &str) -> String {
        push_images();
        let r = image_ref(name);
        let snap = snapshotter();
        let e = env();
        let out = Command::new("timeout")
            .args([
                "--kill-after=10",
                &CTR_TIMEOUT_SECS.to_string(),
                "ctr-remote",
                "-a",
            ])
            .arg(&e.containerd_address)
            .args([
                "-n",
                &self.ns,
                "images",
                "rpull",
                "--plain-http",
                "--snapshotter",
                &snap,
                &r,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run ctr-remote (apt-get install stargz-snapshotter)");
        if !out.status.success() {
            panic!(
                "ctr-remote images rpull {r} failed ({}):\n{}{}\n--- lazysnap log (tail) ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                lazysnap_log_tail(40)
            );
        }
        r
    }

    /// Pull for the field cases: `rpull` (lazysnap reads the layers itself), or `ctr images
    /// pull` (containerd applies the layers) when `LAZYSNAP_E2E_PULL=ctr`.
    pub fn pull_case(&self, name: &str) -> String {
        match std::env::var("LAZYSNAP_E2E_PULL").as_deref() {
            Ok("ctr") => self.pull(name),
            _ => self.rpull(name),
        }
    }

    /// A container id unique in this test process.
    pub fn new_id(&self) -> String {
        format!("{}-{}", self.ns, SEQ.fetch_add(1, Ordering::Relaxed))
    }

    /// `ctr run --rm` of the (already pulled) image `name` with `cmd`; returns the whole Output.
    pub fn run_output(&self, name: &str, cmd: &[&str]) -> Output {
        let r = image_ref(name);
        let id = self.new_id();
        let snap = snapshotter();
        let mut args = vec!["run", "--rm", "--snapshotter", &snap, &r, &id];
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// `ctr run --rm` of the (already pulled) image `name`; returns (exit code, stdout).
    /// A container that could not be created at all fails the test (with the daemon's log).
    pub fn run(&self, name: &str, cmd: &[&str]) -> (i32, String) {
        let out = self.run_output(name, cmd);
        let code = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.starts_with("ctr: ") || code == 124 || code == 137 {
            panic!(
                "ctr run {name} {cmd:?} failed ({}): {stderr}\n--- lazysnap log (tail) ---\n{}",
                out.status,
                lazysnap_log_tail(40)
            );
        }
        (code, String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sh -c SCRIPT` in a new container of `name`; panics unless it exits 0; returns stdout.
    pub fn sh(&self, name: &str, script: &str) -> String {
        let out = self.run_output(name, &["sh", "-c", script]);
        if !out.status.success() {
            panic!(
                "sh -c in {name} exited {}:\nscript: {script}\nstdout: {}\nstderr: {}\n--- lazysnap log (tail) ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                lazysnap_log_tail(40)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start a long-running container of `name` (`ctr run -d`); returns its id.
    pub fn run_detached(&self, name: &str, cmd: &[&str]) -> String {
        let r = image_ref(name);
        let id = self.new_id();
        let snap = snapshotter();
        let mut args = vec!["run", "-d", "--snapshotter", &snap, &r, &id];
        args.extend_from_slice(cmd);
        self.ctr_ok(&args);
        id
    }

    /// `ctr tasks exec` in a running container; returns the whole Output.
    pub fn exec(&self, id: &str, cmd: &[&str]) -> Output {
        let exec_id = format!("x{}", SEQ.fetch_add(1, Ordering::Relaxed));
        let mut args = vec!["tasks", "exec", "--exec-id", &exec_id, id];
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// The host path of a running container's root filesystem.
    pub fn rootfs_of(&self, id: &str) -> PathBuf {
        env()
            .containerd_state
            .join("io.containerd.runtime.v2.task")
            .join(&self.ns)
            .join(id)
            .join("rootfs")
    }

    /// Kill and delete one container (and its task).
    pub fn remove_container(&self, id: &str) {
        let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        for _ in 0..50 {
            let out = self.ctr(&["tasks", "rm", "-f", id]);
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || err.contains("not found") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.ctr(&["containers", "rm", id]);
    }

    /// Remove every container of this namespace (leftovers of an earlier run).
    pub fn remove_containers(&self) {
        let out = self.ctr(&["containers", "ls", "-q"]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            self.remove_container(id);
        }
    }

    /// `ctr snapshots --snapshotter <under test> ls` of this namespace, sorted lines.
    pub fn snapshots(&self) -> Vec<String> {
        let snap = snapshotter();
        let out = self.ctr_ok(&["snapshots", "--snapshotter", &snap, "ls"]);
        let mut lines: Vec<String> = out.lines().map(|l| l.to_string()).collect();
        lines.sort();
        lines
    }

    /// Restart the lazysnap daemon with its recorded command line: SIGTERM (or SIGKILL when
    /// `crash`), then start it again and wait until it answers. Needs [`Test::exclusive`].
    pub fn restart_daemon(&self, crash: bool) {
        assert!(
            matches!(self._guard, Guard::Exclusive(_)),
            "restart_daemon needs Test::exclusive"
        );
        let action = if crash { "restart-kill" } else { "restart" };
        let out = Command::new(script("env-lazysnap.sh"))
            .arg(&env().dir)
            .arg(action)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/env-lazysnap.sh");
        assert!(
            out.status.success(),
            "env-lazysnap.sh {action} failed:\n{}{}\n--- lazysnap log (tail) ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            lazysnap_log_tail(40)
        );
    }
}

impl Drop for Test {
    fn drop(&mut self) {
        // Leave no running containers behind; images and snapshots stay for inspection.
        self.remove_containers();
    }
}

/// Parse `key=value` lines (as printed by the tests' shell scripts) into a map.
pub fn kv(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The value of `key` in a `key=value` map, or a panic naming the whole output.
pub fn get<'a>(m: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    m.get(key)
        .map(|s| s.as_str())
        .unwrap_or_else(|| panic!("no {key}= line in the output: {m:?}"))
}

/// sha256 (hex) of bytes, computed with the host's python3 (no extra dev-dependency).
pub fn sha256_hex_of_python_expr(expr: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import hashlib, random, sys; sys.stdout.write(hashlib.sha256({expr}).hexdigest())"
            ),
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- lazy pulling: eStargz images, the fault-injecting registry proxy ---------------------

static ESTARGZ_PUSHED: OnceLock<Result<(), String>> = OnceLock::new();

/// Push the test images and their eStargz variants (`scripts/images.sh push-estargz`:
/// `test/python:esgz`, `test/busybox:esgz`, `cases/b10:esgz`, `cases/b26:esgz`, converted by
/// `ctr-remote image convert --estargz --oci` in the environment's containerd), once per
/// environment (a marker file in the environment's directory).
pub fn push_estargz_images() {
    push_images();
    let r = ESTARGZ_PUSHED.get_or_init(|| {
        let out = Command::new(script("images.sh"))
            .arg("push-estargz")
            .arg(&env().dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run scripts/images.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/images.sh push-estargz failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// One request as logged by `tests/helpers/faultproxy.py` (fault `log`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProxyRequest {
    /// `proxy` (the registry front), `object` (the redirect target) or `token`.
    pub server: String,
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes actually sent.
    pub bytes: u64,
    /// Content-Length announced.
    pub length: u64,
    /// Whether the request carried an Authorization header.
    pub auth: bool,
    /// The fault injected into this answer, if any.
    pub fault: Option<String>,
    pub t: f64,
}

impl ProxyRequest {
    /// The blob digest, for a request of a blob (`/v2/<name>/blobs/<digest>` or the object
    /// server's `/o/<name>/<digest>`).
    pub fn blob(&self) -> Option<&str> {
        let path = self.path.split('?').next().unwrap_or("");
        if path.contains("/blobs/sha256:") || path.starts_with("/o/") {
            path.rsplit('/').next()
        } else {
            None
        }
    }
}

/// A running `tests/helpers/faultproxy.py` in front of the environment's registry, on a free
/// port of 127.0.0.1. It always logs (fault `log`) to a file in the environment's directory.
/// Dropping it stops the process (by its PID), also when the test panics.
pub struct FaultProxy {
    child: std::process::Child,
    /// The proxy's port (the registry host for the product is `127.0.0.1:<port>`).
    pub port: u16,
    /// The port of the redirect target (object server).
    pub object_port: u16,
    /// The JSON-lines request log.
    pub log: PathBuf,
    /// The faults it was started with.
    pub faults: String,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("pid", &self.child.id())
            .field("port", &self.port)
            .field("faults", &self.faults)
            .finish()
    }
}

impl FaultProxy {
    /// Start the proxy with `faults` (comma list, see faultproxy.py; `log` is added) and
    /// settings such as `("EXP", "5")`. Panics if it does not come up within 10 s.
    pub fn start(faults: &str, settings: &[(&str, &str)]) -> FaultProxy {
        let e = env();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{seq}", std::process::id());
        let log = e.dir.join(format!("faultproxy-{tag}.log"));
        let ready = e.dir.join(format!("faultproxy-{tag}.ready"));
        let _ = std::fs::remove_file(&ready);
        let mut all: Vec<&str> = faults.split(',').filter(|f| !f.is_empty()).collect();
        if !all.contains(&"log") {
            all.push("log");
        }
        let faults = all.join(",");
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/helpers/faultproxy.py"))
            .args(["--upstream", &e.registry, "--faults", &faults])
            .arg("--log")
            .arg(&log)
            .arg("--ready")
            .arg(&ready)
            .env_remove("FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in settings {
            cmd.arg("--set").arg(format!("{k}={v}"));
        }
        let mut child = cmd
            .spawn()
            .expect("start python3 tests/helpers/faultproxy.py");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let line = loop {
            if let Ok(s) = std::fs::read_to_string(&ready) {
                break s;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("faultproxy.py exited at start: {st}");
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("faultproxy.py did not come up in 10 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let v: serde_json::Value =
            serde_json::from_str(line.trim()).expect("faultproxy ready line");
        let port = v["port"].as_u64().expect("port") as u16;
        let object_port = v["object_port"].as_u64().expect("object_port") as u16;
        eprintln!(
            "faultproxy pid {} on 127.0.0.1:{port} (objects :{object_port}) faults {faults}, log {}",
            child.id(),
            log.display()
        );
        FaultProxy {
            child,
            port,
            object_port,
            log,
            faults,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The reference of test image `name` through the proxy.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.addr())
    }

    /// Every request logged so far.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("proxy log line {l}: {e}")))
            .collect()
    }

    /// Stop the proxy (SIGTERM, then SIGKILL after 5 s) and reap it.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A layer descriptor of a pushed image manifest.
#[derive(Debug, Clone)]
pub struct LayerInfo {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// `containerd.io/snapshot/stargz/toc.digest`, for eStargz layers.
    pub toc_digest: Option<String>,
}

/// What the tests need of a pushed single-platform image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub layers: Vec<LayerInfo>,
    pub config: String,
    pub diff_ids: Vec<String>,
    /// chain[0] = diff_id[0]; chain[i] = sha256(chain[i-1] + " " + diff_id[i]).
    pub chain_ids: Vec<String>,
}

impl ImageInfo {
    /// Total compressed size of the layers.
    pub fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// Read manifest and config of `name` (e.g. `test/python:esgz`) from the environment's
/// registry (directly, not through any proxy).
pub fn image_info(name: &str) -> ImageInfo {
    let (repo_, tag) = name.rsplit_once(':').expect("name:tag");
    let py = r#"
import hashlib, json, sys, urllib.request
reg, repo, tag = sys.argv[1:4]
def get(path, accept):
    req = urllib.request.Request(f"http://{reg}/v2/{repo}/{path}", headers={"Accept": accept})
    return json.load(urllib.request.urlopen(req))
m = get(f"manifests/{tag}", "application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json")
c = get(f"blobs/{m['config']['digest']}", "*/*")
diff = c["rootfs"]["diff_ids"]
chain = [diff[0]]
for d in diff[1:]:
    chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {d}".encode()).hexdigest())
print(json.dumps({"layers": [{"digest": l["digest"], "size": l["size"], "mediaType": l["mediaType"],
                  "toc": (l.get("annotations") or {}).get("containerd.io/snapshot/stargz/toc.digest")}
                 for l in m["layers"]],
                  "config": m["config"]["digest"], "diff_ids": diff, "chain_ids": chain}))
"#;
    let out = Command::new("python3")
        .args(["-c", py, &env().registry, repo_, tag])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "reading {name} from the registry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("image info json");
    let strs = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    ImageInfo {
        layers: v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| LayerInfo {
                digest: l["digest"].as_str().unwrap().to_string(),
                size: l["size"].as_u64().unwrap(),
                media_type: l["mediaType"].as_str().unwrap().to_string(),
                toc_digest: l["toc"].as_str().map(|s| s.to_string()),
            })
            .collect(),
        config: v["config"].as_str().unwrap().to_string(),
        diff_ids: strs("diff_ids"),
        chain_ids: strs("chain_ids"),
    }
}

/// `ctr snapshots info` of one snapshot, as containerd's metadata store reports it.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub name: String,
    pub parent: String,
    pub kind: String,
    pub labels: BTreeMap<String, String>,
}

impl Test {
    /// `ctr-remote images rpull --plain-http --snapshotter <under test> REFERENCE` with any
    /// reference (e.g. one through a [`FaultProxy`]); returns the whole Output.
    pub fn rpull_output(&self, reference: &str) -> Output {
        let e = env();
        Command::new("timeout")
            .args([
                "--kill-after=10",
                &CTR_TIMEOUT_SECS.to_string(),
                "ctr-remote",
                "-a",
            ])
            .arg(&e.containerd_address)
            .args([
                "-n",
                &self.ns,
                "images",
                "rpull",
                "--plain-http",
                "--snapshotter",
                &snapshotter(),
                reference,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run ctr-remote (apt-get install stargz-snapshotter)")
    }

    /// Like [`Test::rpull_output`], but panics (with the daemon's log tail) unless it succeeds.
    pub fn rpull_ref(&self, reference: &str) {
        let out = self.rpull_output(reference);
        if !out.status.success() {
            panic!(
                "ctr-remote images rpull {reference} failed ({}):\n{}{}\n--- lazysnap log (tail) ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                lazysnap_log_tail(60)
            );
        }
    }

    /// `ctr run --rm --snapshotter SNAP REFERENCE <new id> CMD...`; returns the whole Output.
    pub fn run_output_with(&self, snap: &str, reference: &str, cmd: &[&str]) -> Output {
        let id = self.new_id();
        let mut args = vec!["run", "--rm", "--snapshotter", snap, reference, &id];
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// `sh -c SCRIPT` in a new container of REFERENCE on snapshotter SNAP; panics unless it
    /// exits 0; returns stdout.
    pub fn sh_with(&self, snap: &str, reference: &str, script: &str) -> String {
        let out = self.run_output_with(snap, reference, &["sh", "-c", script]);
        if !out.status.success() {
            panic!(
                "sh -c in {reference} ({snap}) exited {}:\nscript: {script}\nstdout: {}\nstderr: {}\n--- lazysnap log (tail) ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                lazysnap_log_tail(60)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every snapshot of this namespace on snapshotter SNAP, with parent and labels
    /// (`ctr snapshots ls` + `ctr snapshots info`).
    pub fn snapshot_infos_with(&self, snap: &str) -> Vec<SnapshotInfo> {
        let out = self.ctr_ok(&["snapshots", "--snapshotter", snap, "ls"]);
        let mut infos = Vec::new();
        for line in out.lines().skip(1) {
            let Some(key) = line.split_whitespace().next() else {
                continue;
            };
            let out = self.ctr(&["snapshots", "--snapshotter", snap, "info", key]);
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                if err.contains("not found") {
                    continue; // removed (by containerd's gc) since the ls
                }
                panic!("ctr snapshots info {key}: {err}");
            }
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("ctr snapshots info {key}: {e}: {text}"));
            let labels = v["Labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            infos.push(SnapshotInfo {
                name: v["Name"].as_str().unwrap_or(key).to_string(),
                parent: v["Parent"].as_str().unwrap_or("").to_string(),
                kind: v["Kind"].as_str().unwrap_or("").to_string(),
                labels,
            });
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    /// [`Test::snapshot_infos_with`] on the snapshotter under test.
    pub fn snapshot_infos(&self) -> Vec<SnapshotInfo> {
        self.snapshot_infos_with(&snapshotter())
    }

    /// Remove image REFERENCE and then every snapshot of this namespace on SNAP, leaves first.
    pub fn remove_image_and_snapshots(&self, snap: &str, reference: &str) {
        let _ = self.ctr(&["images", "rm", "--sync", reference]);
        for _ in 0..20 {
            let infos = self.snapshot_infos_with(snap);
            if infos.is_empty() {
                return;
            }
            let parents: std::collections::BTreeSet<&str> =
                infos.iter().map(|i| i.parent.as_str()).collect();
            for leaf in infos.iter().filter(|i| !parents.contains(i.name.as_str())) {
                // containerd's gc may remove it first: ignore "not found"
                let _ = self.ctr(&["snapshots", "--snapshotter", snap, "rm", &leaf.name]);
            }
        }
        let left = self.snapshot_infos_with(snap);
        assert!(left.is_empty(), "snapshots left after removal: {left:?}");
    }
}

// ---- tree listings, daemon log and cache inspection (used by tests/e2e_faults.rs) ---------

/// A python script that prints one line per entry below `/` (the container's mount points
/// excluded): path, type, mode (octal, with setuid/setgid/sticky), uid, gid, size (files and
/// symlinks), symlink target, sha256 of regular files (`ERR:<errno>` when a read fails), mtime;
/// tab-separated. Run it with `python3 -B -c`.
pub const TREE_LISTING_PY: &str = r#"
import hashlib, os, stat, sys
mounts = set()
for l in open("/proc/self/mountinfo"):
    mp = l.split()[4].replace("\\040", " ")
    if mp != "/":
        mounts.add(mp)
mounts |= {"/proc", "/sys", "/dev"}
out = []
def kind(m):
    for t, f in (("d", stat.S_ISDIR), ("f", stat.S_ISREG), ("l", stat.S_ISLNK), ("c", stat.S_ISCHR),
                 ("b", stat.S_ISBLK), ("p", stat.S_ISFIFO), ("s", stat.S_ISSOCK)):
        if f(m):
            return t
    return "?"
def walk(d):
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if p in mounts:
            continue
        st = os.lstat(p)
        t = kind(st.st_mode)
        size = str(st.st_size) if t in "fl" else ""
        link = os.readlink(p) if t == "l" else ""
        h = ""
        if t == "f":
            try:
                hh = hashlib.sha256()
                with open(p, "rb") as f:
                    for b in iter(lambda: f.read(1 << 20), b""):
                        hh.update(b)
                h = hh.hexdigest()
            except OSError as e:
                h = "ERR:%d" % e.errno
        out.append("\t".join([p, t, "%o" % stat.S_IMODE(st.st_mode), str(st.st_uid), str(st.st_gid),
                              size, link, h, str(int(st.st_mtime))]))
        if t == "d":
            walk(p)
walk("/")
sys.stdout.write("\n".join(out) + "\n")
"#;

/// Entries the eStargz converter adds to a layer; a lazy view may show them or not.
pub const ESTARGZ_EXTRA_ENTRIES: [&str; 3] = [
    "/stargz.index.json",
    "/.prefetch.landmark",
    "/.no.prefetch.landmark",
];

/// One [`TREE_LISTING_PY`] output: path → (type, mode, uid, gid, size, link, sha256; mtime).
pub type TreeListing = BTreeMap<String, (Vec<String>, String)>;

/// Parse the output of [`TREE_LISTING_PY`].
pub fn parse_tree_listing(text: &str) -> TreeListing {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 9, "listing line: {l:?}");
            (
                f[0].to_string(),
                (
                    f[1..8].iter().map(|s| s.to_string()).collect(),
                    f[8].to_string(),
                ),
            )
        })
        .collect()
}

/// The sha256 field of a regular file in a [`TreeListing`] (or `ERR:<errno>`).
pub fn listing_sha<'a>(l: &'a TreeListing, path: &str) -> Option<&'a str> {
    l.get(path).map(|(f, _)| f[6].as_str())
}

impl Test {
    /// [`TREE_LISTING_PY`] in a new container of REFERENCE on SNAP; panics (with the daemon's
    /// log tail) unless it exits 0.
    pub fn tree_listing_with(&self, snap: &str, reference: &str) -> TreeListing {
        let out = self.run_output_with(snap, reference, &["python3", "-B", "-c", TREE_LISTING_PY]);
        assert!(
            out.status.success(),
            "listing in {reference} ({snap}) failed ({}): {}\n--- lazysnap log (tail) ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            lazysnap_log_tail(60)
        );
        parse_tree_listing(&String::from_utf8_lossy(&out.stdout))
    }
}

/// The listing of test image `name` (e.g. `test/python:latest`, an ordinary gzip image)
/// unpacked by containerd's overlayfs snapshotter, in namespace `faults-reference-overlayfs`;
/// computed once per test process and image.
pub fn overlayfs_reference_listing(name: &str) -> TreeListing {
    static REFS: Mutex<BTreeMap<String, TreeListing>> = Mutex::new(BTreeMap::new());
    let mut refs = REFS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = refs.get(name) {
        return l.clone();
    }
    push_images();
    let t = Test::new("faults-reference-overlayfs");
    let r = image_ref(name);
    t.ctr_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "overlayfs",
        &r,
    ]);
    let l = t.tree_listing_with("overlayfs", &r);
    refs.insert(name.to_string(), l.clone());
    l
}

/// Differences between two listings (content and metadata; mtimes may be one second apart,
/// eStargz TOCs round them), except [`ESTARGZ_EXTRA_ENTRIES`].
pub fn tree_listing_differences(got: &TreeListing, want: &TreeListing) -> Vec<String> {
    let mut diffs = Vec::new();
    let paths: std::collections::BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    for p in paths {
        if ESTARGZ_EXTRA_ENTRIES.contains(&p.as_str()) {
            continue;
        }
        match (got.get(p), want.get(p)) {
            (Some(g), Some(w)) if g.0 != w.0 => diffs.push(format!(
                "{p}: got [{}] want [{}]",
                g.0.join(" "),
                w.0.join(" ")
            )),
            (Some(g), Some(w)) => {
                let apart = match (g.1.parse::<i64>(), w.1.parse::<i64>()) {
                    (Ok(a), Ok(b)) => (a - b).abs(),
                    _ => i64::MAX,
                };
                if apart > 1 {
                    diffs.push(format!("{p}: mtime got {} want {}", g.1, w.1));
                }
            }
            (Some(g), None) => diffs.push(format!("{p}: extra [{}]", g.0.join(" "))),
            (None, Some(w)) => diffs.push(format!("{p}: missing [{}]", w.0.join(" "))),
            (None, None) => unreachable!(),
        }
    }
    diffs
}

/// The daemon's log from byte `offset` on (see [`lazysnap_log_len`]).
pub fn lazysnap_log_since(offset: u64) -> String {
    let bytes = std::fs::read(&env().lazysnap_log).unwrap_or_default();
    let from = (offset as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// The daemon log's length now, to read what is logged after this point.
pub fn lazysnap_log_len() -> u64 {
    std::fs::metadata(&env().lazysnap_log)
        .map(|m| m.len())
        .unwrap_or(0)
}

/// (files, bytes) of the daemon's chunk cache directory (`$LAZYSNAP_ROOT/cache`), counted
/// by walking it (apparent sizes of regular files).
pub fn chunk_cache_usage() -> (u64, u64) {
    fn walk(p: &Path, acc: &mut (u64, u64)) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                walk(&e.path(), acc);
            } else if m.is_file() {
                acc.0 += 1;
                acc.1 += m.len();
            }
        }
    }
    let mut acc = (0, 0);
    walk(&env().lazysnap_root.join("cache"), &mut acc);
    acc
}

/// The release binary cargo built: `$CARGO_TARGET_DIR/release/lazysnap`, else the
/// checkout's `target/release/lazysnap` (as the scripts resolve it).
pub fn release_bin() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("release/lazysnap")
}

/// Seconds since the Unix epoch, as the fault proxy's log stamps requests (`t`).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl ProxyRequest {
    /// The last byte asked for (`bytes=a-b` → b), if the request had such a Range.
    pub fn range_end(&self) -> Option<u64> {
        self.range
            .as_deref()?
            .strip_prefix("bytes=")?
            .split_once('-')?
            .1
            .parse()
            .ok()
    }

    /// A 200/206 answer whose body was sent whole.
    pub fn complete(&self) -> bool {
        (self.status == 200 || self.status == 206) && self.bytes == self.length
    }
}

static ZSTD_PUSHED: OnceLock<Result<(), String>> = OnceLock::new();

/// Push the zstd:chunked copies of the test images (`scripts/images.sh push-zstd`:
/// `test/python:zstd`, `test/busybox:zstd`), once.
pub fn push_zstd_images() {
    push_images();
    let r = ZSTD_PUSHED.get_or_init(|| {
        let out = Command::new(script("images.sh"))
            .arg("push-zstd")
            .arg(&env().dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run scripts/images.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/images.sh push-zstd failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Every `chunkDigest` (sha256:…) of the eStargz TOCs of image `name`'s layers, read from the
/// environment's registry (`stargz.index.json` in each layer blob), deduplicated.
pub fn image_chunk_digests(name: &str) -> Vec<String> {
    let (repo_, tag) = name.rsplit_once(':').expect("name:tag");
    let py = r#"
import io, json, sys, tarfile, urllib.request
reg, repo, tag = sys.argv[1:4]
def get(path, accept="*/*"):
    req = urllib.request.Request(f"http://{reg}/v2/{repo}/{path}", headers={"Accept": accept})
    return urllib.request.urlopen(req).read()
m = json.loads(get(f"manifests/{tag}", "application/vnd.oci.image.manifest.v1+json"))
out = set()
for l in m["layers"]:
    t = tarfile.open(fileobj=io.BytesIO(get("blobs/" + l["digest"])))
    toc = json.load(t.extractfile("stargz.index.json"))
    out |= {e["chunkDigest"] for e in toc["entries"] if e.get("chunkDigest")}
print("\n".join(sorted(out)))
"#;
    let out = Command::new("python3")
        .args(["-c", py, &env().registry, repo_, tag])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "reading the TOCs of {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.to_string())
        .collect()
}

/// How many of `digests` (sha256:…) the daemon's disk chunk cache holds
/// (`$LAZYSNAP_ROOT/cache/<2 hex>/<hex>`), and their bytes on disk.
pub fn cached_chunks(digests: &[String]) -> (u64, u64) {
    let root = env().lazysnap_root.join("cache");
    let mut acc = (0, 0);
    for d in digests {
        let hex = d.strip_prefix("sha256:").unwrap_or(d);
        if hex.len() < 2 {
            continue;
        }
        if let Ok(m) = std::fs::metadata(root.join(&hex[..2]).join(hex)) {
            acc.0 += 1;
            acc.1 += m.len();
        }
    }
    acc
}

impl Test {
    /// Stop the daemon (`env-lazysnap.sh stop`), run `between` while it is down, start it
    /// again and wait until it answers. Needs [`Test::exclusive`].
    pub fn restart_daemon_with(&self, between: impl FnOnce()) {
        assert!(
            matches!(self._guard, Guard::Exclusive(_)),
            "restart_daemon_with needs Test::exclusive"
        );
        {
            let action = "stop";
            let out = Command::new(script("env-lazysnap.sh"))
                .arg(&env().dir)
                .arg(action)
                .stdin(Stdio::null())
                .output()
                .expect("run scripts/env-lazysnap.sh");
            assert!(
                out.status.success(),
                "env-lazysnap.sh {action} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        between();
        let out = Command::new(script("env-lazysnap.sh"))
            .arg(&env().dir)
            .arg("start")
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/env-lazysnap.sh");
        assert!(
            out.status.success(),
            "env-lazysnap.sh start failed:\n{}{}\n--- lazysnap log (tail) ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            lazysnap_log_tail(40)
        );
    }
}

/// Delete `digests` (sha256:…) from the daemon's disk chunk cache; returns how many were
/// there. Only while the daemon is stopped (see [`Test::restart_daemon_with`]).
pub fn delete_cached_chunks(digests: &[String]) -> u64 {
    let root = env().lazysnap_root.join("cache");
    let mut n = 0;
    for d in digests {
        let hex = d.strip_prefix("sha256:").unwrap_or(d);
        if hex.len() >= 2 && std::fs::remove_file(root.join(&hex[..2]).join(hex)).is_ok() {
            n += 1;
        }
    }
    n
}
