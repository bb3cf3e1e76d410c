//! The harness of `registry_login.rs`: a `docker-registry` child (htpasswd or token
//! auth), `tests/helpers/tokenserver.py` with a fresh key and certificate, the lazysnap
//! binary run with a clean environment, an image pushed through `RegistryClient`, a fake
//! credential helper, and a pseudo-terminal driver.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use lazysnap::oci::Digest;
use lazysnap::registry::{ClientOptions, Platform, Reference, RegistryClient, RegistryError};
use serde_json::{Value, json};

/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The htpasswd registry's user.
pub const USER: &str = "alice";
/// The htpasswd password.
pub const PASSWORD: &str = "pa55-w0rd!";
/// The token server's user (OCIR style `<namespace>/<user>`).
pub const OCIR_USER: &str = "tenancy/alice";
/// The token server's password (with a colon and a slash).
pub const OCIR_PASSWORD: &str = "t0ken:with/colon";
/// The registry's `service` (the tokens' `aud`).
pub const SERVICE: &str = "lazysnap-test-registry";
/// The tokens' issuer.
pub const ISSUER: &str = "lazysnap-test-issuer";

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Standard base64 of `s`.
pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A child process killed (by PID) and reaped on drop.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port of 127.0.0.1 free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 15 s until `addr` accepts connections.
pub fn wait_listening(addr: &str, what: &str) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{what} did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `docker-registry serve` with the given `auth:` section (YAML, or empty).
pub struct Registry {
    _proc: Proc,
    /// `127.0.0.1:<port>`.
    pub addr: String,
}

impl Registry {
    pub fn start(dir: &Path, auth: &str) -> Registry {
        let addr = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{auth}",
            dir.join("data").display()
        );
        let path = dir.join("registry.yml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let reg = Registry {
            _proc: Proc(child),
            addr,
        };
        wait_listening(&reg.addr, "docker-registry");
        reg
    }

    /// A registry where every request needs Basic auth as [`USER`]/[`PASSWORD`].
    pub fn htpasswd(dir: &Path) -> Registry {
        let out = Command::new("htpasswd")
            .args(["-nbB", USER, PASSWORD])
            .output()
            .expect("htpasswd (apache2-utils) must be installed");
        assert!(out.status.success());
        let file = dir.join("htpasswd");
        std::fs::write(&file, out.stdout).unwrap();
        let auth = format!(
            "auth:\n  htpasswd:\n    realm: lazysnap-test\n    path: {}\n",
            file.display()
        );
        Registry::start(dir, &auth)
    }

    pub fn reference(&self, repo_tag: &str) -> Reference {
        format!("{}/{repo_tag}", self.addr).parse().unwrap()
    }
}

/// One token request as logged: query parameters, Basic user, status.
pub type TokenRequest = (BTreeMap<String, Vec<String>>, Option<String>, u16);

/// `tests/helpers/tokenserver.py` with a fresh key and self-signed certificate.
pub struct TokenServer {
    _proc: Proc,
    /// The token endpoint, `http://127.0.0.1:<port>/token`.
    pub realm: String,
    cert: PathBuf,
    log: PathBuf,
}

impl TokenServer {
    pub fn start(dir: &Path) -> TokenServer {
        let (key, cert) = (dir.join("token.key"), dir.join("token.crt"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=lazysnap-test-token-issuer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (log, ready) = (dir.join("token.log"), dir.join("token.ready"));
        let child = Command::new("python3")
            .arg(repo_root().join("tests/helpers/tokenserver.py"))
            .args(["--user", OCIR_USER, "--password", OCIR_PASSWORD])
            .args(["--issuer", ISSUER, "--service", SERVICE, "--key"])
            .arg(&key)
            .arg("--cert")
            .arg(&cert)
            .arg("--log")
            .arg(&log)
            .arg("--ready")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3");
        let proc = Proc(child);
        let t0 = Instant::now();
        while !ready.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "tokenserver.py did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let v: Value = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
        let realm = format!("http://127.0.0.1:{}/token", v["port"]);
        TokenServer {
            _proc: proc,
            realm,
            cert,
            log,
        }
    }

    /// The registry's `auth: token` section trusting this server.
    pub fn registry_auth(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            self.cert.display()
        )
    }

    /// The logged requests: (query, Basic user, status).
    pub fn requests(&self) -> Vec<TokenRequest> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    serde_json::from_value(v["query"].clone()).unwrap(),
                    v["user"].as_str().map(str::to_string),
                    v["status"].as_u64().unwrap() as u16,
                )
            })
            .collect()
    }
}

