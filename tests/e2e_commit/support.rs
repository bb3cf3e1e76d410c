//! Helpers of `tests/e2e_commit.rs`: tree comparison, containers and their task state,
//! `ctr events`, lazy pulls, and reading a committed layer's tar back from a registry.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::common::convert::{lazysnap_ok, run_ok};
use crate::common::tree::{self, Compare, Tree};
use crate::common::{ESTARGZ_EXTRA_ENTRIES, Test, env, image_info};

/// A tag unique to this test process (the environment's registry may outlive it).
pub fn tag(what: &str) -> String {
    format!("{what}-{}", std::process::id())
}

/// `t` without the entries eStargz adds to every layer (`stargz.index.json`, landmarks):
/// a plain unpack shows the top layer's, a lazy view none.
pub fn without_extras(t: &Tree) -> Tree {
    let mut out = t.clone();
    out.entries
        .retain(|k, _| !ESTARGZ_EXTRA_ENTRIES.contains(&k.as_str()));
    out
}

/// How far apart (seconds) the mtimes of a lazy view of an eStargz layer may be from the
/// tar's: the TOC holds them rounded to the nearest second (as Go's estargz writes them),
/// a tar unpack truncates. A running container's tree is such a view for every entry it
/// has not changed.
pub const LAZY_MTIME_SLACK: i64 = 1;

/// Differences of `got` from `want` (eStargz extras dropped on both sides), compared in
/// everything, mtimes at most `mtime_slack` seconds apart.
pub fn tree_diffs(got: &Tree, want: &Tree, mtime_slack: i64) -> Vec<String> {
    let c = Compare {
        extra_ok: &[],
        mtime_slack,
        ..Compare::default()
    };
    tree::differences(&without_extras(got), &without_extras(want), &c)
}

/// Records `what`'s differences from `want` in `failures` (mtimes exact).
pub fn check(failures: &mut Vec<String>, what: &str, got: &Tree, want: &Tree) {
    check_with(failures, what, got, want, 0);
}

/// Records `what`'s differences from `want` in `failures`, as [`tree_diffs`] finds them.
pub fn check_with(
    failures: &mut Vec<String>,
    what: &str,
    got: &Tree,
    want: &Tree,
    mtime_slack: i64,
) {
    let d = tree_diffs(got, want, mtime_slack);
    eprintln!(
        "{what}: {} entries, {} hardlink groups, {} differences",
        got.entries.len(),
        got.hardlinks.len(),
        d.len()
    );
    if !d.is_empty() {
        failures.push(format!(
            "{what}: {} differences:\n  {}",
            d.len(),
            d[..d.len().min(40)].join("\n  ")
        ));
    }
}

/// Panics with every recorded failure.
pub fn assert_no_failures(failures: &[String]) {
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Removes every image and snapshot (lazysnap and overlayfs) of `t`'s namespace: what an
/// earlier run in the same environment left there would make pulls find layers present.
pub fn clean_namespace(t: &Test) {
    let images = t.ctr_ok(&["images", "ls", "-q"]);
    for r in images.lines().filter(|l| !l.is_empty()) {
        let _ = t.ctr(&["images", "rm", "--sync", r]);
    }
    for snap in ["lazysnap", "overlayfs"] {
        t.remove_image_and_snapshots(snap, "no-image");
    }
}

/// `lazysnap pull --plain-http REFERENCE` into `t`'s namespace: every layer must come out
/// `lazy` (or `present`, for lower layers the namespace has already). Returns the top
/// snapshot's chain ID.
pub fn pull_lazily(t: &Test, reference: &str) -> String {
    let out = lazysnap_ok(&["pull", "-n", &t.ns, "--plain-http", reference]);
    let layers: Vec<&str> = out.lines().filter(|l| l.starts_with("layer ")).collect();
    assert!(
        layers.last().is_some_and(|l| l.ends_with(" lazy"))
            && layers
                .iter()
                .all(|l| l.ends_with(" lazy") || l.ends_with(" present")),
        "lazysnap pull {reference}: a layer is neither lazy nor present:\n{out}"
    );
    out.split("top snapshot ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no top snapshot in: {out}"))
        .to_string()
}

/// `ctr run -d --snapshotter SNAP REFERENCE <new id> CMD`; returns the id.
pub fn run_detached(t: &Test, snap: &str, reference: &str, cmd: &[&str]) -> String {
    let id = t.new_id();
    let mut args = vec!["run", "-d", "--snapshotter", snap, reference, &id];
    args.extend_from_slice(cmd);
    t.ctr_ok(&args);
    id
}

/// `sh -c SCRIPT` in running container `id`; panics unless it exits 0; returns stdout.
pub fn exec_sh(t: &Test, id: &str, script: &str) -> String {
    let out = t.exec(id, &["sh", "-c", script]);
    assert!(
        out.status.success(),
        "exec in {id} exited {}:\nscript: {script}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The STATUS column of `ctr tasks ls` for container `id` (`RUNNING`, `PAUSED`, …).
pub fn task_status(t: &Test, id: &str) -> String {
    let out = t.ctr_ok(&["tasks", "ls"]);
    out.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.get(2).unwrap_or(&"").to_string())
        })
        .unwrap_or_else(|| panic!("no task {id} in:\n{out}"))
}

