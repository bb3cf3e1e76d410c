//! Field cases B02, B05 (committed side) and B06 of CASES.md: the container-side steps on
//! a lazysnap container, a commit, and the committed layer's exact entries; then the
//! committed image pulled by containerd's overlayfs snapshotter and lazily by lazysnap
//! must show the container's tree.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::common::convert::{ScratchLayout, converted, lazysnap_ok, overlay_tree, python_tar};
use crate::common::tree::Tree;
use crate::common::{Test, env, image_info, image_ref, sha256_hex_of_python_expr};
use crate::support::{
    LAZY_MTIME_SLACK, LayerTar, assert_no_failures, check_with, clean_namespace, container_tree,
    exec_sh, layer_tar, pull_lazily, run_detached, tag,
};

/// busybox plus one layer with `top/`, `top/sub/` (B02) and `data/`, `data/item` (B05),
/// converted to eStargz from a private OCI layout and pushed; once per process.
fn cases_base() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let mut l = ScratchLayout::new("busybox");
        l.push_layer(&python_tar(
            r#"[("top/", "d", ""), ("top/sub/", "d", ""), ("data/", "d", ""), ("data/item", "f", "item")]"#,
        ));
        l.commit();
        let name = format!("commit-cases/base:{}", tag("esgz"));
        lazysnap_ok(&[
            "convert",
            "--format",
            "estargz",
            &l.location(),
            &image_ref(&name),
        ]);
        name
    })
}

/// Runs `script` in a new lazysnap container of `base` (lazily pulled into `t`), commits
/// it as `committed/<what>:<tag>`; returns (container id, its tree before the commit, the
/// new image's name, its top layer).
fn change_and_commit(
    t: &Test,
    base: &str,
    what: &str,
    script: &str,
) -> (String, Tree, String, LayerTar) {
    let r = image_ref(base);
    clean_namespace(t);
    pull_lazily(t, &r);
    let id = run_detached(t, "lazysnap", &r, &["sleep", "1000"]);
    exec_sh(t, &id, script);
    let before = container_tree(t, &id);
    let name = format!("committed/{what}:{}", tag("t"));
    lazysnap_ok(&["commit", "-n", &t.ns, &id, &image_ref(&name)]);
    let layer = layer_tar(&env().registry, &name, -1);
    eprintln!("{name}: committed layer {:?}", layer.names());
    (id, before, name, layer)
}

/// The committed image `name` unpacked by the overlayfs snapshotter and lazily by lazysnap
/// (both in `t`'s namespace), each compared with `want`; returns both trees.
fn remount(t: &Test, name: &str, want: &Tree) -> [(String, Tree); 2] {
    let chain = pull_lazily(t, &image_ref(name));
    let lazy = t.snapshot_tree("lazysnap", &chain);
    let overlay = (*overlay_tree(t, name)).clone();
    let mut failures = Vec::new();
    check_with(
        &mut failures,
        &format!("{name} on lazysnap"),
        &lazy,
        want,
        LAZY_MTIME_SLACK,
    );
    check_with(
        &mut failures,
        &format!("{name} on overlayfs"),
        &overlay,
        want,
        LAZY_MTIME_SLACK,
    );
    assert_no_failures(&failures);
    [("lazysnap".into(), lazy), ("overlayfs".into(), overlay)]
}

/// Paths of `t` below `dir` (`/top` → `/top/…`).
fn below<'a>(t: &'a Tree, dir: &str) -> Vec<&'a String> {
    let prefix = format!("{dir}/");
    t.entries
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .collect()
}

/// B02: `rm -rf top; mkdir -p top/sub; mv top/sub sub` over a lower `top/sub/`: the layer
/// has `top/` opaque with nothing else under it, and `sub/`.
#[test]
fn b02_recreated_dir_is_opaque_without_whiteouts_inside() {
    let t = Test::new("commit-b02");
    let (_, before, name, layer) = change_and_commit(
        &t,
        cases_base(),
        "b02",
        "cd / && rm -rf top && mkdir -p top/sub && mv top/sub sub",
    );
    assert_eq!(before.entries["/top"].kind, 'd');
    assert_eq!(before.entries["/sub"].kind, 'd');
    assert!(below(&before, "/top").is_empty() && below(&before, "/sub").is_empty());
    // `run`: runc made the mount point of ctr's /run tmpfs (busybox has none)
    assert_eq!(
        layer.names(),
        ["run", "sub", "top", "top/.wh..wh..opq"],
        "{:#?}",
        layer.entries
    );
    assert_eq!(layer.get("top").unwrap().kind, '5');
    assert_eq!(layer.get("sub").unwrap().kind, '5');
    assert_eq!(layer.get("top/.wh..wh..opq").unwrap().kind, '0');
    for (snap, tree) in remount(&t, &name, &before) {
        // every name readdir returned was lstat'ed by the walk
        assert_eq!(tree.entries["/top"].kind, 'd', "{snap}");
        assert!(
            below(&tree, "/top").is_empty(),
            "{snap}: {:?}",
            below(&tree, "/top")
        );
        assert_eq!(tree.entries["/sub"].kind, 'd', "{snap}");
        assert!(below(&tree, "/sub").is_empty(), "{snap}");
    }
}

