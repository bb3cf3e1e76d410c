//! End to end: `lazysnap convert` and `lazysnap inspect` (issue 4), checked with tools
//! nobody here wrote.
//!
//! - Round trip: test images (busybox, python, field cases, `cases/kinds`) converted from
//!   the registry (the originals pushed from the test OCI layout) to every format with
//!   64 KiB chunks, pushed, then unpacked by
//!   containerd's overlayfs snapshotter (mounted on the host) and by skopeo + umoci; each
//!   tree (tests/common/tree.rs: names, types, modes, owners, mtimes, xattrs, link
//!   targets, device numbers, hardlink groups, sha256) must equal the same unpack of the
//!   original, apart from `stargz.index.json` and the landmark files eStargz adds. Also
//!   layout to layout (`oci:DIR:REF` on both sides), unpacked by umoci.
//! - Lazy: `lazysnap pull` of the conversions, a container run, and the tree of a lazysnap
//!   view against the overlayfs unpack of the original.
//! - Third-party readers: podman 4.3 pulls our zstd:chunked through its partial path
//!   (tests/helpers/podman-partial.sh) to the same tree; `ctr-remote images rpull` runs our
//!   eStargz.
//! - `--optimize`: a cold lazy start of the optimized python needs fewer layer bytes and
//!   fewer requests before its first output than the plain conversion.
//! - Bad input fails naming the reference (and layer), and never creates the tag.
//!
//! Conversions and unpacked trees are shared between tests (tests/common/convert.rs).

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::convert::{
    CHUNK_SIZE, FORMATS, converted, inspect_json, inspect_layers, lazy_pull, lazysnap_ok,
    original_name, overlay_tree, run_ok, sha256_digest, test_layout, umoci_tree,
};
use common::tree::{self, Compare, Tree};
use common::{Test, env, image_info, image_ref, repo};

/// When the environment was set up (Unix seconds; `containerd.toml` is written once by
/// env-up.sh, before containerd starts, while `env` is rewritten on daemon restarts):
/// directory mtimes after it were set by an unpack in it (directories created for entries
/// that have no parent entry), not by the image.
fn env_started() -> i64 {
    static T: OnceLock<i64> = OnceLock::new();
    *T.get_or_init(|| {
        let m = std::fs::metadata(env().dir.join("containerd.toml")).expect("containerd.toml");
        m.modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 1
    })
}

/// Compares and records the differences of `got` from `want` in `failures`.
fn check(failures: &mut Vec<String>, what: &str, got: &Tree, want: &Tree, c: &Compare) {
    let d = tree::differences(got, want, c);
    eprintln!(
        "{what}: {} entries, {} hardlink groups, {} differences",
        got.entries.len(),
        got.hardlinks.len(),
        d.len()
    );
    if !d.is_empty() {
        let shown: Vec<&str> = d.iter().take(30).map(String::as_str).collect();
        failures.push(format!(
            "{what}: {} differences:\n  {}",
            d.len(),
            shown.join("\n  ")
        ));
    }
}

fn assert_no_failures(failures: &[String]) {
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Plain unpacks of a conversion against the same unpack of the original.
fn plain_unpack() -> Compare<'static> {
    Compare {
        unpacked_after: env_started(),
        ..Compare::default()
    }
}

