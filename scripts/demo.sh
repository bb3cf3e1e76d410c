#!/usr/bin/env bash
# demo.sh: lazysnap end to end on this machine.
#   1. scripts/setup.sh (packages, build)
#   2. a private registry + lazysnap + containerd in a temp dir (scripts/env-up.sh)
#   3. push the test python image, pull it with --snapshotter lazysnap and run python in it
#   4. show that the container's root is a fuse.lazysnap mount
#   5. cold start (pull + run until the first output line) and warm start (image already
#      pulled), lazysnap next to containerd's overlayfs snapshotter, and the lazy row:
#      test/python:esgz (eStargz, converted by ctr-remote) pulled with `ctr-remote rpull`
#      through a logging proxy (tests/helpers/faultproxy.py), with the layer bytes the registry
#      served during the cold start
#   6. the full circle with lazysnap's own tools: `lazysnap convert` (the gzip image to
#      eStargz), a lazy pull and run, a change in the running container, `lazysnap commit`
#      (the upper only, pushed with cross-repository mounts of the lower layers), then a lazy
#      pull of the new image in a fresh namespace and a run that shows the change
# Everything is stopped and unmounted on exit. DEMO_ONLY_OVERLAYFS=1 runs the overlayfs half only.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unknown argument $1 (demo.sh takes none; --help describes it)" ;;
esac
cd "$LAZYSNAP_REPO"

only_overlay=${DEMO_ONLY_OVERLAYFS:-0}
if [ "$only_overlay" = 1 ]; then scripts/setup.sh --no-build; else scripts/setup.sh; fi

