//! Bad input: every failure names the reference (and the layer), and no destination tag
//! appears; names that leave the root are refused (`..`) or made relative (absolute).

use std::path::Path;

use crate::common::convert::{
    ScratchLayout, gzip, inspect_json, inspect_layers, lazysnap_in, lazysnap_ok, manifest_status,
    python_tar, run_ok, sha256_digest,
};
use crate::common::tree;
use crate::common::{image_ref, push_images};

/// Converts `src` to `bad/<dst>:t` in `work` (cwd and `--tmp` there); asserts it fails,
/// its error names every string of `must_name`, and the tag does not exist. Returns stderr.
fn assert_fails(work: &Path, src: &str, dst: &str, must_name: &[&str]) -> String {
    let name = format!("bad/{dst}:t");
    let spool = work.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let out = lazysnap_in(
        Some(work),
        &[
            "convert",
            "--tmp",
            spool.to_str().unwrap(),
            src,
            &image_ref(&name),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("convert {src} → {name}: {}\n{stderr}", out.status);
    assert!(
        !out.status.success(),
        "converting {src} succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for s in must_name {
        assert!(
            stderr.contains(s),
            "the error does not name {s:?}:\n{stderr}"
        );
    }
    assert_eq!(
        manifest_status(&name),
        404,
        "{name} exists after a failed conversion"
    );
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "temporary blobs left in --tmp {}",
        spool.display()
    );
    stderr
}

#[test]
fn unreachable_source_registry() {
    let w = tempfile::tempdir().unwrap();
    let src = "127.0.0.1:1/test/busybox:latest";
    assert_fails(w.path(), src, "unreachable", &[src, "127.0.0.1:1"]);
}

#[test]
fn missing_source_tag() {
    push_images();
    let w = tempfile::tempdir().unwrap();
    let src = image_ref("test/busybox:no-such-tag");
    let err = assert_fails(w.path(), &src, "missing-tag", &[&src]);
    assert!(
        err.to_lowercase().contains("not found") || err.contains("MANIFEST_UNKNOWN"),
        "{err}"
    );
}

#[test]
fn layer_bytes_do_not_match_digest() {
    let w = tempfile::tempdir().unwrap();
    let mut l = ScratchLayout::new("cases-b26");
    let d = l.manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = l.blob(&d);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    l.overwrite_blob(&d, &bytes);
    l.commit();
    let loc = l.location();
    assert_fails(w.path(), &loc, "corrupt", &[&loc, &d]);
}

#[test]
fn unknown_layer_media_type() {
    let w = tempfile::tempdir().unwrap();
    let mut l = ScratchLayout::new("cases-b26");
    let mt = "application/vnd.example.layer.v1.tar+lz4";
    l.manifest["layers"][1]["mediaType"] = mt.into();
    let d = l.manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    l.commit();
    let loc = l.location();
    assert_fails(w.path(), &loc, "media-type", &[&loc, &d, mt]);
}

#[test]
fn layer_that_is_not_a_tar() {
    let w = tempfile::tempdir().unwrap();
    let mut l = ScratchLayout::new("cases-b26");
    // bytes that are no tar header (a zero block would read as the end of an archive)
    let junk: Vec<u8> = (0u32..65536)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1)
        .collect();
    let (d, size) = l.put_blob(&gzip(&junk));
    l.manifest["layers"][2]["digest"] = d.clone().into();
    l.manifest["layers"][2]["size"] = size.into();
    l.config["rootfs"]["diff_ids"][2] = sha256_digest(&junk).into();
    l.commit();
    let loc = l.location();
    assert_fails(w.path(), &loc, "not-a-tar", &[&loc, &d]);
}