/// Each image of `tags` converted to each format equals the original, unpacked by the
/// overlayfs snapshotter and by umoci.
fn round_trip(ns: &str, tags: &[&str]) {
    let t = Test::new(ns);
    let mut failures = Vec::new();
    for tag in tags {
        let orig = original_name(tag);
        let want_overlay = overlay_tree(&t, &orig);
        let want_umoci = umoci_tree(&orig, false);
        assert!(want_overlay.entries.len() > 5, "{orig}: {want_overlay:?}");
        for f in FORMATS {
            let conv = converted(tag, f);
            let got = overlay_tree(&t, &conv);
            // what a plain unpack shows of the format: eStargz's landmark entry, the gzip
            // variant's TOC entry (the zstd variant keeps its TOC in a skippable frame)
            let extras = ["/stargz.index.json", "/.no.prefetch.landmark"]
                .map(|p| got.entries.contains_key(p));
            let want_extras = match f {
                "estargz" => [true, true],
                "estargz-zstd" => [false, true],
                _ => [false, false],
            };
            assert_eq!(
                extras, want_extras,
                "{conv}: TOC and landmark entries of a plain unpack"
            );
            check(
                &mut failures,
                &format!("{conv} on overlayfs"),
                &got,
                &want_overlay,
                &plain_unpack(),
            );
            let got = umoci_tree(&conv, f != "estargz");
            check(
                &mut failures,
                &format!("{conv} by umoci"),
                &got,
                &want_umoci,
                &plain_unpack(),
            );
        }
    }
    assert_no_failures(&failures);
}

#[test]
fn round_trip_busybox() {
    round_trip("convert-rt-busybox", &["busybox"]);
}

/// OCI layouts on both sides: the test layout's busybox converted into a new layout
/// (`oci:DIR:REF`), which umoci unpacks directly, equal to umoci's unpack of the source.
#[test]
fn layout_to_layout_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let src = format!("oci:{}:busybox", test_layout().display());
    let out = dir.path().join("out");
    lazysnap_ok(&[
        "convert",
        "--chunk-size",
        CHUNK_SIZE,
        &src,
        &format!("oci:{}:converted", out.display()),
    ]);
    let layers = inspect_layers(&inspect_json(&format!("oci:{}:converted", out.display())));
    assert_eq!(layers.len(), 1, "{layers:?}");
    assert_eq!(layers[0]["format"], "estargz", "{layers:?}");
    assert_eq!(layers[0]["landmark"], "none", "{layers:?}");
    // the source copied by skopeo: umoci does not run on the shared test layout
    let orig = dir.path().join("orig");
    run_ok(
        "skopeo",
        &["copy", "-q", &src, &format!("oci:{}:t", orig.display())],
    );
    let unpack = |layout: &std::path::Path, tag: &str, bundle: &str| {
        let b = dir.path().join(bundle);
        let image = format!("{}:{tag}", layout.display());
        run_ok("umoci", &["unpack", "--image", &image, b.to_str().unwrap()]);
        tree::walk(&b.join("rootfs"))
    };
    let want = unpack(&orig, "t", "orig-bundle");
    let got = unpack(&out, "converted", "out-bundle");
    let mut failures = Vec::new();
    check(
        &mut failures,
        "layout → layout by umoci",
        &got,
        &want,
        &plain_unpack(),
    );
    assert_no_failures(&failures);
    assert!(want.entries.len() > 100 && got.entries.contains_key("/stargz.index.json"));
}

#[test]
fn round_trip_python() {
    round_trip("convert-rt-python", &["python"]);
}

/// Whiteouts (B01; both whiteout orders of B05 fail in containerd's own applier),
/// hardlinks (B06: a 1 MiB file of 16 chunks, B08), special bits and a binary
/// `security.capability` (B10).
#[test]
fn round_trip_whiteouts_hardlinks_xattrs() {
    round_trip(
        "convert-rt-cases-a",
        &["cases-b01", "cases-b06", "cases-b08", "cases-b10"],
    );
}

/// Symlinks with a 300-byte target (B12), duplicate entries (B21), empty layers (B26: an
/// empty tar, B26z: a zero-byte stream), missing parent directories (B27).
#[test]
fn round_trip_symlinks_duplicates_empty_layers() {
    round_trip(
        "convert-rt-cases-b",
        &[
            "cases-b12",
            "cases-b21",
            "cases-b26",
            "cases-b26z",
            "cases-b27",
        ],
    );
}

