//! End to end: `lazysnap pull`, containerd's client pull with unpack done from Rust over
//! containerd's gRPC API (what `ctr-remote images rpull` does through the Go client).
//!
//! - the eStargz image is pulled lazily: every layer is answered by the snapshotter's
//!   remote-snapshot handshake, none is in containerd's content store, and a container runs;
//! - the plain gzip image is fetched whole by lazysnap and applied by containerd's Diff service;
//! - an index is followed to this host's platform;
//! - pulling twice changes nothing; a failing pull says what failed and leaves no lease.
//!
//! Each test has its own namespace and removes the image and snapshots it made.

mod common;

use std::process::{Command, Output, Stdio};

use common::{
    CTR_TIMEOUT_SECS, Test, env, image_info, image_ref, is_lazysnap, lazysnap_log_tail,
    push_estargz_images, push_images, snapshotter,
};

const MAIN_PY_OUT: &str = "{\"ok\": [3, 11], \"os_release\": \"ID=lazysnap-test\"}\n";
const REMOTE_LABEL: &str = "containerd.io/snapshot/remote";

/// The lazysnap binary under test (the environment's, else target/release).
fn lazysnap_bin() -> String {
    env()
        .vars
        .get("LAZYSNAP_BIN")
        .cloned()
        .unwrap_or_else(|| common::release_bin().display().to_string())
}

/// `lazysnap pull -a <containerd> -n <ns> --snapshotter SNAP --plain-http REFERENCE`.
fn pull_output_with(t: &Test, snap: &str, reference: &str) -> Output {
    Command::new("timeout")
        .args([
            "--kill-after=10",
            &CTR_TIMEOUT_SECS.to_string(),
            &lazysnap_bin(),
            "pull",
            "-a",
        ])
        .arg(&env().containerd_address)
        .args([
            "-n",
            &t.ns,
            "--snapshotter",
            snap,
            "--plain-http",
            reference,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run lazysnap pull")
}

/// [`pull_output_with`] the snapshotter under test.
fn pull_output(t: &Test, reference: &str) -> Output {
    pull_output_with(t, &snapshotter(), reference)
}

/// Like [`pull_output`], but panics (with the daemon's log tail) unless it succeeds;
/// returns stdout.
fn pull(t: &Test, reference: &str) -> String {
    pull_with(t, &snapshotter(), reference)
}

/// Like [`pull_output_with`], but panics (with the daemon's log tail) unless it succeeds;
/// returns stdout.
fn pull_with(t: &Test, snap: &str, reference: &str) -> String {
    let out = pull_output_with(t, snap, reference);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "lazysnap pull {reference} failed ({}):\nstdout: {stdout}\nstderr: {}\n--- lazysnap log (tail) ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            lazysnap_log_tail(60)
        );
    }
    stdout
}

/// The per-layer outcome words of `lazysnap pull`'s output ("lazy", "fetched", "present").
fn outcomes(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.starts_with("layer "))
        .map(|l| {
            l.split_once("… ")
                .map(|(_, w)| w.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default()
        })
        .collect()
}

