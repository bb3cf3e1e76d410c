#!/usr/bin/env bash
# demo.sh: lazysnap end to end on this machine.
#   1. scripts/setup.sh (packages, build)
#   2. a private registry + lazysnap + containerd in a temp dir (scripts/env-up.sh)
#   3. push the test python image, pull it with --snapshotter lazysnap and run python in it
#   4. show that the container's root is a fuse.lazysnap mount
#   5. cold start (pull + run until the first output line) and warm start (image already
#      pulled), lazysnap next to containerd's overlayfs snapshotter
# Everything is stopped and unmounted on exit. DEMO_ONLY_OVERLAYFS=1 runs the overlayfs half only.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$LAZYSNAP_REPO"

only_overlay=${DEMO_ONLY_OVERLAYFS:-0}
if [ "$only_overlay" = 1 ]; then scripts/setup.sh --no-build; else scripts/setup.sh; fi

DIR=$(mktemp -d /tmp/lazysnap-demo.XXXXXX)
cleanup() {
  local rc=$?
  scripts/env-down.sh --rm "$DIR" || rc=1
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$only_overlay" = 1 ]; then ENV_NO_LAZYSNAP=1 scripts/env-up.sh "$DIR"; else scripts/env-up.sh "$DIR"; fi
. "$DIR/env"
scripts/images.sh push "$DIR"

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
  ctr_ run --rm --snapshotter "$snap" "$IMAGE" "$id" python3 -c "$PY" |
    { IFS= read -r line; t=$(now_ns); printf '%s\n' "$line" >"$out"; cat >/dev/null; echo "$t"; }
}

# measure SNAPSHOTTER [rpull]: cold (pull + run) and warm (run) start; sets COLD and WARM.
# rpull: containerd's client pull with snapshot labels (ctr-remote), the path on which a
# remote snapshotter can serve layers lazily (lazysnap does not yet: it downloads them whole
# there too, see README "Status"); ctr's own `images pull` always downloads every layer first.
measure() {
  local snap=$1 how=${2:-pull} t0 t1 out=$DIR/out.$1
  # start from nothing: no image, no content, no snapshots in this namespace
  ctr_ images rm --sync "$IMAGE" >/dev/null 2>&1 || true
  t0=$(now_ns)
  if [ "$how" = rpull ]; then
    ctr-remote -a "$CONTAINERD_ADDRESS" -n "$NS" images rpull --plain-http --snapshotter "$snap" "$IMAGE" >/dev/null
  else
    ctr_ images pull --plain-http --snapshotter "$snap" "$IMAGE" >/dev/null
  fi
  t1=$(run_first_line "$snap" "$out")
  COLD=$(secs "$t0" "$t1")
  printf '[%s] python says: %s\n' "$snap" "$(cat "$out")"
  [ "$(cat "$out")" = '{"ok": [3, 11]}' ] || die "$snap: unexpected python output"
  t0=$(now_ns)
  t1=$(run_first_line "$snap" "$out")
  WARM=$(secs "$t0" "$t1")
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

declare -A cold warm
rows=("lazysnap pull" "lazysnap rpull" "overlayfs pull")
[ "$only_overlay" = 1 ] && rows=("overlayfs pull")
for row in "${rows[@]}"; do
  read -r s how <<<"$row"
  measure "$s" "$how"
  cold[$row]=$COLD
  warm[$row]=$WARM
  if [ "$row" = "lazysnap pull" ]; then show_mount; fi
  echo
done

echo "== start time of python3 in test/python (3 layers, $(du -sh "$(scripts/images.sh dir)/oci" | cut -f1) gzip for all test images) =="
printf '%-30s %-28s %s\n' "snapshotter (pull command)" "cold (pull + first output)" "warm (image pulled)"
for row in "${rows[@]}"; do
  read -r s how <<<"$row"
  label="$s (ctr images pull)"
  [ "$how" = rpull ] && label="$s (ctr-remote rpull)"
  printf '%-30s %-28s %s\n' "$label" "${cold[$row]}" "${warm[$row]}"
done
