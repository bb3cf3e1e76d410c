#!/usr/bin/env bash
# podman-partial.sh REGISTRY IMAGE
#   Pull REGISTRY/IMAGE (plain-HTTP registry, e.g. 127.0.0.1:5000 and test/busybox:zstd) with
#   podman (Debian 12: podman 4.3.1, containers/storage 1.43.0, containers/image 5.23.1) into
#   a private store with partial ("chunked") pulls enabled, and exit 0 only when EVERY layer
#   was verifiably pulled through the partial path. Then print the image's rootfs listing.
#
#   Proof (all required, per layer digest D of the image manifest):
#     1. podman's debug log has  msg="Retrieved partial blob D"  (containers/image copy.go);
#        "Failed to retrieve partial blob: <why>" anywhere means podman fell back -> exit 1.
#     2. a logging proxy (tests/helpers/faultproxy.py, fault "log") in front of the registry
#        saw >= 1 GET of /v2/<repo>/blobs/D, and every GET of D carried a Range header and was
#        answered 206. (A 200 answer to a Range GET would still give line 1: image 5.23.1
#        splits a 200 body into the requested parts; so line 1 alone is not proof.)
#     3. the store's overlay-layers/layers.json has a layer whose "diff-digest" is D (the
#        compressed digest: storage 1.43 records no DiffID, no compressed-diff-digest and no
#        tar-split for a chunked layer) with big data "zstd-chunked-manifest" (the TOC).
#        A full pull records diff-digest = DiffID and compressed-diff-digest = D instead.
#   Printed as context (not proof: it also appears when the differ later fails):
#     "Applying differ in <graphroot>/overlay/staging/N" and "Missing X bytes out of Y (P %)".
#
#   Output (stdout): "evidence: ..." lines, then "== rootfs" and one line per path, sorted:
#     TYPE MODE UID:GID SIZE /path[ -> target][ dev=MAJ,MIN][ sha256:HEX]
#     TYPE is d f l c b p s; MODE octal (4 digits); SIZE is 0 for all but f;
#     sha256 of regular files only with LIST_SHA=1. Names and targets are written as raw
#     bytes (a name that is not UTF-8 keeps its bytes).
#   Exit: 0 partial verified; 1 pulled but not (provably) partial; 2 usage/setup error;
#         3 podman pull failed.
#
#   Environment: LIST_OUT=FILE writes the listing there instead of stdout; LIST_SHA=1;
#     KEEP=1 keeps the work dir (debug log W/pull.log, proxy log W/proxy.jsonl);
#     FAULT=ignore-range,... adds faultproxy faults (ignore-range must make this exit 1);
#     FAULTPROXY=path of faultproxy.py (default: the one next to this script,
#     else /work/main/tests/helpers/faultproxy.py).
#
#   Isolation: podman --root/--runroot/--tmpdir/--network-config-dir in a mktemp dir,
#   CONTAINERS_STORAGE_CONF / CONTAINERS_REGISTRIES_CONF / CONTAINERS_CONF point at files
#   written there, --signature-policy too, --events-backend none. podman runs inside
#   `unshare --mount` with a tmpfs over /var/lib/containers/cache (root's blob-info cache,
#   which image 5.23.1 always uses for euid 0), so the system store and cache are untouched
#   and the `podman image mount` overlay vanishes with the namespace. Needs root, the
#   native overlay driver (partial pulls are overlay-only in storage 1.43: vfs answers
#   "Failed to retrieve partial blob: not supported"), python3, util-linux unshare.
set -euo pipefail

die() { echo "podman-partial: $*" >&2; exit 2; }

REGISTRY=${1:-${REGISTRY:-}}
IMAGE=${2:-${IMAGE:-}}
[ -n "$REGISTRY" ] && [ -n "$IMAGE" ] || die "usage: podman-partial.sh REGISTRY IMAGE (host:port repo:tag)"
[ "$(id -u)" = 0 ] || die "must run as root"
for t in podman python3 unshare mount; do
  command -v "$t" >/dev/null || die "$t not found"
done
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${FAULTPROXY:-}" ]; then
  for f in "$here/faultproxy.py" "$here/../tests/helpers/faultproxy.py" /work/main/tests/helpers/faultproxy.py; do
    [ -f "$f" ] && { FAULTPROXY=$f; break; }
  done
fi
[ -f "${FAULTPROXY:-}" ] || die "faultproxy.py not found (set FAULTPROXY)"

W=$(mktemp -d "${TMPDIR:-/tmp}/podman-partial.XXXXXX")
proxy_pid=
cleanup() {
  if [ -n "$proxy_pid" ] && kill -0 "$proxy_pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$proxy_pid/cmdline" | grep -q faultproxy; then
    kill "$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    echo "podman-partial: kept $W" >&2
  else
    rm -rf "$W"
  fi
}
trap cleanup EXIT
mkdir -p "$W/store" "$W/run" "$W/tmp" "$W/net" "$W/bic"

