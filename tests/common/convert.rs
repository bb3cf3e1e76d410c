//! Helpers of `tests/e2e_convert.rs`: running `lazysnap convert`/`inspect`/`pull`, unpacking
//! images with third-party tools (containerd's overlayfs snapshotter; skopeo + umoci) and
//! lazysnap into [`Tree`]s, and private OCI layouts to craft bad images in.
//!
//! Conversions and unpacked trees are computed once per test process and shared (by name).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::tree::{self, Tree};
use super::{CTR_TIMEOUT_SECS, Test, env, image_info, image_ref, push_images, repo};

/// The `--format` values of `lazysnap convert`.
pub const FORMATS: [&str; 3] = ["estargz", "estargz-zstd", "zstd-chunked"];

/// `--chunk-size` of the shared conversions: small, so that files span many chunks.
pub const CHUNK_SIZE: &str = "65536";

/// The `format` word `lazysnap inspect` prints for a `--format` value.
pub fn inspect_format_word(format: &str) -> &'static str {
    match format {
        "estargz" => "estargz",
        "estargz-zstd" => "estargz-zstd",
        "zstd-chunked" => "zstd:chunked",
        f => panic!("unknown format {f}"),
    }
}

type Memo<T> = Mutex<BTreeMap<String, Arc<OnceLock<Arc<T>>>>>;

/// `f()` once per `key` in `map` (concurrent callers of one key wait for the first).
fn memo<T>(map: &'static Memo<T>, key: &str, f: impl FnOnce() -> T) -> Arc<T> {
    let cell = map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key.to_string())
        .or_default()
        .clone();
    cell.get_or_init(|| Arc::new(f())).clone()
}

/// The lazysnap binary the environment runs.
pub fn lazysnap_bin() -> PathBuf {
    env()
        .vars
        .get("LAZYSNAP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(super::release_bin)
}

/// `lazysnap ARGS` with the environment's containerd and daemon sockets (killed after
/// [`CTR_TIMEOUT_SECS`]), in `cwd` when given; returns the whole Output.
pub fn lazysnap_in(cwd: Option<&Path>, args: &[&str]) -> Output {
    let e = env();
    let mut c = Command::new("timeout");
    c.args(["--kill-after=10", &CTR_TIMEOUT_SECS.to_string()])
        .arg(lazysnap_bin())
        .args(args)
        .env("CONTAINERD_ADDRESS", &e.containerd_address)
        .env("LAZYSNAP_ADDRESS", &e.lazysnap_address)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null());
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.output().expect("run lazysnap")
}

/// [`lazysnap_in`] in the current directory.
pub fn lazysnap(args: &[&str]) -> Output {
    lazysnap_in(None, args)
}

/// Like [`lazysnap`], but panics unless it succeeds; returns stdout.
pub fn lazysnap_ok(args: &[&str]) -> String {
    let out = lazysnap(args);
    assert!(
        out.status.success(),
        "lazysnap {} failed ({}):\n{}{}\n--- lazysnap log (tail) ---\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        super::lazysnap_log_tail(30)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test images' OCI layout (`scripts/images.sh build`, built if needed).
pub fn test_layout() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(repo().join("scripts/images.sh"))
            .arg("build")
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/images.sh build");
        assert!(
            out.status.success(),
            "scripts/images.sh build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            dir.join("index.json").exists(),
            "{} is no OCI layout",
            dir.display()
        );
        dir
    })
}

