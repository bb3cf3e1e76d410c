//! End to end: lazy pulling through a misbehaving registry (CASES.md, "A fault-injecting
//! registry proxy"; FORMATS.md §6.3 redirects, §6.6 token auth) and the cache lifecycle of a
//! removed image (B25).
//!
//! Every test pulls its own eStargz variant of the python image (`test/python:esgz-*`,
//! `scripts/images.sh push-estargz`; the variants differ in chunk size, so the chunks of the
//! big files — the python binary, libc, busybox — are the variant's own and are fetched, not
//! found in lazysnap's chunk cache, content-addressed by chunk digest: small files, one chunk
//! in every variant, may come from the cache) with `ctr-remote images rpull` through
//! `tests/helpers/faultproxy.py`, in its own containerd namespace. containerd's own requests
//! (manifest, config) pass the same proxy; the proxy's token endpoint hands out tokens
//! anonymously, so containerd and lazysnap both just follow the Bearer challenge.
//!
//! File contents are checked against the gzip original unpacked by containerd's overlayfs
//! snapshotter. Each test prints the numbers it measured (`--nocapture`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    FaultProxy, ImageInfo, ProxyRequest, Test, TreeListing, image_info, is_lazysnap,
    lazysnap_log_tail, listing_sha, overlayfs_reference_listing, push_estargz_images, snapshotter,
    tree_listing_differences, unix_now,
};

const PY_GZIP: &str = "test/python:latest";
const MAIN_PY_OUT: &str = "{\"ok\": [3, 11], \"os_release\": \"ID=lazysnap-test\"}\n";
const REMOTE_LABEL: &str = "containerd.io/snapshot/remote";

/// Big files of the python image: several chunks in every `esgz-*` variant, so reading them
/// fetches chunks no other variant has. Not read by `python3 /app/main.py`.
const BIG_FILES: [&str; 4] = [
    "/bin/busybox",
    "/lib/x86_64-linux-gnu/libmvec.so.1",
    "/usr/lib/x86_64-linux-gnu/gconv/libCNS.so",
    "/usr/lib/python3.11/pydoc_data/topics.py",
];

/// Prints `path sha256` for each argument (`ERR:<errno>` when a read fails).
const HASH_PY: &str = r#"
import hashlib, sys
for p in sys.argv[1:]:
    try:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for b in iter(lambda: f.read(1 << 16), b""):
                h.update(b)
        print(p, h.hexdigest())
    except OSError as e:
        print(p, "ERR:%d" % e.errno)
"#;

fn esgz_info(name: &str) -> ImageInfo {
    push_estargz_images();
    let info = image_info(name);
    for l in &info.layers {
        assert!(
            l.toc_digest.is_some(),
            "{name}: layer {} has no toc.digest annotation",
            l.digest
        );
    }
    info
}

/// The chunk digests of `name` that `test/python:esgz` does not have: the chunks of the
/// files bigger than the variant's chunk size, which no other variant shares.
fn own_chunks(name: &str) -> Vec<String> {
    static BASE: std::sync::OnceLock<std::collections::BTreeSet<String>> =
        std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| {
        common::image_chunk_digests("test/python:esgz")
            .into_iter()
            .collect()
    });
    common::image_chunk_digests(name)
        .into_iter()
        .filter(|d| !base.contains(d))
        .collect()
}

/// The test's view of the environment, in namespace `ns`, for variant `name`. On a reused
/// environment (LAZYSNAP_TEST_ENV, a rerun) the daemon's chunk cache may already hold the
/// variant's own chunks, and the test would see no fetches: then it takes the environment
/// exclusively, stops the daemon, deletes those chunks from the disk cache and starts the
/// daemon again (which also empties the memory tier). `exclusive` always takes it alone.
fn test_with_cold_chunks(ns: &str, name: &str, exclusive: bool) -> Test {
    let own = own_chunks(name);
    if !exclusive && common::cached_chunks(&own).0 == 0 {
        return Test::new(ns);
    }
    let t = Test::exclusive(ns);
    let cached = common::cached_chunks(&own);
    if cached.0 > 0 {
        let mut deleted = 0;
        t.restart_daemon_with(|| deleted = common::delete_cached_chunks(&own));
        eprintln!(
            "{ns}: {} of {name}'s {} own chunks were cached ({} bytes; a reused environment): deleted {deleted} with the daemon stopped, daemon restarted",
            cached.0,
            own.len(),
            cached.1
        );
    }
    t
}

