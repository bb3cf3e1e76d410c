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
        .filter_map(|l| l.split_once('='))
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
    let bin = repo().join("target/release/lazysnap");
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
        .unwrap_or_else(|| repo().join("target/release/lazysnap").display().to_string());
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
