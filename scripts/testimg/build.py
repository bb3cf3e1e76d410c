#!/usr/bin/env python3
"""Build the layer tars of lazysnap's test images into OUT (called by scripts/images.sh).

Writes OUT/layers/<name>.tar (uncompressed OCI layer tars) and OUT/images.json:
  [{"ref": "test/busybox:latest", "tag": "busybox", "layers": [...], "cmd": [...]}, ...]
images.sh then assembles each image with umoci and pushes it with skopeo.

Images (all have a busybox layer at the bottom, so `sh -c` works in them):
  test/busybox    one layer: /bin/busybox + applet symlinks, /etc/passwd, /tmp ...
  test/python     L1 base (busybox, libc6, zlib1g, libexpat1, marker files)
                  L2 python3 (Debian python3.11-minimal + libpython3.11-stdlib)
                  L3 whiteouts + replacements + /app/main.py
  cases/bNN:t     the field cases of CASES.md (union side), busybox or python base + case layers
                  (entries with "index" are OCI indexes, assembled by testimg/index.py; entries
                  with "arch" get that architecture in their config)
eStargz variants (`…:esgz`) are converted from these by `images.sh push-estargz`.
"""
import glob
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tk import layer, WH, OPQ  # noqa: E402

MTIME = 1700000000
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tar_dir(path, root):
    """Layer tar of the tree under root: every directory has its own entry before its
    children (so parents always exist), owner root, sorted order."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            if rel != ".":
                add(tf, dirpath, rel)
            leaves = filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for n in sorted(leaves):
                add(tf, os.path.join(dirpath, n), os.path.normpath(os.path.join(rel, n)))
    return path


def add(tf, full, arc):
    ti = tf.gettarinfo(full, arcname=arc)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    if ti.isreg():
        with open(full, "rb") as fh:
            tf.addfile(ti, fh)
    else:
        tf.addfile(ti)


def busybox_rootfs(root):
    """/bin/busybox with one relative symlink per applet, plus the usual top-level dirs."""
    bb = shutil.which("busybox") or "/bin/busybox"
    os.makedirs(f"{root}/bin", exist_ok=True)
    shutil.copy2(os.path.realpath(bb), f"{root}/bin/busybox")
    os.chmod(f"{root}/bin/busybox", 0o755)
    applets = subprocess.run([f"{root}/bin/busybox", "--list"], check=True,
                             capture_output=True, text=True).stdout.split()
    for a in applets:
        if a != "busybox" and not os.path.lexists(f"{root}/bin/{a}"):
            os.symlink("busybox", f"{root}/bin/{a}")
    os.symlink("bin", f"{root}/sbin")
    for d in ("etc", "tmp", "root", "proc", "sys", "dev", "var", "home"):
        os.makedirs(f"{root}/{d}", exist_ok=True)
    os.chmod(f"{root}/tmp", 0o1777)
    os.chmod(f"{root}/root", 0o700)
    with open(f"{root}/etc/passwd", "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home:/bin/sh\n"
                "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    with open(f"{root}/etc/group", "w") as f:
        f.write("root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n")
    with open(f"{root}/etc/hostname", "w") as f:
        f.write("lazysnap-test\n")
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            os.utime(p, (MTIME, MTIME), follow_symlinks=False)
        os.utime(dirpath, (MTIME, MTIME))


def debs(workdir, pkgs):
    os.makedirs(workdir, exist_ok=True)
    subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root"] + pkgs, cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    return sorted(glob.glob(f"{workdir}/*.deb"))


def unpack(debfiles, root):
    for d in debfiles:
        subprocess.run(["dpkg-deb", "-x", d, root], check=True)


def write(root, rel, data, mode=0o644):
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
    os.chmod(p, mode)


MAIN_PY = '''import json, os, sys
print(json.dumps({"ok": sys.version_info[:2], "os_release": open("/etc/os-release").read().split()[0]}))
'''


def main(out):
    L = os.path.join(out, "layers")
    work = os.path.join(out, "work")
    os.makedirs(L, exist_ok=True)
    images = []

    # ---- busybox ---------------------------------------------------------------------
    bbroot = f"{work}/busybox"
    busybox_rootfs(bbroot)
    tar_dir(f"{L}/busybox.tar", bbroot)
    images.append({"ref": "test/busybox:latest", "tag": "busybox", "layers": ["busybox"],
                   "cmd": ["/bin/sh"]})

    # ---- python (3 layers) -------------------------------------------------------------
    base = f"{work}/py-base"
    busybox_rootfs(base)
    unpack(debs(f"{work}/debs-base", ["libc6", "zlib1g", "libexpat1"]), base)
    write(base, "etc/os-release", 'ID=lazysnap-base\nNAME="lazysnap test base"\n')
    write(base, "etc/motd", "base layer motd\n")
    write(base, "opt/legacy/a", "legacy a\n")
    write(base, "opt/legacy/b/c", "legacy c\n")
    write(base, "var/lib/app/old.db", "old\n")
    write(base, "srv/data/keep.txt", "keep\n")
    write(base, "srv/data/big.txt", "0123456789\n" * 1000)
    write(base, "srv/data/sub/file.txt", "sub\n")
    tar_dir(f"{L}/py-base.tar", base)

    py = f"{work}/py-python"
    unpack(debs(f"{work}/debs-py", ["python3.11-minimal", "libpython3.11-minimal",
                                     "libpython3.11-stdlib", "python3-minimal"]), py)
    tar_dir(f"{L}/py-python.tar", py)

    layer(f"{L}/py-app.tar", [
        {"t": "d", "n": "etc/"},
        {"t": "f", "n": "etc/os-release", "data": b'ID=lazysnap-test\nNAME="lazysnap test python"\nVERSION_ID=3\n'},
        WH("etc", "motd"),
        {"t": "d", "n": "opt/"},
        WH("opt", "legacy"),
        {"t": "d", "n": "usr/"},
        {"t": "d", "n": "usr/share/"},
        WH("usr/share", "doc"),
        {"t": "d", "n": "var/"},
        {"t": "d", "n": "var/lib/"},
        {"t": "d", "n": "var/lib/app/"},
        OPQ("var/lib/app"),
        {"t": "f", "n": "var/lib/app/new.db", "data": b"new\n"},
        {"t": "d", "n": "app/"},
        {"t": "f", "n": "app/main.py", "data": MAIN_PY.encode()},
    ])
    images.append({"ref": "test/python:latest", "tag": "python",
                   "layers": ["py-base", "py-python", "py-app"],
                   "cmd": ["python3", "/app/main.py"]})

    # ---- field cases (CASES.md) ----------------------------------------------------------
    def case(name, layers, base=("busybox",)):
        tars = list(base)
        for i, entries in enumerate(layers, 1):
            n = f"{name}-l{i}"
            layer(f"{L}/{n}.tar", entries)
            tars.append(n)
        images.append({"ref": f"cases/{name}:t", "tag": f"cases-{name}", "layers": tars,
                       "cmd": ["/bin/sh"]})

    pybase = ("py-base", "py-python")
    d = lambda n, **kw: dict(t="d", n=n, **kw)  # noqa: E731
    f = lambda n, data=b"", **kw: dict(t="f", n=n, data=data, **kw)  # noqa: E731

    case("b01", [[d("cfg/"), f("cfg/old1", b"1"), f("cfg/old2", b"2")],
                 [WH("", "cfg")],
                 [d("cfg/"), f("cfg/new", b"n")]])
    case("b05a", [[d("data/"), f("data/item", b"item")],
                  [WH("", "data"), WH("data", "item")]])
    case("b05b", [[d("data/"), f("data/item", b"item")],
                  [WH("data", "item"), WH("", "data")]])
    tool = random.Random(1006).randbytes(1 << 20)
    case("b06", [[d("bin/"), f("bin/tool", tool, mode=0o755),
                  {"t": "h", "n": "bin/tool2", "to": "bin/tool"},
                  {"t": "h", "n": "bin/tool3", "to": "bin/tool"}]])
    case("b08", [[d("w/"), f("w/a", b"v1"), {"t": "h", "n": "w/b", "to": "w/a"}]])
    case("b09", [[d("ro/", uid=1000, gid=1000),
                  f("ro/locked", b"locked\n", mode=0o444, uid=1000, gid=1000, mtime=1600000000)]])
    cap = bytes.fromhex("01000002") + (1 << 10).to_bytes(4, "little") + bytes(12)  # v2, +ep, net_bind
    case("b10", [[d("usr/"), d("usr/bin/"),
                  f("usr/bin/elevate", b"#!/bin/sh\necho elevate\n", mode=0o4711),
                  f("usr/bin/grpexec", b"#!/bin/sh\necho grpexec\n", mode=0o2755),
                  d("shared/", mode=0o1777), d("setgid-dir/", mode=0o2775, gid=1000),
                  f("cap-bin", b"#!/bin/sh\necho cap\n", mode=0o755,
                    xattrs={"security.capability": cap})]])
    long_target = ("d" * 99 + "/") * 2 + "d" * 100
    assert len(long_target) == 300
    case("b12", [[d("lib/"), {"t": "s", "n": "lib/libthing.so", "to": "libthing.so.5.13"},
                  f("lib/libthing.so.5.13", b"ELF?"),
                  d("lnk/"), {"t": "s", "n": "lnk/long", "to": long_target},
                  {"t": "s", "n": "lnk/loop1", "to": "loop2"},
                  {"t": "s", "n": "lnk/loop2", "to": "loop1"},
                  {"t": "s", "n": "lnk/abs", "to": "/etc/hostname"}]])
    case("b13", [[d("srv/"), d("srv/old/"), f("srv/old/f1", b"f1\n", mtime=1500000000),
                  d("srv/old/sub/", mtime=1500000001),
                  f("srv/old/sub/f2", b"f2\n", mtime=1500000002, xattrs={"user.tag": "1"}),
                  d("srv/old/private/", mode=0o700, mtime=1500000003),
                  f("srv/old/private/p", b"p\n", mode=0o600)]], base=pybase)
    case("b15", [[d("db/"), f("db/data.bin", random.Random(1015).randbytes(64 << 10))]],
         base=pybase)
    case("b21", [[d("x/", mode=0o700), f("x/keep", b"keep"), d("x/", mode=0o755),
                  f("f", b"one"), f("f", b"two"),
                  f("g", b"file"), d("g/"), f("g/child", b"child"),
                  d("h/"), f("h/c", b"c"), {"t": "s", "n": "h", "to": "x"},
                  f("e", b"old"), f("e", b"")]])
    case("b27", [[d("usr/", mtime=1600000000), d("usr/bin/", mode=0o751, mtime=1600000001),
                  f("usr/bin/a", b"a")],
                 [f("usr/bin/b", b"b")],
                 [f("opt/tool/run", b"r")]])

    # kinds: every entry kind and name shape a converter must carry through (tests/e2e_convert.rs):
    # devices and a fifo, binary xattr values, a path of ~560 bytes with a 255-byte name,
    # non-UTF-8 (Latin-1) names and link targets, empty files, a 1.25 MiB file (20 chunks of
    # 64 KiB, a zero tail) with a hardlink, hardlink groups, symlinks of every sort (hardlink
    # entries carry their target's metadata, as tar writers do: extractors apply the link's
    # header to the shared inode); L2 has a whiteout, an opaque dir, a file replaced by a dir
    # (no whiteout: as layer diffs have it) and a new version of a hardlinked file; L3 a
    # metadata-only dir change and a file whose parent dirs have no entries.
    latin = b"caf\xe9-\xff\xfe".decode("utf-8", "surrogateescape")
    longdir = "kinds/" + "L" * 150 + "/" + "M" * 150
    longfile = longdir + "/" + "n" * 255
    big = random.Random(1040).randbytes(1 << 20) + bytes(256 << 10)
    case("kinds", [
        [d("kinds/"), d("kinds/dev/"),
         {"t": "c", "n": "kinds/dev/chr", "major": 1, "minor": 3, "mode": 0o666},
         {"t": "b", "n": "kinds/dev/blk", "major": 7, "minor": 0, "mode": 0o660, "gid": 6},
         {"t": "p", "n": "kinds/dev/fifo", "mode": 0o600},
         f("kinds/empty"),
         f("kinds/big", big, mode=0o640, uid=1000, gid=1000, mtime=1650000000),
         {"t": "h", "n": "kinds/big-link", "to": "kinds/big", "mode": 0o640, "uid": 1000,
          "gid": 1000, "mtime": 1650000000},
         f("kinds/xattrs", b"x\n", xattrs={"user.bin": b"\x00\x01\x7f\x80\xfe\xff",
                                           "user.text": "plain text"}),
         f("kinds/suid", b"#!/bin/sh\n", mode=0o4755),
         f("kinds/private", b"p\n", mode=0o600, uid=1000, gid=1000, mtime=1234567890),
         f("kinds/with space", b"s\n"), f("kinds/\u00fcn\u00efc\u00f8d\u00e9-\u540d", b"u\n"),
         d("kinds/" + "L" * 150 + "/"), d(longdir + "/"), f(longfile, b"long\n"),
         {"t": "s", "n": "kinds/long-sym", "to": longfile[len("kinds/"):]},
         {"t": "h", "n": "kinds/long-hard", "to": longfile},
         d("kinds/" + latin + "/"), f("kinds/" + latin + "/file-" + latin, b"latin\n"),
         {"t": "s", "n": "kinds/latin-sym", "to": latin},
         {"t": "s", "n": "kinds/rel-sym", "to": "empty"},
         {"t": "s", "n": "kinds/abs-sym", "to": "/etc/hostname"},
         {"t": "s", "n": "kinds/dangling", "to": "does/not/exist"},
         {"t": "s", "n": "kinds/dir-sym", "to": "dev"},
         d("kinds/hl/"), f("kinds/hl/a", b"shared\n"),
         {"t": "h", "n": "kinds/hl/b", "to": "kinds/hl/a"},
         {"t": "h", "n": "kinds/hl/c", "to": "kinds/hl/a"},
         f("kinds/gone", b"gone\n"),
         d("kinds/opq/"), f("kinds/opq/old", b"old\n"), d("kinds/opq/olddir/"),
         f("kinds/opq/olddir/x", b"x\n"),
         f("kinds/becomes-dir", b"file\n")],
        [d("kinds/"), WH("kinds", "gone"),
         d("kinds/opq/", mode=0o750), OPQ("kinds/opq"), f("kinds/opq/new", b"new\n"),
         d("kinds/becomes-dir/"),
         f("kinds/becomes-dir/inner", b"inner\n"),
         f("kinds/empty2"), d("kinds/hl/"), f("kinds/hl/a", b"changed\n")],
        [d("kinds/dev/", mode=0o750, mtime=1660000000),
         f("kinds/deep/a/b/file", b"deep\n")]])

    # B26: an empty layer between two ordinary ones. L2 is an empty tar archive (10240 zero
    # bytes, `tar -cf L2.tar -T /dev/null`); in b26z it is a zero-byte stream, which umoci
    # stores as the gzip of nothing (the canonical "empty layer" blob).
    case("b26", [[d("bin/"), f("bin/app", random.Random(1026).randbytes(1024), mode=0o755)],
                 [],
                 [d("etc/"), f("etc/conf", b"conf=26\n")]])
    case("b26z", [[d("bin/"), f("bin/app", random.Random(1026).randbytes(1024), mode=0o755)],
                  [],
                  [d("etc/"), f("etc/conf", b"conf=26\n")]])
    with open(f"{L}/b26-l2.tar", "wb") as fh:
        fh.write(bytes(10240))
    with open(f"{L}/b26z-l2.tar", "wb") as fh:
        pass

    # B20: single-platform images (the busybox layer; only the config's architecture differs)
    # and OCI indexes over them written by scripts/testimg/index.py after umoci:
    #   cases/b20:t      linux/arm64 + an artifact manifest for unknown/unknown
    #   cases/b20both:t  linux/arm64 + linux/amd64 + the artifact
    for arch in ("arm64", "amd64"):
        images.append({"ref": f"cases/b20-{arch}:t", "tag": f"cases-b20-{arch}",
                       "layers": ["busybox"], "cmd": ["/bin/sh"], "arch": arch})
    images.append({"ref": "cases/b20:t", "tag": "cases-b20",
                   "index": ["cases-b20-arm64", "@artifact"]})
    images.append({"ref": "cases/b20both:t", "tag": "cases-b20both",
                   "index": ["cases-b20-arm64", "cases-b20-amd64", "@artifact"]})

    with open(os.path.join(out, "images.json"), "w") as fh:
        json.dump(images, fh, indent=1)
    shutil.rmtree(work)


if __name__ == "__main__":
    main(sys.argv[1])
