//! End to end: lazy pulling of eStargz images through containerd 1.6's remote-snapshot path.
//!
//! Every test pulls with `ctr-remote images rpull --plain-http --snapshotter lazysnap REF`
//! (containerd's client pull with unpack and snapshot labels; `ctr images pull` is never lazy
//! on 1.6), mostly through `tests/helpers/faultproxy.py` (a logging, fault-injecting proxy in
//! front of the environment's registry, see CASES.md), so that the proxy's log shows exactly
//! what the product fetched. Images: `scripts/images.sh push-estargz` converts the test images
//! with `ctr-remote image convert --estargz --oci`. Tests that count bytes each use their own
//! chunk-size variant of the python image (`test/python:esgz-*`), so that no other test's reads
//! are served to them from lazysnap's cache; on a reused environment (LAZYSNAP_TEST_ENV) their
//! byte counts see a warm cache.
//!
//! File contents are checked against the same image's gzip original unpacked by containerd's
//! overlayfs snapshotter (the kernel's union filesystem, not lazysnap).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Instant;

use common::{
    FaultProxy, ImageInfo, LayerInfo, ProxyRequest, Test, get, image_info, image_ref, is_lazysnap,
    kv, push_estargz_images, snapshotter,
};

const PY_GZIP: &str = "test/python:latest";
const MAIN_PY_OUT: &str = "{\"ok\": [3, 11], \"os_release\": \"ID=lazysnap-test\"}\n";
const REMOTE_LABEL: &str = "containerd.io/snapshot/remote";

/// Entries the eStargz converter adds to a layer; a lazy view may hide them or not.
const ESTARGZ_EXTRA: [&str; 3] = [
    "/stargz.index.json",
    "/.prefetch.landmark",
    "/.no.prefetch.landmark",
];

/// Prints one line per entry below `/` (mount points of the container excluded):
/// path, type, mode (octal, with setuid/setgid/sticky), uid, gid, size (files and symlinks),
/// symlink target, sha256 of regular files (`ERR:<errno>` when a read fails), mtime.
const LISTING_PY: &str = r#"
import hashlib, os, stat, sys
mounts = set()
for l in open("/proc/self/mountinfo"):
    mp = l.split()[4].replace("\\040", " ")
    if mp != "/":
        mounts.add(mp)
mounts |= {"/proc", "/sys", "/dev"}
out = []
def kind(m):
    for t, f in (("d", stat.S_ISDIR), ("f", stat.S_ISREG), ("l", stat.S_ISLNK), ("c", stat.S_ISCHR),
                 ("b", stat.S_ISBLK), ("p", stat.S_ISFIFO), ("s", stat.S_ISSOCK)):
        if f(m):
            return t
    return "?"
def walk(d):
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if p in mounts:
            continue
        st = os.lstat(p)
        t = kind(st.st_mode)
        size = str(st.st_size) if t in "fl" else ""
        link = os.readlink(p) if t == "l" else ""
        h = ""
        if t == "f":
            try:
                hh = hashlib.sha256()
                with open(p, "rb") as f:
                    for b in iter(lambda: f.read(1 << 20), b""):
                        hh.update(b)
                h = hh.hexdigest()
            except OSError as e:
                h = "ERR:%d" % e.errno
        out.append("\t".join([p, t, "%o" % stat.S_IMODE(st.st_mode), str(st.st_uid), str(st.st_gid),
                              size, link, h, str(int(st.st_mtime))]))
        if t == "d":
            walk(p)
walk("/")
sys.stdout.write("\n".join(out) + "\n")
"#;

/// One line of [`LISTING_PY`]: path → (the fields without mtime, mtime).
type Listing = BTreeMap<String, (String, String)>;

fn parse_listing(text: &str) -> Listing {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 9, "listing line: {l:?}");
            (f[0].to_string(), (f[1..8].join("\t"), f[8].to_string()))
        })
        .collect()
}

