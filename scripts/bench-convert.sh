#!/usr/bin/env bash
# bench-convert.sh [RUNS]: eStargz conversion throughput, `lazysnap convert` against
# `ctr-remote image convert --estargz --oci`, on the same images in the same run.
#
# Uses the test environment in $ENV_DIR when it has an env file, else starts one in a
# temporary directory (scripts/env-up.sh, without the lazysnap daemon) and removes it at
# the end. Images: test/python:latest (scripts/images.sh push) and bench/big:latest, a
# throwaway one-layer image of about $BENCH_BIG_MB MB (default 200) of files copied from
# $BENCH_BIG_DIRS (default "/usr/lib/x86_64-linux-gnu /usr/share"), built as an OCI layout
# here and pushed with skopeo.
#
# Timed, RUNS times each (default 3), interleaved; the best run is reported:
#   ctr-remote         convert in the env's containerd (the image fetched into it first,
#                      untimed); the result stays in containerd's content store
#   lazysnap reg→reg   registry to registry (pull, convert, push)
#   lazysnap oci→oci   OCI layout to OCI layout (the layout copied from the registry first,
#                      untimed)
# MB/s = uncompressed layer bytes (sum of the layers' diff tar sizes) / seconds, MB = 10^6 B.
# Prints a markdown table on stdout; progress goes to stderr.
# Needs: a release build ($LAZYSNAP_BIN or target/release/lazysnap), ctr-remote, skopeo,
# python3, jq, curl, and what env-up.sh needs.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

RUNS=${1:-3}
BIN=${LAZYSNAP_BIN:-$LAZYSNAP_TARGET/release/lazysnap}
BIG_MB=${BENCH_BIG_MB:-200}
BIG_DIRS=${BENCH_BIG_DIRS:-/usr/lib/x86_64-linux-gnu /usr/share}
[ -x "$BIN" ] || die "$BIN not found: cargo build --release (or set LAZYSNAP_BIN)"
for t in ctr ctr-remote skopeo python3 jq curl; do
  command -v "$t" >/dev/null || die "$t not found"
done

WORK=$(mktemp -d /var/tmp/bench-convert.XXXXXX)
own_env=0
if [ -n "${ENV_DIR:-}" ] && [ -f "$ENV_DIR/env" ]; then
  DIR=$ENV_DIR
else
  DIR=$WORK/env
  own_env=1
fi
cleanup() {
  if [ "$own_env" = 1 ]; then "$LAZYSNAP_REPO/scripts/env-down.sh" --rm "$DIR" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
if [ "$own_env" = 1 ]; then
  log "starting a test environment in $DIR"
  ENV_NO_LAZYSNAP=1 LAZYSNAP_BIN=$BIN "$LAZYSNAP_REPO/scripts/env-up.sh" "$DIR" >/dev/null
fi
REGISTRY=$(. "$DIR/env" && echo "$REGISTRY")
CONTAINERD_ADDRESS=$(. "$DIR/env" && echo "$CONTAINERD_ADDRESS")
NS=bench-convert
ctr_() { ctr -a "$CONTAINERD_ADDRESS" -n "$NS" "$@"; }

log "pushing the test images to $REGISTRY"
"$LAZYSNAP_REPO/scripts/images.sh" push "$DIR" >/dev/null

# ---- the big image: one gzip layer of real files, as an OCI layout -------------------------
log "building bench/big:latest (~${BIG_MB} MB from $BIG_DIRS)"
python3 - "$WORK/big-oci" "$BIG_MB" $BIG_DIRS <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile

out, limit, dirs = sys.argv[1], int(sys.argv[2]) * 10**6, sys.argv[3:]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs)

def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return "sha256:" + d

# Files in sorted order, taking an equal share of the limit from each directory.
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for top in dirs:
        budget, used = limit // len(dirs), 0
        for root, subdirs, files in os.walk(top):
            subdirs.sort()
            for name in sorted(files):
                p = os.path.join(root, name)
                try:
                    st = os.lstat(p)
                    if not (os.path.isfile(p) or os.path.islink(p)):
                        continue
                    ti = tar.gettarinfo(p, arcname=p.lstrip("/"))
                    if ti.isreg():
                        if used + ti.size > budget:
                            continue
                        with open(p, "rb") as f:
                            tar.addfile(ti, f)
                        used += ti.size
                    else:
                        tar.addfile(ti)
                except OSError:
                    continue
            if used >= budget * 0.98:
                break
