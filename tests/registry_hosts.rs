//! containerd `hosts.toml` mirrors against a real `docker-registry` on
//! loopback, fed by `skopeo copy` from the cached busybox test image: the
//! registry named in the reference is unreachable and the image comes
//! through its mirror.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lazysnap::oci::Digest;
use lazysnap::registry::{ClientOptions, Platform, Reference, RegistryClient, RegistryError};

const IMAGE_CACHE: &str = "/var/cache/lazysnap-test-images";

/// A `docker-registry serve` child, killed (by PID) and reaped on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "docker-registry did not listen on {}",
                reg.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    fn push(&self, layout: &Path, tag: &str, dest: &str) {
        let out = Command::new("skopeo")
            .arg("--insecure-policy")
            .arg("copy")
            .arg("--dest-tls-verify=false")
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{dest}", self.addr))
            .output()
            .expect("skopeo must be installed");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The cached OCI layout holding the `busybox` test image.
fn test_layout() -> Option<PathBuf> {
    let entries = std::fs::read_dir(IMAGE_CACHE).ok()?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("oci"))
        .find(|p| {
            let Ok(text) = std::fs::read_to_string(p.join("index.json")) else {
                return false;
            };
            let index: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            index["manifests"].as_array().is_some_and(|ms| {
                ms.iter()
                    .any(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "busybox")
            })
        })
}

/// A client whose hosts dir says `registry` has this `hosts.toml`.
fn client(dir: &Path, registry: &str, hosts_toml: &str) -> RegistryClient {
    std::fs::create_dir_all(dir.join(registry)).unwrap();
    std::fs::write(dir.join(registry).join("hosts.toml"), hosts_toml).unwrap();
    RegistryClient::new(ClientOptions {
        docker_config: Some("/nonexistent/config.json".into()),
        timeout: Duration::from_secs(10),
        retries: 1,
        hosts_dir: Some(dir.to_path_buf()),
        ..ClientOptions::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_through_hosts_toml_mirrors() {
    let Some(layout) = test_layout() else {
        eprintln!("skipping: no cached test images under {IMAGE_CACHE} (run scripts/images.sh)");
        return;
    };
    let reg = Registry::start();
    reg.push(&layout, "busybox", "t/img:1");
    let platform = Platform::host();
    let hosts = tempfile::tempdir().unwrap();
    let closed = format!("127.0.0.1:{}", free_port());

    // 1. The registry (a closed port) has the real registry as its mirror.
    let c = client(
        hosts.path(),
        &closed,
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.addr
        ),
    );
    let r: Reference = format!("{closed}/t/img:1").parse().unwrap();
    let res = c.resolve(&r, &platform).await.unwrap();
    let index = std::fs::read_to_string(layout.join("index.json")).unwrap();
    assert!(index.contains(&*res.digest.as_str()), "{}", res.digest);
    let layer = &res.manifest.layers()[0];
    let digest: Digest = layer.digest().to_string().parse().unwrap();
    let text = digest.as_str();
    let (alg, hex) = text.split_once(':').unwrap();
    let expected = std::fs::read(layout.join("blobs").join(alg).join(hex)).unwrap();
    let whole = c.fetch_blob(&r, &digest).await.unwrap();
    assert_eq!(whole, expected);
    assert_eq!(c.blob_size(&r, &digest).await.unwrap(), layer.size());
    let n = expected.len();
    assert_eq!(
        c.read_range(&r, &digest, 100, 4196).await.unwrap(),
        expected[100..4196]
    );
    assert_eq!(
        c.read_range(&r, &digest, n as u64 - 10, n as u64)
            .await
            .unwrap(),
        expected[n - 10..]
    );

    // 2. An unresolvable registry name, whose first mirror is down.
    let down = format!("127.0.0.1:{}", free_port());
    let c = client(
        hosts.path(),
        "unreachable.invalid:5000",
        &format!("[host.\"http://{down}\"]\n[host.\"http://{}\"]\n", reg.addr),
    );
    let r: Reference = "unreachable.invalid:5000/t/img:1".parse().unwrap();
    let res2 = c.resolve(&r, &platform).await.unwrap();
    assert_eq!(res2.digest, res.digest);
    assert_eq!(
        c.read_range(&r, &digest, 0, 512).await.unwrap(),
        expected[..512]
    );

    // 3. A pull-only mirror is not used to resolve a tag, but serves digests.
    let closed2 = format!("127.0.0.1:{}", free_port());
    let c = client(
        hosts.path(),
        &closed2,
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n",
            reg.addr
        ),
    );
    let r: Reference = format!("{closed2}/t/img:1").parse().unwrap();
    let e = c.resolve(&r, &platform).await.unwrap_err();
    assert!(
        e.is_unavailable(),
        "the tag went to the (closed) registry: {e}"
    );
    assert!(e.to_string().contains(&closed2), "{e}");
    let pinned = c.fetch_manifest(&r, &res.digest).await.unwrap();
    assert_eq!(pinned.bytes, res.bytes);
    assert_eq!(c.fetch_blob(&r, &digest).await.unwrap(), expected);

    // 4. A mirror without the content: 404 there, then the next host.
    let c = client(
        hosts.path(),
        &reg.addr,
        &format!(
            "[host.\"http://{}/elsewhere\"]\n  override_path = true\n",
            reg.addr
        ),
    );
    let r: Reference = format!("{}/t/img:1", reg.addr).parse().unwrap();
    let res4 = c.resolve(&r, &platform).await.unwrap();
    assert_eq!(res4.digest, res.digest);
    let e = c
        .fetch_blob(&r, &Digest::sha256_of(b"not pushed"))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
}