/// `cases/kinds`: devices, a fifo, binary xattrs, long and non-UTF-8 names, empty files, a
/// file of 20 chunks, hardlink groups, whiteout, opaque dir, missing parents.
#[test]
fn round_trip_kinds() {
    let t = Test::new("convert-rt-kinds-probe");
    let orig = overlay_tree(&t, &original_name("cases-kinds"));
    drop(t);
    // the image has what it claims
    let e = |p: &str| {
        orig.entries
            .get(p)
            .unwrap_or_else(|| panic!("cases/kinds has no {p}"))
            .describe()
    };
    assert_eq!(e("/kinds/dev/chr"), "c 0666 0:0 0 dev=1,3");
    assert_eq!(e("/kinds/dev/blk"), "b 0660 0:6 0 dev=7,0");
    assert_eq!(e("/kinds/dev/fifo"), "p 0600 0:0 0");
    assert!(
        e("/kinds/xattrs").contains("user.bin=00017f80feff"),
        "{}",
        e("/kinds/xattrs")
    );
    assert!(
        e("/kinds/big").starts_with("f 0640 1000:1000 1310720 "),
        "{}",
        e("/kinds/big")
    );
    assert_eq!(
        e("/kinds/private"),
        format!("f 0600 1000:1000 2 sha256:{}", sha_hex(b"p\n"))
    );
    assert_eq!(
        e("/kinds/caf\\xe9-\\xff\\xfe/file-caf\\xe9-\\xff\\xfe"),
        format!("f 0644 0:0 6 sha256:{}", sha_hex(b"latin\n"))
    );
    assert!(
        !orig.entries.contains_key("/kinds/gone") && !orig.entries.contains_key("/kinds/opq/old")
    );
    assert_eq!(
        e("/kinds/opq/new"),
        format!("f 0644 0:0 4 sha256:{}", sha_hex(b"new\n"))
    );
    let long = format!(
        "/kinds/{}/{}/{}",
        "L".repeat(150),
        "M".repeat(150),
        "n".repeat(255)
    );
    assert!(e(&long).starts_with("f 0644 0:0 5 "), "{}", e(&long));
    let groups: Vec<Vec<String>> = orig
        .hardlinks
        .iter()
        .map(|g| g.iter().map(|p| tree::escape(p)).collect())
        .collect();
    for want in [
        vec!["/kinds/big".to_string(), "/kinds/big-link".to_string()],
        vec!["/kinds/hl/b".to_string(), "/kinds/hl/c".to_string()],
    ] {
        assert!(
            groups.contains(&want),
            "hardlink groups of cases/kinds: {groups:?}"
        );
    }
    round_trip("convert-rt-kinds", &["cases-kinds"]);
    // kinds/big (1.25 MiB) spans at least 20 chunks of 64 KiB in every format
    for f in FORMATS {
        let name = converted("cases-kinds", f);
        let layers = inspect_layers(&inspect_json(&image_ref(&name)));
        let chunks = layers[1]["chunks"].as_u64().expect("chunks");
        assert!(
            chunks >= 20,
            "{name}: layer 2 has {chunks} chunks: {}",
            layers[1]
        );
    }
}

fn sha_hex(b: &[u8]) -> String {
    sha256_digest(b).trim_start_matches("sha256:").to_string()
}