DIR=$(mktemp -d /tmp/lazysnap-demo.XXXXXX)
PROXY_PID=""
cleanup() {
  local rc=$?
  [ -z "$PROXY_PID" ] || stop_pid "$PROXY_PID" faultproxy.py 5
  scripts/env-down.sh --rm "$DIR" || rc=1
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$only_overlay" = 1 ]; then ENV_NO_LAZYSNAP=1 scripts/env-up.sh "$DIR"; else scripts/env-up.sh "$DIR"; fi
. "$DIR/env"
scripts/images.sh push "$DIR"
[ "$only_overlay" = 1 ] || ESTARGZ_ONLY=test/python:esgz scripts/images.sh push-estargz "$DIR"

IMAGE=$REGISTRY/test/python:latest
PY='import json,sys; print(json.dumps({"ok": sys.version_info[:2]}))'
NS=demo
ctr_() { ctr -a "$CONTAINERD_ADDRESS" -n "$NS" "$@"; }

now_ns() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3fs", (b - a) / 1e9 }'; }

# run_first_line SNAPSHOTTER OUTFILE: run python in a new container, write its first output
# line to OUTFILE and print the time (ns) at which that line arrived.
run_first_line() {
  local snap=$1 out=$2 id=demo-$RANDOM$RANDOM
  ctr_ run --rm --snapshotter "$snap" "${3:-$IMAGE}" "$id" python3 -c "$PY" |
    { IFS= read -r line; t=$(now_ns); printf '%s\n' "$line" >"$out"; cat >/dev/null; echo "$t"; }
}

# measure SNAPSHOTTER [rpull]: cold (pull + run) and warm (run) start; sets COLD and WARM.
# rpull: containerd's client pull with snapshot labels (ctr-remote), the path on which a
# remote snapshotter serves layers lazily (eStargz layers; plain gzip ones lazysnap fetches
# whole itself); ctr's own `images pull` always downloads every layer first.
measure() {
  local snap=$1 how=${2:-pull} image=${3:-$IMAGE} t0 t1 out=$DIR/out.$1
  # start from nothing: no image, no content, no snapshots in this namespace
  ctr_ images rm --sync "$image" >/dev/null 2>&1 || true
  t0=$(now_ns)
  if [ "$how" = rpull ]; then
    ctr-remote -a "$CONTAINERD_ADDRESS" -n "$NS" images rpull --plain-http --snapshotter "$snap" "$image" >/dev/null
  else
    ctr_ images pull --plain-http --snapshotter "$snap" "$image" >/dev/null
  fi
  t1=$(run_first_line "$snap" "$out" "$image")
  COLD=$(secs "$t0" "$t1")
  printf '[%s] python says: %s\n' "$snap" "$(cat "$out")"
  [ "$(cat "$out")" = '{"ok": [3, 11]}' ] || die "$snap: unexpected python output"
  SERVED=""
  if [ -n "$PROXY_PID" ] && [[ $image == *"$PROXY_ADDR"* ]]; then
    # layer bytes the registry served (through the logging proxy) up to the first output
    SERVED=$(jq -s --argjson layers "$LAYERS_JSON" \
      '[.[] | select(.method == "GET") | select((.path | split("?")[0] | split("/") | last) as $d | $layers | index($d) != null) | .bytes] | add // 0' \
      "$PROXY_LOG")
  fi
  t0=$(now_ns)
  t1=$(run_first_line "$snap" "$out" "$image")
  WARM=$(secs "$t0" "$t1")
}

# The lazy row: test/python:esgz through a logging proxy in front of the registry.
PROXY_ADDR="" PROXY_LOG=$DIR/faultproxy.log LAYERS_JSON='[]' LAYER_TOTAL=0
start_proxy() {
  python3 tests/helpers/faultproxy.py --upstream "$REGISTRY" --faults log --log "$PROXY_LOG" \
    --ready "$DIR/faultproxy.ready" >/dev/null 2>"$DIR/faultproxy.err" &
  PROXY_PID=$!
  wait_until 10 "faultproxy" test -s "$DIR/faultproxy.ready" || die "faultproxy did not start"
  PROXY_ADDR=127.0.0.1:$(jq .port "$DIR/faultproxy.ready")
  local m
  m=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REGISTRY/v2/test/python/manifests/esgz")
  LAYERS_JSON=$(jq -c '[.layers[].digest]' <<<"$m")
  LAYER_TOTAL=$(jq '[.layers[].size] | add' <<<"$m")
}

show_mount() {
  local id=demo-mnt-$RANDOM rootfs fstype
  ctr_ run -d --snapshotter lazysnap "$IMAGE" "$id" sleep 60 >/dev/null
  rootfs=$CONTAINERD_STATE/io.containerd.runtime.v2.task/$NS/$id/rootfs
  echo
  echo "== the container's root filesystem, seen from the host =="
  findmnt -T "$rootfs" -o TARGET,SOURCE,FSTYPE,OPTIONS || true
  echo "== lazysnap's mounts under $LAZYSNAP_ROOT/mnt =="
  findmnt -l -o TARGET,FSTYPE | awk -v r="$LAZYSNAP_ROOT/mnt" 'index($1, r) == 1' || true
  echo "== inside the container: / in /proc/self/mountinfo =="
  ctr_ tasks exec --exec-id mi "$id" sh -c "awk '\$5 == \"/\"' /proc/self/mountinfo" || true
  fstype=$(findmnt -n -o FSTYPE -T "$rootfs" || true)
  ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  ctr_ tasks rm -f "$id" >/dev/null 2>&1 || true
  ctr_ containers rm "$id" >/dev/null 2>&1 || true
  [ "$fstype" = fuse.lazysnap ] || die "the container's rootfs is a '$fstype' mount, not fuse.lazysnap"
}

declare -A cold warm served
rows=("lazysnap pull" "lazysnap rpull" "lazysnap rpull esgz-direct" "lazysnap rpull esgz" "overlayfs pull")
[ "$only_overlay" = 1 ] && rows=("overlayfs pull")
[ "$only_overlay" = 1 ] || start_proxy
for row in "${rows[@]}"; do
  read -r s how variant <<<"$row"
  img=$IMAGE
  [ "${variant:-}" = esgz-direct ] && img=$REGISTRY/test/python:esgz
  if [ "${variant:-}" = esgz ]; then
    # Count bytes through the (slow, Python) logging proxy from an empty chunk cache;
    # the esgz-direct row above gives the time without the proxy in the way.
    img=$PROXY_ADDR/test/python:esgz
    scripts/env-lazysnap.sh "$DIR" stop >/dev/null
    rm -rf "$LAZYSNAP_ROOT/cache"
    scripts/env-lazysnap.sh "$DIR" start >/dev/null
  fi
  measure "$s" "$how" "$img"
  # Its snapshots must go before the same chain is pulled again through the proxy.
  [ "${variant:-}" = esgz-direct ] && ctr_ images rm --sync "$img" >/dev/null
  cold[$row]=$COLD
  warm[$row]=$WARM
  served[$row]=$SERVED
  if [ "$row" = "lazysnap pull" ]; then show_mount; fi
  echo
done

gz_total=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "http://$REGISTRY/v2/test/python/manifests/latest" | jq '[.layers[].size] | add')
echo "== start time of python3 in test/python (3 layers, $(numfmt --to=iec "$gz_total") gzip), registry on loopback =="
printf '%-36s %-28s %s\n' "snapshotter (pull command)" "cold (pull + first output)" "warm (image pulled)"
for row in "${rows[@]}"; do
  read -r s how variant <<<"$row"
  label="$s (ctr images pull)"
  [ "$how" = rpull ] && label="$s (ctr-remote rpull)"
  [ "${variant:-}" = esgz-direct ] && label="$s (rpull, eStargz: lazy)"
  [ "${variant:-}" = esgz ] && label="  same, via the logging proxy"
  printf '%-36s %-28s %s\n' "$label" "${cold[$row]}" "${warm[$row]}"