/// The tree of running container `id`'s root filesystem, walked from the host (the
/// rootfs mount in the shim's bundle: the snapshot without the container's submounts).
pub fn container_tree(t: &Test, id: &str) -> Tree {
    tree::walk(&t.rootfs_of(id))
}

/// `ctr events` of `t`'s namespace, collected while it lives (stopped by PID on drop).
pub struct Events {
    child: Child,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Events {
    /// Starts `ctr -n <ns> events`; waits a moment so that it is subscribed.
    pub fn start(t: &Test) -> Events {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("events");
        let child = Command::new("ctr")
            .arg("-a")
            .arg(&env().containerd_address)
            .args(["-n", &t.ns, "events"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        std::thread::sleep(std::time::Duration::from_millis(500));
        Events {
            child,
            out,
            _dir: dir,
        }
    }

    /// Stops the subscription (after a moment for late events); returns the topics with
    /// their container ids (`/tasks/paused c1`), in order.
    pub fn finish(mut self) -> Vec<String> {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let topic = l.split_whitespace().find(|w| w.starts_with('/'))?;
                let json = &l[l.find('{')?..];
                let v: Value = serde_json::from_str(json).ok()?;
                Some(format!(
                    "{topic} {}",
                    v["container_id"].as_str().unwrap_or("")
                ))
            })
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `http://ADDR/v2/PATH` with `accept`, parsed as JSON.
pub fn registry_json(addr: &str, path: &str) -> Value {
    let out = run_ok(
        "curl",
        &[
            "-fsS",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*",
            &format!("http://{addr}/v2/{path}"),
        ],
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("GET {path}: {e}: {out}"))
}

/// The config of image `name` (`repo:tag`) in the environment's registry.
pub fn image_config(name: &str) -> Value {
    let (repo, _) = name.rsplit_once(':').unwrap();
    let info = image_info(name);
    registry_json(&env().registry, &format!("{repo}/blobs/{}", info.config))
}

/// One entry of a layer tar as python's `tarfile` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// The name as stored (no leading `./`).
    pub name: String,
    /// The typeflag (`0` file, `1` hardlink, `2` symlink, `3` char, `5` dir, `6` fifo).
    pub kind: char,
    /// Permission bits.
    pub mode: u32,
    /// Bytes of data in the tar.
    pub size: u64,
    /// Link target (hard or symbolic).
    pub link: String,
    /// `SCHILY.xattr.*` PAX records, values as latin-1 text.
    pub xattrs: BTreeMap<String, String>,
}

/// A layer read back from a registry: its entries in order, and its decompressed size.
#[derive(Debug, Clone)]
pub struct LayerTar {
    pub entries: Vec<TarEntry>,
    pub tar_bytes: u64,
    /// The compressed blob's size.
    pub blob_bytes: u64,
}

impl LayerTar {
    /// Entry names, eStargz's own entries left out.
    pub fn names(&self) -> Vec<&str> {
        self.entries
            .iter()
            .map(|e| e.name.as_str())
            .filter(|n| !matches!(*n, "stargz.index.json" | ".no.prefetch.landmark"))
            .collect()
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&TarEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// Layer `index` (negative: from the end) of image `repo:tag` in registry `addr`, read with
/// python's `tarfile` (eStargz is a gzip stream of members; tarfile reads it as one).
pub fn layer_tar(addr: &str, name: &str, index: i64) -> LayerTar {
    let (repo, tag) = name.rsplit_once(':').expect("repo:tag");
    let py = r#"
import gzip, io, json, sys, tarfile, urllib.request
reg, repo, tag, idx = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def get(path, accept="*/*"):
    req = urllib.request.Request(f"http://{reg}/v2/{repo}/{path}", headers={"Accept": accept})
    return urllib.request.urlopen(req).read()
m = json.loads(get(f"manifests/{tag}", "application/vnd.oci.image.manifest.v1+json"))
blob = get("blobs/" + m["layers"][idx]["digest"])
raw = gzip.decompress(blob)
out = {"tar_bytes": len(raw), "blob_bytes": len(blob), "entries": []}
for ti in tarfile.open(fileobj=io.BytesIO(raw), mode="r:"):
    x = {k[len("SCHILY.xattr."):]: v for k, v in ti.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    out["entries"].append({"name": ti.name, "type": ti.type.decode(), "mode": ti.mode, "size": ti.size,
                           "link": ti.linkname, "xattrs": x})
print(json.dumps(out))
"#;
    let out = run_ok("python3", &["-c", py, addr, repo, tag, &index.to_string()]);
    let v: Value = serde_json::from_str(&out).expect("layer json");
    LayerTar {
        entries: v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| TarEntry {
                name: e["name"].as_str().unwrap().to_string(),
                kind: e["type"].as_str().unwrap().chars().next().unwrap_or('?'),
                mode: e["mode"].as_u64().unwrap() as u32,
                size: e["size"].as_u64().unwrap(),
                link: e["link"].as_str().unwrap().to_string(),
                xattrs: e["xattrs"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect(),
            })
            .collect(),
        tar_bytes: v["tar_bytes"].as_u64().unwrap(),
        blob_bytes: v["blob_bytes"].as_u64().unwrap(),
    }
}