fn python_runs(t: &Test, snap: &str, reference: &str) {
    let out = t.run_output_with(snap, reference, &["python3", "/app/main.py"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        MAIN_PY_OUT,
        "ctr run {reference}: stderr: {}\n--- lazysnap log (tail) ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        lazysnap_log_tail(40)
    );
}

fn image_listed(t: &Test, reference: &str) -> bool {
    t.ctr_ok(&["images", "ls", "-q"])
        .lines()
        .any(|l| l.trim() == reference)
}

fn content_digests(t: &Test) -> Vec<String> {
    t.ctr_ok(&["content", "ls", "-q"])
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

fn assert_no_leases(t: &Test) {
    let leases = t.ctr_ok(&["leases", "ls", "-q"]);
    assert!(
        leases.trim().is_empty(),
        "leases left behind by lazysnap pull: {leases}"
    );
}

/// Every chain ID of the image is a committed snapshot of the namespace on SNAP; returns
/// their infos.
fn assert_chain_committed(t: &Test, snap: &str, name: &str) -> Vec<common::SnapshotInfo> {
    let info = image_info(name);
    let snaps = t.snapshot_infos_with(snap);
    for (i, chain) in info.chain_ids.iter().enumerate() {
        let s = snaps
            .iter()
            .find(|s| &s.name == chain)
            .unwrap_or_else(|| panic!("no snapshot {chain} (layer {i}) in {snaps:#?}"));
        assert_eq!(s.kind, "Committed", "{s:?}");
        let parent = if i == 0 { "" } else { &info.chain_ids[i - 1] };
        assert_eq!(s.parent, parent, "parent of layer {i}'s snapshot");
    }
    snaps
        .into_iter()
        .filter(|s| info.chain_ids.contains(&s.name))
        .collect()
}

#[test]
fn esgz_image_is_pulled_lazily_and_runs() {
    let t = Test::new("e2e-pull-esgz");
    push_estargz_images();
    let name = "test/python:esgz";
    let r = image_ref(name);
    let snap = snapshotter();
    t.remove_image_and_snapshots(&snap, &r);

    let out = pull(&t, &r);
    let info = image_info(name);
    let words = outcomes(&out);
    assert_eq!(words.len(), info.layers.len(), "one line per layer:\n{out}");
    if is_lazysnap() {
        assert!(words.iter().all(|w| w == "lazy"), "{out}");
    }
    assert!(out.contains(" done in "), "{out}");
    assert!(image_listed(&t, &r), "ctr images ls lacks {r}");
    assert_no_leases(&t);

    let snaps = assert_chain_committed(&t, &snap, name);
    if is_lazysnap() {
        for s in &snaps {
            assert!(s.labels.contains_key(REMOTE_LABEL), "not remote: {s:?}");
        }
        // Nothing was downloaded by containerd: no layer blob is in its content store,
        // only the manifest and the config.
        let content = content_digests(&t);
        for l in &info.layers {
            assert!(
                !content.contains(&l.digest),
                "layer {} is in the content store",
                l.digest
            );
        }
        assert!(
            content.contains(&info.config),
            "config missing: {content:?}"
        );
    }
    python_runs(&t, &snap, &r);

    // Idempotent: a second pull finds every layer and changes nothing.
    let again = pull(&t, &r);
    assert!(outcomes(&again).iter().all(|w| w == "present"), "{again}");
    assert_eq!(assert_chain_committed(&t, &snap, name).len(), snaps.len());
    assert!(image_listed(&t, &r));
    python_runs(&t, &snap, &r);
    assert_no_leases(&t);

    t.remove_image_and_snapshots(&snap, &r);
}

#[test]
fn gzip_image_through_lazysnap_runs() {
    let t = Test::new("e2e-pull-gzip");
    push_images();
    let name = "test/python:latest";
    let r = image_ref(name);
    let snap = snapshotter();
    t.remove_image_and_snapshots(&snap, &r);

    // Plain gzip layers cannot be read lazily: lazysnap's daemon fetches them whole itself
    // ("unpacked"), or, where it hands them back, `lazysnap pull` fetches them and containerd's
    // Diff service applies them ("fetched").
    let out = pull(&t, &r);
    let info = image_info(name);
    let words = outcomes(&out);
    assert_eq!(words.len(), info.layers.len(), "{out}");
    assert!(
        words.iter().all(|w| w == "fetched" || w == "unpacked"),
        "{out}"
    );
    assert!(image_listed(&t, &r));
    let snaps = assert_chain_committed(&t, &snap, name);
    if is_lazysnap() {
        for s in &snaps {
            assert!(!s.labels.contains_key(REMOTE_LABEL), "remote: {s:?}");
        }
    }
    python_runs(&t, &snap, &r);

    let again = pull(&t, &r);
    assert!(outcomes(&again).iter().all(|w| w == "present"), "{again}");
    python_runs(&t, &snap, &r);
    assert_no_leases(&t);

    t.remove_image_and_snapshots(&snap, &r);
}

/// The non-lazy path of `lazysnap pull` itself, on a snapshotter that never answers
/// AlreadyExists (containerd's overlayfs): every layer is fetched by lazysnap's registry
/// client, written into containerd's content store, applied by the Diff service and
/// committed under its chain ID.
#[test]
fn gzip_image_is_fetched_and_applied_through_the_diff_service() {
    let t = Test::new("e2e-pull-diff");
    push_images();
    let name = "test/python:latest";
    let r = image_ref(name);
    let snap = "overlayfs".to_string();
    t.remove_image_and_snapshots(&snap, &r);

    let out = pull_with(&t, &snap, &r);
    let info = image_info(name);
    let words = outcomes(&out);
    assert_eq!(words.len(), info.layers.len(), "{out}");
    assert!(words.iter().all(|w| w == "fetched"), "{out}");
    assert!(image_listed(&t, &r));
    assert_chain_committed(&t, &snap, name);
    // The layers went through containerd's content store, labelled with their diff IDs.
    let content = content_digests(&t);
    for l in &info.layers {
        assert!(
            content.contains(&l.digest),
            "layer {} not in the content store",
            l.digest
        );
    }
    python_runs(&t, &snap, &r);

    let again = pull_with(&t, &snap, &r);
    assert!(outcomes(&again).iter().all(|w| w == "present"), "{again}");
    assert_no_leases(&t);

    t.remove_image_and_snapshots(&snap, &r);
}

#[test]
fn index_is_followed_to_the_host_platform() {
    let t = Test::new("e2e-pull-index");
    push_images();
    // An OCI index of linux/arm64, linux/amd64 and an attestation-like artifact.
    let r = image_ref("cases/b20both:t");
    let snap = snapshotter();
    t.remove_image_and_snapshots(&snap, &r);

    let out = pull(&t, &r);
    assert_eq!(outcomes(&out).len(), 1, "{out}");
    assert!(image_listed(&t, &r));
    // The image record targets the index itself, as containerd's pull does.
    let ls = t.ctr_ok(&["images", "ls"]);
    let line = ls.lines().find(|l| l.starts_with(&r)).unwrap_or_default();
    assert!(
        line.contains("application/vnd.oci.image.index.v1+json"),
        "{ls}"
    );
    let run = t.run_output_with(&snap, &r, &["sh", "-c", "echo hello"]);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "hello\n",
        "stderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_no_leases(&t);

    t.remove_image_and_snapshots(&snap, &r);
}

#[test]
fn failed_pull_names_what_failed_and_leaves_no_lease() {
    let t = Test::new("e2e-pull-missing");
    push_images();
    let r = image_ref("test/python:no-such-tag");
    let out = pull_output(&t, &r);
    assert!(!out.status.success(), "pull of a missing tag succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-tag") && err.contains("manifest"),
        "error does not name the manifest: {err}"
    );
    assert!(!image_listed(&t, &r));
    assert_no_leases(&t);
}
