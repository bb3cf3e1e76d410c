//! Pushing with `registry::RegistryClient` to a real `docker-registry` on
//! loopback (FORMATS.md §6.4): monolithic and chunked blob uploads, HEAD,
//! cross-repository mounts, manifest PUTs, digest checks, streaming blob
//! downloads into files, and htpasswd Basic auth.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lazysnap::oci::Digest;
use lazysnap::registry::{ClientOptions, Platform, Reference, RegistryClient, RegistryError};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MIB: u64 = 1 << 20;
const USER: &str = "alice";
const PASSWORD: &str = "pa55-w0rd!";

/// A `docker-registry serve` child, killed (by PID) and reaped on drop.
struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts a registry; with `htpasswd`, every request needs Basic auth
    /// as [`USER`]/[`PASSWORD`].
    fn start(htpasswd: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if htpasswd {
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, bcrypt_line(USER, PASSWORD)).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: lazysnap-test\n    path: {}\n",
                file.display()
            ));
        }
        let path = dir.path().join("config.yml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let reg = Registry { child, addr, dir };
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

    fn reference(&self, repo_tag: &str) -> Reference {
        format!("{}/{repo_tag}", self.addr).parse().unwrap()
    }

    /// Where the filesystem driver keeps a blob's bytes.
    fn blob_data_path(&self, d: &Digest) -> PathBuf {
        self.dir.path().join(format!(
            "data/docker/registry/v2/blobs/sha256/{}/{}/data",
            &d.hex()[..2],
            d.hex()
        ))
    }

    /// A docker config.json with this registry's credentials.
    fn docker_config(&self) -> PathBuf {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        let path = self.dir.path().join("config.json");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.addr),
        )
        .unwrap();
        path
    }
}

