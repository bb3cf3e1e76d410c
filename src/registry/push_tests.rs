//! Push behaviour against the fake server: token scopes, Location
//! handling, restarts, 416 recovery, digest checks, push hosts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;

use super::fake_server::{Fake, Req, Resp, blob_data, client, client_with, resp};
use super::*;
use crate::oci::Digest;

fn enc(d: &Digest) -> String {
    d.as_str().replace(':', "%3A")
}

#[tokio::test]
async fn mount_asks_one_token_for_push_and_source_pull() {
    let port_cell = Arc::new(AtomicUsize::new(0));
    let pc = port_cell.clone();
    let mounted = Arc::new(AtomicUsize::new(1));
    let m = mounted.clone();
    let fake = Fake::start(move |req| {
        if req.path.starts_with("/token?") {
            return resp(200).body(r#"{"token":"tk"}"#);
        }
        if req.header("authorization") != Some("Bearer tk") {
            let port = pc.load(Ordering::SeqCst);
            return resp(401).header(
                "WWW-Authenticate",
                format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake",scope="repository:t/img:pull,push""#),
            );
        }
        match (req.method.as_str(), m.load(Ordering::SeqCst)) {
            ("POST", 1) => resp(201).header("Location", "/v2/t/img/blobs/x"),
            ("POST", _) => resp(202).header("Location", "/v2/t/img/blobs/uploads/u9?_state=q"),
            ("DELETE", _) => resp(204),
            _ => resp(500),
        }
    })
    .await;
    port_cell.store(fake.port as usize, Ordering::SeqCst);
    let c = client();
    let r = fake.reference();
    let d = Digest::sha256_of(b"layer");
    assert!(c.mount_blob(&r, &d, "other/src").await.unwrap());
    let log = fake.log.lock().unwrap().clone();
    let tokens: Vec<&str> = log
        .iter()
        .filter(|q| q.path.starts_with("/token"))
        .map(|q| q.path.as_str())
        .collect();
    assert_eq!(
        tokens,
        [
            "/token?service=fake&scope=repository%3At%2Fimg%3Apull%2Cpush&scope=repository%3Aother%2Fsrc%3Apull"
        ]
    );
    let mount = format!(
        "/v2/t/img/blobs/uploads/?mount={}&from=other%2Fsrc",
        enc(&d)
    );
    assert_eq!(log.last().unwrap().path, mount);
    assert_eq!(log.last().unwrap().header("content-length"), Some("0"));

    // 202: not mounted; the session the registry opened is cancelled.
    mounted.store(0, Ordering::SeqCst);
    assert!(!c.mount_blob(&r, &d, "other/src").await.unwrap());
    let log = fake.log.lock().unwrap().clone();
    let last: Vec<(&str, &str)> = log[log.len() - 2..]
        .iter()
        .map(|q| (q.method.as_str(), q.path.as_str()))
        .collect();
    assert_eq!(
        last,
        [
            ("POST", mount.as_str()),
            ("DELETE", "/v2/t/img/blobs/uploads/u9?_state=q")
        ]
    );
    assert_eq!(
        fake.count(|q| q.path.starts_with("/token")),
        1,
        "token cached"
    );
}

/// A registry keeping one upload in `body`; PUT answers from `put`.
fn upload_server(
    body: Arc<Mutex<Vec<u8>>>,
    put: impl Fn(&Req, &[u8]) -> Resp + Send + Sync + 'static,
) -> impl Fn(&Req) -> Resp + Send + Sync + 'static {
    let sessions = AtomicUsize::new(0);
    move |req| match req.method.as_str() {
        "POST" => {
            let n = sessions.fetch_add(1, Ordering::SeqCst) + 1;
            body.lock().unwrap().clear();
            resp(202).header(
                "Location",
                format!("/v2/t/img/blobs/uploads/u{n}?_state=s%3D{n}"),
            )
        }
        "PUT" => {
            let mut b = body.lock().unwrap();
            b.extend_from_slice(&req.body);
            put(req, &b)
        }
        "DELETE" => resp(204),
        _ => resp(405),
    }
}

