//! End to end: lazy pulling of zstd:chunked images (containers/storage's format, written by
//! `skopeo copy --dest-compress-format zstd:chunked`, `scripts/images.sh push-zstd`) through
//! containerd 1.6's remote-snapshot path: `ctr-remote images rpull --plain-http --snapshotter
//! lazysnap` through the logging `tests/helpers/faultproxy.py`, so that its log shows what the
//! product fetched. The layers carry no stargz toc.digest: lazysnap finds the TOC through the
//! `…zstd-chunked.manifest-position` annotation and checks it against `…manifest-checksum`.

mod common;

use std::collections::BTreeSet;

use common::{
    FaultProxy, ImageInfo, ProxyRequest, Test, image_info, is_lazysnap, push_zstd_images,
    snapshotter,
};

const REMOTE_LABEL: &str = "containerd.io/snapshot/remote";

fn zstd_info(name: &str) -> ImageInfo {
    push_zstd_images();
    let info = image_info(name);
    for l in &info.layers {
        assert!(
            l.media_type.ends_with("+zstd") && l.toc_digest.is_none(),
            "{name}: layer {} is {} (toc.digest {:?}), not plain zstd:chunked",
            l.digest,
            l.media_type,
            l.toc_digest
        );
    }
    info
}

/// GETs of the image's layer blobs.
fn layer_gets<'a>(reqs: &'a [ProxyRequest], info: &ImageInfo) -> Vec<&'a ProxyRequest> {
    let layers: BTreeSet<&str> = info.layers.iter().map(|l| l.digest.as_str()).collect();
    reqs.iter()
        .filter(|r| r.method == "GET" && r.blob().is_some_and(|d| layers.contains(d)))
        .collect()
}

/// A GET that returned a whole blob: no Range asked, or a 200 answer with the whole blob.
fn is_full_body(r: &ProxyRequest, info: &ImageInfo) -> bool {
    let size = info
        .layers
        .iter()
        .find(|l| Some(l.digest.as_str()) == r.blob())
        .map(|l| l.size)
        .unwrap_or(u64::MAX);
    (r.status == 200 || r.status == 206)
        && (r.range.is_none() || (r.status == 200 && r.bytes >= size))
}

fn summarize(reqs: &[&ProxyRequest]) -> String {
    reqs.iter()
        .take(30)
        .map(|r| {
            format!(
                "{} {} {} range={:?} -> {} ({} bytes)",
                r.server, r.method, r.path, r.range, r.status, r.bytes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Pull `name` lazily through a logging proxy, run `cmd`, check its output, that every
/// layer is a remote snapshot, and that no layer blob was fetched whole.
fn lazy_run(test: &str, name: &str, cmd: &[&str], want: &str) {
    assert!(is_lazysnap(), "lazy pulling is lazysnap's");
    let info = zstd_info(name);
    let t = Test::new(test);
    let proxy = FaultProxy::start("log", &[]);
    let r = proxy.reference(name);
    t.remove_containers();
    t.remove_image_and_snapshots(&snapshotter(), &r);
    t.rpull_ref(&r);
    let out = t.run_output_with(&snapshotter(), &r, cmd);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        want,
        "stderr: {}\n--- lazysnap log (tail) ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        common::lazysnap_log_tail(40)
    );
    let committed: Vec<_> = t
        .snapshot_infos()
        .into_iter()
        .filter(|s| s.kind == "Committed")
        .collect();
    let names: BTreeSet<&str> = committed.iter().map(|s| s.name.as_str()).collect();
    let want_names: BTreeSet<&str> = info.chain_ids.iter().map(|s| s.as_str()).collect();
    assert_eq!(names, want_names, "committed snapshots vs chain IDs");
    for s in &committed {
        assert_eq!(
            s.labels.get(REMOTE_LABEL).map(|s| s.as_str()),
            Some("remote snapshot"),
            "{} is not a remote snapshot: {s:#?}\n--- lazysnap log (tail) ---\n{}",
            s.name,
            common::lazysnap_log_tail(40)
        );
    }
    let reqs = proxy.requests();
    let gets = layer_gets(&reqs, &info);
    let full: Vec<_> = gets
        .iter()
        .copied()
        .filter(|r| is_full_body(r, &info))
        .collect();
    assert!(
        full.is_empty(),
        "whole-blob GETs of zstd:chunked layers (not lazy):\n{}\n--- lazysnap log (tail) ---\n{}",
        summarize(&full),
        common::lazysnap_log_tail(40)
    );
    let served: u64 = gets.iter().map(|r| r.bytes).sum();
    eprintln!(
        "lazy {name}: registry served {served} of {} layer bytes in {} GETs",
        info.layer_bytes(),
        gets.len()
    );
}

/// python on zstd:chunked runs from a lazy pull.
#[test]
fn lazy_python_zstd_chunked_runs() {
    lazy_run(
        "lazy-python-zstd",
        "test/python:zstd",
        &[
            "python3",
            "-B",
            "-c",
            "import json, zlib; print(json.dumps({'z': zlib.decompress(zlib.compress(b'lazy')).decode()}))",
        ],
        "{\"z\": \"lazy\"}\n",
    );
}

/// busybox on zstd:chunked runs from a lazy pull.
#[test]
fn lazy_busybox_zstd_chunked_runs() {
    lazy_run(
        "lazy-busybox-zstd",
        "test/busybox:zstd",
        &["sh", "-c", "echo zstd; ls /bin/busybox"],
        "zstd\n/bin/busybox\n",
    );
}
