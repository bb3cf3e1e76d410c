//! Client behaviour against the fake server: Bearer auth, redirects,
//! ranges ignored or mangled, 429, truncated bodies, retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::fake_server::{Fake, Req, blob_data, client, client_with, resp, serve_range};
use super::*;
use crate::oci::Digest;

/// An OCIR-style login: `<tenancy namespace>/<user>` with an auth token, sent
/// over Basic to the token endpoint and exchanged for a bearer token.
const OCIR_USER_TOKEN: &str = "axaxnpcrorw5/oracleidentitycloudservice/alice@example.com:Tok3n+/x";

#[tokio::test]
async fn bearer_token_flow_caches_and_refreshes() {
    let data = blob_data(3000);
    let digest = Digest::sha256_of(&data);
    let token_gen = Arc::new(AtomicUsize::new(0));
    let revoked = Arc::new(AtomicUsize::new(0));
    let port_cell = Arc::new(AtomicUsize::new(0));
    let (tg, rv, pc, d2) = (
        token_gen.clone(),
        revoked.clone(),
        port_cell.clone(),
        data.clone(),
    );
    let fake = Fake::start(move |req| {
        if req.path.starts_with("/token?") {
            assert_eq!(req.path, "/token?service=fake&scope=repository%3At%2Fimg%3Apull");
            let basic = base64::engine::general_purpose::STANDARD.encode(OCIR_USER_TOKEN);
            assert_eq!(req.header("authorization"), Some(format!("Basic {basic}").as_str()));
            let n = tg.fetch_add(1, Ordering::SeqCst) + 1;
            return resp(200).body(format!(r#"{{"access_token":"tok{n}","expires_in":300}}"#));
        }
        let valid = format!("Bearer tok{}", tg.load(Ordering::SeqCst));
        let ok = req.header("authorization") == Some(valid.as_str()) && rv.load(Ordering::SeqCst) == 0;
        if !ok {
            rv.store(0, Ordering::SeqCst);
            let port = pc.load(Ordering::SeqCst);
            return resp(401).header(
                "WWW-Authenticate",
                format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake",scope="repository:t/img:pull""#),
            );
        }
        resp(200).body(d2.clone())
    })
    .await;
    port_cell.store(fake.port as usize, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(OCIR_USER_TOKEN);
    std::fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"127.0.0.1:{}":{{"auth":"{auth}"}}}}}}"#,
            fake.port
        ),
    )
    .unwrap();
    let c = client_with(Some(&cfg), 3);
    let r = fake.reference();
    let is_blob = |q: &Req| q.path.contains("/blobs/");
    let is_token = |q: &Req| q.path.starts_with("/token");

    assert_eq!(c.fetch_blob(&r, &digest).await.unwrap(), data);
    assert_eq!(
        (fake.count(is_token), fake.count(is_blob)),
        (1, 2),
        "401, token, retry"
    );
    assert_eq!(c.fetch_blob(&r, &digest).await.unwrap(), data);
    assert_eq!(
        (fake.count(is_token), fake.count(is_blob)),
        (1, 3),
        "cached token reused"
    );
    // The server stops accepting tok1: one 401, one refresh, one retry.
    revoked.store(1, Ordering::SeqCst);
    assert_eq!(c.read_range(&r, &digest, 5, 9).await.unwrap(), data[5..9]);
    assert_eq!((fake.count(is_token), fake.count(is_blob)), (2, 5));
    // A clone shares the cache.
    let c2 = c.clone();
    assert_eq!(c2.blob_size(&r, &digest).await.unwrap(), 3000);
    assert_eq!(fake.count(is_token), 2);
}

#[tokio::test]
async fn bearer_refused_token_is_unauthorized_after_one_refresh() {
    let port_cell = Arc::new(AtomicUsize::new(0));
    let pc = port_cell.clone();
    let fake = Fake::start(move |req| {
        if req.path.starts_with("/token") {
            return resp(200).body(r#"{"token":"useless"}"#);
        }
        let port = pc.load(Ordering::SeqCst);
        resp(401).header(
            "WWW-Authenticate",
            format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake""#),
        )
    })
    .await;
    port_cell.store(fake.port as usize, Ordering::SeqCst);
    let r = fake.reference();
    let e = client().resolve(&r, &Platform::host()).await.unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "manifest 127.0.0.1:{}/t/img:1: unauthorized",
            fake.port
        )),
        "{e}"
    );
    assert!(!e.is_unavailable());
    assert_eq!(fake.count(|q| q.path.starts_with("/token")), 1);
    assert_eq!(fake.count(|q| q.path.contains("/manifests/")), 2);
}

