//! Registry host configuration (`hosts.toml`) against fake servers:
//! mirrors in order, capabilities, fall-through, headers, per-host auth.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::fake_server::{Fake, Req, Resp, blob_data, resp, serve_range};
use super::*;
use crate::oci::Digest;

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client reading `hosts.toml` for `registry` from a fresh hosts dir.
fn client_for(dir: &Path, registry: &str, hosts_toml: &str, retries: u32) -> RegistryClient {
    std::fs::create_dir_all(dir.join(registry)).unwrap();
    std::fs::write(dir.join(registry).join("hosts.toml"), hosts_toml).unwrap();
    RegistryClient::new(ClientOptions {
        docker_config: Some("/nonexistent/config.json".into()),
        timeout: Duration::from_secs(5),
        retries,
        hosts_dir: Some(dir.to_path_buf()),
        ..ClientOptions::default()
    })
    .unwrap()
}

fn image_manifest() -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[]}}"#,
        manifest::OCI_MANIFEST,
        Digest::sha256_of(b"{}")
    )
}

/// A registry serving one manifest (as tag `1` and by digest) and one blob.
fn registry(data: Vec<u8>) -> impl Fn(&Req) -> Resp + Send + Sync + 'static {
    let m = image_manifest();
    let dm = Digest::sha256_of(m.as_bytes());
    let db = Digest::sha256_of(&data);
    move |req: &Req| {
        if req.path.ends_with("/manifests/1") || req.path.ends_with(&format!("/manifests/{dm}")) {
            resp(200)
                .header("Content-Type", manifest::OCI_MANIFEST)
                .body(m.clone())
        } else if req.path.ends_with(&format!("/blobs/{db}")) {
            serve_range(req, &data)
        } else {
            resp(404)
        }
    }
}

