//! `registry::RegistryClient` against a real `docker-registry` on loopback,
//! fed by `skopeo copy` from the cached test images.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lazysnap::oci::Digest;
use lazysnap::registry::{ClientOptions, Platform, Reference, RegistryClient, RegistryError};

const IMAGE_CACHE: &str = "/var/cache/lazysnap-test-images";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

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

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
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

    fn push(&self, layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
        let out = Command::new("skopeo")
            .arg("--insecure-policy")
            .arg("copy")
            .args(extra)
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

fn client() -> RegistryClient {
    RegistryClient::new(ClientOptions {
        docker_config: Some("/nonexistent/config.json".into()),
        timeout: Duration::from_secs(10),
        retries: 2,
        ..ClientOptions::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_real_registry() {
    let Some(layout) = test_layout() else {
        eprintln!("skipping: no cached test images under {IMAGE_CACHE} (run scripts/images.sh)");
        return;
    };
    let reg = Registry::start();
    reg.push(&layout, "busybox", "t/img:1", &[]);
    reg.push(&layout, "busybox", "t/img:v2s2", &["--format", "v2s2"]);
    let c = client();
    let platform = Platform::host();

    // By tag.
    let r: Reference = format!("{}/t/img:1", reg.addr).parse().unwrap();
    let by_tag = c.resolve(&r, &platform).await.unwrap();
    assert_eq!(by_tag.media_type, OCI_MANIFEST);
    assert_eq!(by_tag.digest, Digest::sha256_of(&by_tag.bytes));
    assert_eq!(by_tag.index, None);
    let index = std::fs::read_to_string(layout.join("index.json")).unwrap();
    assert!(
        index.contains(&*by_tag.digest.as_str()),
        "skopeo kept the layout's manifest digest {}",
        by_tag.digest
    );
    let layers = by_tag.manifest.layers().clone();
    assert!(!layers.is_empty());

    // By digest, and fetch_manifest.
    let pinned: Reference = format!("{}/t/img@{}", reg.addr, by_tag.digest)
        .parse()
        .unwrap();
    let by_digest = c.resolve(&pinned, &platform).await.unwrap();
    assert_eq!(by_digest.digest, by_tag.digest);
    assert_eq!(by_digest.bytes, by_tag.bytes);
    let fetched = c.fetch_manifest(&r, &by_tag.digest).await.unwrap();
    assert_eq!(fetched.bytes, by_tag.bytes);

    // Docker schema2 copy parses into the same layers.
    let r2: Reference = format!("{}/t/img:v2s2", reg.addr).parse().unwrap();
    let v2 = c.resolve(&r2, &platform).await.unwrap();
    assert_eq!(v2.media_type, DOCKER_MANIFEST);
    assert_eq!(v2.manifest.layers().len(), layers.len());
    assert_eq!(v2.manifest.layers()[0].digest(), layers[0].digest());

    // Blobs: whole, size, ranges.
    let layer = &layers[0];
    let digest: Digest = layer.digest().to_string().parse().unwrap();
    let whole = c.fetch_blob(&r, &digest).await.unwrap();
    assert_eq!(whole.len() as u64, layer.size());
    assert_eq!(Digest::sha256_of(&whole), digest);
    assert_eq!(c.blob_size(&r, &digest).await.unwrap(), layer.size());
    let n = whole.len() as u64;
    for (a, b) in [
        (0, 1),
        (0, 512),
        (n / 3, n / 2),
        (n - 51, n),
        (n - 1, n),
        (1000, 1001),
    ] {
        let got = c.read_range(&r, &digest, a, b).await.unwrap();
        assert_eq!(got, whole[a as usize..b as usize], "range {a}..{b}");
    }
    assert!(!c.ignores_ranges(&r, &digest));
    let e = c.read_range(&r, &digest, n, n + 10).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::RangeNotSatisfiable { .. }),
        "{e}"
    );

    let cfg: Digest = by_tag
        .manifest
        .config()
        .digest()
        .to_string()
        .parse()
        .unwrap();
    let config = c.fetch_blob(&r, &cfg).await.unwrap();
    assert!(serde_json::from_slice::<serde_json::Value>(&config).unwrap()["rootfs"].is_object());

    // Errors name what is missing.
    let missing = Digest::sha256_of(b"not pushed");
    let e = c.fetch_blob(&r, &missing).await.unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("blob {}/t/img@{missing}: not found", reg.addr)),
        "{e}"
    );
    let nope: Reference = format!("{}/t/img:nope", reg.addr).parse().unwrap();
    let e = c.resolve(&nope, &platform).await.unwrap_err();
    assert!(e.to_string().contains("MANIFEST_UNKNOWN"), "{e}");
}