/// The listing of the gzip python image on containerd's overlayfs snapshotter (computed once).
fn reference_listing() -> &'static Listing {
    static REF: OnceLock<Listing> = OnceLock::new();
    REF.get_or_init(|| {
        let t = Test::new("lazy-reference-overlayfs");
        common::push_images();
        let r = image_ref(PY_GZIP);
        t.ctr_ok(&[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "overlayfs",
            &r,
        ]);
        let out = t.run_output_with("overlayfs", &r, &["python3", "-B", "-c", LISTING_PY]);
        assert!(
            out.status.success(),
            "listing on overlayfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_listing(&String::from_utf8_lossy(&out.stdout))
    })
}

/// The listing of `reference` (already pulled) in a container on the snapshotter under test.
fn listing_of(t: &Test, reference: &str) -> (Listing, String) {
    let out = t.run_output_with(
        &snapshotter(),
        reference,
        &["python3", "-B", "-c", LISTING_PY],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "listing in {reference} failed ({}): {stderr}\n--- lazysnap log (tail) ---\n{}",
        out.status,
        common::lazysnap_log_tail(60)
    );
    (parse_listing(&String::from_utf8_lossy(&out.stdout)), stderr)
}

/// Differences between a listing and the reference, except the converter's extra entries.
/// Seconds between two mtimes as the listing prints them (unparsable: far apart).
fn mtime_apart(a: &str, b: &str) -> i64 {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(a), Ok(b)) => (a - b).abs(),
        _ => i64::MAX,
    }
}

/// Returns (content/metadata differences, mtime-only differences).
fn compare(got: &Listing, want: &Listing) -> (Vec<String>, Vec<String>) {
    let mut diffs = Vec::new();
    let mut mtimes = Vec::new();
    let paths: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    for p in paths {
        if ESTARGZ_EXTRA.contains(&p.as_str()) {
            continue;
        }
        match (got.get(p), want.get(p)) {
            (Some(g), Some(w)) if g.0 != w.0 => {
                diffs.push(format!("{p}: got [{}] want [{}]", g.0, w.0))
            }
            // eStargz TOCs hold mtimes rounded to the nearest second (the
            // writer rounds, FORMATS.md §1.4) while the tar keeps the
            // fraction, which a plain unpack truncates: one second apart is
            // the format, not an error.
            (Some(g), Some(w)) if mtime_apart(&g.1, &w.1) > 1 => {
                mtimes.push(format!("{p}: mtime got {} want {}", g.1, w.1))
            }
            (Some(_), Some(_)) => {}
            (Some(g), None) => diffs.push(format!("{p}: extra [{}]", g.0)),
            (None, Some(w)) => diffs.push(format!("{p}: missing [{}]", w.0)),
            (None, None) => unreachable!(),
        }
    }
    (diffs, mtimes)
}

fn assert_same_tree(what: &str, got: &Listing) {
    let want = reference_listing();
    let (diffs, mtimes) = compare(got, want);
    eprintln!(
        "{what}: {} entries compared, {} differ, {} mtime-only differences",
        want.len(),
        diffs.len(),
        mtimes.len()
    );
    assert!(
        diffs.is_empty(),
        "{what}: {} entries differ from the overlayfs unpack of {PY_GZIP}:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        mtimes.is_empty(),
        "{what}: {} mtimes differ from the overlayfs unpack:\n{}",
        mtimes.len(),
        mtimes
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Requests of the image's layer blobs (GETs, on the registry front or the object server).
fn layer_gets<'a>(reqs: &'a [ProxyRequest], info: &ImageInfo) -> Vec<&'a ProxyRequest> {
    let layers: BTreeSet<&str> = info.layers.iter().map(|l| l.digest.as_str()).collect();
    reqs.iter()
        .filter(|r| r.method == "GET" && r.blob().is_some_and(|d| layers.contains(d)))
        .collect()
}

/// A GET that returned a whole blob body: no Range asked, or a 200 answer with the whole blob.
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

fn full_body_gets_per_blob(reqs: &[ProxyRequest], info: &ImageInfo) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in layer_gets(reqs, info) {
        if is_full_body(r, info) {
            *m.entry(r.blob().unwrap().to_string()).or_default() += 1;
        }
    }
    m
}

