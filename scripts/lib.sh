# shellcheck shell=bash
# Helpers shared by the scripts in this directory. Source it; it sets nothing else.

# Repository root (the directory above scripts/).
LAZYSNAP_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Where cargo puts its builds ($CARGO_TARGET_DIR when set, as cargo itself does).
LAZYSNAP_TARGET=${CARGO_TARGET_DIR:-$LAZYSNAP_REPO/target}

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_until SECONDS DESCRIPTION CMD...: run CMD every 0.2 s until it succeeds.
wait_until() {
  local secs=$1 what=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then
      log "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

# port_busy PORT: true when something listens on 127.0.0.1:PORT (or any address).
port_busy() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
PY
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# pid_matches PID STRING: PID is alive and its command line contains STRING
# (guards against killing a recycled PID).
pid_matches() {
  local pid=$1 want=$2 cmd
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ "$cmd" == *"$want"* ]]
}

# pid_gone PID: the process has exited and released its resources: no /proc entry, or every
# thread a zombie. (cmdline empties, and the leader turns Z, before the other threads of an
# exiting process have finished and closed its files.)
pid_gone() {
  local t st
  [ -e "/proc/$1" ] || return 0
  for t in /proc/"$1"/task/*; do
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "$t/status" 2>/dev/null) || continue
    case $st in "" | Z | X) ;; *) return 1 ;; esac
  done
  return 0
}

# wait_gone PID SECONDS: wait until pid_gone; false on timeout.
wait_gone() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do pid_gone "$1" && return 0; sleep 0.1; done
  return 1
}

# stop_pid PID STRING [TIMEOUT]: SIGTERM, wait, then SIGKILL. Only when pid_matches.
stop_pid() {
  local pid=$1 want=$2 timeout=${3:-10}
  pid_matches "$pid" "$want" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  wait_gone "$pid" "$timeout" && return 0
  log "pid $pid did not stop after ${timeout}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait_gone "$pid" 10 || log "pid $pid still exists after SIGKILL (state $(sed -n 's/^State:\s*//p' "/proc/$pid/status" 2>/dev/null))"
}

# mounts_under DIR: mount points at or below DIR, deepest first.
mounts_under() {
  local dir
  dir=$(realpath -m "$1")
  # field 5 of mountinfo is the mount point, octal-escaped
  awk -v d="$dir" '{ mp=$5; gsub(/\\040/," ",mp); if (mp==d || index(mp, d"/")==1) print mp }' /proc/self/mountinfo |
    awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2- | uniq
}

# unmount_under DIR: unmount everything mounted below DIR (lazy as a last resort).
unmount_under() {
  local mp tries
  for tries in 1 2 3; do
    local any=0
    while IFS= read -r mp; do
      [ -n "$mp" ] || continue
      any=1
      umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null ||
        fusermount3 -u -z "$mp" 2>/dev/null || log "cannot unmount $mp"
    done < <(mounts_under "$1")
    [ "$any" = 1 ] || return 0
  done
  [ -z "$(mounts_under "$1")" ] || { log "mounts left under $1:"; mounts_under "$1" >&2; return 1; }
}

# The image cache (outside the clone so reruns and fresh clones reuse it).
LAZYSNAP_IMAGE_CACHE=${LAZYSNAP_IMAGE_CACHE:-/var/cache/lazysnap-test-images}