/// The registry name (`test/python:latest`, `cases/b21:t`) of layout ref `tag`, from the
/// layout's `images.json`.
pub fn original_name(tag: &str) -> String {
    let p = test_layout().parent().unwrap().join("images.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&p).expect("images.json")).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|i| i["tag"] == tag)
        .and_then(|i| i["ref"].as_str())
        .unwrap_or_else(|| panic!("no image {tag} in {}", p.display()))
        .to_string()
}

/// `lazysnap inspect --json IMAGE`, parsed.
pub fn inspect_json(image: &str) -> Value {
    let out = lazysnap_ok(&["inspect", "--json", image]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect --json {image}: {e}: {out}"))
}

/// The layers of a single-manifest `inspect --json` document.
pub fn inspect_layers(doc: &Value) -> Vec<Value> {
    let m = doc["manifests"].as_array().expect("manifests");
    assert_eq!(m.len(), 1, "one manifest expected: {doc}");
    m[0]["layers"].as_array().expect("layers").clone()
}

/// Test image `tag` (its pushed original, see [`original_name`]: the bytes the trees of
/// the original come from, even if the layout was rebuilt since) converted to `format`
/// with [`CHUNK_SIZE`] and pushed as `conv/<tag>:<format>`, once per process; checks with
/// `inspect` that every layer has that format and a TOC. Returns the registry name.
pub fn converted(tag: &str, format: &str) -> String {
    static DONE: Memo<String> = Mutex::new(BTreeMap::new());
    let name = format!("conv/{tag}:{format}");
    memo(&DONE, &name, || {
        push_images();
        let src = image_ref(&original_name(tag));
        let dst = image_ref(&name);
        lazysnap_ok(&[
            "convert",
            "--format",
            format,
            "--chunk-size",
            CHUNK_SIZE,
            &src,
            &dst,
        ]);
        let layers = inspect_layers(&inspect_json(&dst));
        for l in &layers {
            assert_eq!(l["format"], inspect_format_word(format), "{dst}: {l}");
            assert!(
                l["tocDigest"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("sha256:")),
                "{dst}: {l}"
            );
        }
        name.clone()
    })
    .to_string()
}

/// The tree of registry image `name` unpacked by containerd's overlayfs snapshotter
/// (`ctr images pull` in `t`'s namespace, a view of the top snapshot mounted on the host);
/// once per process and name.
pub fn overlay_tree(t: &Test, name: &str) -> Arc<Tree> {
    static TREES: Memo<Tree> = Mutex::new(BTreeMap::new());
    memo(&TREES, name, || {
        push_images();
        let r = image_ref(name);
        t.ctr_ok(&[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "overlayfs",
            &r,
        ]);
        let chain = image_info(name).chain_ids.last().cloned().expect("layers");
        t.snapshot_tree("overlayfs", &chain)
    })
}

/// The tree of registry image `name` copied by `skopeo copy docker://… oci:DIR:t` and
/// unpacked by `umoci unpack`; umoci 0.4.7 reads no zstd, so with `regzip` skopeo
/// decompresses the layers (its own zstd decoder) and gzips them again. Once per name.
pub fn umoci_tree(name: &str, regzip: bool) -> Arc<Tree> {
    static TREES: Memo<Tree> = Mutex::new(BTreeMap::new());
    memo(&TREES, name, || {
        push_images();
        let dir = tempfile::Builder::new()
            .prefix("lazysnap-umoci-")
            .tempdir()
            .expect("temp dir");
        let layout = format!("oci:{}:t", dir.path().join("oci").display());
        let mut args = vec!["copy", "-q", "--src-tls-verify=false"];
        if regzip {
            args.extend(["--dest-compress", "--dest-compress-format", "gzip"]);
        }
        let src = format!("docker://{}", image_ref(name));
        args.extend([src.as_str(), layout.as_str()]);
        run_ok("skopeo", &args);
        let bundle = dir.path().join("bundle");
        let image = format!("{}:t", dir.path().join("oci").display());
        run_ok(
            "umoci",
            &["unpack", "--image", &image, bundle.to_str().unwrap()],
        );
        tree::walk(&bundle.join("rootfs"))
    })
}

/// Runs `prog ARGS`; panics with its output unless it succeeds; returns stdout.
pub fn run_ok(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `lazysnap pull --plain-http REFERENCE` into `t`'s namespace; returns (the top snapshot's
/// chain ID, stdout). Every layer must be reported `lazy`.
pub fn lazy_pull(t: &Test, reference: &str) -> (String, String) {
    let out = lazysnap_ok(&["pull", "-n", &t.ns, "--plain-http", reference]);
    let layer_lines: Vec<&str> = out.lines().filter(|l| l.starts_with("layer ")).collect();
    assert!(
        !layer_lines.is_empty() && layer_lines.iter().all(|l| l.ends_with(" lazy")),
        "lazysnap pull {reference}: not every layer is lazy:\n{out}"
    );
    let chain = out
        .split("top snapshot ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no top snapshot in: {out}"))
        .to_string();
    (chain, out)
}

/// HTTP status of `GET /v2/<repo>/manifests/<tag>` for registry name `name` (`repo:tag`).
pub fn manifest_status(name: &str) -> u16 {
    let (repo_, tag) = name.rsplit_once(':').expect("name:tag");
    let url = format!("http://{}/v2/{repo_}/manifests/{tag}", env().registry);
    let code = run_ok(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
            &url,
        ],
    );
    code.trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {url}: {code}"))
}

/// `sha256:<hex>` of `b`.
pub fn sha256_digest(b: &[u8]) -> String {
    let h: String = Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    format!("sha256:{h}")
}

/// gzip of `b` (flate2, default level).
pub fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// A private OCI layout holding one image of the test layout under ref `t`, to be edited.
/// Blobs are hard links into the test layout and are never written in place: every
/// change writes a new file (or removes the link first).
#[derive(Debug)]
pub struct ScratchLayout {
    dir: tempfile::TempDir,
    /// The image manifest (edit, then [`ScratchLayout::commit`]).
    pub manifest: Value,
    /// The image config (edit, then [`ScratchLayout::commit`]).
    pub config: Value,
}

impl ScratchLayout {
    /// A copy of layout image `tag` (a single-platform manifest).
    pub fn new(tag: &str) -> ScratchLayout {
        let src = test_layout();
        let index: Value = serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap())
            .expect("index.json");
        let desc = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no {tag} in {}", src.display()))
            .clone();
        let dir = tempfile::Builder::new()
            .prefix("lazysnap-scratch-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let read = |d: &str| std::fs::read(blob_path(src, d)).unwrap();
        let manifest: Value =
            serde_json::from_slice(&read(desc["digest"].as_str().unwrap())).unwrap();
        let config: Value =
            serde_json::from_slice(&read(manifest["config"]["digest"].as_str().unwrap())).unwrap();
        let s = ScratchLayout {
            dir,
            manifest,
            config,
        };
        for l in s.manifest["layers"].as_array().unwrap() {
            let d = l["digest"].as_str().unwrap();
            let to = blob_path(s.dir.path(), d);
            if std::fs::hard_link(blob_path(src, d), &to).is_err() {
                std::fs::copy(blob_path(src, d), &to).unwrap();
            }
        }
        s
    }

    /// The layout's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `oci:<dir>:t`.
    pub fn location(&self) -> String {
        format!("oci:{}:t", self.dir().display())
    }

    /// Writes `bytes` as a blob; returns (digest, size).
    pub fn put_blob(&self, bytes: &[u8]) -> (String, u64) {
        let d = sha256_digest(bytes);
        let p = blob_path(self.dir(), &d);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, bytes).unwrap();
        (d, bytes.len() as u64)
    }

    /// Replaces the bytes stored under `digest` (they then no longer match it).
    pub fn overwrite_blob(&self, digest: &str, bytes: &[u8]) {
        let p = blob_path(self.dir(), digest);
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, bytes).unwrap();
    }

    /// The bytes of blob `digest`.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        std::fs::read(blob_path(self.dir(), digest)).unwrap()
    }

    /// Adds an uncompressed layer tar on top, as gzip: a layer descriptor and a diff_id.
    /// Returns the layer's digest.
    pub fn push_layer(&mut self, tar: &[u8]) -> String {
        let (d, size) = self.put_blob(&gzip(tar));
        self.manifest["layers"].as_array_mut().unwrap().push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d, "size": size,
        }));
        self.config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(json!(sha256_digest(tar)));
        d
    }

    /// Writes config and manifest blobs (their digests follow the edits) and `index.json`
    /// naming the manifest `t`.
    pub fn commit(&mut self) {
        let cfg = serde_json::to_vec(&self.config).unwrap();
        let (cd, cs) = self.put_blob(&cfg);
        self.manifest["config"]["digest"] = json!(cd);
        self.manifest["config"]["size"] = json!(cs);
        let m = serde_json::to_vec(&self.manifest).unwrap();
        let (md, ms) = self.put_blob(&m);
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md, "size": ms,
                "annotations": {"org.opencontainers.image.ref.name": "t"},
            }],
        });
        let p = self.dir().join("index.json");
        let _ = std::fs::remove_file(&p);
        std::fs::write(p, serde_json::to_vec(&index).unwrap()).unwrap();
    }
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

/// A layer tar written by python's `tarfile` from `entries_py`, a Python list expression
/// of `(name, type, data_or_linkname)` tuples (type `f`, `d`, `s`, `h`); names are used as
/// given (no sanitizing), so `../x` and `/abs` can be made.
pub fn python_tar(entries_py: &str) -> Vec<u8> {
    let py = format!(
        r#"
import io, sys, tarfile
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
    for name, t, x in {entries_py}:
        ti = tarfile.TarInfo(name)
        ti.mtime = 1700000000
        ti.type = {{"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "s": tarfile.SYMTYPE, "h": tarfile.LNKTYPE}}[t]
        ti.mode = 0o755 if t == "d" else 0o644
        if t in "sh":
            ti.linkname = x
        data = x.encode() if t == "f" else b""
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
sys.stdout.buffer.write(buf.getvalue())
"#
    );
    let out = Command::new("python3")
        .args(["-c", &py])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