# ---- logging proxy in front of the registry -------------------------------------------
python3 "$FAULTPROXY" --upstream "$REGISTRY" --faults "log${FAULT:+,$FAULT}" \
  --log "$W/proxy.jsonl" --ready "$W/proxy.ready" </dev/null >/dev/null 2>"$W/proxy.err" &
proxy_pid=$!
for _ in $(seq 100); do [ -s "$W/proxy.ready" ] && break; sleep 0.1; done
[ -s "$W/proxy.ready" ] || { cat "$W/proxy.err" >&2; die "faultproxy did not start"; }
PORT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$W/proxy.ready")
PROXY=127.0.0.1:$PORT
REF=$PROXY/$IMAGE

# ---- configuration ---------------------------------------------------------------------
# pull_options is read by storage's chunked differ from the storage.conf that
# CONTAINERS_STORAGE_CONF names (it re-reads the default config; --storage-opt does not reach it).
cat >"$W/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$W/store"
runroot = "$W/run"

[storage.options]
pull_options = {enable_partial_images = "true", use_hard_links = "false", ostree_repos = ""}
EOF
cat >"$W/registries.conf" <<EOF
unqualified-search-registries = []

[[registry]]
location = "$PROXY"
insecure = true
EOF
cat >"$W/containers.conf" <<EOF
[engine]
events_logger = "none"
cgroup_manager = "cgroupfs"
tmp_dir = "$W/tmp"

[network]
network_config_dir = "$W/net"
EOF
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$W/policy.json"

# ---- layer digests of the manifest (linux/amd64 instance of an index) -------------------
python3 - "$REGISTRY" "$IMAGE" >"$W/layers" <<'PY' || die "cannot read the manifest of $REGISTRY/$IMAGE"
import json, sys, urllib.request
reg, image = sys.argv[1:3]
if "@" in image:
    repo, ref = image.split("@", 1)
else:
    repo, _, ref = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
