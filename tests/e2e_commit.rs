//! End to end: `lazysnap commit` (issue 5), checked with tools nobody here wrote.
//!
//! - Round trip: the python image converted to eStargz (`lazysnap convert`) and pulled
//!   lazily (`lazysnap pull`) runs on lazysnap; the container changes its tree in every way
//!   a layer can record (new files and dirs, append, delete, delete + re-create a dir,
//!   rename a dir, chmod, chown, hardlinks, symlink, fifo, device, xattrs); commit (the
//!   running task is paused and resumed) and push; then the trees (tests/common/tree.rs:
//!   names, types, modes, owners, mtimes, link targets, devices, xattrs, hardlink groups,
//!   sha256) seen by lazysnap, by containerd's overlayfs snapshotter and by skopeo + umoci
//!   must equal the container's tree before the commit.
//! - No lower layer is downloaded by a push to the parent's registry (a logging
//!   [`FaultProxy`] in front of it); an `oci:DIR:TAG` destination holds every blob.
//! - `--import`: the committed image runs at once, without a pull.
//! - Field cases B02, B05, B06 (CASES.md), committed side: tests/e2e_commit/cases.rs.
//! - Bad input, a push cut off half way, wrong credentials: tests/e2e_commit/bad_input.rs.

mod common;

use std::collections::BTreeSet;

use common::convert::{
    converted, lazysnap, lazysnap_ok, manifest_status, overlay_tree, run_ok, umoci_tree,
};
use common::tree;
use common::{FaultProxy, Test, image_info, image_ref, unix_now};
use serde_json::Value;
use support::*;

/// The container-side changes of the round trip: one of each kind of change a layer can
/// record. Lower paths are files and directories of the python test image.
const CHANGES: &str = r#"set -e
mkdir -p /new/dir/deep /new/empty-dir
printf 'hello\n' > /new/dir/deep/a.txt
: > /new/empty-file
printf 'spaced\n' > '/new/with space.txt'
head -c 300000 /dev/urandom > /new/rand.bin
echo appended >> /etc/os-release
echo '# appended' >> /usr/lib/python3.11/turtle.py
rm /etc/hostname
rm -rf /srv/data
mkdir /srv/data /srv/data/sub2
echo other > /srv/data/other.txt
mv /usr/share/lintian /usr/share/lintian-moved
chmod 0600 /etc/group
printf x > /new/suid
chmod 4755 /new/suid
chown 1000:1001 /new/dir/deep/a.txt
echo h > /new/h1
ln /new/h1 /new/h2
ln /usr/share/python3/debian_defaults /usr/share/python3/defaults-link
ln -s ../etc/os-release /new/link
mkfifo /new/fifo
mknod /new/null c 1 3
python3 -c 'import os; os.setxattr("/new/dir/deep/a.txt", "user.test", b"v1"); os.setxattr("/var/lib/app/new.db", "user.lower", b"\x00\x01bin")'
"#;

/// The python image converted to eStargz, lazily pulled into `t`'s namespace, running
/// `sleep` on lazysnap; returns (its reference, the container id).
pub fn python_container(t: &Test) -> (String, String) {
    clean_namespace(t);
    let base = image_ref(&converted("python", "estargz"));
    pull_lazily(t, &base);
    let id = run_detached(t, "lazysnap", &base, &["sleep", "1000"]);
    (base, id)
}

