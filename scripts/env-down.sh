#!/usr/bin/env bash
# env-down.sh DIR: stop what env-up.sh DIR started (only those PIDs: containers and shims of
# the private containerd, containerd, lazysnap, the registry), then unmount whatever is still
# mounted under DIR. Works after a partial env-up. Removes nothing outside DIR; DIR itself is
# kept (pass --rm to delete it).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

rm_dir=0
args=()
for a in "$@"; do
  case $a in --rm) rm_dir=1 ;; *) args+=("$a") ;; esac
done
[ ${#args[@]} -eq 1 ] || die "usage: env-down.sh [--rm] DIR"
[ -d "${args[0]}" ] || exit 0
DIR=$(realpath "${args[0]}")
sock=$DIR/containerd.sock

# 1. Containers of our containerd: kill tasks so that their shims exit.
if [ -s "$DIR/containerd.pid" ] && pid_matches "$(cat "$DIR/containerd.pid")" "$DIR"; then
  for ns in $(timeout 10 ctr -a "$sock" namespaces ls -q 2>/dev/null); do
    for t in $(timeout 10 ctr -a "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
      timeout 10 ctr -a "$sock" -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1
      timeout 10 ctr -a "$sock" -n "$ns" tasks rm -f "$t" >/dev/null 2>&1
    done
  done
fi
# Shims started by our containerd carry "-address DIR/containerd.sock" on their command line.
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
  case $cmd in
    *containerd-shim*"$sock"*) stop_pid "$pid" "$sock" 5 ;;
  esac
done

# 2. The services, in reverse start order.
for svc in containerd lazysnap registry; do
  f=$DIR/$svc.pid
  [ -s "$f" ] || continue
  stop_pid "$(cat "$f")" "$DIR" 20
  rm -f "$f"
done

# 3. FUSE mounts under DIR whose daemon is gone: abort their connections so that nothing
#    blocks on them (processes stuck in a request get ENOTCONN), then unmount.
if [ -d /sys/fs/fuse/connections ]; then
  real=$(realpath -m "$DIR")
  awk -v d="$real" '$0 ~ / - fuse/ { mp=$5; if (mp==d || index(mp, d"/")==1) { split($3, dev, ":"); print dev[2] } }' /proc/self/mountinfo |
    sort -u | while read -r minor; do
      [ -w "/sys/fs/fuse/connections/$minor/abort" ] && echo 1 >"/sys/fs/fuse/connections/$minor/abort" 2>/dev/null
    done
fi

# 4. Mounts left under DIR (container rootfs, lazysnap FUSE mounts, overlay snapshots).
unmount_under "$DIR"
rc=$?

rm -f "$DIR/env"
if [ "$rm_dir" = 1 ] && [ $rc -eq 0 ]; then
  rm -rf --one-file-system "$DIR"
fi
exit $rc
