#!/usr/bin/env bash
# bench-fio.sh [OUT_DIR]: data-path micro-benchmarks of a lazysnap mount against the same
# files on ext4 (issue 6): fio 1 MiB sequential reads and 4 KiB random reads on cached data,
# and a metadata walk (os.walk + lstat) over $BENCH_FILES files (default 50000).
#
# Uses the test environment in $ENV_DIR when it has an env file, else starts one in a
# temporary directory (scripts/env-up.sh, with $LAZYSNAP_BIN or target/release/lazysnap)
# and removes it at the end. Builds a one-layer image bench/fio (a $BENCH_FIO_MB MiB file,
# default 512, and the small files in 250 dirs) as an OCI layout, pushes it gzip (skopeo)
# and eStargz (`lazysnap convert`), and presents it three ways:
#   ext4        the layer dir lazysnap unpacked the gzip image into (the backing files)
#   lazysnap    a View of that layer (FUSE union over a local lower)
#   lazysnap-rw an Active snapshot over it (a container root: local lower + upper)
#   estargz     a View of the lazily pulled eStargz image, after one full read (every
#               chunk in lazysnap's chunk cache)
# Figures, best of $BENCH_RUNS (default 3):
#   seq-warm  MB/s, 1 MiB reads for 3 s, file in the page cache (read once before)
#   seq-cold  MB/s, 1 MiB reads, after posix_fadvise(DONTNEED) on the mount's file, its
#             backing file and lazysnap's cache files (data on local disk, not in memory)
#   rand-warm IOPS, 4 KiB random reads (psync, one job, 5 s), file in the page cache
#   walk-cold seconds, first walk of a fresh mount (ext4: a warm walk; "ext4 fresh mount":
#             the same tree in an ext4 image mounted afresh for each walk)
#   walk-warm seconds, second walk
#   large folios %  share of the file's cached pages in large folios (from /proc/kpageflags)
# Ratios in the table are to the ext4 row (warm caches), but walk-cold's, which are to the
# "ext4 fresh mount" walk (cold dentry and inode caches on both sides).
# Prints a markdown table on stdout and the ratio to ext4; progress goes to stderr.
# Needs fio, python3, skopeo, ctr, and what env-up.sh needs. Run as root.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OUT=${1:-}
BIN=${LAZYSNAP_BIN:-$LAZYSNAP_TARGET/release/lazysnap}
MB=${BENCH_FIO_MB:-512}
FILES=${BENCH_FILES:-50000}
RUNS=${BENCH_RUNS:-3}
[ -x "$BIN" ] || die "$BIN not found: cargo build --release (or set LAZYSNAP_BIN)"
for t in fio python3 skopeo ctr jq mkfs.ext4; do command -v "$t" >/dev/null || die "$t not found"; done

WORK=$(mktemp -d /var/tmp/bench-fio.XXXXXX)
own_env=0
if [ -n "${ENV_DIR:-}" ] && [ -f "$ENV_DIR/env" ]; then
  DIR=$ENV_DIR
else
  DIR=$WORK/env
  own_env=1
fi
NS=bench-fio
cleanup() {
  if mountpoint -q "$WORK/ext4mnt" 2>/dev/null; then umount "$WORK/ext4mnt" || true; fi
  if [ "$own_env" = 1 ]; then
    "$LAZYSNAP_REPO/scripts/env-down.sh" --rm "$DIR" >/dev/null 2>&1 || true
  else
    for k in $(ctr_ snapshots --snapshotter lazysnap ls 2>/dev/null | awk 'NR>1 && $1 ~ /^bench-/ {print $1}'); do
      ctr_ snapshots --snapshotter lazysnap rm "$k" >/dev/null 2>&1 || true
    done
  fi
  rm -rf "$WORK"
}
ctr_() { ctr -a "$CONTAINERD_ADDRESS" -n "$NS" "$@"; }
trap cleanup EXIT
if [ "$own_env" = 1 ]; then
  log "starting a test environment in $DIR"
  LAZYSNAP_BIN=$BIN "$LAZYSNAP_REPO/scripts/env-up.sh" "$DIR" >/dev/null
fi
# shellcheck disable=SC1091
. "$DIR/env"

# ---- the image -----------------------------------------------------------------------------
log "building bench/fio (${MB} MiB file + $FILES small files)"
CHAIN=$(python3 - "$WORK/oci" "$MB" "$FILES" <<'PY'
import gzip, hashlib, io, json, os, random, sys, tarfile
out, mb, nfiles = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return "sha256:" + d
raw = io.BytesIO()
# Fixed bytes: the same image every run, so a rerun in one environment does not
# replace the image and make containerd's GC remove the benchmark's snapshots.
block = random.Random(6).randbytes(1 << 20)
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
    def add(name, data, kind=tarfile.REGTYPE, mode=0o644):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = kind, mode, 1_700_000_000
        ti.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    add("big", b"", tarfile.DIRTYPE, 0o755)
    ti = tarfile.TarInfo("big/seq.bin")
    ti.mode, ti.mtime, ti.size = 0o644, 1_700_000_000, mb << 20
    class Rep(io.RawIOBase):
        def __init__(self): self.left = mb << 20
        def readable(self): return True
        def readinto(self, b):
            n = min(len(b), self.left, len(block))
            b[:n] = block[:n]; self.left -= n
            return n
    tar.addfile(ti, io.BufferedReader(Rep(), 1 << 20))
    add("tree", b"", tarfile.DIRTYPE, 0o755)
    per = 200
    for d in range((nfiles + per - 1) // per):
        add(f"tree/d{d:03}", b"", tarfile.DIRTYPE, 0o755)
        for i in range(min(per, nfiles - d * per)):
            add(f"tree/d{d:03}/f{i:03}", b"x" * (i % 64))
tar_bytes = raw.getvalue()
diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
layer = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
ld = put(layer)
cfg = put(json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Cmd": ["/bin/true"]},
    "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode())
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg,
               "size": os.path.getsize(os.path.join(blobs, cfg[7:]))},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld,
                "size": len(layer)}]}).encode()