done
if [ "$only_overlay" != 1 ]; then
  s=${served["lazysnap rpull esgz"]:-0}
  echo
  echo "lazy cold start of test/python:esgz: the registry served $s of $LAYER_TOTAL layer bytes" \
    "($(awk -v a="$s" -v b="$LAYER_TOTAL" 'BEGIN { printf "%.1f", 100 * a / b }')%)," \
    "counted by the logging proxy tests/helpers/faultproxy.py"
  echo
  echo "How to read it: 'ctr images pull' rows download and unpack every layer first; the"
  echo "plain-image rpull row too, but lazysnap fetches and unpacks the layers itself, in"
  echo "parallel. The eStargz rows are lazy: python3 starts once the files it reads are fetched."
  echo "On loopback a download costs almost nothing, so the rows stay close; on a real link"
  echo "every skipped byte counts: scripts/bench.sh --images python --links 20ms-200mbit"
  echo "shapes the link and compares (e.g. full pull 1.4 s, lazy 1.07 s, optimized lazy 0.59 s)."
fi

[ "$only_overlay" = 1 ] && exit 0

echo
echo "== the full circle: convert, lazy pull, run, change, commit, push, lazy pull, run =="
LZ="$LAZYSNAP_BIN"
export CONTAINERD_ADDRESS LAZYSNAP_ADDRESS
CONV=$REGISTRY/demo/python:esgz
NEW=$REGISTRY/demo/python:committed
"$LZ" convert "oci:$(scripts/images.sh dir)/oci:python" "$CONV" 2>/dev/null
"$LZ" inspect "$CONV"
NS=circle
"$LZ" pull -n "$NS" "$CONV"
ctr_ run -d --snapshotter lazysnap "$CONV" circle-1 sh -c \
  'echo "written in the first container" > /hello.txt; rm -rf /usr/share/doc; sleep 600' >/dev/null
sleep 1
"$LZ" commit -n "$NS" -c 'ENV COMMITTED_BY=lazysnap' -m "demo commit" circle-1 "$NEW"
ctr_ tasks kill -s SIGKILL circle-1 >/dev/null 2>&1 || true
ctr_ tasks rm -f circle-1 >/dev/null 2>&1 || true
ctr_ containers rm circle-1 >/dev/null 2>&1 || true
NS=circle2
"$LZ" pull -n "$NS" "$NEW"
out=$(ctr_ run --rm --snapshotter lazysnap "$NEW" circle-2 sh -c \
  'cat /hello.txt; [ -e /usr/share/doc ] && echo "doc still there" || echo "/usr/share/doc is gone"; echo "COMMITTED_BY=$COMMITTED_BY"')
printf '%s\n' "$out"
[ "$out" = "written in the first container
/usr/share/doc is gone
COMMITTED_BY=lazysnap" ] || die "the committed image does not show the change"
echo "full circle: ok"