/// No image `reference` and no snapshots in this namespace (a rerun on a reused environment
/// would otherwise find the layers there and fetch nothing). Like
/// `Test::remove_image_and_snapshots`, but from `ctr snapshots ls` alone (KEY PARENT KIND),
/// so that containerd's gc removing snapshots meanwhile is no error.
fn fresh(t: &Test, reference: &str) {
    t.remove_containers();
    let snap = snapshotter();
    let _ = t.ctr(&["images", "rm", "--sync", reference]);
    for _ in 0..20 {
        let out = t.ctr_ok(&["snapshots", "--snapshotter", &snap, "ls"]);
        let rows: Vec<(String, String)> = out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.len() {
                    0 => None,
                    // KEY KIND (no parent) or KEY PARENT KIND
                    1 | 2 => Some((f[0].to_string(), String::new())),
                    _ => Some((f[0].to_string(), f[1].to_string())),
                }
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        let parents: std::collections::BTreeSet<&str> =
            rows.iter().map(|(_, p)| p.as_str()).collect();
        for (key, _) in rows.iter().filter(|(k, _)| !parents.contains(k.as_str())) {
            let _ = t.ctr(&["snapshots", "--snapshotter", &snap, "rm", key]);
        }
    }
    let left = t.ctr_ok(&["snapshots", "--snapshotter", &snap, "ls"]);
    assert!(
        left.lines().skip(1).all(|l| l.trim().is_empty()),
        "snapshots left in {} after removal:\n{left}",
        t.ns
    );
}

/// rpull REFERENCE; containerd 1.6's own fetches (manifest, config) do not retry every fault
/// the proxy injects (a 429, a cut body), so a failed rpull is tried again, up to 3 times in
/// all; returns how many tries failed, with their errors printed.
fn rpull_tolerant(t: &Test, reference: &str) -> usize {
    let mut failed = 0;
    loop {
        let out = t.rpull_output(reference);
        if out.status.success() {
            return failed;
        }
        failed += 1;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("rpull {reference} try {failed} failed: {}", err.trim());
        assert!(
            failed < 3,
            "rpull {reference} failed 3 times; last: {err}\n--- lazysnap log (tail) ---\n{}",
            lazysnap_log_tail(60)
        );
    }
}

/// The chain of `info` is committed in this namespace as remote snapshots (lazy, not a
/// fallback to a full pull).
fn assert_remote_chain(t: &Test, info: &ImageInfo) {
    let infos = t.snapshot_infos();
    for (i, chain) in info.chain_ids.iter().enumerate() {
        let s = infos
            .iter()
            .find(|s| &s.name == chain && s.kind == "Committed")
            .unwrap_or_else(|| panic!("no committed snapshot {chain} (layer {i}): {infos:#?}"));
        assert_eq!(
            s.labels.get(REMOTE_LABEL).map(|s| s.as_str()),
            Some("remote snapshot"),
            "layer {i} ({chain}) is not a remote snapshot: {s:#?}\n--- lazysnap log (tail) ---\n{}",
            lazysnap_log_tail(40)
        );
    }
}

fn run_main_py(t: &Test, reference: &str) {
    let out = t.run_output_with(&snapshotter(), reference, &["python3", "/app/main.py"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        MAIN_PY_OUT,
        "python3 /app/main.py in {reference}: {}\n--- lazysnap log (tail) ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        lazysnap_log_tail(60)
    );
}

/// sha256 of `paths` in a new container of `reference`, checked against the reference listing.
fn assert_hashes(t: &Test, reference: &str, paths: &[&str], want: &TreeListing) {
    let mut cmd = vec!["python3", "-B", "-c", HASH_PY];
    cmd.extend_from_slice(paths);
    let out = t.run_output_with(&snapshotter(), reference, &cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "hashing in {reference} failed ({}): {}\n--- lazysnap log (tail) ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        lazysnap_log_tail(60)
    );
    let got: BTreeMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once(' ')).collect();
    for p in paths {
        let w = listing_sha(want, p).unwrap_or_else(|| panic!("{p} not in the reference"));
        assert_eq!(
            got.get(p).copied(),
            Some(w),
            "{p} in {reference}: output {stdout}\n--- lazysnap log (tail) ---\n{}",
            lazysnap_log_tail(60)
        );
    }
}

