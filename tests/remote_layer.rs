//! The remote-layer machinery without containerd: resolve an eStargz layer
//! (made by ctr-remote) from remote-snapshot labels against the real local
//! registry, check its TOC, read a file through the chunk cache, run the
//! background fetch to completion, and the errors for an unreachable
//! registry and a layer that is not eStargz.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use lazysnap::format::EntryKind;
use lazysnap::oci::labels::{self, RemoteLabels};
use lazysnap::registry::Reference;
use lazysnap::service::{LazyOptions, remote_context};
use lazysnap::snapshot::{RemoteContext, RemoteError};

fn ctx(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> Arc<RemoteContext> {
    ctx_window(dir, rt, 0)
}

fn ctx_window(
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    fetch_window: u64,
) -> Arc<RemoteContext> {
    ctx_opts(dir, rt, fetch_window, 0)
}

fn ctx_opts(
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    fetch_window: u64,
    whole_layer_limit: u64,
) -> Arc<RemoteContext> {
    let opts = LazyOptions {
        cache_budget: 1 << 30,
        cache_memory: 1 << 20,
        insecure_registries: Vec::new(),
        platform: String::new(),
        background_rate: None,
        fetch_window,
        whole_layer_limit,
        hosts_dir: None,
    };
    Arc::new(remote_context(dir, &opts, rt.handle().clone()).unwrap())
}

/// Remote labels for layer `i` of `reference`, as `ctr-remote rpull` sends them.
fn labels_for(
    rt: &tokio::runtime::Runtime,
    c: &RemoteContext,
    reference: &str,
    i: usize,
) -> RemoteLabels {
    let r: Reference = reference.parse().unwrap();
    let resolved = rt.block_on(c.client.resolve(&r, &c.platform)).unwrap();
    let digests: Vec<String> = resolved
        .manifest
        .layers()
        .iter()
        .map(|d| d.digest().to_string())
        .collect();
    let mut m = BTreeMap::new();
    m.insert(labels::TARGET_REF.to_string(), "sha256:target".to_string());
    m.insert(labels::STARGZ_REFERENCE.to_string(), reference.to_string());
    m.insert(labels::STARGZ_DIGEST.to_string(), digests[i].clone());
    m.insert(labels::STARGZ_LAYERS.to_string(), digests[i..].join(","));
    RemoteLabels::parse(&m).unwrap().unwrap()
}

#[test]
fn estargz_layer_resolves_reads_and_fetches_in_the_background() {
    common::push_images();
    common::push_estargz_images();
    let env = common::env();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(dir.path(), &rt);
    let reference = format!("{}/test/python:esgz", env.registry);
    // Layer 1 of the python image holds python3 itself.
    let l = labels_for(&rt, &c, &reference, 1);
    let layer = rt.block_on(c.resolve_layer(&l)).unwrap();
    assert_eq!(layer.digest, l.layer_digest);
    let regs: Vec<_> = layer
        .toc
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Reg && e.size > 0)
        .collect();
    assert!(regs.len() > 50, "{} regular files", regs.len());
    let before = c.cache.stats();
    assert_eq!(before.fetches, 0, "resolving reads only the footer and TOC");

    // Prefetch + background fetch to completion: every chunk is cached.
    rt.block_on(c.clone().background(layer.clone(), Some(u64::MAX)));
    rt.block_on(c.cache.flush());
    let all: Vec<_> = layer
        .toc
        .entries
        .iter()
        .flat_map(|e| e.chunks())
        .filter_map(|ch| ch.digest)
        .collect();
    let missing = all.iter().filter(|d| !c.cache.contains(d)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} chunks not cached after the background fetch",
        all.len()
    );
    let after = c.cache.stats();
    assert!(after.fetches > 0);
}