#[tokio::test]
async fn monolithic_push_keeps_the_state_query_and_appends_the_digest() {
    let data = blob_data(5000);
    let d = Digest::sha256_of(&data);
    let got = Arc::new(Mutex::new(Vec::new()));
    let fake = Fake::start(upload_server(got.clone(), |_, b| {
        resp(201).header("Docker-Content-Digest", Digest::sha256_of(b).to_string())
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    std::fs::write(&path, &data).unwrap();
    let seen = Mutex::new(Vec::new());
    client()
        .push_blob_file(&fake.reference(), &d, 5000, &path, &|n| {
            seen.lock().unwrap().push(n)
        })
        .await
        .unwrap();
    assert_eq!(*got.lock().unwrap(), data);
    assert_eq!(*seen.lock().unwrap(), [5000]);
    let log = fake.log.lock().unwrap().clone();
    let calls: Vec<(&str, &str)> = log
        .iter()
        .map(|q| (q.method.as_str(), q.path.as_str()))
        .collect();
    let put = format!("/v2/t/img/blobs/uploads/u1?_state=s%3D1&digest={}", enc(&d));
    assert_eq!(
        calls,
        [("POST", "/v2/t/img/blobs/uploads/"), ("PUT", put.as_str())]
    );
    assert_eq!(
        log[1].header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(log[1].header("content-length"), Some("5000"));
}

#[tokio::test]
async fn a_failed_put_restarts_the_upload_with_a_new_post() {
    let data = Bytes::from(blob_data(300));
    let d = Digest::sha256_of(&data);
    let puts = AtomicUsize::new(0);
    let got = Arc::new(Mutex::new(Vec::new()));
    let fake = Fake::start(upload_server(got.clone(), move |_, _| {
        if puts.fetch_add(1, Ordering::SeqCst) == 0 {
            resp(503)
        } else {
            resp(201)
        }
    }))
    .await;
    client()
        .push_blob_bytes(&fake.reference(), &d, data.clone())
        .await
        .unwrap();
    assert_eq!(*got.lock().unwrap(), data);
    let log = fake.log.lock().unwrap().clone();
    let calls: Vec<String> = log
        .iter()
        .map(|q| format!("{} {}", q.method, q.path.split('&').next().unwrap()))
        .collect();
    assert_eq!(
        calls,
        [
            "POST /v2/t/img/blobs/uploads/",
            "PUT /v2/t/img/blobs/uploads/u1?_state=s%3D1",
            "DELETE /v2/t/img/blobs/uploads/u1?_state=s%3D1",
            "POST /v2/t/img/blobs/uploads/",
            "PUT /v2/t/img/blobs/uploads/u2?_state=s%3D2",
        ]
    );
}

#[tokio::test]
async fn chunked_upload_follows_locations_and_resends_after_416() {
    let data = blob_data(2500);
    let d = Digest::sha256_of(&data);
    let got = Arc::new(Mutex::new(Vec::new()));
    let refused = AtomicUsize::new(0);
    let g = got.clone();
    let port_cell = Arc::new(AtomicUsize::new(0));
    let pc = port_cell.clone();
    let fake = Fake::start(move |req| {
        let port = pc.load(Ordering::SeqCst);
        let mut b = g.lock().unwrap();
        let loc = |n: usize| format!("http://127.0.0.1:{port}/v2/t/img/blobs/uploads/u?_state={n}");
        match req.method.as_str() {
            "POST" => resp(202)
                .header("Location", "/v2/t/img/blobs/uploads/u?_state=0")
                .header("OCI-Chunk-Min-Length", "1000"),
            "PATCH" => {
                let cr = req.header("content-range").unwrap();
                if cr == "1000-1999" && refused.fetch_add(1, Ordering::SeqCst) == 0 {
                    return resp(416);
                }
                b.extend_from_slice(&req.body);
                resp(202)
                    .header("Location", loc(b.len()))
                    .header("Range", format!("0-{}", b.len() - 1))
            }
            "GET" => resp(204)
                .header("Location", loc(b.len()))
                .header("Range", format!("0-{}", b.len() - 1)),
            "PUT" if req.body.is_empty() && req.header("content-length") == Some("0") => resp(201),
            _ => resp(400),
        }
    })
    .await;
    port_cell.store(fake.port as usize, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    std::fs::write(&path, &data).unwrap();
    let opts = PushOptions {
        monolithic_limit: 100,
        chunk_size: 10,
    };
    let seen = Mutex::new(Vec::new());
    client()
        .push_blob_file_with(&fake.reference(), &d, 2500, &path, &opts, &|n| {
            seen.lock().unwrap().push(n)
        })
        .await
        .unwrap();
    assert_eq!(*got.lock().unwrap(), data);
    assert_eq!(*seen.lock().unwrap(), [1000, 2000, 2500]);
    let log = fake.log.lock().unwrap().clone();
    let calls: Vec<String> = log
        .iter()
        .map(|q| {
            let cr = q.header("content-range").unwrap_or("");
            format!("{} {} {cr}", q.method, q.path)
        })
        .collect();
    assert_eq!(
        calls,
        [
            "POST /v2/t/img/blobs/uploads/ ".to_string(),
            "PATCH /v2/t/img/blobs/uploads/u?_state=0 0-999".into(),
            "PATCH /v2/t/img/blobs/uploads/u?_state=1000 1000-1999".into(),
            "GET /v2/t/img/blobs/uploads/u?_state=1000 ".into(),
            "PATCH /v2/t/img/blobs/uploads/u?_state=1000 1000-1999".into(),
            "PATCH /v2/t/img/blobs/uploads/u?_state=2000 2000-2499".into(),
            format!(
                "PUT /v2/t/img/blobs/uploads/u?_state=2500&digest={} ",
                enc(&d)
            ),
        ]
    );
}

#[tokio::test]
async fn digest_errors_name_the_blob_and_never_the_credentials() {
    let data = Bytes::from_static(b"some layer bytes");
    let d = Digest::sha256_of(&data);
    // Content that is not the digest is refused before any request.
    let fake = Fake::start(|_| resp(500)).await;
    let wrong = Digest::sha256_of(b"other");
    let e = client()
        .push_blob_bytes(&fake.reference(), &wrong, data.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "push of blob 127.0.0.1:{}/t/img@{wrong}: content digest is {d}, want {wrong}",
            fake.port
        )
    );
    assert_eq!(fake.count(|_| true), 0);

    // Basic auth; the registry rejects the digest with 400.
    let fake = Fake::start(|req: &Req| {
        if req.header("authorization").is_none() {
            return resp(401).header("WWW-Authenticate", r#"Basic realm="r""#);
        }
        match req.method.as_str() {
            "POST" => resp(202).header("Location", "/v2/t/img/blobs/uploads/u?_state=x"),
            "PUT" => resp(400).body(
                r#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}"#,
            ),
            _ => resp(204),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    let secret = "alice:s3cret-pw";
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    std::fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"127.0.0.1:{}":{{"auth":"{b64}"}}}}}}"#,
            fake.port
        ),
    )
    .unwrap();
    let e = client_with(Some(&cfg), 1)
        .push_blob_bytes(&fake.reference(), &d, data.clone())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert_eq!(
        msg,
        format!(
            "push of blob 127.0.0.1:{p}/t/img@{d}: HTTP 400 from http://127.0.0.1:{p}/v2/t/img/blobs/uploads/u: DIGEST_INVALID: provided digest did not match uploaded content",
            p = fake.port
        )
    );
    assert!(!msg.contains("s3cret") && !msg.contains(&b64), "{msg}");
    // Not retried (400), and the session was cancelled.
    assert_eq!(
        fake.count(|q| q.method == "POST" && q.header("authorization").is_some()),
        1
    );
    assert_eq!(
        fake.count(|q| q.method == "DELETE"
            && q.header("authorization") == Some(format!("Basic {b64}").as_str())),
        1
    );

    // A Docker-Content-Digest that disagrees.
    let other = Digest::sha256_of(b"x");
    let o = other.to_string();
    let fake = Fake::start(move |req: &Req| match req.method.as_str() {
        "POST" => resp(202).header("Location", "/v2/t/img/blobs/uploads/u"),
        _ => resp(201).header("Docker-Content-Digest", o.clone()),
    })
    .await;
    let e = client()
        .push_blob_bytes(&fake.reference(), &d, data)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::DigestMismatch { expected, actual, .. } if *expected == d && *actual == other),
        "{e}"
    );
}