md = put(man)
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md, "size": len(man), "annotations": {"org.opencontainers.image.ref.name": "bench/fio:latest"}}]}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
print(diff_id)
PY
)
REF=$REGISTRY/bench/fio
log "pushing $REF:latest and converting it to $REF:esgz"
skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/oci:bench/fio:latest" "docker://$REF:latest"
"$BIN" convert --plain-http "$REF:latest" "$REF:esgz" >/dev/null 2>&1

log "pulling (gzip: unpacked; eStargz: lazily)"
ctr_ images pull --plain-http --snapshotter lazysnap "$REF:latest" >/dev/null
"$BIN" pull -a "$CONTAINERD_ADDRESS" -n "$NS" --lazysnap-address "$LAZYSNAP_ADDRESS" "$REF:esgz" >/dev/null
# diff_id_of REF: the first (only) diff id of an image in containerd = its chain id.
diff_id_of() {
  local man cfg
  man=$(ctr_ images ls | awk -v r="$1" '$1==r {print $3}')
  cfg=$(ctr_ content get "$man" | jq -r .config.digest)
  ctr_ content get "$cfg" | jq -r '.rootfs.diff_ids[0]'
}
ESGZ_CHAIN=$(diff_id_of "$REF:esgz")

# mount_of KEY: the FUSE mount point behind a lazysnap snapshot's bind mount.
mount_of() { ctr_ snapshots --snapshotter lazysnap mounts /tmp/unused "$1" | sed -n 's/^mount -t bind \([^ ]*\) .*/\1/p'; }
# A GC root each: containerd's GC must not remove them while they are measured.
keep() { ctr_ snapshots --snapshotter lazysnap label "$1" containerd.io/gc.root=1 >/dev/null; }
new_view() { ctr_ snapshots --snapshotter lazysnap view "$1" "$2" >/dev/null; keep "$1"; mount_of "$1"; }