/// Runs the lazysnap binary with `args`, `stdin` piped in, and `env` on top of a clean
/// environment (no DOCKER_CONFIG, no backtraces, HOME in `home`).
pub fn lazysnap(args: &[&str], stdin: &str, env: &[(&str, &str)], home: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazysnap"));
    cmd.args(args)
        .env_remove("DOCKER_CONFIG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("HOME", home)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("lazysnap binary");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A registry client reading credentials from `config` (no hosts.toml).
pub fn client(config: &Path) -> RegistryClient {
    RegistryClient::new(ClientOptions {
        docker_config: Some(config.to_path_buf()),
        timeout: Duration::from_secs(20),
        retries: 1,
        hosts_dir: None,
        ..ClientOptions::default()
    })
    .unwrap()
}

/// A JSON file's value.
pub fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// A one-file gzip layer, its config and manifest, pushed to `r`; returns the
/// manifest's and the layer's digests.
pub async fn push_image(
    c: &RegistryClient,
    r: &Reference,
) -> Result<(Digest, Digest), RegistryError> {
    let mut tar = tar::Builder::new(Vec::new());
    let body = b"hello from a logged-in push\n";
    let mut h = tar::Header::new_ustar();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "hello.txt", &body[..]).unwrap();
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    let layer = Bytes::from(gz.finish().unwrap());
    let config = format!(
        r#"{{"architecture":"{}","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        Platform::host().architecture,
        Digest::sha256_of(&raw)
    );
    let (cd, ld) = (
        Digest::sha256_of(config.as_bytes()),
        Digest::sha256_of(&layer),
    );
    c.push_blob_bytes(r, &cd, Bytes::from(config.clone()))
        .await?;
    c.push_blob_bytes(r, &ld, layer.clone()).await?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{ld}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let md = c.put_manifest(r, OCI_MANIFEST, manifest.as_bytes()).await?;
    Ok((md, ld))
}

/// A config.json holding `user:password` for `addr`, for seeding a registry.
pub fn seed_config(dir: &Path, addr: &str, user: &str, password: &str) -> PathBuf {
    let p = dir.join("seed.json");
    let v = json!({"auths": {addr: {"auth": b64(&format!("{user}:{password}"))}}});
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

/// A `docker-credential-test` helper keeping one file per server in `state`, and
/// logging each call (action and stdin) to `state/calls.log`.
pub fn write_helper(bin: &Path, state: &Path) {
    std::fs::create_dir_all(bin).unwrap();
    std::fs::create_dir_all(state).unwrap();
    let script = format!(
        r#"#!/bin/sh
state='{}'
input=$(cat)
printf '%s %s\n' "$1" "$input" >> "$state/calls.log"
case "$1" in
store)
    server=$(printf '%s' "$input" | sed -n 's/.*"ServerURL":"\([^"]*\)".*/\1/p')
    printf '%s' "$input" > "$state/$(printf '%s' "$server" | tr -c 'A-Za-z0-9.' _).json" ;;
get|erase)
    file="$state/$(printf '%s' "$input" | tr -c 'A-Za-z0-9.' _).json"
    if [ ! -f "$file" ]; then echo 'credentials not found in native keychain'; exit 1; fi
    if [ "$1" = get ]; then cat "$file"; else rm "$file"; fi ;;
*) echo "unknown action $1" >&2; exit 2 ;;
esac
"#,
        state.display()
    );
    let path = bin.join("docker-credential-test");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Drives `lazysnap login` on a pseudo-terminal: answers the prompts and returns
/// everything the terminal showed, and the exit code.
pub const PTY_DRIVER: &str = r#"
import os, pty, sys, time
user, password, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
seen = b""
def until(marker):
    global seen
    end = time.time() + 30
    while marker not in seen:
        if time.time() > end:
            sys.exit("timed out waiting for %r, saw %r" % (marker, seen))
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            sys.exit("eof waiting for %r, saw %r" % (marker, seen))
        seen += chunk
until(b"Username: ")
os.write(fd, user.encode() + b"\n")
until(b"Password: ")
os.write(fd, password.encode() + b"\n")
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