/// `lazysnap pull` of each conversion of `tag`, then the tree of a lazysnap view against
/// the overlayfs unpack of the original; `run` checks a container first.
fn lazy_round_trip(ns: &str, tag: &str, run: Option<(&[&str], &str)>) {
    let t = Test::new(ns);
    let want = overlay_tree(&t, &original_name(tag));
    let mut failures = Vec::new();
    for f in FORMATS {
        let name = converted(tag, f);
        let r = image_ref(&name);
        t.remove_image_and_snapshots("lazysnap", &r);
        let (chain, _) = lazy_pull(&t, &r);
        if let Some((cmd, want_out)) = run {
            let out = t.run_output_with("lazysnap", &r, cmd);
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout) == want_out,
                "{name}: {cmd:?} exited {}: stdout {:?}, stderr {}\n--- lazysnap log (tail) ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                common::lazysnap_log_tail(30)
            );
        }
        let got = t.snapshot_tree("lazysnap", &chain);
        // eStargz TOCs hold mtimes rounded to the second; JSON TOCs hold no other bytes
        // than UTF-8 (FORMATS.md, writer docs): non-UTF-8 names read as U+FFFD there.
        let c = Compare {
            mtime_slack: 1,
            lossy_names: true,
            ..plain_unpack()
        };
        check(
            &mut failures,
            &format!("{name} lazily on lazysnap"),
            &got,
            &want,
            &c,
        );
    }
    assert_no_failures(&failures);
}

#[test]
fn lazy_python_runs_and_matches_original() {
    let cmd: &[&str] = &[
        "python3",
        "-c",
        "import json, sys; print(json.dumps({'lazy': sys.version_info[:2]}))",
    ];
    lazy_round_trip(
        "convert-lazy-python",
        "python",
        Some((cmd, "{\"lazy\": [3, 11]}\n")),
    );
}

#[test]
fn lazy_kinds_matches_original() {
    let cmd: &[&str] = &["sh", "-c", "cat /kinds/hl/b /kinds/opq/new"];
    lazy_round_trip(
        "convert-lazy-kinds",
        "cases-kinds",
        Some((cmd, "shared\nnew\n")),
    );
}