/// The whole tree of `reference` in a new container equals the overlayfs unpack.
fn assert_tree(t: &Test, what: &str, reference: &str, want: &TreeListing) -> usize {
    let got = t.tree_listing_with(&snapshotter(), reference);
    let diffs = tree_listing_differences(&got, want);
    let errs = got
        .values()
        .filter(|(f, _)| f[6].starts_with("ERR:"))
        .count();
    eprintln!(
        "{what}: {} entries listed, {} differ from the overlayfs unpack, {errs} reads failed",
        got.len(),
        diffs.len()
    );
    assert!(
        diffs.is_empty(),
        "{what}: {} entries differ from the overlayfs unpack of {PY_GZIP}:\n{}\n--- lazysnap log (tail) ---\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        lazysnap_log_tail(40)
    );
    assert!(got.len() > 1000, "{what}: only {} entries", got.len());
    got.len()
}

/// Requests of the image's layer blobs (any method, registry front or object server).
fn layer_requests<'a>(reqs: &'a [ProxyRequest], info: &ImageInfo) -> Vec<&'a ProxyRequest> {
    reqs.iter()
        .filter(|r| {
            r.blob()
                .is_some_and(|d| info.layers.iter().any(|l| l.digest == d))
        })
        .collect()
}

fn short(r: &ProxyRequest) -> String {
    format!(
        "{:.3} {} {} {}… range={:?} -> {} ({}/{} bytes) auth={}{}",
        r.t,
        r.server,
        r.method,
        r.blob().and_then(|d| d.get(..19)).unwrap_or(&r.path),
        r.range,
        r.status,
        r.bytes,
        r.length,
        r.auth,
        r.fault
            .as_deref()
            .map(|f| format!(" fault={f}"))
            .unwrap_or_default()
    )
}

fn summarize(reqs: &[&ProxyRequest], n: usize) -> String {
    reqs.iter()
        .take(n)
        .map(|r| short(r))
        .collect::<Vec<_>>()
        .join("\n")
}

/// For each faulted layer GET (`faulted`), the first later complete answer for the same blob
/// and the same last byte (a retry, possibly resuming); returns (faulted, retried, the
/// faulted ones without a later success, the gaps fault → success in seconds).
fn retries_of<'a>(
    layer: &[&'a ProxyRequest],
    faulted: impl Fn(&ProxyRequest) -> bool,
) -> (usize, usize, Vec<&'a ProxyRequest>, Vec<f64>) {
    let mut n = 0;
    let mut ok = 0;
    let mut lost = Vec::new();
    let mut gaps = Vec::new();
    for (i, f) in layer.iter().enumerate() {
        if f.method != "GET" || !faulted(f) {
            continue;
        }
        n += 1;
        let later = layer[i + 1..].iter().find(|r| {
            r.method == "GET"
                && r.blob() == f.blob()
                && r.range_end() == f.range_end()
                && r.complete()
        });
        match later {
            Some(r) => {
                ok += 1;
                gaps.push(r.t - f.t);
            }
            None => lost.push(*f),
        }
    }
    (n, ok, lost, gaps)
}