#[tokio::test]
async fn expired_token_is_refetched_up_front() {
    let port_cell = Arc::new(AtomicUsize::new(0));
    let pc = port_cell.clone();
    let fake = Fake::start(move |req| {
        if req.path.starts_with("/token") {
            return resp(200).body(r#"{"token":"t","expires_in":1}"#);
        }
        if req.header("authorization") != Some("Bearer t") {
            let port = pc.load(Ordering::SeqCst);
            return resp(401).header(
                "WWW-Authenticate",
                format!(r#"Bearer realm="http://127.0.0.1:{port}/token""#),
            );
        }
        resp(200)
            .header("Content-Length-Ignored", "x")
            .body(b"abc".to_vec())
    })
    .await;
    port_cell.store(fake.port as usize, Ordering::SeqCst);
    let r = fake.reference();
    let d = Digest::sha256_of(b"abc");
    let c = client();
    assert_eq!(c.fetch_blob(&r, &d).await.unwrap(), &b"abc"[..]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(c.fetch_blob(&r, &d).await.unwrap(), &b"abc"[..]);
    // Second fetch: the known challenge gets a new token before the request, no 401.
    assert_eq!(fake.count(|q| q.path.starts_with("/token")), 2);
    assert_eq!(fake.count(|q| q.path.contains("/blobs/")), 3);
}

#[tokio::test]
async fn ignored_range_reads_one_full_body_per_read() {
    let data = blob_data(200_000);
    let digest = Digest::sha256_of(&data);
    let d2 = data.clone();
    let fake = Fake::start(move |_| resp(200).body(d2.clone())).await;
    let (c, r) = (client(), fake.reference());
    assert!(!c.ignores_ranges(&r, &digest));
    for (a, b) in [(0, 1), (10, 20), (100_000, 150_000), (199_999, 200_000)] {
        let got = c.read_range(&r, &digest, a, b).await.unwrap();
        assert_eq!(got, data[a as usize..b as usize], "{a}..{b}");
    }
    assert_eq!(fake.count(|q| q.method == "GET"), 4, "one GET per read");
    let q = fake.log.lock().unwrap()[1].clone();
    assert_eq!(q.header("range"), Some("bytes=10-19"));
    assert_eq!(q.header("accept-encoding"), Some("identity"));
    assert!(c.ignores_ranges(&r, &digest));
    let e = c
        .read_range(&r, &digest, 199_999, 200_001)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("whole blob of 200000 bytes"), "{e}");
    assert_eq!(c.read_range(&r, &digest, 7, 7).await.unwrap().len(), 0);
    let e = c.read_range(&r, &digest, 8, 7).await.unwrap_err();
    assert!(
        matches!(
            e,
            RegistryError::InvalidRange {
                start: 8,
                end: 7,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn partial_200_with_content_range_counts_as_206() {
    let data = blob_data(5000);
    let digest = Digest::sha256_of(&data);
    let d2 = data.clone();
    let fake = Fake::start(move |req| {
        let mut r = serve_range(req, &d2);
        r.status = 200;
        r
    })
    .await;
    let (c, r) = (client(), fake.reference());
    assert_eq!(
        c.read_range(&r, &digest, 1000, 1500).await.unwrap(),
        data[1000..1500]
    );
    assert!(!c.ignores_ranges(&r, &digest));
}

#[tokio::test]
async fn wrong_content_range_is_rejected_without_retry() {
    let data = blob_data(5000);
    let digest = Digest::sha256_of(&data);
    let d2 = data.clone();
    let fake = Fake::start(move |_| {
        resp(206)
            .header("Content-Range", "bytes 0-99/5000")
            .body(d2[..100].to_vec())
    })
    .await;
    let (c, r) = (client(), fake.reference());
    let e = c.read_range(&r, &digest, 100, 200).await.unwrap_err();
    assert!(matches!(e, RegistryError::RangeMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "range [100, 200) of blob 127.0.0.1:{}/t/img@{digest}",
            fake.port
        )),
        "{msg}"
    );
    assert!(
        msg.contains(
            "got Content-Range \"bytes 0-99/5000\" (start 0 end 100, want start 100 end 200)"
        ),
        "{msg}"
    );
    assert!(!e.is_unavailable());
    assert_eq!(fake.count(|_| true), 1);
}

#[tokio::test]
async fn redirects_drop_authorization_cross_origin_and_are_cached() {
    let data = blob_data(10_000);
    let digest = Digest::sha256_of(&data);
    let expire_once = Arc::new(AtomicUsize::new(0));
    let (d2, ex) = (data.clone(), expire_once.clone());
    let storage = Fake::start(move |req| {
        if req.header("authorization").is_some() {
            return resp(400).body("Only one auth mechanism allowed");
        }
        assert!(req.path.starts_with("/bucket/blob?sig="), "{}", req.path);
        if ex.swap(0, Ordering::SeqCst) == 1 {
            return resp(403).body("Request has expired");
        }
        serve_range(req, &d2)
    })
    .await;
    let storage_port = storage.port;
    let registry = Fake::start(move |req| {
        if req.header("authorization") != Some("Basic Ym9iOnB3") {
            return resp(401).header("WWW-Authenticate", r#"Basic realm="fake""#);
        }
        if req.path.contains("/blobs/") {
            // Relative, same origin: Authorization must follow.
            return resp(307).header("Location", "../../../../hop");
        }
        assert_eq!(req.path, "/hop");
        resp(302).header(
            "Location",
            format!("http://127.0.0.1:{storage_port}/bucket/blob?sig=abc"),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"http://127.0.0.1:{}/v2/":{{"username":"bob","password":"pw"}}}}}}"#,
            registry.port
        ),
    )
    .unwrap();
    let c = client_with(Some(&cfg), 3);
    let r = registry.reference();
    assert_eq!(
        c.read_range(&r, &digest, 0, 100).await.unwrap(),
        data[..100]
    );
    assert_eq!(
        registry.count(|q| q.path.contains("/blobs/")),
        2,
        "401 then Basic"
    );
    assert_eq!(registry.count(|q| q.path == "/hop"), 1);
    // Cached: straight to storage.
    assert_eq!(
        c.read_range(&r, &digest, 9000, 10_000).await.unwrap(),
        data[9000..]
    );
    assert_eq!(registry.count(|_| true), 3);
    assert_eq!(storage.count(|_| true), 2);
    // Expired signature: re-resolved once through the registry.
    expire_once.store(1, Ordering::SeqCst);
    assert_eq!(
        c.read_range(&r, &digest, 50, 60).await.unwrap(),
        data[50..60]
    );
    assert_eq!(registry.count(|q| q.path.contains("/blobs/")), 3);
    assert_eq!(storage.count(|_| true), 4);
    // Whole blob through the same redirect chain, verified.
    assert_eq!(c.fetch_blob(&r, &digest).await.unwrap(), data);
    assert_eq!(storage.count(|q| q.header("authorization").is_some()), 0);
}

#[tokio::test]
async fn too_many_redirects() {
    let fake = Fake::start(|_| resp(307).header("Location", "/again")).await;
    let e = client()
        .fetch_blob(&fake.reference(), &Digest::sha256_of(b"x"))
        .await
        .unwrap_err();
    assert!(e.to_string().ends_with("more than 10 redirects"), "{e}");
    assert_eq!(fake.count(|_| true), 11);
}

#[tokio::test]
async fn retry_after_429_is_honoured() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let fake = Fake::start(move |_| {
        if h.fetch_add(1, Ordering::SeqCst) == 0 {
            return resp(429)
                .header("Retry-After", "1")
                .body(r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#);
        }
        resp(200).body(b"hello".to_vec())
    })
    .await;
    let t0 = Instant::now();
    let got = client()
        .fetch_blob(&fake.reference(), &Digest::sha256_of(b"hello"))
        .await
        .unwrap();
    assert_eq!(got, &b"hello"[..]);
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn truncated_bodies_are_retried() {
    let data = blob_data(50_000);
    let digest = Digest::sha256_of(&data);
    let hits = Arc::new(AtomicUsize::new(0));
    let (h, d2) = (hits.clone(), data.clone());
    let fake = Fake::start(move |req| {
        let mut r = serve_range(req, &d2);
        if h.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            r.cut_at = Some(r.body.len() / 2);
        }
        r
    })
    .await;
    let (c, r) = (client(), fake.reference());
    assert_eq!(c.fetch_blob(&r, &digest).await.unwrap(), data);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        c.read_range(&r, &digest, 100, 40_100).await.unwrap(),
        data[100..40_100]
    );
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn persistent_5xx_and_refused_connections_are_unavailable() {
    let fake = Fake::start(|_| resp(503).body("down")).await;
    let c = client_with(None, 2);
    let e = c
        .blob_size(&fake.reference(), &Digest::sha256_of(b"x"))
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(e.to_string().contains("HTTP 503"), "{e}");
    assert_eq!(fake.count(|_| true), 3, "first try + 2 retries");
    let port = fake.port;
    drop(fake);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r: Reference = format!("127.0.0.1:{port}/t/img:1").parse().unwrap();
    let e = c.resolve(&r, &Platform::host()).await.unwrap_err();
    assert!(matches!(e, RegistryError::Network { .. }), "{e}");
    assert!(e.is_unavailable());
    let fake = Fake::start(|_| {
        resp(404)
            .body(r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#)
    })
    .await;
    let e = c
        .fetch_blob(&fake.reference(), &Digest::sha256_of(b"x"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("not found: BLOB_UNKNOWN: blob unknown to registry"),
        "{e}"
    );
    assert!(!e.is_unavailable());
    assert_eq!(fake.count(|_| true), 1);
}

#[tokio::test]
async fn blob_size_falls_back_to_a_one_byte_range() {
    let data = blob_data(777);
    let d2 = data.clone();
    let fake = Fake::start(move |req| match req.method.as_str() {
        "HEAD" => resp(405),
        _ => serve_range(req, &d2),
    })
    .await;
    let n = client()
        .blob_size(&fake.reference(), &Digest::sha256_of(&data))
        .await
        .unwrap();
    assert_eq!(n, 777);
    let log = fake.log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].header("range"), Some("bytes=0-0"));
}

#[tokio::test]
async fn index_resolution_and_manifest_checks() {
    let config = br#"{}"#;
    let m_amd = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[]}}"#,
        manifest::OCI_MANIFEST,
        Digest::sha256_of(config)
    );
    let d_amd = Digest::sha256_of(m_amd.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
        {{"mediaType":"{}","digest":"{}","size":10,"platform":{{"os":"unknown","architecture":"unknown"}}}},
        {{"mediaType":"{}","digest":"{d_amd}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        manifest::OCI_INDEX,
        manifest::OCI_MANIFEST,
        Digest::sha256_of(b"att"),
        manifest::OCI_MANIFEST,
        m_amd.len()
    );
    let d_index = Digest::sha256_of(index.as_bytes());
    let (mi, ma, da) = (index.clone(), m_amd.clone(), d_amd.clone());
    let lie = Digest::sha256_of(b"other");
    let fake = Fake::start(move |req| {
        assert!(req.header("accept").unwrap().contains(manifest::OCI_INDEX));
        if req.path.ends_with("/manifests/1") || req.path.ends_with(&*lie.as_str()) {
            resp(200)
                .header("Content-Type", manifest::OCI_INDEX)
                .body(mi.clone())
        } else if req.path.ends_with(&format!("/manifests/{da}")) {
            resp(200)
                .header(
                    "Content-Type",
                    format!("{}; charset=utf-8", manifest::OCI_MANIFEST),
                )
                .body(ma.clone())
        } else if req.path.ends_with("/manifests/big") {
            let mut r = resp(200).header("Content-Type", manifest::OCI_MANIFEST);
            r.announce_len = Some(5 << 20);
            r
        } else {
            resp(404)
        }
    })
    .await;
    let (c, r) = (client(), fake.reference());
    let res = c
        .resolve(&r, &"linux/amd64".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(res.digest, d_amd);
    assert_eq!(res.index.as_ref(), Some(&d_index));
    assert_eq!(res.media_type, manifest::OCI_MANIFEST);
    assert_eq!(res.bytes, m_amd.as_bytes());
    assert_eq!(res.manifest.config().size(), 2);
    let e = c
        .resolve(&r, &"linux/arm64".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "no manifest for linux/arm64 in index {d_index} of 127.0.0.1:{}/t/img (available: linux/amd64)",
            fake.port
        )
    );
    // Pinned by digest: the index bytes are verified.
    let mut pinned = r.clone();
    pinned.digest = Some(Digest::sha256_of(b"other"));
    let e = c.resolve(&pinned, &Platform::host()).await.unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    let e = c
        .fetch_manifest(&r, &Digest::sha256_of(b"nope"))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    let big: Reference = format!("127.0.0.1:{}/t/img:big", fake.port)
        .parse()
        .unwrap();
    let e = c.resolve(&big, &Platform::host()).await.unwrap_err();
    assert!(
        e.to_string()
            .ends_with("manifest of 5242880 bytes exceeds the 4194304-byte limit"),
        "{e}"
    );
}