/// An htpasswd line with a bcrypt hash (the only kind docker-registry
/// accepts): `htpasswd -B` (apache2-utils), else python3's `crypt`.
fn bcrypt_line(user: &str, password: &str) -> String {
    if let Ok(out) = Command::new("htpasswd")
        .args(["-nbB", user, password])
        .output()
        && out.status.success()
    {
        return String::from_utf8(out.stdout).unwrap();
    }
    let out = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt,sys; print(sys.argv[1] + ':' + crypt.crypt(sys.argv[2], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
            user,
            password,
        ])
        .output()
        .expect("htpasswd or python3 is needed for a bcrypt hash");
    assert!(
        out.status.success(),
        "python3 crypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn client_with(config: Option<&Path>) -> RegistryClient {
    RegistryClient::new(ClientOptions {
        docker_config: Some(
            config.map_or_else(|| "/nonexistent/config.json".into(), Path::to_path_buf),
        ),
        timeout: Duration::from_secs(20),
        retries: 2,
        hosts_dir: None,
        ..ClientOptions::default()
    })
    .unwrap()
}

fn client() -> RegistryClient {
    client_with(None)
}

/// `n` bytes that do not compress or repeat with a short period.
fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_blob_monolithic_with_head_before_and_after() {
    let reg = Registry::start(false);
    let c = client();
    let r = reg.reference("push/small:1");
    let blob = Bytes::from(data(70_000, 1));
    let d = Digest::sha256_of(&blob);
    assert_eq!(c.blob_exists(&r, &d).await.unwrap(), None);
    c.push_blob_bytes(&r, &d, blob.clone()).await.unwrap();
    assert_eq!(c.blob_exists(&r, &d).await.unwrap(), Some(70_000));
    assert_eq!(c.fetch_blob(&r, &d).await.unwrap(), blob);
    // Pushing it again is harmless.
    c.push_blob_bytes(&r, &d, blob.clone()).await.unwrap();
    // Content that is not the digest is refused with a clear error.
    let wrong = Digest::sha256_of(b"not it");
    let e = c.push_blob_bytes(&r, &wrong, blob).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "push of blob {}/push/small@{wrong}: content digest is {d}, want {wrong}",
            reg.addr
        )
    );
    assert_eq!(c.blob_exists(&r, &wrong).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_blob_chunked_then_streamed_back_into_a_file() {
    let reg = Registry::start(false);
    let c = client();
    let r = reg.reference("push/big:1");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let blob = data((40 * MIB) as usize, 2);
    std::fs::write(&src, &blob).unwrap();
    let d = Digest::sha256_of(&blob);
    let seen = Mutex::new(Vec::new());
    c.push_blob_file(&r, &d, 40 * MIB, &src, &|n| seen.lock().unwrap().push(n))
        .await
        .unwrap();
    // Five 8 MiB PATCHes, acknowledged in order.
    assert_eq!(
        *seen.lock().unwrap(),
        [8 * MIB, 16 * MIB, 24 * MIB, 32 * MIB, 40 * MIB]
    );
    assert_eq!(c.blob_exists(&r, &d).await.unwrap(), Some(40 * MIB));
    assert_eq!(std::fs::read(reg.blob_data_path(&d)).unwrap(), blob);

    let out = dir.path().join("out");
    let last = Mutex::new(0);
    let n = c
        .fetch_blob_to_file(&r, &d, &out, &|n| *last.lock().unwrap() = n)
        .await
        .unwrap();
    assert_eq!((n, *last.lock().unwrap()), (40 * MIB, 40 * MIB));
    let got = std::fs::read(&out).unwrap();
    assert_eq!(Digest::sha256_of(&got), d);
    assert!(got == blob);

    // A file that is not the digest: the closing PUT is never sent.
    let bad = dir.path().join("bad");
    let mut other = blob.clone();
    other[20 * MIB as usize] ^= 1;
    std::fs::write(&bad, &other).unwrap();
    let e = c
        .push_blob_file(&r, &Digest::sha256_of(&blob[..10]), 40 * MIB, &bad, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&Digest::sha256_of(&other).to_string()),
        "{e}"
    );
    assert_eq!(
        c.blob_exists(&r, &Digest::sha256_of(&other)).await.unwrap(),
        None
    );
    // A size that is not the file's.
    let e = c
        .push_blob_file(&r, &d, 40 * MIB + 1, &src, &|_| {})
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "push of blob {}/push/big@{d}: {} bytes, want {}",
            reg.addr,
            40 * MIB,
            40 * MIB + 1
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_with_wrong_content_fails_and_removes_the_file() {
    let reg = Registry::start(false);
    let c = client();
    let r = reg.reference("push/dl:1");
    let blob = Bytes::from(data(300_000, 3));
    let d = Digest::sha256_of(&blob);
    c.push_blob_bytes(&r, &d, blob.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    assert_eq!(
        c.fetch_blob_to_file(&r, &d, &out, &|_| {}).await.unwrap(),
        300_000
    );
    assert_eq!(std::fs::read(&out).unwrap(), blob);

    // Corrupt the registry's copy: same length, one byte flipped.
    let mut corrupt = blob.to_vec();
    corrupt[1234] ^= 0xff;
    std::fs::write(reg.blob_data_path(&d), &corrupt).unwrap();
    let e = c
        .fetch_blob_to_file(&r, &d, &out, &|_| {})
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "blob {}/push/dl@{d}: content digest is {}, want {d}",
            reg.addr,
            Digest::sha256_of(&corrupt)
        )
    );
    assert!(!out.exists(), "partial file removed");

    // Unknown blob: 404, nothing created.
    let missing = Digest::sha256_of(b"missing");
    let e = c
        .fetch_blob_to_file(&r, &missing, &out, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_repository_mount_skips_the_upload() {
    let reg = Registry::start(false);
    let c = client();
    let a = reg.reference("mount/a:1");
    let b = reg.reference("mount/b:1");
    let blob = Bytes::from(data(200_000, 4));
    let d = Digest::sha256_of(&blob);
    c.push_blob_bytes(&a, &d, blob.clone()).await.unwrap();
    assert_eq!(c.blob_exists(&b, &d).await.unwrap(), None);
    assert!(
        c.mount_blob(&b, &d, "mount/a").await.unwrap(),
        "201 Created"
    );
    assert_eq!(c.blob_exists(&b, &d).await.unwrap(), Some(200_000));
    assert_eq!(c.fetch_blob(&b, &d).await.unwrap(), blob);
    // A blob the source does not have: 202, not mounted.
    let other = Digest::sha256_of(b"not in a");
    assert!(!c.mount_blob(&b, &other, "mount/a").await.unwrap());
    assert_eq!(c.blob_exists(&b, &other).await.unwrap(), None);
}

/// Pushes a config and a layer to `r` and returns an image manifest for them.
async fn push_image_parts(c: &RegistryClient, r: &Reference, seed: u64) -> Vec<u8> {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = Bytes::from(data(5000, seed));
    let (cd, ld) = (Digest::sha256_of(config), Digest::sha256_of(&layer));
    c.push_blob_bytes(r, &cd, Bytes::from_static(config))
        .await
        .unwrap();
    c.push_blob_bytes(r, &ld, layer).await.unwrap();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":5000}}]}}"#,
        config.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_by_tag_reads_back_byte_for_byte() {
    let reg = Registry::start(false);
    let c = client();
    let r = reg.reference("push/img:v1");
    let manifest = push_image_parts(&c, &r, 5).await;
    let d = c.put_manifest(&r, OCI_MANIFEST, &manifest).await.unwrap();
    assert_eq!(d, Digest::sha256_of(&manifest));
    let resolved = c.resolve(&r, &Platform::host()).await.unwrap();
    assert_eq!(resolved.bytes, manifest);
    assert_eq!(
        (resolved.digest, resolved.media_type.as_str()),
        (d.clone(), OCI_MANIFEST)
    );
    assert_eq!(c.fetch_manifest(&r, &d).await.unwrap().bytes, manifest);

    // By digest too.
    let pinned: Reference = format!("{}/push/img@{d}", reg.addr).parse().unwrap();
    assert_eq!(
        c.put_manifest(&pinned, OCI_MANIFEST, &manifest)
            .await
            .unwrap(),
        d
    );

    // A manifest naming a blob the repository lacks is refused by the registry.
    let missing = String::from_utf8(manifest).unwrap().replace(
        &Digest::sha256_of(&data(5000, 5)).to_string(),
        &Digest::sha256_of(b"gone").to_string(),
    );
    let e = c
        .put_manifest(
            &reg.reference("push/img:v2"),
            OCI_MANIFEST,
            missing.as_bytes(),
        )
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "manifest {}/push/img:v2: HTTP 400 from http://{}/v2/push/img/manifests/v2",
            reg.addr, reg.addr
        )) && msg.contains("MANIFEST_BLOB_UNKNOWN"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_with_htpasswd_basic_auth() {
    let reg = Registry::start(true);
    let r = reg.reference("auth/img:v1");
    let blob = Bytes::from(data(1000, 6));
    let d = Digest::sha256_of(&blob);

    // Without credentials: refused, and the error names what and why.
    let e = client()
        .push_blob_bytes(&r, &d, blob.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "push of blob {}/auth/img@{d}: unauthorized",
            reg.addr
        )),
        "{e}"
    );

    let config = reg.docker_config();
    let c = client_with(Some(&config));
    assert_eq!(c.blob_exists(&r, &d).await.unwrap(), None);
    c.push_blob_bytes(&r, &d, blob.clone()).await.unwrap();
    assert_eq!(c.blob_exists(&r, &d).await.unwrap(), Some(1000));
    // A chunked upload over Basic auth (small chunks via the options).
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let big = data((3 * MIB) as usize, 7);
    std::fs::write(&src, &big).unwrap();
    let bd = Digest::sha256_of(&big);
    let opts = lazysnap::registry::PushOptions {
        monolithic_limit: MIB,
        chunk_size: MIB,
    };
    c.push_blob_file_with(&r, &bd, 3 * MIB, &src, &opts, &|_| {})
        .await
        .unwrap();
    assert!(c.fetch_blob(&r, &bd).await.unwrap() == big);
    let manifest = push_image_parts(&c, &r, 8).await;
    let md = c.put_manifest(&r, OCI_MANIFEST, &manifest).await.unwrap();
    assert_eq!(c.resolve(&r, &Platform::host()).await.unwrap().digest, md);
    assert!(
        c.mount_blob(&reg.reference("auth/other:1"), &d, "auth/img")
            .await
            .unwrap()
    );
    let out = dir.path().join("out");
    assert_eq!(
        c.fetch_blob_to_file(&r, &bd, &out, &|_| {}).await.unwrap(),
        3 * MIB
    );
    assert!(std::fs::read(&out).unwrap() == big);

    // Wrong password: refused; neither password appears in the error.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&config).unwrap().replace(
            &{
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
            },
            &{
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:wrong-pw"))
            },
        ),
    )
    .unwrap();
    let e = client_with(Some(&bad))
        .put_manifest(&r, OCI_MANIFEST, &manifest)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{msg}");
    assert!(
        !msg.contains("wrong-pw") && !msg.contains(PASSWORD),
        "{msg}"
    );
}