/// B05: `rm -rf /data` over a lower `data/item`: one `.wh.data`, nothing under `data/`.
#[test]
fn b05_deleted_dir_is_one_whiteout() {
    let t = Test::new("commit-b05");
    let (_, before, name, layer) = change_and_commit(&t, cases_base(), "b05", "rm -rf /data");
    assert!(!before.entries.contains_key("/data"));
    assert_eq!(layer.names(), [".wh.data", "run"], "{:#?}", layer.entries);
    let wh = layer.get(".wh.data").unwrap();
    assert_eq!((wh.kind, wh.size), ('0', 0));
    for (snap, tree) in remount(&t, &name, &before) {
        assert!(!tree.entries.contains_key("/data"), "{snap}");
        assert!(below(&tree, "/data").is_empty(), "{snap}");
    }
}

/// `stat -c '%n %i %h'` of the tools and `%i` of every name in /bin, in a new container of
/// `reference` on `snap`: checks st_nlink == names sharing st_ino (B06's invariant) and
/// returns name → inode.
fn nlink_invariant(t: &Test, snap: &str, reference: &str) -> BTreeMap<String, String> {
    let out = t.sh_with(
        snap,
        reference,
        "stat -c '%n %i %h' /bin/tool /bin/tool2 /bin/tool3 /bin/tool4 /bin/tool5; echo ---; stat -c '%i %n' /bin/*",
    );
    let (listing, dir) = out.split_once("---\n").unwrap();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for l in dir.lines() {
        *names.entry(l.split(' ').next().unwrap()).or_default() += 1;
    }
    let mut inodes = BTreeMap::new();
    for l in listing.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let n = names.get(f[1]).copied().unwrap_or(0);
        assert_eq!(
            f[2].parse::<usize>().unwrap(),
            n,
            "{snap}: {}: st_nlink {} but {n} names with st_ino {}\n{out}",
            f[0],
            f[2],
            f[1]
        );
        inodes.insert(f[0].to_string(), f[1].to_string());
    }
    inodes
}

/// B06: `ln tool tool4; ln tool tool5` over a lower group tool/tool2/tool3: one stored
/// copy, the other names hardlink entries; every link group intact after remount.
#[test]
fn b06_new_hardlinks_to_a_lower_file_keep_one_copy() {
    let t = Test::new("commit-b06");
    let base = converted("cases-b06", "estargz");
    let want = sha256_hex_of_python_expr("random.Random(1006).randbytes(1 << 20)");
    let (_, before, name, layer) = change_and_commit(
        &t,
        &base,
        "b06",
        "cd /bin && ln tool tool4 && ln tool tool5",
    );
    let tools = ["tool", "tool2", "tool3", "tool4", "tool5"].map(|n| format!("bin/{n}"));
    // copy-up brought the whole visible link group up (tool2, tool3 too); `run`: runc's
    // mount point of ctr's /run tmpfs
    let mut want_names = vec!["bin"];
    want_names.extend(tools.iter().map(String::as_str));
    want_names.push("run");
    assert_eq!(layer.names(), want_names, "{:#?}", layer.entries);
    let files: Vec<_> = layer
        .entries
        .iter()
        .filter(|e| tools.contains(&e.name) && e.kind == '0')
        .collect();
    assert_eq!(files.len(), 1, "one stored copy: {:#?}", layer.entries);
    assert_eq!(files[0].size, 1 << 20);
    for n in &tools {
        let e = layer
            .get(n)
            .unwrap_or_else(|| panic!("no {n} in {:#?}", layer.entries));
        if e.name != files[0].name {
            assert_eq!(
                (e.kind, e.link.as_str()),
                ('1', files[0].name.as_str()),
                "{n}"
            );
        }
    }
    for n in ["bin/tool4", "bin/tool5"] {
        assert!(layer.get(n).is_some(), "{n} missing: {:#?}", layer.entries);
    }
    assert!(
        layer.tar_bytes < 1_153_434 && layer.blob_bytes < 1_153_434,
        "committed layer: tar {} bytes, blob {} bytes (over 1.1 MiB)",
        layer.tar_bytes,
        layer.blob_bytes
    );
    assert_eq!(image_info(&name).layers.len(), 3);

    let holder = format!("/{}", files[0].name);
    for (snap, tree) in remount(&t, &name, &before) {
        for n in &tools {
            assert_eq!(
                tree.entries[&format!("/{n}")].sha256.as_deref(),
                Some(want.as_str()),
                "{snap}: /{n}"
            );
        }
        let group_of = |p: &str| {
            tree.hardlinks
                .iter()
                .find(|g| g.contains(&p.as_bytes().to_vec()))
                .unwrap_or_else(|| panic!("{snap}: {p} in no link group: {:?}", tree.hardlinks))
                .clone()
        };
        let g4 = group_of("/bin/tool4");
        for p in ["/bin/tool5", holder.as_str()] {
            assert!(
                g4.contains(&p.as_bytes().to_vec()),
                "{snap}: {p} not with tool4"
            );
        }
        assert!(
            group_of("/bin/tool2").contains(&b"/bin/tool3".to_vec()),
            "{snap}"
        );
    }
    let r = image_ref(&name);
    for snap in ["lazysnap", "overlayfs"] {
        let inodes = nlink_invariant(&t, snap, &r);
        assert_eq!(inodes["/bin/tool4"], inodes["/bin/tool5"], "{snap}");
        assert_eq!(inodes["/bin/tool2"], inodes["/bin/tool3"], "{snap}");
    }
}