accept = ", ".join([
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json"])
def get(r):
    url = f"http://{reg}/v2/{repo}/manifests/{r}"
    try:
        req = urllib.request.Request(url, headers={"Accept": accept})
        return json.load(urllib.request.urlopen(req, timeout=30))
    except (OSError, ValueError) as e:
        sys.exit(f"GET {url}: {e}")
m = get(ref)
if "manifests" in m:
    for d in m["manifests"]:
        p = d.get("platform", {})
        if p.get("os") == "linux" and p.get("architecture") == "amd64":
            m = get(d["digest"])
            break
    else:
        sys.exit("no linux/amd64 instance in the index")
for l in m["layers"]:
    print(l["digest"], l["mediaType"], l["size"])
PY
[ -s "$W/layers" ] || die "manifest of $REGISTRY/$IMAGE has no layers"

# ---- pull, mount, list (inside a private mount namespace) -------------------------------
cat >"$W/inner.sh" <<'EOF'
set -euo pipefail
# root's blob-info cache: keep podman off the system one (mkdir: podman would create it anyway)
mkdir -p /var/lib/containers/cache
mount -t tmpfs -o mode=0700 tmpfs /var/lib/containers/cache
P=(podman --root "$W/store" --runroot "$W/run" --tmpdir "$W/tmp" --network-config-dir "$W/net"
   --storage-driver overlay --events-backend none --cgroup-manager cgroupfs)
if ! "${P[@]}" --log-level=debug pull --signature-policy "$W/policy.json" "$REF" >"$W/pull.log" 2>&1; then
  exit 3
fi
mnt=$("${P[@]}" image mount "$REF")
python3 - "$mnt" "${LIST_SHA:-0}" >"$W/rootfs.txt" <<'PY'
import hashlib, os, stat, sys
root, want_sha = sys.argv[1], sys.argv[2] == "1"
kinds = [(stat.S_ISDIR, "d"), (stat.S_ISREG, "f"), (stat.S_ISLNK, "l"), (stat.S_ISCHR, "c"),
         (stat.S_ISBLK, "b"), (stat.S_ISFIFO, "p"), (stat.S_ISSOCK, "s")]
out = []
for dirpath, dirs, files in os.walk(root):
    for name in dirs + files:
        full = os.path.join(dirpath, name)
        st = os.lstat(full)
        kind = next(k for f, k in kinds if f(st.st_mode))
        rel = "/" + os.path.relpath(full, root)
        line = f"{kind} {stat.S_IMODE(st.st_mode):04o} {st.st_uid}:{st.st_gid} " \
               f"{st.st_size if kind == 'f' else 0} {rel}"
        if kind == "l":
            line += " -> " + os.readlink(full)
        if kind in "cb":
            line += f" dev={os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
        if kind == "f" and want_sha:
            h = hashlib.sha256()
            with open(full, "rb") as fh:
                for b in iter(lambda: fh.read(1 << 20), b""):
                    h.update(b)
            line += " sha256:" + h.hexdigest()
        out.append((os.fsencode(rel), line))
# names are bytes: write them as they are (not UTF-8 names included)
for _, line in sorted(out):
    sys.stdout.buffer.write(os.fsencode(line) + b"\n")
PY
"${P[@]}" image unmount "$REF" >/dev/null
EOF
rc=0
W=$W REF=$REF LIST_SHA=${LIST_SHA:-0} \
  CONTAINERS_STORAGE_CONF=$W/storage.conf CONTAINERS_REGISTRIES_CONF=$W/registries.conf \
  CONTAINERS_CONF=$W/containers.conf \
  unshare --mount --propagation private bash "$W/inner.sh" || rc=$?
if [ "$rc" = 3 ]; then
  grep -E 'level=(error|fatal)|^Error' "$W/pull.log" >&2 || tail -n 20 "$W/pull.log" >&2
  echo "podman-partial: podman pull $REF failed" >&2
  exit 3
fi
[ "$rc" = 0 ] || die "mount/listing step failed (rc $rc)"

# ---- evidence ----------------------------------------------------------------------------
verdict=0
python3 - "$W/layers" "$W/pull.log" "$W/proxy.jsonl" "$W/store/overlay-layers/layers.json" <<'PY' || verdict=$?
import json, re, sys
layers_f, log_f, proxy_f, store_f = sys.argv[1:5]
stored = {l.get("diff-digest"): l for l in json.load(open(store_f))}
layers = [l.split() for l in open(layers_f) if l.strip()]
log = open(log_f, errors="replace").read().splitlines()
reqs = [json.loads(l) for l in open(proxy_f) if l.strip()]
msgs = [m.group(1) for m in (re.search(r'msg="(.*)"$', l) for l in log) if m]
ok = True
for m in msgs:
    if m.startswith(("Applying differ in ", "Missing ", "Retrieved partial blob ",
                     "Failed to retrieve partial blob")):
        print("evidence: podman: " + m)
for m in msgs:
    if m.startswith("Failed to retrieve partial blob"):
        print("evidence: FAIL podman fell back to a full pull: " + m)
        ok = False
for digest, media, size in layers:
    got = [r for r in reqs if r["method"] == "GET" and r["path"].endswith("/blobs/" + digest)
           and r["server"] == "proxy"]
    fetched = sum(r["bytes"] for r in got)
    for r in got:
        rng = r["range"] or ""
        parts = [p.split("-") for p in rng[len("bytes="):].split(",")] if rng else []
        asked = sum(int(b) - int(a) + 1 for a, b in parts if a and b)
        shown = rng if len(rng) <= 60 else rng[:60] + "..."
        print(f"evidence: registry: GET {digest[:19]} Range: {shown or '(none)'} "
              f"[{len(parts)} range(s), {asked} B] -> {r['status']}, body {r['bytes']} B")
    why = []
    if f"Retrieved partial blob {digest}" not in msgs:
        why.append("no 'Retrieved partial blob' line")
    if not got:
        why.append("no GET of the blob seen")
    bad = [r for r in got if not r["range"] or r["status"] != 206]
    if bad:
        why.append(f"{len(bad)} GET(s) without Range or not answered 206")
    st = stored.get(digest)
    if st is None or "zstd-chunked-manifest" not in st.get("big-data-names", []):
        why.append("store has no layer with diff-digest = blob digest and big data "
                   "'zstd-chunked-manifest'")
    if why:
        ok = False
        print(f"evidence: FAIL layer {digest} ({media}, {size} B): " + "; ".join(why))
    else:
        print(f"evidence: OK layer {digest} ({media}, {size} B) pulled partially: "
              f"{len(got)} range GET(s), {fetched} body bytes (multipart part headers "
              f"included) for a {size} B blob; store layer {st['id'][:12]} has diff-digest "
              f"= blob digest and big data 'zstd-chunked-manifest'")
sys.exit(0 if ok else 1)
PY
if [ "${LIST_OUT:-}" ]; then
  cp "$W/rootfs.txt" "$LIST_OUT"
  echo "== rootfs ($(wc -l <"$W/rootfs.txt") entries) written to $LIST_OUT"
else
  echo "== rootfs ($(wc -l <"$W/rootfs.txt") entries)"
  cat "$W/rootfs.txt"
fi
if [ "$verdict" = 0 ]; then
  echo "podman-partial: PARTIAL PULL VERIFIED for $REGISTRY/$IMAGE"
else
  echo "podman-partial: NOT a partial pull for $REGISTRY/$IMAGE" >&2
  exit 1
fi