diff = raw.getvalue()
layer = gzip.compress(diff, compresslevel=6, mtime=0)
config = json.dumps({
    "architecture": "amd64", "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(diff).hexdigest()]},
}).encode()
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": put(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(layer), "size": len(layer)}],
}).encode()
index = {"schemaVersion": 2, "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": put(manifest), "size": len(manifest),
    "annotations": {"org.opencontainers.image.ref.name": "big"}}]}
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump(index, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
print(f"big layer: {len(diff)} bytes uncompressed, {len(layer)} gzip", file=sys.stderr)
PY
skopeo copy -q --dest-tls-verify=false "oci:$WORK/big-oci:big" "docker://$REGISTRY/bench/big:latest" >/dev/null ||
  die "pushing bench/big:latest failed"
rm -rf "$WORK/big-oci"

# uncompressed_bytes REF: sum of the diff tar sizes of REF's layers (from the registry).
uncompressed_bytes() {
  local repo=${1%:*} tag=${1##*:} m total=0 d n
  m=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REGISTRY/v2/$repo/manifests/$tag")
  for d in $(jq -r '.layers[].digest' <<<"$m"); do
    n=$(curl -fsS "http://$REGISTRY/v2/$repo/blobs/$d" | gzip -dc | wc -c)
    total=$((total + n))
  done
  echo "$total"
}

now() { date +%s.%N; }
# timed CMD...: runs CMD (output to $WORK/cmd.log), prints the seconds it took.
timed() {
  local t0 t1
  t0=$(now)
  "$@" >"$WORK/cmd.log" 2>&1 || { cat "$WORK/cmd.log" >&2; die "failed: $*"; }
  t1=$(now)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}
best() { printf '%s\n' "$@" | sort -g | head -n1; }

rows=()
for src in test/python:latest bench/big:latest; do
  name=$(basename "${src%:*}")
  bytes=$(uncompressed_bytes "$src")
  log "$src: $bytes uncompressed bytes; fetching into containerd and an OCI layout (untimed)"
  ctr_ content fetch --plain-http "$REGISTRY/$src" >/dev/null
  skopeo copy -q --src-tls-verify=false "docker://$REGISTRY/$src" "oci:$WORK/src-oci:$name" >/dev/null
  t_ctr=() t_reg=() t_oci=()
  for run in $(seq 1 "$RUNS"); do
    t=$(timed ctr-remote -a "$CONTAINERD_ADDRESS" -n "$NS" image convert --estargz --oci \
      "$REGISTRY/$src" "bench.local/$name:esgz-$run")
    t_ctr+=("$t")
    ctr_ images rm "bench.local/$name:esgz-$run" >/dev/null 2>&1 || true
    t=$(timed "$BIN" convert "$REGISTRY/$src" "$REGISTRY/bench/$name:esgz-$run")
    t_reg+=("$t")
    t=$(timed "$BIN" convert "oci:$WORK/src-oci:$name" "oci:$WORK/out-$run:$name")
    t_oci+=("$t")
    rm -rf "$WORK/out-$run"
    log "$name run $run: ctr-remote ${t_ctr[-1]}s, lazysnap reg→reg ${t_reg[-1]}s, oci→oci ${t_oci[-1]}s"
  done
  for pair in "ctr-remote:t_ctr" "lazysnap reg→reg:t_reg" "lazysnap oci→oci:t_oci"; do
    label=${pair%%:*}
    declare -n times=${pair##*:}
    b=$(best "${times[@]}")
    rows+=("$(python3 -c "print(f'| $src | {$bytes/1e6:.1f} | $label | $b | {$bytes/1e6/$b:.1f} | ${times[*]} |')")")
    unset -n times
  done
done

echo "| image | uncompressed MB | converter | best s (of $RUNS) | MB/s | all runs s |"
echo "|---|---:|---|---:|---:|---|"
printf '%s\n' "${rows[@]}"
echo
echo "CPUs: $(nproc); lazysnap $("$BIN" --version 2>/dev/null || echo '?'); $(ctr-remote --version 2>/dev/null | head -n1)"