fn summarize(reqs: &[&ProxyRequest]) -> String {
    reqs.iter()
        .take(30)
        .map(|r| {
            format!(
                "{} {} {} range={:?} -> {} ({} bytes){}",
                r.server,
                r.method,
                r.path
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .get(..19)
                    .unwrap_or(""),
                r.range,
                r.status,
                r.bytes,
                r.fault
                    .as_deref()
                    .map(|f| format!(" fault={f}"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The committed snapshots of `info`'s layers, checked: one per layer, named by chain ID,
/// parent = the previous chain ID, labelled as remote snapshots when `remote`.
fn assert_chain(t: &Test, info: &ImageInfo, remote: bool) {
    let infos = t.snapshot_infos();
    let committed: Vec<_> = infos.iter().filter(|i| i.kind == "Committed").collect();
    let names: Vec<&str> = committed.iter().map(|i| i.name.as_str()).collect();
    let mut want: Vec<&str> = info.chain_ids.iter().map(|s| s.as_str()).collect();
    want.sort();
    assert_eq!(names, want, "committed snapshots vs chain IDs: {infos:#?}");
    for (i, chain) in info.chain_ids.iter().enumerate() {
        let s = committed.iter().find(|s| &s.name == chain).unwrap();
        let parent = if i == 0 {
            ""
        } else {
            info.chain_ids[i - 1].as_str()
        };
        assert_eq!(s.parent, parent, "parent of layer {i} ({chain}): {s:#?}");
        if remote {
            assert_eq!(
                s.labels.get(REMOTE_LABEL).map(|s| s.as_str()),
                Some("remote snapshot"),
                "layer {i} ({chain}) is not a remote snapshot: {s:#?}\n--- lazysnap log (tail) ---\n{}",
                common::lazysnap_log_tail(40)
            );
        }
    }
}

/// Start from nothing in this namespace: no image `reference`, no snapshots (a rerun on the
/// same environment would otherwise find the layers already there and fetch nothing).
fn fresh(t: &Test, reference: &str) {
    t.remove_containers();
    t.remove_image_and_snapshots(&snapshotter(), reference);
}

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

/// python on eStargz runs from a lazy pull: remote snapshots, no whole-blob GET, and the
/// registry serves a small part of the layers until the first output.
#[test]
fn lazy_python_esgz_runs_and_fetches_little() {
    assert!(is_lazysnap(), "lazy pulling is lazysnap's");
    let name = "test/python:esgz";
    let info = esgz_info(name);
    let t = Test::new("lazy-python-esgz");
    let proxy = FaultProxy::start("", &[]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    let t0 = Instant::now();
    t.rpull_ref(&r);
    let pulled = t0.elapsed();
    let out = t.run_output_with(&snapshotter(), &r, &["python3", "/app/main.py"]);
    let cold = t0.elapsed();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        MAIN_PY_OUT,
        "stderr: {}\n--- lazysnap log (tail) ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        common::lazysnap_log_tail(40)
    );
    let reqs = proxy.requests();
    let gets = layer_gets(&reqs, &info);
    let served: u64 = gets.iter().map(|r| r.bytes).sum();
    let total = info.layer_bytes();
    eprintln!(
        "lazy cold start of {name}: rpull {:.2}s, first output {:.2}s; registry served {served} of {total} layer bytes ({:.1}%) in {} GETs",
        pulled.as_secs_f64(),
        cold.as_secs_f64(),
        100.0 * served as f64 / total as f64,
        gets.len()
    );
    let full: Vec<_> = gets
        .iter()
        .copied()
        .filter(|r| is_full_body(r, &info))
        .collect();
    assert!(
        full.is_empty(),
        "whole-blob GETs of eStargz layers (not lazy):\n{}\n--- lazysnap log (tail) ---\n{}",
        summarize(&full),
        common::lazysnap_log_tail(40)
    );
    assert!(
        !gets.is_empty(),
        "no layer GETs at all reached the proxy (warm cache of a reused environment?)"
    );
    assert!(
        served * 10 < total * 4,
        "registry served {served} of {total} layer bytes (≥ 40%; 28% when measured):\n{}",
        summarize(&gets)
    );
    assert_chain(&t, &info, true);

    // A second container: everything it needs is local now.
    let before = proxy.requests().len();
    let out = t.run_output_with(&snapshotter(), &r, &["python3", "/app/main.py"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), MAIN_PY_OUT);
    let again: Vec<ProxyRequest> = proxy.requests().split_off(before);
    let again_bytes: u64 = layer_gets(&again, &info).iter().map(|r| r.bytes).sum();
    eprintln!("warm start: registry served {again_bytes} more layer bytes");
}

/// Every file of the lazily mounted image equals the overlayfs unpack of the gzip original:
/// type, mode (with special bits), owner, size, symlink target, sha256, mtime.
#[test]
fn lazy_view_equals_overlayfs_unpack() {
    let name = "test/python:esgz-2ns";
    esgz_info(name);
    let t = Test::new("lazy-view-equals-overlayfs");
    let r = image_ref(name);
    fresh(&t, &r);
    t.rpull_ref(&r);
    let (got, _) = listing_of(&t, &r);
    assert!(got.len() > 1000, "only {} entries listed", got.len());
    assert_same_tree("lazy view of test/python:esgz-2ns", &got);
}

/// B17 (range-200): ranged GETs answered 200 with the partial body and a Content-Range.
#[test]
fn b17_range_answered_200_with_partial_body() {
    b17("range-200", "test/python:esgz-b17r");
}

/// B17 (ignore-range): ranged GETs answered 200 with the whole blob.
#[test]
fn b17_range_ignored_whole_body() {
    b17("ignore-range", "test/python:esgz-b17i");
}

fn b17(fault: &str, name: &str) {
    let info = esgz_info(name);
    let t = Test::new(&format!("b17-{fault}"));
    let proxy = FaultProxy::start(fault, &[]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    t.rpull_ref(&r);
    let (got, _) = listing_of(&t, &r);
    assert_same_tree(&format!("B17 {fault}"), &got);
    let reqs = proxy.requests();
    let gets = layer_gets(&reqs, &info);
    let full = full_body_gets_per_blob(&reqs, &info);
    let served: u64 = gets.iter().map(|r| r.bytes).sum();
    eprintln!(
        "B17 {fault}: {} layer GETs, {served} bytes served (layers {} bytes); whole-body GETs per blob: {full:?}",
        gets.len(),
        info.layer_bytes()
    );
    if fault == "ignore-range" {
        for (blob, n) in &full {
            assert!(
                *n <= 2,
                "B17 ignore-range: blob {blob} was fetched whole {n} times (once per chunk?)\n{}",
                summarize(&gets)
            );
        }
    }
    let log = std::fs::read_to_string(&common::env().lazysnap_log).unwrap_or_default();
    let mentions: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            (l.contains("range") || l.contains("fallback") || l.contains("fall back"))
                && (l.contains("warn") || l.contains("error"))
        })
        .take(5)
        .collect();
    eprintln!(
        "B17 {fault}: daemon log lines about ranges/fallback:\n{}",
        mentions.join("\n")
    );
}

/// B10 on eStargz: setuid/setgid/sticky bits and the capability xattr through the lazy mount.
#[test]
fn b10_special_bits_on_estargz() {
    let name = "cases/b10:esgz";
    let info = esgz_info(name);
    let t = Test::new("b10-esgz");
    let proxy = FaultProxy::start("", &[]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    t.rpull_ref(&r);
    let out = t.sh_with(
        &snapshotter(),
        &r,
        r#"echo "modes=$(stat -c %a /usr/bin/elevate /usr/bin/grpexec /shared /setgid-dir | tr '\n' ' ')"
        touch /setgid-dir/new && echo "newgid=$(stat -c %g /setgid-dir/new)""#,
    );
    let m = kv(&out);
    assert_eq!(get(&m, "modes"), "4711 2755 1777 2775 ", "{out}");
    assert_eq!(get(&m, "newgid"), "1000", "{out}");

    // The capability xattr, read from the host through the container's rootfs.
    let id = t.new_id();
    t.ctr_ok(&[
        "run",
        "-d",
        "--snapshotter",
        &snapshotter(),
        &r,
        &id,
        "sleep",
        "600",
    ]);
    let path = t.rootfs_of(&id).join("cap-bin");
    let caps = std::process::Command::new("getcap")
        .arg(&path)
        .output()
        .expect("getcap");
    let attr = std::process::Command::new("getfattr")
        .args(["-n", "security.capability", "-e", "hex"])
        .arg(&path)
        .output()
        .expect("getfattr");
    t.remove_container(&id);
    let caps = String::from_utf8_lossy(&caps.stdout).into_owned();
    assert!(
        caps.contains("cap_net_bind_service"),
        "getcap {}: {caps:?}; getfattr: {}{}",
        path.display(),
        String::from_utf8_lossy(&attr.stdout),
        String::from_utf8_lossy(&attr.stderr)
    );
    assert!(
        String::from_utf8_lossy(&attr.stdout)
            .contains("security.capability=0x0100000200040000000000000000000000000000"),
        "getfattr: {}",
        String::from_utf8_lossy(&attr.stdout)
    );
    if is_lazysnap() {
        assert_chain(&t, &info, true);
    }
}

/// B20: an index with linux/arm64 and an unknown/unknown artifact, pulled for linux/amd64:
/// fails fast naming the platform, no snapshots, no blob GETs. With amd64 in the index too,
/// the amd64 manifest is picked.
#[test]
fn b20_host_platform_missing_from_index() {
    push_estargz_images();
    let t = Test::new("b20-lazy");
    let proxy = FaultProxy::start("", &[]);
    fresh(&t, &proxy.reference("cases/b20both:t"));
    let before = t.snapshots();
    let t0 = Instant::now();
    let out = t.rpull_output(&proxy.reference("cases/b20:t"));
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "B20 rpull (arm64 + artifact) on amd64: {} in {:.2}s: {stderr}",
        out.status,
        took.as_secs_f64()
    );
    assert!(
        !out.status.success(),
        "pulling an arm64-only index on amd64 succeeded"
    );
    // containerd's client resolves the platform before any snapshotter call, so this message
    // is containerd's (1.6: "no match for platform in manifest …"), not lazysnap's.
    if !stderr.contains("amd64") {
        eprintln!(
            "note: B20: the error (from containerd's client, before lazysnap is reached) does not name the platform: {stderr}"
        );
    }
    assert!(
        stderr.contains("amd64") || stderr.contains("no match for platform"),
        "unexpected error for a missing platform: {stderr}"
    );
    assert!(took.as_secs() < 30, "B20 took {took:?} to fail");
    assert_eq!(t.snapshots(), before, "snapshots changed by a failed pull");
    let blob_gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .collect();
    assert!(
        blob_gets.is_empty(),
        "blob GETs for a pull that cannot succeed: {blob_gets:?}"
    );

    // Both arches: amd64 is picked, the artifact never.
    let r = proxy.reference("cases/b20both:t");
    t.rpull_ref(&r);
    let out = t.sh_with(&snapshotter(), &r, "echo picked");
    assert_eq!(out, "picked\n");
    // Which manifests were fetched (configs and layers may come from containerd's shared
    // content store without a fetch).
    let members = index_manifests("cases/b20both:t");
    let fetched = |plat: &str| {
        let d = &members.iter().find(|(_, p)| p == plat).unwrap().0;
        proxy
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with(d.as_str()))
    };
    assert!(
        fetched("linux/amd64"),
        "the amd64 manifest was not fetched: {members:?}"
    );
    assert!(!fetched("linux/arm64"), "the arm64 manifest was fetched");
    assert!(
        !fetched("unknown/unknown"),
        "the artifact manifest was fetched"
    );
}

/// (digest, "os/arch") of every entry of an index in the environment's registry.
fn index_manifests(name: &str) -> Vec<(String, String)> {
    let (repo, tag) = name.rsplit_once(':').unwrap();
    let py = r#"
import json, sys, urllib.request
reg, repo, tag = sys.argv[1:4]
req = urllib.request.Request(f"http://{reg}/v2/{repo}/manifests/{tag}",
                             headers={"Accept": "application/vnd.oci.image.index.v1+json"})
for m in json.load(urllib.request.urlopen(req))["manifests"]:
    print(m["digest"], m["platform"]["os"] + "/" + m["platform"]["architecture"])
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", py, &common::env().registry, repo, tag])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(d, p)| (d.to_string(), p.to_string()))
        .collect()
}

/// B26: an empty layer (an empty tar) between two ordinary ones, all eStargz.
#[test]
fn b26_empty_layer_on_estargz() {
    let name = "cases/b26:esgz";
    let info = esgz_info(name);
    assert_eq!(info.layers.len(), 4, "busybox + 3 case layers");
    let t = Test::new("b26-esgz");
    let proxy = FaultProxy::start("", &[]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    t.rpull_ref(&r);
    let out = t.sh_with(
        &snapshotter(),
        &r,
        r#"echo "conf=$(cat /etc/conf)"; echo "app=$(stat -c '%s %a' /bin/app)"; echo "sha=$(sha256sum /bin/app | cut -d' ' -f1)""#,
    );
    let m = kv(&out);
    assert_eq!(get(&m, "conf"), "conf=26", "{out}");
    assert_eq!(get(&m, "app"), "1024 755", "{out}");
    let want = common::sha256_hex_of_python_expr("random.Random(1026).randbytes(1024)");
    assert_eq!(get(&m, "sha"), want, "{out}");
    if is_lazysnap() {
        assert_chain(&t, &info, true);
        let reqs = proxy.requests();
        let gets = layer_gets(&reqs, &info);
        let full: Vec<_> = gets
            .iter()
            .copied()
            .filter(|r| is_full_body(r, &info))
            .collect();
        assert!(full.is_empty(), "whole-blob GETs:\n{}", summarize(&full));
        for l in [&info.layers[1], &info.layers[3]] {
            assert!(
                gets.iter()
                    .any(|r| r.blob() == Some(l.digest.as_str()) && r.range.is_some()),
                "no range GET of layer {}:\n{}",
                l.digest,
                summarize(&gets)
            );
        }
    }
}

/// The same image pulled lazily in two namespaces at once; removing one leaves the other
/// working (a running container and new ones).
#[test]
fn same_image_in_two_namespaces_in_parallel() {
    let name = "test/python:esgz-2ns";
    let info = esgz_info(name);
    let a = Test::new("lazy-2ns-a");
    let b = Test::new("lazy-2ns-b");
    let r = image_ref(name);
    fresh(&a, &r);
    fresh(&b, &r);
    std::thread::scope(|s| {
        let ha = s.spawn(|| a.rpull_ref(&r));
        let hb = s.spawn(|| b.rpull_ref(&r));
        ha.join().expect("rpull in namespace a");
        hb.join().expect("rpull in namespace b");
    });
    for t in [&a, &b] {
        let out = t.run_output_with(&snapshotter(), &r, &["python3", "/app/main.py"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            MAIN_PY_OUT,
            "{}",
            t.ns
        );
        if is_lazysnap() {
            assert_chain(t, &info, true);
        }
    }
    let id = b.new_id();
    b.ctr_ok(&[
        "run",
        "-d",
        "--snapshotter",
        &snapshotter(),
        &r,
        &id,
        "sleep",
        "600",
    ]);
    a.remove_image_and_snapshots(&snapshotter(), &r);
    let out = b.exec(
        &id,
        &[
            "python3",
            "-c",
            "import json, email, http.client; print('still')",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "still\n",
        "running container in b after removing a: {}\n--- lazysnap log (tail) ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        common::lazysnap_log_tail(40)
    );
    b.remove_container(&id);
    let out = b.run_output_with(&snapshotter(), &r, &["python3", "/app/main.py"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), MAIN_PY_OUT);
    let (got, _) = listing_of(&b, &r);
    assert_same_tree("namespace b after removing a", &got);
}

/// The same image pulled lazily in namespace a, then in namespace b: each namespace's
/// chain is its own remote snapshots (containerd looks the layers up with a List filtered on
/// `containerd.io/snapshot.ref` and parent; a's snapshots must not answer b's lookups), and
/// b's layers resolve from the TOCs a's mounted layers hold, with no blob read.
#[test]
fn same_image_in_two_namespaces_one_after_the_other() {
    let name = "test/python:esgz-2ns";
    let info = esgz_info(name);
    let a = Test::new("lazy-seq-a");
    let b = Test::new("lazy-seq-b");
    let r = image_ref(name);
    // b pulls the same image through a proxy of its own, to see what it reads.
    let proxy = FaultProxy::start("", &[]);
    let rb = proxy.reference(name);
    fresh(&a, &r);
    fresh(&b, &rb);
    a.rpull_ref(&r);
    b.rpull_ref(&rb);
    for (t, r) in [(&a, &r), (&b, &rb)] {
        if is_lazysnap() {
            assert_chain(t, &info, true);
        }
        let out = t.run_output_with(&snapshotter(), r, &["python3", "/app/main.py"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            MAIN_PY_OUT,
            "{}",
            t.ns
        );
    }
    if is_lazysnap() {
        // b's layers resolved from the TOCs a's mounted layers hold: no footer or TOC
        // read, and (the chunks being cached) no blob read at all.
        let blob_gets: Vec<_> = proxy
            .requests()
            .into_iter()
            .filter(|q| q.method == "GET" && q.blob().is_some())
            .collect();
        assert!(blob_gets.is_empty(), "b read blobs: {blob_gets:?}");
    }
    a.remove_image_and_snapshots(&snapshotter(), &r);
    let out = b.run_output_with(&snapshotter(), &rb, &["python3", "/app/main.py"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        MAIN_PY_OUT,
        "b after removing a"
    );
}

/// A chunk answered with one wrong byte (once per range): reads return the right bytes or
/// fail with an I/O error, never wrong bytes.
#[test]
fn bad_byte_in_a_chunk_never_reaches_a_reader() {
    let name = "test/python:esgz-bad";
    let info = esgz_info(name);
    let t = Test::new("lazy-bad-byte");
    let proxy = FaultProxy::start("bad-byte", &[]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    t.rpull_ref(&r);
    let (got, _) = listing_of(&t, &r);
    let want = reference_listing();
    let mut wrong = Vec::new();
    let mut failed = Vec::new();
    let mut right = 0;
    for (p, (g, _)) in &got {
        let Some((w, _)) = want.get(p) else { continue };
        if g == w {
            right += 1;
        } else if g.contains("\tERR:") {
            failed.push(p.clone());
        } else {
            wrong.push(format!("{p}: got [{g}] want [{w}]"));
        }
    }
    let reqs = proxy.requests();
    let flipped = reqs
        .iter()
        .filter(|r| r.fault.as_deref().is_some_and(|f| f.contains("bad-byte")))
        .count();
    eprintln!(
        "bad-byte: {flipped} answers corrupted; {right} entries right, {} reads failed, {} wrong; {} layer GETs",
        failed.len(),
        wrong.len(),
        layer_gets(&reqs, &info).len()
    );
    assert!(
        flipped > 0,
        "the proxy corrupted nothing (no ranged reads?)"
    );
    assert!(
        wrong.is_empty(),
        "wrong bytes (or metadata) reached a reader:\n{}",
        wrong
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// An image optimized by `ctr-remote image optimize` (which ran python once and put the
/// files it read before `.prefetch.landmark`) runs lazily, and lazysnap prefetches the
/// landmark region of its layers with one range request each.
#[test]
fn optimized_image_prefetches_its_landmark_region() {
    assert!(is_lazysnap(), "lazy pulling is lazysnap's");
    let name = "test/python:esgz-opt";
    let info = esgz_info(name);
    let t = Test::new("lazy-optimized");
    let proxy = FaultProxy::start("", &[]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    let log_from = common::lazysnap_log_len();
    t.rpull_ref(&r);
    let out = t.run_output_with(&snapshotter(), &r, &["python3", "/app/main.py"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), MAIN_PY_OUT);
    let log = common::lazysnap_log_since(log_from);
    let prefetched: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("prefetched the landmark region"))
        .filter(|l| info.layers.iter().any(|d| l.contains(d.digest.as_str())))
        .collect();
    eprintln!(
        "optimized image: {} layers prefetched:\n{}",
        prefetched.len(),
        prefetched.join("\n")
    );
    assert!(
        !prefetched.is_empty(),
        "no landmark prefetch for {name}'s layers; log:\n{}",
        common::lazysnap_log_tail(40)
    );
    // The prefetch of a layer is one range request covering its landmark region.
    let reqs = proxy.requests();
    let gets = layer_gets(&reqs, &info);
    assert!(
        gets.iter().all(|g| !is_full_body(g, &info)),
        "whole-blob GETs:\n{}",
        summarize(&gets)
    );
}

/// `Control.PrepareImage` (what `lazysnap pull` sends as soon as it has the
/// manifest): the daemon resolves every layer's TOC and prefetches the
/// landmark regions before any Prepare comes; the pull that follows reuses
/// that work (each layer's TOC is fetched once) and the container runs.
#[test]
fn prepare_image_resolves_and_prefetches_before_the_prepares() {
    assert!(is_lazysnap(), "lazy pulling is lazysnap's");
    let name = "test/python:esgz-opt";
    let info = esgz_info(name);
    let t = Test::new("lazy-prepare-image");
    let proxy = FaultProxy::start("", &[]);
    let r = proxy.reference(name);
    fresh(&t, &r);
    let log_from = common::lazysnap_log_len();
    let layers: Vec<String> = info.layers.iter().map(|l| l.digest.clone()).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let address = common::env().lazysnap_address.clone();
    let started = rt
        .block_on(lazysnap::service::control_client::prepare_image(
            &address, &r, "", &layers,
        ))
        .expect("PrepareImage");
    assert_eq!(started as usize, layers.len(), "every layer is started");
    // The landmark prefetch of the layers that have one, without a Prepare.
    // (Other tests run beside this one on the same daemon, with the same
    // layers: resolution is read off this test's own proxy, and only a
    // Prepare for this test's reference counts.)
    let tail_read = |l: &LayerInfo| {
        proxy.requests().iter().any(|q| {
            q.method == "GET"
                && q.blob() == Some(l.digest.as_str())
                && q.range_end() == Some(l.size - 1)
        })
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let prefetched = loop {
        let log = common::lazysnap_log_since(log_from);
        let done: Vec<&LayerInfo> = info
            .layers
            .iter()
            .filter(|l| {
                log.lines().any(|x| {
                    x.contains("prefetched the landmark region") && x.contains(l.digest.as_str())
                })
            })
            .collect();
        // (A small layer may resolve from its blob kept in the cache, and a layer that
        // another test has mounted from the TOC in use, without a read.)
        let small = |l: &LayerInfo| l.size <= lazysnap::config::DEFAULT_WHOLE_LAYER_LIMIT;
        let reused = |l: &LayerInfo| {
            log.lines()
                .any(|x| x.contains("TOC of a mounted layer reused") && x.contains(&l.digest))
        };
        if !done.is_empty()
            && info
                .layers
                .iter()
                .all(|l| small(l) || tail_read(l) || reused(l))
        {
            assert!(
                !log.lines()
                    .any(|x| x.contains("rpc=\"Prepare\"") && x.contains(r.as_str())),
                "a Prepare came before the test sent one:\n{log}"
            );
            break done.len();
        }
        assert!(
            Instant::now() < deadline,
            "no prefetch 60 s after PrepareImage; log:\n{}",
            common::lazysnap_log_tail(40)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(prefetched >= 1);
    // A second hint for the same image starts nothing.
    let again = rt
        .block_on(lazysnap::service::control_client::prepare_image(
            &address, &r, "", &layers,
        ))
        .expect("PrepareImage again");
    assert_eq!(again, 0);
    t.rpull_ref(&r);
    let out = t.run_output_with(&snapshotter(), &r, &["python3", "/app/main.py"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), MAIN_PY_OUT);
    // Each layer's tail (footer and TOC) was read at most once: the Prepares
    // took the layers the hint resolved (none when the layer came from a kept
    // blob or a mounted layer's TOC).
    let reqs = proxy.requests();
    for l in &info.layers {
        let tails = reqs
            .iter()
            .filter(|q| q.method == "GET" && q.blob() == Some(l.digest.as_str()))
            .filter(|q| q.range_end() == Some(l.size - 1))
            .count();
        assert!(tails <= 1, "layer {}: {tails} tail reads", l.digest);
    }
}