#[tokio::test]
async fn manifests_go_by_tag_with_their_media_type() {
    let body = br#"{"schemaVersion":2}"#.to_vec();
    let d = Digest::sha256_of(&body);
    let ds = d.to_string();
    let fake = Fake::start(move |_| resp(201).header("Docker-Content-Digest", ds.clone())).await;
    let c = client();
    let r = fake.reference();
    let mt = "application/vnd.oci.image.manifest.v1+json";
    assert_eq!(c.put_manifest(&r, mt, &body).await.unwrap(), d);
    let log = fake.log.lock().unwrap().clone();
    assert_eq!(
        (log[0].method.as_str(), log[0].path.as_str()),
        ("PUT", "/v2/t/img/manifests/1")
    );
    assert_eq!(log[0].header("content-type"), Some(mt));
    assert_eq!(log[0].body, body);
    // Pinned to another digest: refused locally.
    let pinned: Reference = format!("127.0.0.1:{}/t/img@{}", fake.port, Digest::sha256_of(b"z"))
        .parse()
        .unwrap();
    assert!(matches!(
        c.put_manifest(&pinned, mt, &body).await,
        Err(RegistryError::DigestMismatch { .. })
    ));
    assert_eq!(fake.count(|_| true), 1);
}

#[tokio::test]
async fn pushes_use_the_first_host_with_the_push_capability() {
    let mirror = Fake::start(|_| resp(500)).await;
    let server = Fake::start(|req: &Req| match req.method.as_str() {
        "HEAD" => Resp {
            announce_len: Some(7),
            ..resp(200)
        },
        _ => resp(400),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let host_dir = dir.path().join(format!("127.0.0.1:{}", server.port));
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "[host.\"http://127.0.0.1:{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            mirror.port
        ),
    )
    .unwrap();
    let c = RegistryClient::new(ClientOptions {
        docker_config: Some("/nonexistent/config.json".into()),
        timeout: Duration::from_secs(5),
        retries: 0,
        hosts_dir: Some(dir.path().to_path_buf()),
        ..ClientOptions::default()
    })
    .unwrap();
    let d = Digest::sha256_of(b"1234567");
    assert_eq!(
        c.blob_exists(&server.reference(), &d).await.unwrap(),
        Some(7)
    );
    assert_eq!(mirror.count(|_| true), 0);
    assert_eq!(server.count(|q| q.method == "HEAD"), 1);
}
