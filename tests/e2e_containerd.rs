//! End to end through a real containerd 1.6 with lazysnap as its proxy snapshotter:
//! pull from a local registry, run containers, write in them, restart the daemon.
//! See tests/common/mod.rs for the environment these run in.

mod common;

use common::{Test, get, is_lazysnap, kv};

const BUSYBOX: &str = "test/busybox:latest";
const PYTHON: &str = "test/python:latest";

#[test]
fn busybox_runs_and_prints() {
    let t = Test::new("busybox_runs_and_prints");
    t.pull(BUSYBOX);
    let (code, out) = t.run(BUSYBOX, &["echo", "hello from lazysnap"]);
    assert_eq!(code, 0);
    assert_eq!(out, "hello from lazysnap\n");
    let out = t.sh(BUSYBOX, "ls / | tr '\\n' ' '; cat /etc/hostname");
    assert!(out.contains("bin"), "ls /: {out}");
    assert!(out.contains("etc"), "ls /: {out}");
}

#[test]
fn python_image_runs_and_upper_layer_applies() {
    let t = Test::new("python_image_runs");
    t.pull(PYTHON);
    let (code, out) = t.run(
        PYTHON,
        &[
            "python3",
            "-c",
            "import json,sys; print(json.dumps({\"ok\": sys.version_info[:2]}))",
        ],
    );
    assert_eq!(code, 0, "python3 -c: {out}");
    assert_eq!(out, "{\"ok\": [3, 11]}\n");

    // The image's own command.
    let (code, out) = t.run(PYTHON, &["python3", "/app/main.py"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "{\"ok\": [3, 11], \"os_release\": \"ID=lazysnap-test\"}\n"
    );

    // L3 replaced /etc/os-release, deleted /etc/motd, /opt/legacy (a dir of L1) and
    // /usr/share/doc (L1 and L2), and made /var/lib/app opaque with one new file.
    let out = t.sh(
        PYTHON,
        r#"
        echo "os_release=$(head -n1 /etc/os-release)"
        echo "version_id=$(grep VERSION_ID /etc/os-release)"
        [ -e /etc/motd ] && echo motd=present || echo motd=absent
        [ -e /opt/legacy ] && echo legacy=present || echo legacy=absent
        [ -e /opt/legacy/a ] && echo legacy_a=present || echo legacy_a=absent
        echo "opt=$(ls -A /opt | tr '\n' ' ')"
        [ -e /usr/share/doc ] && echo doc=present || echo doc=absent
        echo "app=$(ls -A /var/lib/app | tr '\n' ' ')"
        echo "new_db=$(cat /var/lib/app/new.db)"
        echo "passwd=$(head -n1 /etc/passwd)"
        echo "keep=$(cat /srv/data/keep.txt)"
        "#,
    );
    let m = kv(&out);
    assert_eq!(get(&m, "os_release"), "ID=lazysnap-test");
    assert_eq!(get(&m, "version_id"), "VERSION_ID=3");
    assert_eq!(get(&m, "motd"), "absent");
    assert_eq!(get(&m, "legacy"), "absent");
    assert_eq!(get(&m, "legacy_a"), "absent");
    assert_eq!(get(&m, "opt"), "");
    assert_eq!(get(&m, "doc"), "absent");
    assert_eq!(get(&m, "app"), "new.db ");
    assert_eq!(get(&m, "new_db"), "new");
    assert_eq!(get(&m, "passwd"), "root:x:0:0:root:/root:/bin/sh");
    assert_eq!(get(&m, "keep"), "keep");
}

/// Writes of every kind in one container; a second container sees the pristine image.
#[test]
fn writes_in_a_container_and_a_pristine_second_container() {
    let t = Test::new("writes_in_a_container");
    t.pull(PYTHON);
    let script = r#"
    set -u
    cd /srv/data
    # write a new file
    printf 'fresh' > /tmp/new.txt; echo "write=$(cat /tmp/new.txt)"
    # append to a lower file
    echo appended >> keep.txt; echo "append=$(tr '\n' '|' < keep.txt)"
    # truncate a lower file
    truncate -s 5 big.txt; echo "truncate=$(stat -c %s big.txt):$(cat big.txt)"
    # delete a lower file, then look it up again
    rm sub/file.txt; [ -e sub/file.txt ] && echo delete=present || echo delete=gone
    # rename a lower directory (mv: rename(2), or copy + delete on EXDEV)
    mkdir -p sub/deeper && echo deep > sub/deeper/d.txt
    mv sub sub2 && echo "rename=$([ -e sub ] && echo old-present || echo old-gone):$(cat sub2/deeper/d.txt):$(ls -A sub2 | tr '\n' ' ')"
    # hardlink to a (copied-up) lower file
    ln keep.txt keep.hard && echo x >> keep.hard
    echo "hardlink=$(stat -c %h keep.txt):$(stat -c %h keep.hard):$([ "$(stat -c %i keep.txt)" = "$(stat -c %i keep.hard)" ] && echo same-ino || echo diff-ino):$(tail -n1 keep.txt)"
    # chmod / chown of a lower file
    chmod 600 /etc/passwd && chown 1000:1000 /etc/passwd && echo "chmod=$(stat -c '%a %u %g' /etc/passwd)"
    # mkdir where a whiteout is (/opt/legacy was deleted by L3)
    mkdir /opt/legacy && echo "mkdir_whiteout=$(ls -A /opt/legacy | wc -l):$([ -d /opt/legacy ] && echo dir)"
    # mkdir in an opaque dir, and over a deleted lower dir of L1 (/usr/share/doc)
    mkdir /usr/share/doc && echo "mkdir_doc=$(ls -A /usr/share/doc | wc -l)"
    # a new file in a lower directory, then a rename of a lower file over it
    echo one > /srv/data/a.txt && mv /srv/data/a.txt /srv/data/b.txt && echo "rename_file=$(cat /srv/data/b.txt):$([ -e /srv/data/a.txt ] && echo a-present || echo a-gone)"
    # mmap write into a lower file (copy-up through a shared mapping)
    python3 -c '
import mmap
with open("/srv/data/mm.txt", "w") as f: f.write("0123456789")
with open("/etc/os-release", "r+b") as f:
    m = mmap.mmap(f.fileno(), 0)
    m[0:2] = b"XX"
    m.flush(); m.close()
with open("/srv/data/mm.txt", "r+b") as f:
    m = mmap.mmap(f.fileno(), 0)
    m[0:3] = b"abc"
    m.flush(); m.close()
'
    echo "mmap=$(head -c 4 /etc/os-release):$(cat /srv/data/mm.txt)"
    sync
    # read-back through a new process after all writes
    echo "final_keep=$(tr '\n' '|' < /srv/data/keep.txt)"
    "#;
    let out = t.sh(PYTHON, script);
    let m = kv(&out);
    assert_eq!(get(&m, "write"), "fresh", "{out}");
    assert_eq!(get(&m, "append"), "keep|appended|");
    assert_eq!(get(&m, "truncate"), "5:01234");
    assert_eq!(get(&m, "delete"), "gone");
    assert_eq!(get(&m, "rename"), "old-gone:deep:deeper ");
    assert_eq!(get(&m, "hardlink"), "2:2:same-ino:x");
    assert_eq!(get(&m, "chmod"), "600 1000 1000");
    assert_eq!(get(&m, "mkdir_whiteout"), "0:dir");
    assert_eq!(get(&m, "mkdir_doc"), "0");
    assert_eq!(get(&m, "rename_file"), "one:a-gone");
    assert_eq!(get(&m, "mmap"), "XX=l:abc3456789");
    assert_eq!(get(&m, "final_keep"), "keep|appended|x|");

    // A second container from the same image sees none of it.
    let out = t.sh(
        PYTHON,
        r#"
        echo "new=$([ -e /tmp/new.txt ] && echo present || echo absent)"
        echo "keep=$(tr '\n' '|' < /srv/data/keep.txt):$(stat -c %h /srv/data/keep.txt)"
        echo "big=$(stat -c %s /srv/data/big.txt)"
        echo "sub=$(cat /srv/data/sub/file.txt)"
        echo "sub2=$([ -e /srv/data/sub2 ] && echo present || echo absent)"
        echo "passwd=$(stat -c '%a %u %g' /etc/passwd)"
        echo "legacy=$([ -e /opt/legacy ] && echo present || echo absent)"
        echo "os=$(head -n1 /etc/os-release)"
        echo "mm=$([ -e /srv/data/mm.txt ] && echo present || echo absent)"
        "#,
    );
    let m = kv(&out);
    assert_eq!(get(&m, "new"), "absent", "{out}");
    assert_eq!(get(&m, "keep"), "keep|:1");
    assert_eq!(get(&m, "big"), "11000");
    assert_eq!(get(&m, "sub"), "sub");
    assert_eq!(get(&m, "sub2"), "absent");
    assert_eq!(get(&m, "passwd"), "644 0 0");
    assert_eq!(get(&m, "legacy"), "absent");
    assert_eq!(get(&m, "os"), "ID=lazysnap-test");
    assert_eq!(get(&m, "mm"), "absent");
}

/// Stop and start the daemon (SIGTERM): the snapshot list is unchanged and new containers start.
#[test]
fn daemon_restart_keeps_snapshots() {
    let t = Test::exclusive("daemon_restart_keeps_snapshots");
    assert!(is_lazysnap(), "this test restarts the lazysnap daemon");
    t.pull(BUSYBOX);
    t.pull(PYTHON);
    // An active snapshot that outlives the restart: a created, never started container.
    let snap = common::snapshotter();
    let img = common::image_ref(BUSYBOX);
    let id = t.new_id();
    t.ctr_ok(&[
        "containers",
        "create",
        "--snapshotter",
        &snap,
        &img,
        &id,
        "true",
    ]);
    let before = t.snapshots();
    assert!(
        before.len() >= 5,
        "expected 4 committed + 1 active snapshots: {before:?}"
    );

    t.restart_daemon(false);

    let after = t.snapshots();
    assert_eq!(
        before, after,
        "snapshot list changed across a daemon restart"
    );
    let (code, out) = t.run(BUSYBOX, &["echo", "after restart"]);
    assert_eq!((code, out.as_str()), (0, "after restart\n"));
    let (code, out) = t.run(PYTHON, &["python3", "/app/main.py"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ID=lazysnap-test"), "{out}");
    // The container created before the restart starts too.
    t.ctr_ok(&["tasks", "start", &id]);
    t.remove_container(&id);
}

/// The root of a running container is one FUSE mount of type fuse.lazysnap.
#[test]
fn container_root_is_a_lazysnap_fuse_mount() {
    let t = Test::new("container_root_is_fuse");
    t.pull(BUSYBOX);
    let out = t.sh(BUSYBOX, "cat /proc/self/mountinfo");
    let root = out
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no / in mountinfo:\n{out}"));
    let fstype = root
        .split(" - ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("");
    assert_eq!(fstype, "fuse.lazysnap", "root mount: {root}");

    // And from the host: the container's rootfs is (or sits on) a lazysnap mount.
    let id = t.run_detached(BUSYBOX, &["sleep", "600"]);
    let rootfs = t.rootfs_of(&id);
    let out = std::process::Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE", "-T"])
        .arg(&rootfs)
        .output()
        .expect("findmnt");
    let fm = String::from_utf8_lossy(&out.stdout);
    t.remove_container(&id);
    assert!(
        fm.starts_with("fuse.lazysnap"),
        "findmnt -T {}: {fm}",
        rootfs.display()
    );
}

/// The lazy path: containerd's client pull with snapshot labels (`ctr-remote image rpull`).
#[test]
fn python_image_runs_after_rpull() {
    let t = Test::new("python_image_runs_after_rpull");
    t.rpull(PYTHON);
    let (code, out) = t.run(PYTHON, &["python3", "/app/main.py"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "{\"ok\": [3, 11], \"os_release\": \"ID=lazysnap-test\"}\n"
    );
    let snaps = t.snapshots();
    assert!(snaps.len() >= 4, "3 committed layers expected: {snaps:?}");
}
