#!/usr/bin/env python3
"""Build the layer tars of the benchmark's large images into OUT (called by build.sh).

Writes OUT/layers/<name>.tar (uncompressed OCI layer tars) and OUT/images.json
([{"ref", "tag", "layers", "cmd"}], the shape scripts/testimg/build.py writes).

Images (busybox and python come from the test images, scripts/images.sh):
  bench/large    L1 busybox + libc6 + libcrypt1 + perl-base (a runnable base)
                 L2 perl with its modules (perl, libperl5.36, perl-modules-5.36, gdbm, db)
                 L3 a C/C++ toolchain (gcc-12, cpp-12, binutils, libc6-dev, libstdc++-12-dev,
                    linux-libc-dev)
                 L4 headers: libboost1.74-dev and the newest linux-headers-*-common
                 tens of thousands of files, several hundred MB; its start (`perl -MPOSIX -e`)
                 reads a few of them
  bench/bigfile  L1 busybox, L2 /data/blob: BIGFILE_MB (default 600) MiB of seeded random
                 bytes (incompressible), of which the start reads a few MiB at offsets
"""
import os
import random
import shutil
import subprocess
import sys
import json

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "testimg"))
from build import busybox_rootfs, debs, unpack, tar_dir  # noqa: E402
from tk import layer  # noqa: E402

BIGFILE_MB = int(os.environ.get("BIGFILE_MB", "600"))


def linux_headers_common():
    """The newest linux-headers-<ver>-common package (not -rt) apt knows."""
    out = subprocess.run(["apt-cache", "search", "--names-only", r"^linux-headers-.*-common$"],
                         check=True, capture_output=True, text=True).stdout
    names = sorted((line.split()[0] for line in out.splitlines() if line.strip()),
                   key=lambda n: [int(x) if x.isdigit() else x for x in n.replace("-", ".").split(".")])
    if not names:
        sys.exit("no linux-headers-*-common package (apt-get update?)")
    return names[-1]


def random_file(path, mib, seed):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(rng.randbytes(1 << 20))


def main(out):
    L = os.path.join(out, "layers")
    work = os.path.join(out, "work")
    os.makedirs(L, exist_ok=True)
    images = []

    # ---- large ---------------------------------------------------------------------------
    base = f"{work}/large-base"
    busybox_rootfs(base)
    unpack(debs(f"{work}/debs-base", ["libc6", "libcrypt1", "perl-base"]), base)
    tar_dir(f"{L}/large-base.tar", base)
    groups = {
        "large-perl": ["perl", "libperl5.36", "perl-modules-5.36", "libgdbm6", "libgdbm-compat4",
                       "libdb5.3"],
        "large-toolchain": ["gcc-12", "cpp-12", "binutils-x86-64-linux-gnu", "libbinutils",
                            "libc6-dev", "libgcc-12-dev", "libstdc++-12-dev", "linux-libc-dev"],
        "large-headers": ["libboost1.74-dev", linux_headers_common()],
    }
    for name, pkgs in groups.items():
        root = f"{work}/{name}"
        unpack(debs(f"{work}/debs-{name}", pkgs), root)
        tar_dir(f"{L}/{name}.tar", root)
        shutil.rmtree(root)
    images.append({"ref": "bench/large:latest", "tag": "large",
                   "layers": ["large-base", "large-perl", "large-toolchain", "large-headers"],
                   "cmd": ["perl", "-MPOSIX", "-e", 'print "perl $]\\n"']})

    # ---- bigfile -------------------------------------------------------------------------
    bb = f"{work}/bigfile-base"
    busybox_rootfs(bb)
    tar_dir(f"{L}/bigfile-base.tar", bb)
    blob = f"{work}/blob"
    random_file(blob, BIGFILE_MB, 1006)
    layer(f"{L}/bigfile-data.tar", [
        {"t": "d", "n": "data/"},
        {"t": "f", "n": "data/blob", "src": blob},
    ])
    os.remove(blob)
    images.append({"ref": "bench/bigfile:latest", "tag": "bigfile",
                   "layers": ["bigfile-base", "bigfile-data"], "cmd": ["/bin/sh"]})

    with open(os.path.join(out, "images.json"), "w") as fh:
        json.dump(images, fh, indent=1)
    shutil.rmtree(work)


if __name__ == "__main__":
    main(sys.argv[1])