#[test]
fn round_trip_through_containerd_overlayfs_and_umoci() {
    let t = Test::new("commit-round-trip");
    let (base, id) = python_container(&t);
    exec_sh(&t, &id, CHANGES);
    let before = container_tree(&t, &id);
    // the changes are there (and the walk sees what the listing compares)
    let e = |p: &str| {
        before
            .entries
            .get(p)
            .unwrap_or_else(|| panic!("container has no {p}"))
            .describe()
    };
    assert_eq!(
        e("/new/dir/deep/a.txt"),
        "f 0644 1000:1001 6 sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03 xattrs{user.test=7631}"
    );
    assert_eq!(e("/new/null"), "c 0644 0:0 0 dev=1,3");
    assert_eq!(e("/new/fifo"), "p 0644 0:0 0");
    assert_eq!(e("/new/link"), "l 0777 0:0 0 -> ../etc/os-release");
    assert_eq!(e("/etc/group").split(' ').nth(1), Some("0600"));
    assert!(e("/var/lib/app/new.db").ends_with("xattrs{user.lower=000162696e}"));
    assert!(!before.entries.contains_key("/etc/hostname"));
    assert!(!before.entries.contains_key("/srv/data/big.txt"));
    assert!(!before.entries.contains_key("/usr/share/lintian"));
    assert!(
        before
            .entries
            .contains_key("/usr/share/lintian-moved/overrides/libc6")
    );
    for g in [
        ["/new/h1", "/new/h2"],
        [
            "/usr/share/python3/debian_defaults",
            "/usr/share/python3/defaults-link",
        ],
    ] {
        let g: Vec<Vec<u8>> = g.iter().map(|p| p.as_bytes().to_vec()).collect();
        assert!(
            before.hardlinks.contains(&g),
            "hardlink groups: {:?}",
            before.hardlinks
        );
    }

    // Commit the running container: paused while its upper is read, running after.
    assert_eq!(task_status(&t, &id), "RUNNING");
    let name = format!("committed/python:{}", tag("rt"));
    let newref = image_ref(&name);
    let events = Events::start(&t);
    let out = lazysnap_ok(&[
        "commit",
        "-n",
        &t.ns,
        &id,
        &newref,
        "-c",
        "ENV COMMITTED=yes",
        "-c",
        "LABEL org.example.stage=round-trip",
        "-m",
        "round trip",
    ]);
    let events = events.finish();
    assert!(
        out.starts_with(&format!("{newref}: sha256:")),
        "commit stdout: {out}"
    );
    let mine: Vec<&str> = events
        .iter()
        .map(String::as_str)
        .filter(|e| e.ends_with(&format!(" {id}")))
        .collect();
    assert_eq!(
        mine,
        [
            format!("/tasks/paused {id}").as_str(),
            format!("/tasks/resumed {id}").as_str()
        ],
        "task events during the commit: {events:?}"
    );
    assert_eq!(task_status(&t, &id), "RUNNING");
    assert_eq!(exec_sh(&t, &id, "cat /srv/data/other.txt"), "other\n");
    check(
        &mut Vec::new(),
        "container after commit",
        &container_tree(&t, &id),
        &before,
    );

    // The image: the parent's layers plus one, the config changes applied.
    let parent = image_info(&converted("python", "estargz"));
    let info = image_info(&name);
    assert_eq!(info.layers.len(), parent.layers.len() + 1);
    for (a, b) in info.layers.iter().zip(&parent.layers) {
        assert_eq!((&a.digest, a.size), (&b.digest, b.size));
    }
    assert_eq!(info.diff_ids[..parent.diff_ids.len()], parent.diff_ids[..]);
    let top = info.layers.last().unwrap();
    assert_eq!(
        top.media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert!(top.toc_digest.is_some(), "no TOC digest on {top:?}");
    let cfg = image_config(&name);
    let envs: Vec<&str> = cfg["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(envs.contains(&"COMMITTED=yes"), "{cfg}");
    assert_eq!(cfg["config"]["Labels"]["org.example.stage"], "round-trip");
    let h = cfg["history"].as_array().unwrap().last().unwrap();
    assert_eq!(h["comment"], "round trip");
    assert_eq!(h["created_by"], format!("lazysnap commit {id}"));

    // Three readers of the pushed image, each against the container's tree.
    let t2 = Test::new("commit-round-trip-readers");
    clean_namespace(&t2);
    let mut failures = Vec::new();
    pull_lazily(&t2, &newref);
    let id2 = run_detached(&t2, "lazysnap", &newref, &["sleep", "1000"]);
    assert_eq!(
        exec_sh(
            &t2,
            &id2,
            "echo $COMMITTED; cat /new/h2 /srv/data/other.txt"
        ),
        "yes\nh\nother\n"
    );
    check_with(
        &mut failures,
        &format!("{name} lazily on lazysnap"),
        &container_tree(&t2, &id2),
        &before,
        LAZY_MTIME_SLACK,
    );
    let overlay = overlay_tree(&t2, &name);
    let umoci = umoci_tree(&name, false);
    check_with(
        &mut failures,
        &format!("{name} on overlayfs"),
        &overlay,
        &before,
        LAZY_MTIME_SLACK,
    );
    check_with(
        &mut failures,
        &format!("{name} by umoci"),
        &umoci,
        &before,
        LAZY_MTIME_SLACK,
    );
    // the two plain unpacks read the same tar bytes: equal to the second
    check(
        &mut failures,
        &format!("{name} by umoci against overlayfs"),
        &umoci,
        &overlay,
    );
    assert_no_failures(&failures);
    drop(t2);
    drop(base);
}

/// The proxy's log entries of `method` on one of `digests` between `from` and `to`.
fn blob_requests<'a>(
    reqs: &'a [common::ProxyRequest],
    method: &str,
    digests: &BTreeSet<String>,
    from: f64,
    to: f64,
) -> Vec<&'a common::ProxyRequest> {
    reqs.iter()
        .filter(|r| r.method == method && r.t >= from && r.t <= to)
        .filter(|r| r.blob().is_some_and(|b| digests.contains(b)))
        .collect()
}

