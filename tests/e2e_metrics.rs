//! End to end: the daemon's Prometheus endpoint (`metrics_address`, set by
//! `scripts/env-up.sh` to a free port of 127.0.0.1 and exported as `METRICS_ADDRESS` in the
//! environment's `env` file) against what the registry actually served.
//!
//! Images: eStargz variants of the test images made here with their own chunk size
//! ([`CHUNK_SIZE`]), so that their layer digests are used by no other test and the
//! per-layer series count only this file's fetches.
//!
//! What "fetched bytes" means, precisely: `lazysnap_registry_fetch_bytes_total{layer=L}`
//! (summed over `source`) counts the blob bytes the daemon received for L: every range GET
//! that fetched chunks (a read's own fetch, readahead, prefetch, background), any
//! whole-blob GET, and the reads made to resolve the layer (`source="toc"`: the footer
//! and TOC, i.e. the range GETs whose range reaches the TOC offset, which lies after all
//! chunk data; for a small layer, the whole blob in one range). So, for each layer, the
//! counter's growth equals the bytes of all the proxy's logged GETs of L, and the request
//! counter equals their number.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    FaultProxy, ImageInfo, LayerInfo, ProxyRequest, Test, env, image_info, is_lazysnap, snapshotter,
};

/// eStargz chunk size of this file's image variants (no other variant uses it).
const CHUNK_SIZE: &str = "720896";
const PYTHON: &str = "test/python:esgz-metrics";
const BUSYBOX: &str = "test/busybox:esgz-metrics";

// ---- scraping ---------------------------------------------------------------------------------

/// One scrape: (metric name, labels, value) per sample line.
#[derive(Debug, Clone, Default)]
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    /// The sum of the samples of `name` whose labels include all of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Whether any sample of `name` has these labels.
    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0.iter().any(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn parse_scrape(text: &str) -> Scrape {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels in {line:?}"));
                let labels = inner
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').expect("label k=v");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.push((name, labels, value));
    }
    Scrape(out)
}

fn metrics_address() -> String {
    env()
        .vars
        .get("METRICS_ADDRESS")
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{}/env has no METRICS_ADDRESS: the environment predates metrics; start a new one \
             with scripts/env-up.sh",
                env().dir.display()
            )
        })
}