/// A read that misses brings the chunks after its own, up to the fetch
/// window, in the same range request: its neighbours are then cached (and
/// verified) without a request of their own.
#[test]
fn a_read_that_misses_fetches_its_window_in_one_request() {
    common::push_images();
    common::push_estargz_images();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy = common::FaultProxy::start("log", &[]);
    let reference = proxy.reference("test/python:esgz");
    let window = 256 << 10;
    let c = ctx_window(dir.path(), &rt, window);
    let l = labels_for(&rt, &c, &reference, 1);
    let layer = rt.block_on(c.resolve_layer(&l)).unwrap();
    // Regular files' first chunks in blob order; start at the first one.
    // (entry, chunk, offset, end, digest) of every chunk, in blob order.
    type Span = (usize, usize, u64, u64, lazysnap::oci::Digest);
    let mut chunks: Vec<Span> = layer
        .toc
        .entries
        .iter()
        .enumerate()
        .flat_map(|(i, e)| e.chunks().enumerate().map(move |(k, ch)| (i, k, ch)))
        .filter_map(|(i, k, ch)| Some((i, k, ch.offset, ch.end, ch.digest?)))
        .collect();
    chunks.sort_by_key(|c| c.2);
    let (first, first_chunk, start, first_end, first_key) = chunks[0].clone();
    let window_end = first_end + window;
    let inside: Vec<_> = chunks[1..]
        .iter()
        .take_while(|c| c.3 <= window_end)
        .cloned()
        .collect();
    assert!(
        inside.len() >= 2,
        "want neighbours inside the window, got {inside:?}"
    );
    let last_end = inside.last().unwrap().3;
    let outside = chunks[1 + inside.len()].clone();

    let (reader, _) = c.reader(&layer);
    let before = proxy.requests().len();
    let bytes = reader.read_chunk(first, first_chunk).unwrap();
    assert_eq!(lazysnap::oci::Digest::sha256_of(&bytes), first_key);
    // The window streams on after the read returned: wait for its end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !inside.iter().all(|n| c.cache.contains(&n.4)) {
        assert!(
            std::time::Instant::now() < deadline,
            "window chunks not cached within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ranges: Vec<Option<String>> = proxy.requests()[before..]
        .iter()
        .map(|r| r.range.clone())
        .collect();
    assert_eq!(
        ranges,
        [Some(format!("bytes={start}-{}", last_end - 1))],
        "one range request from the missed chunk to the window's last chunk"
    );
    // Its neighbours are read without a request; the chunk after the window
    // is not cached.
    for n in &inside {
        let b = reader.read_chunk(n.0, n.1).unwrap();
        assert_eq!(lazysnap::oci::Digest::sha256_of(&b), n.4);
    }
    assert_eq!(proxy.requests().len(), before + 1);
    if !inside.iter().any(|n| n.4 == outside.4) && outside.4 != first_key {
        assert!(
            !c.cache.contains(&outside.4),
            "the window stops at its size"
        );
    }
}

/// A layer blob no larger than `whole_layer_limit` is fetched with one
/// request for the whole blob when it is resolved, and every chunk is then
/// read, verified, without a request; a larger layer still gets only the
/// tail read.
#[test]
fn a_small_layer_is_fetched_whole_with_its_toc() {
    common::push_images();
    common::push_estargz_images();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy = common::FaultProxy::start("log", &[]);
    let limit = 2 << 20;
    let c = ctx_opts(dir.path(), &rt, 0, limit);
    let blob_requests = |from: usize| -> Vec<(String, Option<String>)> {
        proxy.requests()[from..]
            .iter()
            .filter(|r| r.path.contains("/blobs/") && r.method == "GET")
            .map(|r| (r.path.clone(), r.range.clone()))
            .collect()
    };

    let reference = proxy.reference("test/busybox:esgz");
    let l = labels_for(&rt, &c, &reference, 0);
    let before = proxy.requests().len();
    let layer = rt.block_on(c.resolve_layer(&l)).unwrap();
    assert!(layer.size <= limit, "busybox layer is {} bytes", layer.size);
    let reqs = blob_requests(before);
    assert_eq!(
        reqs.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        [Some(format!("bytes=0-{}", layer.size - 1))],
        "one request for the whole blob: {reqs:?}"
    );
    let (reader, _) = c.reader(&layer);
    let after_resolve = proxy.requests().len();
    let mut chunks = 0;
    for (i, e) in layer.toc.entries.iter().enumerate() {
        for (k, ch) in e.chunks().enumerate() {
            let Some(key) = ch.digest else { continue };
            let bytes = reader.read_chunk(i, k).unwrap();
            assert_eq!(lazysnap::oci::Digest::sha256_of(&bytes), key, "{}", e.name);
            chunks += 1;
        }
    }
    assert!(chunks > 1, "busybox has files: {chunks} chunks");
    assert_eq!(
        blob_requests(after_resolve),
        [],
        "chunks of a layer fetched whole need no request"
    );
    // The blob is kept in the cache under the layer digest (in the
    // background): the layer then resolves again without any request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !c.cache.contains(&layer.digest) {
        assert!(
            std::time::Instant::now() < deadline,
            "blob not kept in 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before = proxy.requests().len();
    let again = rt.block_on(c.resolve_layer(&l)).unwrap();
    assert_eq!(again.toc_digest, layer.toc_digest);
    assert_eq!(again.toc.entries.len(), layer.toc.entries.len());
    assert_eq!(blob_requests(before), [], "resolved from the kept blob");

    // Layer 1 of python (several MB) is above the limit: the tail only.
    let reference = proxy.reference("test/python:esgz");
    let l = labels_for(&rt, &c, &reference, 1);
    let before = proxy.requests().len();
    let layer = rt.block_on(c.resolve_layer(&l)).unwrap();
    assert!(layer.size > limit);
    let reqs = blob_requests(before);
    assert_eq!(
        reqs.first().and_then(|r| r.1.clone()),
        Some(format!(
            "bytes={}-{}",
            layer.size - lazysnap::image::toc::TAIL_BYTES,
            layer.size - 1
        )),
        "{reqs:?}"
    );
    assert!(
        reqs.len() <= 2,
        "tail, and the TOC when it did not fit: {reqs:?}"
    );
}

#[test]
fn unreachable_registry_is_unavailable_and_plain_layers_are_not_lazy() {
    common::push_images();
    let env = common::env();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(dir.path(), &rt);
    // A plain gzip layer: not lazy, but fetchable whole.
    let plain = labels_for(&rt, &c, &format!("{}/test/busybox:latest", env.registry), 0);
    match rt.block_on(c.resolve_layer(&plain)) {
        Err(RemoteError::NotLazy { reason, .. }) => {
            assert!(reason.contains("toc.digest"), "{reason}")
        }
        other => panic!("want NotLazy, got {other:?}"),
    }
    let (blob, media_type) = rt.block_on(c.fetch_whole(&plain)).unwrap();
    assert_eq!(lazysnap::oci::Digest::sha256_of(&blob), plain.layer_digest);
    assert!(media_type.ends_with("gzip"), "{media_type}");
    // Nothing listens on port 9 of loopback: Unavailable, naming the host.
    let mut gone = plain.clone();
    gone.reference = "127.0.0.1:9/test/busybox:latest".to_string();
    match rt.block_on(c.resolve_layer(&gone)) {
        Err(e @ RemoteError::Unavailable { .. }) => {
            assert!(e.to_string().contains("127.0.0.1:9"), "{e}")
        }
        other => panic!("want Unavailable, got {other:?}"),
    }
}

/// `Mounts` of a container over a remote layer answers Unavailable, naming the
/// layer, once the layer's registry is gone and a read failed; reads that
/// still work (cached chunks) stay served.
#[test]
fn mounts_are_unavailable_when_a_remote_layer_cannot_be_read() {
    use lazysnap::snapshot::{FuseMounter, LayerMounter, SnapshotError, Snapshotter};

    common::push_images();
    common::push_estargz_images();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut proxy = common::FaultProxy::start("log", &[]);
    let reference = proxy.reference("test/busybox:esgz");
    let c = ctx(&root, &rt);
    let l = labels_for(&rt, &c, &reference, 0);
    let mounter: Arc<dyn LayerMounter> = Arc::new(FuseMounter::new(rt.handle().clone()));
    let s = Snapshotter::open(&root, mounter, Some(c.clone())).unwrap();
    let key = "ns/1/extract-1 sha256:target";
    let mut m = BTreeMap::new();
    m.insert(labels::TARGET_REF.to_string(), "sha256:target".to_string());
    m.insert(labels::STARGZ_REFERENCE.to_string(), reference.clone());
    m.insert(
        labels::STARGZ_DIGEST.to_string(),
        l.layer_digest.to_string(),
    );
    match s.prepare(key, None, m) {
        Err(SnapshotError::AlreadyExists(t)) => assert_eq!(t, "sha256:target"),
        other => panic!("want AlreadyExists for a lazy layer, got {other:?}"),
    }
    let name = s.list(&[], None).unwrap().into_iter().next().unwrap().name;
    let mounts = s
        .prepare("ns/2/container", Some(&name), BTreeMap::new())
        .unwrap();
    let mp = std::path::PathBuf::from(&mounts[0].source);
    let _sweep = Sweep(mp.clone());
    // A read while the registry answers.
    assert!(std::fs::read(mp.join("bin/busybox")).unwrap().len() > 100_000);
    assert!(s.mounts("ns/2/container").is_ok());
    // The registry goes away; a file not read yet fails with EIO, and Mounts says why.
    proxy.stop();
    let unread = ["etc/passwd", "etc/group", "etc/hostname"]
        .iter()
        .map(|p| mp.join(p))
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.len() > 0));
    let unread = unread.expect("a small file in busybox:esgz");
    let err = std::fs::read(&unread).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    match s.mounts("ns/2/container") {
        Err(SnapshotError::Unavailable(why)) => {
            assert!(why.contains(&*l.layer_digest.as_str()), "{why}")
        }
        other => panic!("want Unavailable, got {other:?}"),
    }
    // What was read before is still served.
    assert!(std::fs::read(mp.join("bin/busybox")).is_ok());
    s.remove("ns/2/container").unwrap();
}

/// Lazily unmounts a test's mount point whatever happens.
struct Sweep(std::path::PathBuf);

impl Drop for Sweep {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
