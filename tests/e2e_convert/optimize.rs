//! `lazysnap convert --optimize`: the recorded start's files first, `.prefetch.landmark`
//! after them, and a cold lazy start that needs less before its first output.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::convert::{inspect_json, inspect_layers, lazy_pull, lazysnap_ok};
use crate::common::{
    self, FaultProxy, ImageInfo, Test, cached_chunks, delete_cached_chunks, env,
    image_chunk_digests, image_info, image_ref, push_images, unix_now,
};

/// The start that is recorded and measured: imports a few stdlib modules, prints.
const START_PY: &str =
    "import json, email.message, http.client, decimal; print('ready', json.dumps([1, 2]))";
const START_OUT: &str = "ready [1, 2]";

/// (layer bytes, layer requests) the registry served before the first output of a cold
/// start of `name` (pulled with `lazysnap pull` through a logging proxy).
fn cold_start(t: &Test, name: &str, info: &ImageInfo) -> (u64, usize) {
    let proxy = FaultProxy::start("", &[]);
    let r = proxy.reference(name);
    t.remove_image_and_snapshots("lazysnap", &r);
    lazy_pull(t, &r);
    let e = env();
    let id = t.new_id();
    let mut child = Command::new("timeout")
        .args(["--kill-after=10", "300", "ctr", "-a"])
        .arg(&e.containerd_address)
        .args([
            "-n",
            &t.ns,
            "run",
            "--rm",
            "--snapshotter",
            "lazysnap",
            &r,
            &id,
        ])
        .args(["python3", "-c", START_PY])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr run");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .expect("read the container's stdout");
    let at = unix_now();
    let out = child.wait_with_output().expect("ctr run");
    assert!(
        out.status.success() && first.trim_end() == START_OUT,
        "{name}: start exited {}: first line {first:?}, stderr {}\n--- lazysnap log (tail) ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        common::lazysnap_log_tail(30)
    );
    let layers: Vec<&str> = info.layers.iter().map(|l| l.digest.as_str()).collect();
    let gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|q| q.method == "GET" && q.t <= at && q.blob().is_some_and(|b| layers.contains(&b)))
        .collect();
    (gets.iter().map(|q| q.bytes).sum(), gets.len())
}

/// The python image converted plainly and with `--optimize`: the optimized layers carry
/// `.prefetch.landmark` (the plain ones `.no.prefetch.landmark`), `--record-out` lists the
/// python binary, and a cold lazy start of the optimized image needs fewer layer bytes
/// and fewer requests before its first output.
#[test]
fn optimize_needs_fewer_bytes_and_requests_before_first_output() {
    push_images();
    let src = image_ref("test/python:latest");
    let plain = "conv/python:opt-plain";
    let opt = "conv/python:opt-optimized";
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.txt");
    lazysnap_ok(&["convert", "--format", "estargz", &src, &image_ref(plain)]);
    lazysnap_ok(&[
        "convert",
        "--format",
        "estargz",
        "--optimize",
        "--record-out",
        record.to_str().unwrap(),
        &src,
        &image_ref(opt),
        "--",
        "python3",
        "-c",
        START_PY,
    ]);
    let list = std::fs::read_to_string(&record).expect("--record-out file");
    let paths: Vec<&str> = list.lines().collect();
    eprintln!(
        "recorded {} paths: {:?}…",
        paths.len(),
        &paths[..paths.len().min(8)]
    );
    for want in [
        "usr/bin/python3.11",
        "usr/lib/python3.11/json/__init__.py",
        "usr/lib/python3.11/decimal.py",
    ] {
        assert!(paths.contains(&want), "--record-out has no {want}:\n{list}");
    }
    for (name, landmark) in [(plain, "none"), (opt, "prefetch")] {
        let layers = inspect_layers(&inspect_json(&image_ref(name)));
        assert_eq!(layers.len(), 3, "{name}: {layers:?}");
        for l in &layers {
            assert_eq!(l["landmark"], landmark, "{name}: {l}");
            assert_eq!(l["format"], "estargz", "{name}: {l}");
        }
    }
    // a background fetch would serve the rest of the layers in parallel to the start
    let cfg = std::fs::read_to_string(env().dir.join("lazysnap.toml")).expect("lazysnap.toml");
    assert!(
        cfg.lines()
            .any(|l| l.replace(' ', "") == "background_fetch=false"),
        "the environment's daemon must run without background fetch:\n{cfg}"
    );
    let infos = [image_info(plain), image_info(opt)];
    // A reused environment may hold these chunks from an earlier run: drop them.
    let mut digests = image_chunk_digests(plain);
    digests.extend(image_chunk_digests(opt));
    if cached_chunks(&digests).0 > 0 {
        let t = Test::exclusive("convert-optimize-cache");
        t.restart_daemon_with(|| {
            let n = delete_cached_chunks(&digests);
            eprintln!("dropped {n} cached chunks of an earlier run");
        });
    }
    let t = Test::new("convert-optimize");
    let (plain_bytes, plain_reqs) = cold_start(&t, plain, &infos[0]);
    let (opt_bytes, opt_reqs) = cold_start(&t, opt, &infos[1]);
    eprintln!(
        "before the first output: plain {plain_bytes} B in {plain_reqs} requests, \
         optimized {opt_bytes} B in {opt_reqs} requests (layers {} B / {} B)",
        infos[0].layer_bytes(),
        infos[1].layer_bytes()
    );
    assert!(
        plain_reqs > 0,
        "the plain start fetched nothing (warm cache?)"
    );
    assert!(
        opt_bytes < plain_bytes && opt_reqs < plain_reqs,
        "optimized: {opt_bytes} B in {opt_reqs} requests; plain: {plain_bytes} B in {plain_reqs} requests"
    );
}