/// FORMATS.md §6.3: blob GETs answered `307` to an object store that refuses requests with an
/// Authorization header (400) and HEAD: the image runs and every file is right, the object
/// store saw no Authorization header, and the redirect target is cached per blob.
#[test]
fn redirect_to_object_store() {
    assert!(is_lazysnap(), "lazy pulling is lazysnap's");
    let name = "test/python:esgz-redir";
    let info = esgz_info(name);
    let want = overlayfs_reference_listing(PY_GZIP);
    let t = test_with_cold_chunks("faults-redirect", name, false);
    let proxy = FaultProxy::start("redirect", &[]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    let t0 = Instant::now();
    t.rpull_ref(&r);
    assert_remote_chain(&t, &info);
    run_main_py(&t, &r);
    let entries = assert_tree(&t, "redirect", &r, &want);
    let took = t0.elapsed();

    let reqs = proxy.requests();
    let layer = layer_requests(&reqs, &info);
    let redirects = layer
        .iter()
        .filter(|r| r.server == "proxy" && r.status == 307)
        .count();
    let object: Vec<&&ProxyRequest> = layer.iter().filter(|r| r.server == "object").collect();
    let object_ok = object.iter().filter(|r| r.status == 206).count();
    let object_bytes: u64 = object.iter().map(|r| r.bytes).sum();
    let with_auth: Vec<&ProxyRequest> = reqs
        .iter()
        .filter(|r| r.server == "object" && r.auth)
        .collect();
    let refused: Vec<&ProxyRequest> = reqs
        .iter()
        .filter(|r| r.server == "object" && r.status == 400)
        .collect();
    let direct: Vec<&&ProxyRequest> = layer
        .iter()
        .filter(|r| r.server == "proxy" && r.method == "GET" && r.status != 307)
        .collect();
    let mut per_blob: BTreeMap<&str, usize> = BTreeMap::new();
    for r in layer
        .iter()
        .filter(|r| r.server == "proxy" && r.status == 307)
    {
        *per_blob.entry(r.blob().unwrap()).or_default() += 1;
    }
    eprintln!(
        "redirect: {entries} entries right in {:.1}s; {redirects} redirects (per blob {:?}), {} object-store GETs ({object_ok} × 206, {object_bytes} bytes of {} layer bytes), {} with Authorization, {} refused (400)",
        took.as_secs_f64(),
        per_blob.values().collect::<Vec<_>>(),
        object.len(),
        info.layer_bytes(),
        with_auth.len(),
        refused.len()
    );
    assert!(
        with_auth.is_empty(),
        "the object store got an Authorization header:\n{}",
        summarize(&with_auth, 20)
    );
    assert!(
        refused.is_empty(),
        "the object store refused requests (Authorization or HEAD):\n{}",
        summarize(&refused, 20)
    );
    assert!(
        object_ok > 0,
        "no chunk was read from the object store:\n{}",
        summarize(&layer, 30)
    );
    assert!(
        direct.is_empty(),
        "layer GETs served by the registry front without a redirect:\n{}",
        direct
            .iter()
            .take(20)
            .map(|r| short(r))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The signed URL lives 60 s here; the target is resolved once per blob (a few times at
    // most, for concurrent first reads), not once per chunk.
    for (blob, n) in &per_blob {
        assert!(
            *n <= 4,
            "blob {blob} was resolved {n} times for {} object-store GETs (redirect target not cached?)",
            object.len()
        );
    }
}

/// FORMATS.md §6.3: signed URLs that expire after `EXP=2` s. A second container, started
/// after the URLs expired, reads chunks nobody read before: the object store answers 403, the
/// daemon resolves the blob again at the registry and reads on.
#[test]
fn redirect_expired_url_is_resolved_again() {
    assert!(is_lazysnap(), "lazy pulling is lazysnap's");
    let name = "test/python:esgz-exp";
    let info = esgz_info(name);
    let want = overlayfs_reference_listing(PY_GZIP);
    let t = test_with_cold_chunks("faults-redirect-exp", name, false);
    let proxy = FaultProxy::start("redirect", &[("EXP", "2")]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    t.rpull_ref(&r);
    assert_remote_chain(&t, &info);
    run_main_py(&t, &r);
    std::thread::sleep(Duration::from_millis(3500));
    let mark = unix_now();
    assert_hashes(&t, &r, &BIG_FILES, &want);

    let reqs = proxy.requests();
    let layer = layer_requests(&reqs, &info);
    let after: Vec<&ProxyRequest> = layer.iter().copied().filter(|r| r.t >= mark).collect();
    let expired: Vec<&ProxyRequest> = after
        .iter()
        .copied()
        .filter(|r| r.server == "object" && r.status == 403)
        .collect();
    let redirects = after
        .iter()
        .filter(|r| r.server == "proxy" && r.status == 307)
        .count();
    let reads = after
        .iter()
        .filter(|r| r.server == "object" && r.status == 206)
        .count();
    let first_403 = expired.first().map(|r| r.t).unwrap_or(f64::MAX);
    let reads_after_403 = after
        .iter()
        .filter(|r| r.server == "object" && r.status == 206 && r.t > first_403)
        .count();
    let redirects_after_403 = after
        .iter()
        .filter(|r| r.server == "proxy" && r.status == 307 && r.t > first_403)
        .count();
    let all_403 = layer
        .iter()
        .filter(|r| r.server == "object" && r.status == 403)
        .count();
    eprintln!(
        "redirect EXP=2: second container (after 3.5 s): {} layer requests, {} expired (403), {redirects} redirects ({redirects_after_403} after the first 403), {reads} chunk reads (206; {reads_after_403} after the first 403); 403s over the whole test: {all_403}",
        after.len(),
        expired.len()
    );
    assert!(
        reads > 0,
        "the second container read no new chunk (cache hid the fetches?):\n{}",
        summarize(&after, 30)
    );
    // With a per-blob cached target, the first new read of a blob uses the expired URL.
    assert!(
        !expired.is_empty() || redirects > 0,
        "new chunks read after the URL expired without a 403 and without a new redirect:\n{}",
        summarize(&after, 30)
    );
    if !expired.is_empty() {
        assert!(
            redirects_after_403 > 0 && reads_after_403 > 0,
            "after a 403 the blob was not resolved again / read on:\n{}",
            summarize(&after, 40)
        );
    }
    let bad: Vec<&ProxyRequest> = after
        .iter()
        .copied()
        .filter(|r| r.server == "object" && r.status == 400)
        .collect();
    assert!(
        bad.is_empty(),
        "object store refused requests:\n{}",
        summarize(&bad, 20)
    );
}

/// FORMATS.md §6.6: the registry wants Bearer tokens (anonymous, `TTL=2` s). The image runs;
/// after the token expired, a second container reading every file still works: the token is
/// fetched again (on the 401, or before it), and every 401 of a layer GET is followed by a
/// successful retry of the same range.
#[test]
fn auth_token_expires_and_is_refreshed() {
    assert!(is_lazysnap(), "lazy pulling is lazysnap's");
    let name = "test/python:esgz-auth";
    let info = esgz_info(name);
    let want = overlayfs_reference_listing(PY_GZIP);
    let t = test_with_cold_chunks("faults-auth", name, false);
    let proxy = FaultProxy::start("auth", &[("TTL", "2")]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    t.rpull_ref(&r);
    assert_remote_chain(&t, &info);
    run_main_py(&t, &r);
    std::thread::sleep(Duration::from_millis(3500));
    let mark = unix_now();
    let entries = assert_tree(&t, "auth TTL=2, after expiry", &r, &want);

    let reqs = proxy.requests();
    let layer = layer_requests(&reqs, &info);
    let gets: Vec<&ProxyRequest> = layer
        .iter()
        .copied()
        .filter(|r| r.method == "GET")
        .collect();
    let is_token = |r: &&ProxyRequest| r.path.starts_with("/token");
    let tokens = reqs.iter().filter(is_token).count();
    let tokens_after = reqs.iter().filter(is_token).filter(|r| r.t >= mark).count();
    let unauth: Vec<&ProxyRequest> = gets.iter().copied().filter(|r| r.status == 401).collect();
    let expired = unauth
        .iter()
        .filter(|r| r.fault.as_deref() == Some("auth-expired"))
        .count();
    let ok_after = gets.iter().filter(|r| r.t >= mark && r.complete()).count();
    let (n, retried, lost, _) = retries_of(&gets, |r| r.status == 401);
    let ok_without_auth: Vec<&ProxyRequest> = gets
        .iter()
        .copied()
        .filter(|r| r.complete() && !r.auth)
        .collect();
    eprintln!(
        "auth TTL=2: {entries} entries right; {tokens} token requests ({tokens_after} after expiry); layer GETs: {} ({} answered 401: {expired} expired token, {} no token; {retried}/{n} retried successfully), {ok_after} successful after expiry",
        gets.len(),
        unauth.len(),
        unauth.len() - expired
    );
    assert!(
        ok_without_auth.is_empty(),
        "layer GETs answered without a token (the proxy is broken):\n{}",
        summarize(&ok_without_auth, 10)
    );
    assert!(
        ok_after > 0,
        "no layer GET after the token expired (cache hid the fetches?)"
    );
    assert!(
        tokens_after > 0,
        "no new token after the first expired, yet {ok_after} GETs succeeded?"
    );
    assert!(
        lost.is_empty(),
        "401s not followed by a successful retry of the same range:\n{}",
        summarize(&lost, 20)
    );
}

/// `429 Too Many Requests` with `Retry-After: 1` on every 5th request: the image runs, every
/// file is right, and each 429 of a layer GET is retried (after about a second).
#[test]
fn too_many_requests_are_retried() {
    assert!(is_lazysnap(), "lazy pulling is lazysnap's");
    let name = "test/python:esgz-429";
    let info = esgz_info(name);
    let want = overlayfs_reference_listing(PY_GZIP);
    let t = test_with_cold_chunks("faults-429", name, false);
    let proxy = FaultProxy::start("429", &[("N", "5")]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    let containerd_failures = rpull_tolerant(&t, &r);
    assert_remote_chain(&t, &info);
    run_main_py(&t, &r);
    let entries = assert_tree(&t, "429 N=5", &r, &want);

    let reqs = proxy.requests();
    let layer = layer_requests(&reqs, &info);
    let gets: Vec<&ProxyRequest> = layer
        .iter()
        .copied()
        .filter(|r| r.method == "GET")
        .collect();
    let all_429 = reqs.iter().filter(|r| r.status == 429).count();
    let (n, retried, lost, gaps) = retries_of(&gets, |r| r.status == 429);
    let min_gap = gaps.iter().cloned().fold(f64::MAX, f64::min);
    let max_gap = gaps.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "429 N=5: {entries} entries right; {} requests, {all_429} answered 429; layer GETs {} ({n} × 429, {retried} retried successfully, gap to the success {:.2}..{:.2} s); rpulls failed by containerd: {containerd_failures}",
        reqs.len(),
        gets.len(),
        if gaps.is_empty() { 0.0 } else { min_gap },
        max_gap
    );
    assert!(
        n > 0,
        "no layer GET was answered 429 (too few requests?):\n{}",
        summarize(&gets, 30)
    );
    assert!(
        lost.is_empty(),
        "429s of layer GETs not followed by a successful retry:\n{}",
        summarize(&lost, 20)
    );
    assert!(
        min_gap >= 0.8,
        "a 429 with Retry-After: 1 was retried after {min_gap:.3} s"
    );
}

/// Bodies cut after `K=100` bytes (first try of each range): the image runs and every file
/// read is right — never a short read, never wrong bytes; each cut answer is retried.
#[test]
fn truncated_bodies_are_retried() {
    assert!(is_lazysnap(), "lazy pulling is lazysnap's");
    let name = "test/python:esgz-trunc";
    let info = esgz_info(name);
    let want = overlayfs_reference_listing(PY_GZIP);
    let t = test_with_cold_chunks("faults-truncate", name, false);
    let proxy = FaultProxy::start("truncate", &[("K", "100")]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    let containerd_failures = rpull_tolerant(&t, &r);
    assert_remote_chain(&t, &info);
    run_main_py(&t, &r);
    assert_hashes(&t, &r, &BIG_FILES, &want);
    let entries = assert_tree(&t, "truncate K=100", &r, &want);

    let reqs = proxy.requests();
    let layer = layer_requests(&reqs, &info);
    let gets: Vec<&ProxyRequest> = layer
        .iter()
        .copied()
        .filter(|r| r.method == "GET")
        .collect();
    let cut = |r: &ProxyRequest| r.fault.as_deref().is_some_and(|f| f.contains("truncate"));
    let (n, retried, lost, _) = retries_of(&gets, cut);
    let all_cut = reqs.iter().filter(|r| cut(r)).count();
    eprintln!(
        "truncate K=100: {entries} entries right; layer GETs {} ({n} cut, {retried} retried to a complete answer); {all_cut} answers cut in all; rpulls failed by containerd: {containerd_failures}",
        gets.len()
    );
    assert!(n > 0, "no layer answer was cut:\n{}", summarize(&gets, 30));
    assert!(
        lost.is_empty(),
        "cut answers never completed by a retry:\n{}",
        summarize(&lost, 20)
    );
}

/// B25, adapted: background fetch is off in the test environment. Pull and run the image,
/// remove the image and its snapshots (leaves first): the daemon logs each removal, and no
/// GET of the image's layers reaches the registry in the 10 s after. The chunk cache (size,
/// and how many of the image's chunks it holds) before and after is printed: chunks are
/// content-addressed and shared between images, and stay until evicted. Runs alone (no other
/// test of this binary fills the cache meanwhile).
#[test]
fn b25_removed_image_is_not_fetched_any_more() {
    assert!(is_lazysnap(), "lazy pulling is lazysnap's");
    let name = "test/python:esgz-b25";
    let info = esgz_info(name);
    let chunks = common::image_chunk_digests(name);
    let own = own_chunks(name);
    let t = test_with_cold_chunks("faults-b25", name, true);
    let proxy = FaultProxy::start("", &[]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    let cache0 = common::chunk_cache_usage();
    let mine0 = (common::cached_chunks(&chunks), common::cached_chunks(&own));
    t.rpull_ref(&r);
    assert_remote_chain(&t, &info);
    run_main_py(&t, &r);
    // a detached container reading big files, stopped half-way through its work
    let id = t.new_id();
    t.ctr_ok(&[
        "run",
        "-d",
        "--snapshotter",
        &snapshotter(),
        &r,
        &id,
        "sh",
        "-c",
        "cat /bin/busybox /lib/x86_64-linux-gnu/libmvec.so.1 >/dev/null; sleep 600",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    t.remove_container(&id);
    let cache1 = common::chunk_cache_usage();
    let mine1 = (common::cached_chunks(&chunks), common::cached_chunks(&own));
    let fetched_before = layer_requests(&proxy.requests(), &info)
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    let snaps: Vec<String> = t.snapshot_infos().into_iter().map(|s| s.name).collect();

    let log_at = common::lazysnap_log_len();
    let t_rm = unix_now();
    fresh(&t, &r); // ctr images rm, then the snapshots, leaves first
    let t_done = unix_now();
    std::thread::sleep(Duration::from_secs(10));
    let cache2 = common::chunk_cache_usage();
    let mine2 = (common::cached_chunks(&chunks), common::cached_chunks(&own));

    let log = common::lazysnap_log_since(log_at);
    let removed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("snapshotter: removed"))
        .collect();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect();
    let reqs = proxy.requests();
    let layer = layer_requests(&reqs, &info);
    let late: Vec<&ProxyRequest> = layer
        .iter()
        .copied()
        .filter(|r| r.method == "GET" && r.t >= t_rm)
        .collect();
    eprintln!(
        "B25: {fetched_before} layer GETs while running; {} snapshots, {} 'removed' log lines in {:.1}s; layer GETs after removal started: {}; chunk cache (files, bytes): before pull {cache0:?}, after run {cache1:?}, 10 s after removal {cache2:?}; daemon WARN/ERROR lines during removal: {}",
        snaps.len(),
        removed.len(),
        t_done - t_rm,
        late.len(),
        errors.len()
    );
    eprintln!(
        "B25: the image's {} chunks ({} not in test/python:esgz) cached as ((chunks, bytes), (own chunks, bytes)): before pull {mine0:?}, after run {mine1:?}, 10 s after removal {mine2:?}",
        chunks.len(),
        own.len()
    );
    for l in errors.iter().take(10) {
        eprintln!("  {l}");
    }
    // The chunks only this image has leave the cache with its snapshots; chunks shared
    // with live layers (test/python:esgz's small files) stay.
    assert!(
        mine1.1.0 > 0,
        "B25: none of the image's own chunks were cached while it ran"
    );
    assert_eq!(
        mine2.1.0, 0,
        "B25: {} of the removed image's own chunks are still cached 10 s after removal",
        mine2.1.0
    );
    for chain in &info.chain_ids {
        assert!(
            removed.iter().any(|l| l.contains(chain.as_str())),
            "no 'removed' log line for the snapshot of {chain}; removal log:\n{}",
            removed.join("\n")
        );
    }
    assert!(
        removed.len() >= snaps.len(),
        "{} snapshots ({snaps:?}) but {} 'removed' lines:\n{}",
        snaps.len(),
        removed.len(),
        removed.join("\n")
    );
    assert!(
        late.is_empty(),
        "layer GETs of the removed image after its removal:\n{}",
        summarize(&late, 20)
    );
    assert!(
        common::daemon_answers(),
        "the daemon does not answer after the removal"
    );
}

/// B25, disk full: the chunk cache's directory on a 2 MiB tmpfs (the budget is far larger):
/// the python image still runs lazily and every file reads right — chunks that cannot be
/// stored are served uncached — and the daemon logs the failed writes and never crashes.
#[test]
fn b25_disk_full_cache_still_serves_every_file() {
    assert!(is_lazysnap(), "lazy pulling is lazysnap's");
    let name = "test/python:esgz-full";
    let _ = esgz_info(name); // pushes the eStargz images
    let want = overlayfs_reference_listing(PY_GZIP);
    let t = Test::exclusive("b25-disk-full");
    let cache = common::env().lazysnap_root.join("cache");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let mut guard = None;
    t.restart_daemon_with(|| {
        std::fs::create_dir_all(&cache).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &cache,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=2m"),
        )
        .expect("mount a 2 MiB tmpfs on the chunk cache");
        guard = Some(Unmount(cache.clone()));
    });
    let r = common::image_ref(name);
    fresh(&t, &r);
    let log_from = common::lazysnap_log_len();
    t.rpull_ref(&r);
    run_main_py(&t, &r);
    let n = assert_tree(&t, "disk-full cache", &r, &want);
    let log = common::lazysnap_log_since(log_from);
    let full = log
        .lines()
        .filter(|l| l.contains("No space left") || l.to_lowercase().contains("enospc"))
        .count();
    let panics = log.lines().filter(|l| l.contains("panicked")).count();
    eprintln!(
        "disk-full cache: {n} entries right; {full} log lines about the full disk; {panics} panics"
    );
    assert_eq!(panics, 0);
    assert!(
        common::daemon_answers(),
        "the daemon must survive a full cache disk"
    );
    // Give the disk back: stop the daemon, unmount, start it; it works on as before.
    t.restart_daemon_with(|| drop(guard.take()));
    run_main_py(&t, &r);
}

/// B25 with the background fetch on (slowly, 1 MiB/s, so it is still going): removing the
/// image and its snapshots stops it — the registry sees no layer GET start after the
/// removal has finished.
#[test]
fn b25_background_fetch_stops_when_the_image_is_removed() {
    assert!(is_lazysnap(), "lazy pulling is lazysnap's");
    let name = "test/python:esgz-bg";
    let info = esgz_info(name);
    let t = Test::exclusive("b25-background");
    let toml = common::env().dir.join("lazysnap.toml");
    let original = std::fs::read_to_string(&toml).unwrap();
    struct Restore(std::path::PathBuf, String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, &self.1);
        }
    }
    let restore = Restore(toml.clone(), original.clone());
    t.restart_daemon_with(|| {
        let on = original.replace(
            "background_fetch = false",
            "background_fetch = true\nbackground_rate = 1048576",
        );
        assert_ne!(
            on, original,
            "the test env's config turns background fetch off"
        );
        std::fs::write(&toml, on).unwrap();
    });
    let proxy = FaultProxy::start("", &[]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    t.rpull_ref(&r);
    run_main_py(&t, &r);
    std::thread::sleep(Duration::from_secs(3));
    let running = layer_requests(&proxy.requests(), &info).len();
    fresh(&t, &r); // ctr images rm, then the snapshots, leaves first
    let t_done = unix_now();
    std::thread::sleep(Duration::from_secs(10));
    let reqs = proxy.requests();
    let layer = layer_requests(&reqs, &info);
    let late: Vec<&ProxyRequest> = layer
        .iter()
        .copied()
        .filter(|r| r.method == "GET" && r.t > t_done + 0.5)
        .collect();
    let total = layer.len();
    eprintln!(
        "B25 background: {running} layer requests before removal (pull, run, 3 s of background fetch), {total} in all; {} started after the removal",
        late.len()
    );
    assert!(
        total > 0 && running > 0,
        "no layer requests at all: nothing was fetched lazily"
    );
    // Background batches are range GETs of up to 4 MiB: far larger than any chunk read
    // (chunks of this variant are ~1 MiB): the background fetch was running.
    let batches = layer
        .iter()
        .filter(|r| r.method == "GET" && r.bytes > 2 << 20)
        .count();
    assert!(batches > 0, "no background batch GET before the removal");
    assert!(
        late.is_empty(),
        "layer GETs after the image was removed (the background fetch went on):\n{}",
        summarize(&late, 10)
    );
    // Background fetch back off for the other tests.
    drop(restore);
    t.restart_daemon_with(|| {});
}