/// `tests/helpers/podman-partial.sh` of registry image `name` (exit 0: every layer came
/// through podman's partial path); returns its listing.
fn podman_partial_listing(name: &str) -> BTreeSet<String> {
    let out = Command::new(repo().join("tests/helpers/podman-partial.sh"))
        .args([&env().registry, name])
        .env("LIST_SHA", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run tests/helpers/podman-partial.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let evidence: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("evidence:"))
        .collect();
    assert!(
        out.status.success(),
        "podman-partial.sh {name} exited {}:\n{}\n{}",
        out.status,
        evidence.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = tree::parse_podman_listing(&out.stdout);
    eprintln!("podman partial pull of {name}: {} entries", got.len());
    got
}

/// Lines of `got` and `want` that differ, for a failure message.
fn set_differences(got: &BTreeSet<String>, want: &BTreeSet<String>) -> Vec<String> {
    let mut d: Vec<String> = got
        .difference(want)
        .map(|l| format!("got only: {l}"))
        .collect();
    d.extend(want.difference(got).map(|l| format!("want only: {l}")));
    d
}

/// podman 4.3 (containers/storage 1.43) pulls our zstd:chunked layers through its
/// partial path (tests/helpers/podman-partial.sh) and gets the tree of the original (its
/// listing: type, mode, owner, size, link target, device, sha256): python exactly.
/// For `cases/kinds` podman 4.3's partial path itself drops what the image has beyond
/// python (owners other than root, devices, fifos): there our output must give what
/// skopeo's own zstd:chunked of the same image gives, and the original up to those.
#[test]
fn podman_pulls_zstd_chunked_partially() {
    let t = Test::new("convert-podman");
    let mut failures = Vec::new();
    let mut compare = |what: String, got: &BTreeSet<String>, want: &BTreeSet<String>| {
        let d = set_differences(got, want);
        eprintln!("{what}: {} lines, {} differ", got.len(), d.len());
        if !d.is_empty() {
            let shown = d[..d.len().min(30)].join("\n  ");
            failures.push(format!("{what}: {} differences:\n  {shown}", d.len()));
        }
    };
    let python = podman_partial_listing(&converted("python", "zstd-chunked"));
    let want = tree::podman_lines(&overlay_tree(&t, &original_name("python")));
    compare("podman: python vs original".into(), &python, &want);

    let ours = podman_partial_listing(&converted("cases-kinds", "zstd-chunked"));
    // Go's JSON encoder writes a non-UTF-8 byte as the escape `\ufffd`, which podman 4.3
    // takes literally (a name with a backslash); our TOC holds U+FFFD itself
    let reference: BTreeSet<String> = podman_partial_listing(&skopeo_zstd_chunked("cases-kinds"))
        .into_iter()
        .map(|l| l.replace("\\\\ufffd", "\u{fffd}"))
        .collect();
    compare(
        "podman: kinds vs skopeo's zstd:chunked".into(),
        &ours,
        &reference,
    );
    // the TOC holds names as UTF-8 (podman writes U+FFFD for other bytes); podman 4.3
    // makes every file root's and creates no devices or fifos
    let mut orig = (*overlay_tree(&t, &original_name("cases-kinds"))).clone();
    orig.entries
        .retain(|_, n| !matches!(n.kind, 'c' | 'b' | 'p'));
    let mut podman_view = tree::Tree::default();
    for n in orig.entries.values() {
        let mut n = n.clone();
        n.path = tree::lossy(&n.path);
        n.link = n.link.as_deref().map(tree::lossy);
        (n.uid, n.gid) = (0, 0);
        podman_view.entries.insert(tree::escape(&n.path), n);
    }
    compare(
        "podman: kinds vs original (podman 4.3 limits)".into(),
        &ours,
        &tree::podman_lines(&podman_view),
    );
    assert_no_failures(&failures);
}

/// Original image `tag` compressed as zstd:chunked by skopeo (containers/image, through a
/// local OCI layout, as `scripts/images.sh push-zstd` does) and pushed as
/// `conv/<tag>:skopeo-zstd-chunked`; returns that name.
fn skopeo_zstd_chunked(tag: &str) -> String {
    let name = format!("conv/{tag}:skopeo-zstd-chunked");
    let dir = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:t", dir.path().join("oci").display());
    let src = format!("docker://{}", image_ref(&original_name(tag)));
    run_ok(
        "skopeo",
        &[
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--format",
            "oci",
            "--dest-compress-format",
            "zstd:chunked",
            &src,
            &layout,
        ],
    );
    let dst = format!("docker://{}", image_ref(&name));
    run_ok(
        "skopeo",
        &["copy", "-q", "--dest-tls-verify=false", &layout, &dst],
    );
    name
}

/// `ctr-remote images rpull` (containerd's remote-snapshot path) of our eStargz output
/// mounts every layer remotely on lazysnap, and containers run.
#[test]
fn ctr_remote_rpull_runs_our_estargz() {
    let t = Test::new("convert-ctr-remote");
    for (tag, cmd, want) in [
        (
            "python",
            vec!["python3", "-c", "print('rpull ok')"],
            "rpull ok\n",
        ),
        (
            "cases-kinds",
            vec!["cat", "/kinds/becomes-dir/inner"],
            "inner\n",
        ),
    ] {
        let name = converted(tag, "estargz");
        let r = image_ref(&name);
        t.remove_image_and_snapshots("lazysnap", &r);
        t.rpull_ref(&r);
        let info = image_info(&name);
        let infos = t.snapshot_infos_with("lazysnap");
        for chain in &info.chain_ids {
            let s = infos
                .iter()
                .find(|i| &i.name == chain)
                .unwrap_or_else(|| panic!("{name}: no snapshot {chain}: {infos:#?}"));
            assert_eq!(
                s.labels
                    .get("containerd.io/snapshot/remote")
                    .map(String::as_str),
                Some("remote snapshot"),
                "{name}: layer {chain} was not mounted remotely: {s:#?}"
            );
        }
        let out = t.run_output_with("lazysnap", &r, &cmd);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            want,
            "{name}: {cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[path = "e2e_convert/bad_input.rs"]
mod bad_input;
#[path = "e2e_convert/optimize.rs"]
mod optimize;