# The ext4 side: the layer dir lazysnap unpacked the gzip image into (snapshots/<id>/fs).
# (The newest complete one: an older image's layer may be being deleted by containerd's GC.)
EXT4=$(ls -dt "$LAZYSNAP_ROOT"/snapshots/*/fs 2>/dev/null | while read -r d; do
  if [ -f "$d/big/seq.bin" ] && [ -d "$d/tree/d000" ]; then echo "$d"; break; fi
done)
[ -n "$EXT4" ] || die "cannot find the unpacked layer under $LAZYSNAP_ROOT/snapshots"

declare -a VIEWS_RO VIEWS_RW VIEWS_GZ
for ((r = 0; r < RUNS; r++)); do
  VIEWS_RO+=("$(new_view "bench-ro-$r" "$CHAIN")")
  ctr_ snapshots --snapshotter lazysnap prepare "bench-rw-$r" "$CHAIN" >/dev/null
  keep "bench-rw-$r"
  VIEWS_RW+=("$(mount_of "bench-rw-$r")")
  VIEWS_GZ+=("$(new_view "bench-esgz-$r" "$ESGZ_CHAIN")")
done
log "warming the chunk cache (one full read of the eStargz view)"
cat "${VIEWS_GZ[0]}/big/seq.bin" >/dev/null
# Whole files of cached chunks are assembled in the background after an open.
sleep 10

# ext4 with cold dentry and inode caches, for the first walk: the tree copied into a small
# ext4 image, mounted afresh (loop device) for each walk. (The image file's pages stay in the
# host page cache, as the lazysnap mounts' backing files do.)
log "building the ext4 image for cold walks"
truncate -s 1G "$WORK/ext4.img"
mkfs.ext4 -q -F "$WORK/ext4.img"
mkdir -p "$WORK/ext4mnt"
mount -o loop "$WORK/ext4.img" "$WORK/ext4mnt"
cp -a "$EXT4/tree" "$WORK/ext4mnt/"
umount "$WORK/ext4mnt"

log "measuring ($RUNS runs each)"
python3 - "$EXT4" "$LAZYSNAP_ROOT" "$FILES" "${OUT:-}" "$WORK/ext4.img" "$WORK/ext4mnt" \
  "$(IFS=,; echo "${VIEWS_RO[*]}")" "$(IFS=,; echo "${VIEWS_RW[*]}")" "$(IFS=,; echo "${VIEWS_GZ[*]}")" <<'PY'
import json, os, subprocess, sys, time
ext4, root, nfiles, out, img, imgmnt = sys.argv[1:7]
nfiles = int(nfiles)
views = [a.split(",") for a in sys.argv[7:10]]
setups = {"ext4": [ext4] * len(views[0]),
          "lazysnap": views[0],
          "lazysnap-rw": views[1],
          "estargz": views[2]}

def drop(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)

def drop_backing(mnt):
    drop(os.path.join(mnt, "big/seq.bin"))
    drop(os.path.join(ext4, "big/seq.bin"))
    for d, _, fs in os.walk(os.path.join(root, "cache")):
        for f in fs:
            drop(os.path.join(d, f))

def fio(path, rw, bs, extra):
    args = ["fio", "--name=b", f"--filename={path}", "--readonly", f"--rw={rw}", f"--bs={bs}",
            "--ioengine=psync", "--invalidate=0", "--output-format=json"] + extra
    j = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
    r = j["jobs"][0]["read"]
    return r["bw_bytes"] / 1e6, r["iops"]

def large_folios(path, size=64 << 20):
    # Share of the file's first `size` bytes, as cached, that sit in large folios
    # (compound pages): map the file, touch each page, then /proc/self/pagemap gives each
    # page's frame and /proc/kpageflags its flags (bit 15 compound head, 16 tail).
    import ctypes, struct
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    size = min(size, os.fstat(fd).st_size)
    addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
    os.close(fd)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), f"mmap {path}")
    big = present = 0
    try:
        with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
            for off in range(0, size, 4096):
                ctypes.c_ubyte.from_address(addr + off).value
                pm.seek((addr + off) // 4096 * 8)
                e = struct.unpack("Q", pm.read(8))[0]
                if not e >> 63 & 1:
                    continue
                kf.seek((e & ((1 << 55) - 1)) * 8)
                flags = struct.unpack("Q", kf.read(8))[0]
                present += 1
                big += (flags >> 15 | flags >> 16) & 1
    finally:
        libc.munmap(addr, size)
    return 100.0 * big / present if present else 0.0

def walk(top):
    t = time.perf_counter()
    n = 0
    for d, dirs, files in os.walk(top):
        for f in files + dirs:
            os.lstat(os.path.join(d, f))
            n += 1
    assert n >= nfiles, (top, n)
    return time.perf_counter() - t

res = {k: {} for k in setups}
for name, mnts in setups.items():
    seqw, seqc, rand, wc, ww, folios = [], [], [], [], [], []
    for m in mnts:
        f = os.path.join(m, "big/seq.bin")
        wc.append(walk(os.path.join(m, "tree")))
        ww.append(walk(os.path.join(m, "tree")))
        drop_backing(m)
        seqc.append(fio(f, "read", "1M", [])[0])
        fio(f, "read", "1M", [])
        seqw.append(fio(f, "read", "1M", ["--time_based", "--runtime=3"])[0])
        folios.append(large_folios(f))
        rand.append(fio(f, "randread", "4k", ["--runtime=5", "--time_based"])[1])
    res[name] = {"seq-warm MB/s": max(seqw), "seq-cold MB/s": max(seqc),
                 "rand-warm IOPS": max(rand), "walk-cold s": min(wc), "walk-warm s": min(ww),
                 "large folios %": max(folios)}
    print(f"[bench-fio] {name}: {res[name]}", file=sys.stderr)

cold = []
for _ in setups["ext4"]:
    subprocess.run(["mount", "-o", "loop,ro", img, imgmnt], check=True)
    try:
        cold.append(walk(os.path.join(imgmnt, "tree")))
    finally:
        subprocess.run(["umount", imgmnt], check=True)
res["ext4 fresh mount"] = {"walk-cold s": min(cold)}
print(f"[bench-fio] ext4 fresh mount: {res['ext4 fresh mount']}", file=sys.stderr)

cols = list(res["ext4"].keys())
lines = ["| setup | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
for name, r in res.items():
    cells = []
    for c in cols:
        if c not in r:
            cells.append("–")
            continue
        ref = "ext4 fresh mount" if c == "walk-cold s" else "ext4"
        v, base = r[c], res[ref][c]
        ratio = v / base if base else 0
        fmt = f"{v:.3f}" if c.endswith(" s") else f"{v:,.0f}"
        cells.append(fmt if name == ref or c.endswith("%") else f"{fmt} ({ratio:.2f}×)")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
lines.append("")
lines.append("Ratios are to ext4; walk-cold's to the ext4 fresh mount (cold dentry and inode caches).")
lines.append("Large folios %: share of the file's cached pages (first 64 MiB, after seq-warm) in large")
lines.append("folios; reads copy from few large folios much faster than from many 4 KiB pages. A")
lines.append("passthrough file's pages are its backing file's; a FUSE page cache (kernels without")
lines.append("FUSE large folios) holds 4 KiB pages only.")
print("\n".join(lines))
if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench-fio.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    with open(os.path.join(out, "bench-fio.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
PY