#[tokio::test]
async fn mirror_serves_with_configured_headers() {
    let data = blob_data(5000);
    let digest = Digest::sha256_of(&data);
    let mirror = Fake::start(registry(data.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let reg = format!("127.0.0.1:{}", closed_port());
    let c = client_for(
        dir.path(),
        &reg,
        &format!(
            r#"
[host."http://127.0.0.1:{}/"]
  capabilities = ["pull", "resolve"]
  [host."http://127.0.0.1:{}/".header]
    x-custom = "v"
    x-multi = ["a", "b"]
"#,
            mirror.port, mirror.port
        ),
        0,
    );
    let r: Reference = format!("{reg}/t/img:1").parse().unwrap();
    let res = c.resolve(&r, &Platform::host()).await.unwrap();
    assert_eq!(res.bytes, image_manifest().as_bytes());
    assert_eq!(c.fetch_blob(&r, &digest).await.unwrap(), data);
    assert_eq!(
        c.read_range(&r, &digest, 10, 20).await.unwrap(),
        data[10..20]
    );
    assert_eq!(c.blob_size(&r, &digest).await.unwrap(), 5000);
    let log = mirror.log.lock().unwrap().clone();
    assert!(log.len() >= 4, "{log:?}");
    for q in &log {
        assert!(q.path.starts_with("/v2/t/img/"), "{}", q.path);
        assert_eq!(q.header("x-custom"), Some("v"), "{q:?}");
        assert_eq!(q.header("x-multi"), Some("a, b"), "{q:?}");
    }
}

#[tokio::test]
async fn capabilities_order_and_fall_through() {
    let data = blob_data(3000);
    let digest = Digest::sha256_of(&data);
    let server = Fake::start(registry(data.clone())).await;
    // Has nothing: answers 404 to everything.
    let empty = Fake::start(|_: &Req| resp(404)).await;
    // Pull-only mirror with the content.
    let pull_only = Fake::start(registry(data.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let reg = format!("127.0.0.1:{}", server.port);
    let c = client_for(
        dir.path(),
        &reg,
        &format!(
            r#"
[host."http://127.0.0.1:{}"]
[host."http://127.0.0.1:{}"]
  capabilities = ["pull"]
"#,
            empty.port, pull_only.port
        ),
        0,
    );
    let r: Reference = format!("{reg}/t/img:1").parse().unwrap();
    let res = c.resolve(&r, &Platform::host()).await.unwrap();
    let tag = |q: &Req| q.path.ends_with("/manifests/1");
    assert_eq!(
        empty.count(tag),
        1,
        "the first mirror was asked and said 404"
    );
    assert_eq!(
        pull_only.count(tag),
        0,
        "a pull-only mirror never resolves tags"
    );
    assert_eq!(server.count(tag), 1);
    // By digest: pull, so the pull-only mirror serves it.
    let pinned = c.fetch_manifest(&r, &res.digest).await.unwrap();
    assert_eq!(pinned.digest, res.digest);
    assert_eq!(
        pull_only.count(|q| q.path.contains("/manifests/sha256:")),
        1
    );
    assert_eq!(c.fetch_blob(&r, &digest).await.unwrap(), data);
    assert_eq!(c.read_range(&r, &digest, 0, 7).await.unwrap(), data[..7]);
    let blob = |q: &Req| q.path.contains("/blobs/");
    assert_eq!(server.count(blob), 0, "the mirrors served every blob read");
    assert_eq!(empty.count(blob), 2);
    assert_eq!(pull_only.count(blob), 2);

    // Not found anywhere: the server's 404 is the answer.
    let missing = Digest::sha256_of(b"missing");
    let e = c.fetch_blob(&r, &missing).await.unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    assert_eq!(server.count(blob), 1);
}

#[tokio::test]
async fn unavailable_mirror_is_skipped_then_passed_over() {
    let data = blob_data(2000);
    let digest = Digest::sha256_of(&data);
    let server = Fake::start(registry(data.clone())).await;
    let failing = Fake::start(|_: &Req| resp(503)).await;
    let dir = tempfile::tempdir().unwrap();
    let reg = format!("127.0.0.1:{}", server.port);
    let down = closed_port();
    let c = client_for(
        dir.path(),
        &reg,
        &format!(
            "[host.\"http://127.0.0.1:{down}\"]\n[host.\"http://127.0.0.1:{}\"]\n",
            failing.port
        ),
        1,
    );
    let r: Reference = format!("{reg}/t/img:1").parse().unwrap();
    assert_eq!(c.fetch_blob(&r, &digest).await.unwrap(), data);
    assert_eq!(failing.count(|_| true), 2, "one try and one retry");
    assert_eq!(server.count(|_| true), 1);
    // Both mirrors are now passed over for a while.
    assert_eq!(c.read_range(&r, &digest, 3, 9).await.unwrap(), data[3..9]);
    assert_eq!(failing.count(|_| true), 2);
    assert_eq!(server.count(|_| true), 2);
}

#[tokio::test]
async fn mirror_auth_is_per_endpoint_host() {
    let data = blob_data(1000);
    let digest = Digest::sha256_of(&data);
    let port_cell = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(AtomicUsize::new(0));
    let (pc, tk, d2) = (port_cell.clone(), tokens.clone(), data.clone());
    let mirror = Fake::start(move |req: &Req| {
        if req.path.starts_with("/token?") {
            tk.fetch_add(1, Ordering::SeqCst);
            return resp(200).body(r#"{"token":"mirror-tok"}"#);
        }
        if req.header("authorization") != Some("Bearer mirror-tok") {
            let port = pc.load(Ordering::SeqCst);
            return resp(401).header(
                "WWW-Authenticate",
                format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="m""#),
            );
        }
        resp(200).body(d2.clone())
    })
    .await;
    port_cell.store(mirror.port as usize, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let c = client_for(
        dir.path(),
        "unreachable.invalid:5000",
        &format!("[host.\"http://127.0.0.1:{}\"]\n", mirror.port),
        0,
    );
    let r: Reference = "unreachable.invalid:5000/t/img:1".parse().unwrap();
    assert_eq!(c.fetch_blob(&r, &digest).await.unwrap(), data);
    assert_eq!(c.fetch_blob(&r, &digest).await.unwrap(), data);
    assert_eq!(
        tokens.load(Ordering::SeqCst),
        1,
        "the mirror's token is cached"
    );
}

#[tokio::test]
async fn bad_hosts_toml_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = client_for(
        dir.path(),
        "reg.example",
        "[host.\"https://m\"]\nskip_verify = 1\n",
        0,
    );
    let r: Reference = "reg.example/t/img:1".parse().unwrap();
    let e = c.resolve(&r, &Platform::host()).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RegistryError::HostsConfig { .. }), "{msg}");
    assert!(msg.contains("reg.example/hosts.toml"), "{msg}");
    assert!(msg.contains("host.\"https://m\".skip_verify"), "{msg}");
}