/// A layer with `../<unique>`: refused in every format, the error names the entry; no
/// file of that name appears outside (cwd, --tmp, their parent, /, /tmp).
#[test]
fn dotdot_entry_is_refused() {
    let escape = format!("lazysnap-escape-{}", std::process::id());
    let w = tempfile::tempdir().unwrap();
    let work = w.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut l = ScratchLayout::new("busybox");
    let entry = format!("../{escape}");
    let tar = python_tar(&format!(
        "[('ok', 'f', 'fine'), ('{entry}', 'f', 'escaped'), ('after', 'f', 'x')]"
    ));
    let d = l.push_layer(&tar);
    l.commit();
    let loc = l.location();
    for f in ["estargz", "estargz-zstd", "zstd-chunked"] {
        let name = format!("bad/dotdot-{f}:t");
        let spool = work.join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        let out = lazysnap_in(
            Some(&work),
            &[
                "convert",
                "--format",
                f,
                "--tmp",
                spool.to_str().unwrap(),
                &loc,
                &image_ref(&name),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{f}: a ../ entry was accepted");
        for s in [entry.as_str(), d.as_str(), loc.as_str()] {
            assert!(
                err.contains(s),
                "{f}: the error does not name {s:?}:\n{err}"
            );
        }
        assert_eq!(
            manifest_status(&name),
            404,
            "{name} exists after a refused layer"
        );
    }
    for dir in [
        &work,
        &work.join("spool"),
        w.path(),
        Path::new("/"),
        Path::new("/tmp"),
    ] {
        assert!(
            !dir.join(&escape).exists(),
            "{}/{escape} was written",
            dir.display()
        );
    }
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("spool")],
        "files written in the cwd"
    );
    assert_eq!(
        std::fs::read_dir(work.join("spool")).unwrap().count(),
        0,
        "spool not empty"
    );
}

/// Absolute names and an absolute hardlink target are made relative: the TOC names them
/// below the root, umoci unpacks them inside the rootfs (the hardlink linked), an
/// absolute symlink target stays as it is, and nothing appears at `/<unique>`.
#[test]
fn absolute_names_are_made_relative() {
    let top = format!("lazysnap-abs-{}", std::process::id());
    let w = tempfile::tempdir().unwrap();
    let mut l = ScratchLayout::new("busybox");
    let tar = python_tar(&format!(
        "[('/{top}', 'd', ''), ('/{top}/file', 'f', 'absolute'), \
          ('/{top}/hard', 'h', '/{top}/file'), ('/{top}/sym', 's', '/etc/passwd'), \
          ('{top}/sub/../dot', 'f', 'dot')]"
    ));
    l.push_layer(&tar);
    l.commit();
    let name = "conv/absolute:estargz";
    lazysnap_ok(&[
        "convert",
        "--tmp",
        w.path().to_str().unwrap(),
        &l.location(),
        &image_ref(name),
    ]);
    assert!(
        !Path::new("/").join(&top).exists(),
        "/{top} was written on the host"
    );
    let layers = inspect_layers(&inspect_json(&image_ref(name)));
    let toc = lazysnap_ok(&[
        "inspect",
        "--toc",
        &layers.len().to_string(),
        &image_ref(name),
    ]);
    let toc: serde_json::Value = serde_json::from_str(&toc).expect("TOC JSON");
    let names: Vec<&str> = toc["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .filter(|n| n.contains(&top))
        .collect();
    let want_names = [
        format!("{top}/"),
        format!("{top}/file"),
        format!("{top}/hard"),
        format!("{top}/sym"),
        format!("{top}/dot"),
    ];
    let mut got_names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    got_names.sort();
    let mut want_sorted = want_names.to_vec();
    want_sorted.sort();
    assert_eq!(got_names, want_sorted, "TOC names: {toc}");
    // a third-party unpack puts them below its rootfs
    let oci = w.path().join("oci");
    let bundle = w.path().join("bundle");
    run_ok(
        "skopeo",
        &[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{}", image_ref(name)),
            &format!("oci:{}:t", oci.display()),
        ],
    );
    run_ok(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:t", oci.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let t = tree::walk(&bundle.join("rootfs").join(&top));
    let e = |p: &str| {
        t.entries
            .get(p)
            .map(|n| n.describe())
            .unwrap_or_else(|| panic!("no {p}: {t:?}"))
    };
    let sha = |s: &[u8]| sha256_digest(s).trim_start_matches("sha256:").to_string();
    assert_eq!(
        e("/file"),
        format!("f 0644 0:0 8 sha256:{}", sha(b"absolute"))
    );
    assert_eq!(e("/dot"), format!("f 0644 0:0 3 sha256:{}", sha(b"dot")));
    assert_eq!(e("/sym"), "l 0777 0:0 0 -> /etc/passwd");
    assert!(
        t.hardlinks
            .contains(&vec![b"/file".to_vec(), b"/hard".to_vec()]),
        "{:?}",
        t.hardlinks
    );
    assert!(
        !Path::new("/").join(&top).exists(),
        "/{top} was written on the host"
    );
}