/// `GET /metrics` over plain HTTP/1.1; checks the status and content type.
fn scrape() -> Scrape {
    let addr = metrics_address();
    let mut s = std::net::TcpStream::connect(&addr)
        .unwrap_or_else(|e| panic!("connect to the metrics endpoint {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse_scrape(body)
}

// ---- images -------------------------------------------------------------------------------------

/// Converts `src` (a pushed test image) to eStargz with [`CHUNK_SIZE`] as `dst` and pushes it,
/// unless the registry has `dst` already (as `scripts/images.sh push-estargz` does).
fn ensure_variant(src: &str, dst: &str) {
    let e = env();
    let (repo, tag) = dst.rsplit_once(':').unwrap();
    let manifest = format!("http://{}/v2/{repo}/manifests/{tag}", e.registry);
    let have = Command::new("curl")
        .args(["-fsS", "-o", "/dev/null", "-H"])
        .arg("Accept: application/vnd.oci.image.manifest.v1+json")
        .arg(&manifest)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if have {
        return;
    }
    let (src_ref, dst_ref) = (
        format!("{}/{src}", e.registry),
        format!("{}/{dst}", e.registry),
    );
    let run = |prog: &str, args: &[&str]| {
        let out = Command::new(prog)
            .arg("-a")
            .arg(&e.containerd_address)
            .args(["-n", "metrics-convert"])
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("{prog}: {err}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run("ctr", &["content", "fetch", "--plain-http", &src_ref]);
    assert!(ok, "fetching {src_ref}: {err}");
    let convert = [
        "image",
        "convert",
        "--estargz",
        "--oci",
        "--estargz-chunk-size",
        CHUNK_SIZE,
        &src_ref,
        &dst_ref,
    ];
    let (ok, err) = run("ctr-remote", &convert);
    assert!(ok, "converting {src_ref}: {err}");
    // containerd's push to docker-registry now and then ends in "unexpected EOF": retry.
    let mut pushed = false;
    for _ in 0..3 {
        let (ok, err) = run("ctr", &["images", "push", "--plain-http", &dst_ref]);
        if ok {
            pushed = true;
            break;
        }
        eprintln!("pushing {dst_ref} failed ({err}); again");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(pushed, "pushing {dst_ref} failed three times");
    let _ = run("ctr", &["images", "rm", &src_ref, &dst_ref]);
}

/// The TOC offset of every layer of `info` (read from the eStargz footer's `%016xSTARGZ`).
fn toc_offsets(name: &str, info: &ImageInfo) -> BTreeMap<String, u64> {
    let (repo, _) = name.rsplit_once(':').unwrap();
    let py = r#"
import json, sys, urllib.request
reg, repo = sys.argv[1:3]
out = {}
for arg in sys.argv[3:]:
    d, size = arg.split("=")
    size = int(size)
    req = urllib.request.Request(f"http://{reg}/v2/{repo}/blobs/{d}",
                                 headers={"Range": f"bytes={max(0, size - 51)}-{size - 1}"})
    tail = urllib.request.urlopen(req).read()
    i = tail.rindex(b"STARGZ")
    out[d] = int(tail[i - 16:i], 16)
print(json.dumps(out))
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", py, &env().registry, repo]);
    for l in &info.layers {
        cmd.arg(format!("{}={}", l.digest, l.size));
    }
    let out = cmd.output().expect("python3");
    assert!(
        out.status.success(),
        "reading the footers of {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("toc offsets json")
}

// ---- what the registry saw --------------------------------------------------------------------

/// A layer's GETs in the proxy log, split as the module docs define.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    chunk_requests: u64,
    chunk_bytes: u64,
    toc_requests: u64,
    toc_bytes: u64,
    whole_requests: u64,
    whole_bytes: u64,
    /// No larger than the daemon's `whole_layer_limit` (the default): the layer may
    /// resolve from its blob kept in the cache, without a TOC read.
    small: bool,
}

fn range_of(r: &ProxyRequest) -> Option<(u64, u64)> {
    let (a, b) = r
        .range
        .as_deref()?
        .strip_prefix("bytes=")?
        .split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn seen(reqs: &[ProxyRequest], layer: &LayerInfo, toc_offset: u64) -> Seen {
    let mut s = Seen {
        small: layer.size <= lazysnap::config::DEFAULT_WHOLE_LAYER_LIMIT,
        ..Seen::default()
    };
    for r in reqs
        .iter()
        .filter(|r| r.method == "GET" && r.blob() == Some(layer.digest.as_str()))
    {
        assert!(
            r.status == 200 || r.status == 206,
            "the registry answered {r:?}"
        );
        match range_of(r) {
            Some((_, last)) if last < toc_offset => {
                s.chunk_requests += 1;
                s.chunk_bytes += r.bytes;
            }
            Some(_) => {
                s.toc_requests += 1;
                s.toc_bytes += r.bytes;
            }
            None => {
                s.whole_requests += 1;
                s.whole_bytes += r.bytes;
            }
        }
    }
    s
}

/// The growth of a layer's fetch counters between two scrapes: (requests, bytes, errors).
fn counted(before: &Scrape, after: &Scrape, layer: &str) -> (u64, u64, u64) {
    let d = |name: &str| {
        (after.sum(name, &[("layer", layer)]) - before.sum(name, &[("layer", layer)])) as u64
    };
    (
        d("lazysnap_registry_fetch_requests_total"),
        d("lazysnap_registry_fetch_bytes_total"),
        d("lazysnap_registry_fetch_errors_total"),
    )
}

type Comparison = Vec<(String, (u64, u64, u64), Seen)>;

/// Per layer: the counters' growth since `before`, and what the proxy saw.
fn compare(
    before: &Scrape,
    now: &Scrape,
    proxy: &FaultProxy,
    info: &ImageInfo,
    tocs: &BTreeMap<String, u64>,
) -> Comparison {
    let reqs = proxy.requests();
    info.layers
        .iter()
        .map(|l| {
            let c = counted(before, now, &l.digest);
            (l.digest.clone(), c, seen(&reqs, l, tocs[&l.digest]))
        })
        .collect()
}

fn agrees(c: &Comparison) -> bool {
    c.iter().all(|(_, (req, bytes, _), s)| {
        *req == s.chunk_requests + s.whole_requests + s.toc_requests
            && *bytes == s.chunk_bytes + s.whole_bytes + s.toc_bytes
    })
}

/// Waits (up to `secs`) until readahead still running has landed: two scrapes in a row
/// that agree with the proxy log and with each other. Returns the last scrape.
fn settle(
    before: &Scrape,
    proxy: &FaultProxy,
    info: &ImageInfo,
    tocs: &BTreeMap<String, u64>,
    secs: u64,
) -> (Scrape, Comparison) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last: Option<Comparison> = None;
    loop {
        let now = scrape();
        let c = compare(before, &now, proxy, info, tocs);
        if (agrees(&c) && last.as_ref() == Some(&c)) || Instant::now() > deadline {
            return (now, c);
        }
        last = Some(c);
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn assert_agrees(what: &str, c: &Comparison) {
    for (layer, (req, bytes, errors), s) in c {
        eprintln!("{what}: {layer}: counted {req} requests, {bytes} bytes; registry saw {s:?}");
        assert_eq!(
            (*req, *bytes),
            (
                s.chunk_requests + s.whole_requests + s.toc_requests,
                s.chunk_bytes + s.whole_bytes + s.toc_bytes
            ),
            "{what}: layer {layer}: counters (requests, bytes) vs the registry's chunk, whole \
             and TOC GETs {s:?}\n--- lazysnap log (tail) ---\n{}",
            common::lazysnap_log_tail(40)
        );
        assert_eq!(*errors, 0, "{what}: layer {layer}: fetch errors");
        assert!(
            s.toc_requests >= 1 || s.small,
            "{what}: layer {layer}: no TOC read? {s:?}"
        );
    }
}

/// The growth of `name{labels}` between two scrapes.
fn grew(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

// ---- tests ----------------------------------------------------------------------------------------

#[test]
fn lazy_run_counts_what_the_registry_served() {
    assert!(is_lazysnap(), "metrics are lazysnap's");
    common::push_images();
    ensure_variant("test/python:latest", PYTHON);
    let t = Test::exclusive("metrics-lazy");
    let snap = snapshotter();
    let info = image_info(PYTHON);
    let tocs = toc_offsets(PYTHON, &info);
    let proxy = FaultProxy::start("", &[]);
    let reference = proxy.reference(PYTHON);
    t.remove_image_and_snapshots(&snap, &reference);
    // A warm cache (a rerun on a reused environment) would fetch nothing: start cold.
    let chunks = common::image_chunk_digests(PYTHON);
    if common::cached_chunks(&chunks).0 > 0 {
        t.restart_daemon_with(|| {
            common::delete_cached_chunks(&chunks);
        });
    }

    let before = scrape();
    t.rpull_ref(&reference);
    let out = t.run_output_with(&snap, &reference, &["python3", "-B", "-c", "print(6 * 7)"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "42\n",
        "python3 in {reference}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        common::lazysnap_log_tail(40)
    );
    let (first, c) = settle(&before, &proxy, &info, &tocs, 60);
    assert_agrees("first run", &c);
    let total: u64 = c.iter().map(|(_, (_, b, _), _)| b).sum();
    assert!(total > 0, "a lazy start fetched nothing: {c:?}");
    let layer_bytes: u64 = info.layers.iter().map(|l| l.size).sum();
    assert!(
        total < layer_bytes,
        "fetched {total} of {layer_bytes} bytes: not lazy"
    );
    let reads = grew(
        &before,
        &first,
        "lazysnap_registry_fetch_bytes_total",
        &[("source", "read")],
    ) + grew(
        &before,
        &first,
        "lazysnap_registry_fetch_bytes_total",
        &[("source", "readahead")],
    );
    assert!(reads > 0.0, "no bytes fetched for reads");
    assert!(
        first.has(
            "lazysnap_registry_fetch_bytes_total",
            &[
                ("layer", info.layers[0].digest.as_str()),
                ("source", "background")
            ]
        ),
        "every source's series exists once a layer is open"
    );
    let misses = grew(&before, &first, "lazysnap_cache_misses_total", &[]);
    assert!(misses > 0.0, "cache misses did not move");
    // Python's start reads whole fetch windows (1 MiB): the link was measured, at a
    // rate no loopback link falls below.
    let rate = first.sum("lazysnap_registry_link_rate_bytes_per_second", &[]);
    assert!(rate > 1e6, "link rate {rate} B/s after a lazy start");
    for op in ["lookup", "read"] {
        let n = grew(
            &before,
            &first,
            "lazysnap_fuse_ops_total",
            &[("op", op), ("result", "ok")],
        );
        assert!(n > 0.0, "no successful FUSE {op}");
        let all = first.sum("lazysnap_fuse_ops_total", &[("op", op)]);
        let timed = first.sum("lazysnap_fuse_op_duration_seconds_count", &[("op", op)]);
        assert_eq!(all, timed, "every {op} is counted and timed once");
    }

    // The same start again, in a new container (a new mount, so no page cache): its reads
    // are served by the chunk cache.
    let out = t.run_output_with(&snap, &reference, &["python3", "-B", "-c", "print(6 * 7)"]);
    assert!(out.status.success(), "second run");
    let (second, c) = settle(&before, &proxy, &info, &tocs, 60);
    assert_agrees("second run", &c);
    let hits = grew(&first, &second, "lazysnap_cache_hits_total", &[]);
    assert!(hits > 0.0, "no cache hits on the second run");
    let again: u64 = info
        .layers
        .iter()
        .map(|l| counted(&first, &second, &l.digest).1)
        .sum();
    assert!(
        again < total,
        "second run fetched {again} bytes, first {total}"
    );
    // The disk tier holds what was fetched (written in the background).
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape().sum("lazysnap_cache_bytes", &[("tier", "disk")]) == 0.0 {
        assert!(Instant::now() < deadline, "the disk tier stays empty");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(scrape().sum("lazysnap_cache_entries", &[("tier", "disk")]) > 0.0);
    t.remove_image_and_snapshots(&snap, &reference);
}

/// Restores the environment's daemon config (and restarts the daemon) when dropped.
struct ConfigRestore<'a> {
    t: &'a Test,
    path: std::path::PathBuf,
    text: String,
}

impl Drop for ConfigRestore<'_> {
    fn drop(&mut self) {
        std::fs::write(&self.path, &self.text).expect("restore lazysnap.toml");
        self.t.restart_daemon_with(|| {});
    }
}

#[test]
fn background_fetch_progress_reaches_the_layer_total() {
    assert!(is_lazysnap(), "metrics are lazysnap's");
    common::push_images();
    ensure_variant("test/busybox:latest", BUSYBOX);
    let t = Test::exclusive("metrics-background");
    let snap = snapshotter();
    let info = image_info(BUSYBOX);
    let tocs = toc_offsets(BUSYBOX, &info);
    let proxy = FaultProxy::start("", &[]);
    let reference = proxy.reference(BUSYBOX);
    t.remove_image_and_snapshots(&snap, &reference);

    // Background fetch on (the environment has it off), from a cold cache.
    let path = env().dir.join("lazysnap.toml");
    let text = std::fs::read_to_string(&path).expect("lazysnap.toml");
    assert!(text.contains("background_fetch = false\n"), "{text}");
    let _restore = ConfigRestore {
        t: &t,
        path: path.clone(),
        text: text.clone(),
    };
    let on = text.replace(
        "background_fetch = false\n",
        "background_fetch = true\nbackground_rate = 104857600\n",
    );
    std::fs::write(&path, on).unwrap();
    let chunks = common::image_chunk_digests(BUSYBOX);
    t.restart_daemon_with(|| {
        common::delete_cached_chunks(&chunks);
    });

    let before = scrape();
    t.rpull_ref(&reference);
    let progress = |s: &Scrape, layer: &str| {
        (
            s.sum("lazysnap_background_fetch_done_bytes", &[("layer", layer)]) as u64,
            s.sum("lazysnap_background_fetch_total_bytes", &[("layer", layer)]) as u64,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let last = loop {
        let s = scrape();
        let all: Vec<(u64, u64)> = info
            .layers
            .iter()
            .map(|l| progress(&s, &l.digest))
            .collect();
        if all.iter().all(|(done, total)| *total > 0 && done == total) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "background fetch did not complete: (done, total) per layer {all:?}\n{}",
            common::lazysnap_log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let (_, c) = settle(&before, &proxy, &info, &tocs, 60);
    assert_agrees("background fetch", &c);
    for l in &info.layers {
        let (_, total) = progress(&last, &l.digest);
        let toc = tocs[&l.digest];
        assert!(
            total <= toc,
            "layer {}: {total} chunk bytes past the TOC at {toc}",
            l.digest
        );
        let bg = grew(
            &before,
            &last,
            "lazysnap_registry_fetch_bytes_total",
            &[("layer", l.digest.as_str()), ("source", "background")],
        ) as u64;
        // The chunks of the busybox binary are this variant's own (its chunk size): the
        // background fetch, not another image's, brought them in.
        assert!(
            bg > 0,
            "layer {}: nothing fetched in the background",
            l.digest
        );
    }
    t.remove_image_and_snapshots(&snap, &reference);
}