#[test]
fn push_needs_no_lower_layer_and_oci_layout_holds_all() {
    let t = Test::new("commit-no-lower");
    let proxy = FaultProxy::start("log", &[]);
    let base_name = converted("python", "estargz");
    let base = proxy.reference(&base_name);
    let lower: BTreeSet<String> = image_info(&base_name)
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .collect();
    clean_namespace(&t);
    pull_lazily(&t, &base);
    let id = run_detached(&t, "lazysnap", &base, &["sleep", "1000"]);
    exec_sh(
        &t,
        &id,
        "mkdir /job && echo result > /job/out.txt && rm /app/main.py && echo more >> /etc/passwd",
    );
    let before = container_tree(&t, &id);

    // a new repository: lower layers are mounted into it (POST ?mount=), not found by HEAD
    let name = format!("committed/{}:v1", tag("nolower"));
    let from = unix_now();
    let out = lazysnap(&["commit", "-n", &t.ns, &id, &proxy.reference(&name)]);
    let to = unix_now();
    assert!(
        out.status.success(),
        "commit through the proxy failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reqs = proxy.requests();
    let gets = blob_requests(&reqs, "GET", &lower, from, to);
    assert!(
        gets.is_empty(),
        "the commit downloaded lower layers: {gets:#?}"
    );
    // the lower layers were looked at (HEAD) or mounted (POST ?mount=), each of them
    for d in &lower {
        let seen = reqs.iter().any(|r| {
            r.t >= from
                && r.t <= to
                && ((r.method == "HEAD" && r.blob() == Some(d.as_str()))
                    || (r.method == "POST" && r.path.contains(&format!("mount={d}"))))
        });
        assert!(
            seen,
            "no HEAD or mount of lower layer {d} through the proxy: {reqs:#?}"
        );
    }
    // never a whole lower blob, not even for the lazy pull and the container's reads
    let whole: Vec<_> = blob_requests(&reqs, "GET", &lower, 0.0, f64::MAX)
        .into_iter()
        .filter(|r| r.range.is_none())
        .collect();
    assert!(
        whole.is_empty(),
        "whole lower blobs were fetched: {whole:#?}"
    );
    assert_eq!(manifest_status(&name), 200);
    assert_eq!(image_info(&name).layers.len(), lower.len() + 1);

    // An OCI layout destination holds every blob: lower layers are downloaded.
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    let dst = format!("oci:{}:t", layout.display());
    lazysnap_ok(&["commit", "-n", &t.ns, &id, &dst]);
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap())
        .expect("index.json");
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "t"
    );
    let bundle = dir.path().join("bundle");
    run_ok(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:t", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let mut failures = Vec::new();
    check_with(
        &mut failures,
        &format!("{dst} by umoci"),
        &tree::walk(&bundle.join("rootfs")),
        &before,
        LAZY_MTIME_SLACK,
    );
    assert_no_failures(&failures);
}

#[test]
fn import_runs_without_a_pull() {
    let t = Test::new("commit-import");
    let (_, id) = python_container(&t);
    exec_sh(
        &t,
        &id,
        "echo imported > /imported.txt && rm /etc/os-release && mkdir -p /app/data && echo 1 > /app/data/n",
    );
    let name = format!("committed/import:{}", tag("v1"));
    let newref = image_ref(&name);
    let out = lazysnap(&[
        "commit",
        "-n",
        &t.ns,
        "--import",
        "-c",
        "WORKDIR /app/data",
        &id,
        &newref,
    ]);
    assert!(
        out.status.success(),
        "commit --import failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("imported into containerd as {newref}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.remove_container(&id);
    let images = t.ctr_ok(&["images", "ls", "-q"]);
    assert!(
        images.lines().any(|l| l == newref),
        "{newref} not in ctr images ls:\n{images}"
    );
    // no pull: run it right away, lower layers still lazy
    let out = t.run_output_with(
        "lazysnap",
        &newref,
        &[
            "sh",
            "-c",
            "pwd; cat /imported.txt n; test -e /etc/os-release || echo os-release gone; python3 -c 'print(6 * 7)'",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/app/data\nimported\n1\nos-release gone\n42\n",
        "stderr: {}\n--- lazysnap log (tail) ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        common::lazysnap_log_tail(30)
    );
    // the top snapshot is the image's chain ID, and the image was pushed as well
    let info = image_info(&name);
    let snaps = t.snapshot_infos_with("lazysnap");
    assert!(
        snaps
            .iter()
            .any(|s| &s.name == info.chain_ids.last().unwrap() && s.kind == "Committed"),
        "no committed snapshot {} on lazysnap: {snaps:#?}",
        info.chain_ids.last().unwrap()
    );
}

#[path = "e2e_commit/bad_input.rs"]
mod bad_input;
#[path = "e2e_commit/cases.rs"]
mod cases;
/// The htpasswd registry of `registry_login.rs` (only part of it is used here).
#[allow(dead_code)]
#[path = "registry_login/harness.rs"]
mod login_harness;
#[path = "e2e_commit/support.rs"]
mod support;
