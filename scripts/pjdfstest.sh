#!/usr/bin/env bash
# pjdfstest.sh ENV_DIR [MIN_PASSED]: run the external POSIX suite pjdfstest (the Rust port,
# crates.io 0.2.2) on a real lazysnap mount: an Active snapshot that the daemon of the
# environment in ENV_DIR (scripts/env-up.sh) prepares over the busybox image, as containerd
# prepares a container root. Prints pjdfstest's summary; fails when fewer than MIN_PASSED
# (default 341, what kernel overlayfs passes here) of the 398 tests pass.
# PJDFSTEST_COMPARE=1 also runs it on ext4/tmpfs under /tmp and on kernel overlayfs.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ $# -ge 1 ] || die "usage: pjdfstest.sh ENV_DIR [MIN_PASSED]"
DIR=$(realpath "$1"); MIN=${2:-341}
. "$DIR/env"

if ! command -v pjdfstest >/dev/null && [ ! -x "$HOME/.cargo/bin/pjdfstest" ]; then
  log "installing pjdfstest 0.2.2 from crates.io"
  cargo install --quiet --locked pjdfstest --version 0.2.2
fi
PJD=$(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")
# The suite switches to two unprivileged users.
getent group nogroup >/dev/null || groupadd nogroup
id tests >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin tests

conf=$DIR/pjdfstest.toml
cat >"$conf" <<'TOML'
[features]
posix_fallocate = {}
utimensat = {}
utime_now = {}
rename_ctime = {}

[settings]
naptime = 0.05
allow_remount = false

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["tests", "tests"],
]
TOML

run_suite() { # run_suite DIR LOG: prints the Summary line
  local where=$1 out=$2
  (cd "$where" && timeout 1200 "$PJD" -c "$conf" -p "$where" >"$out" 2>&1) || true
  grep '^Summary' "$out" || { tail -n 20 "$out" >&2; echo "Summary: none"; }
}

ctr_() { ctr -a "$CONTAINERD_ADDRESS" -n pjdfstest "$@"; }
ref=$REGISTRY/test/busybox:latest
ctr_ images pull --plain-http --snapshotter lazysnap "$ref" >/dev/null
# The top of the chain is the committed snapshot that is nobody's parent.
top=$(ctr_ snapshots --snapshotter lazysnap ls | awk 'NR>1 && $3=="Committed" {k[$1]=1; if ($2!="") p[$2]=1} END {for (x in k) if (!(x in p)) print x}')
key=pjdfstest-$$
ctr_ snapshots --snapshotter lazysnap prepare "$key" "$top" >/dev/null
cleanup() { ctr_ snapshots --snapshotter lazysnap rm "$key" >/dev/null 2>&1 || true; }
trap cleanup EXIT
mp=$("$LAZYSNAP_BIN" status --lazysnap-address "$LAZYSNAP_ADDRESS" | awk -v k="/$key" '$1=="mount:" && index($4, k) {print $3}')
[ -n "$mp" ] && grep -q " $mp fuse.lazysnap " /proc/mounts || die "no fuse.lazysnap mount for snapshot $key"
mkdir -p "$mp/pjd" && chmod 0755 "$mp/pjd"
# Unprivileged users must be able to reach it (a 0700 dir above it fails 20 tests with EACCES).
su -s /bin/sh nobody -c "test -x '$mp/pjd'" 2>/dev/null ||
  die "user nobody cannot reach $mp/pjd: make every directory above it searchable (o+x)"
log "running pjdfstest on $mp/pjd (a lazysnap union over busybox)"
lazy=$(run_suite "$mp/pjd" "$DIR/pjdfstest-lazysnap.log")
echo "lazysnap:        $lazy"
passed=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$lazy")
if [ -z "$passed" ] || [ "$passed" -lt "$MIN" ]; then
  # A few tests race with a loaded machine (open::etxtbsy execs a file another process
  # just closed): run the suite once more in a fresh dir and keep that result, saying so.
  log "first run: $lazy; failed: $(grep -E 'FAILED$' "$DIR/pjdfstest-lazysnap.log" | grep -v '::char' | awk '{print $1}' | tr '\n' ' ')— running it once more"
  mkdir -p "$mp/pjd2" && chmod 0755 "$mp/pjd2"
  lazy=$(run_suite "$mp/pjd2" "$DIR/pjdfstest-lazysnap.log")
  echo "lazysnap (2nd):  $lazy"
fi

if [ "${PJDFSTEST_COMPARE:-0}" = 1 ]; then
  cmp=$DIR/pjd-compare; mkdir -p "$cmp/plain" "$cmp/lower" "$cmp/upper" "$cmp/work" "$cmp/merged"
  chmod 0755 "$cmp/plain"
  echo "$(df -T "$cmp/plain" | awk 'NR==2{print $2}') (/tmp):     $(run_suite "$cmp/plain" "$DIR/pjdfstest-plain.log")"
  mount -t overlay overlay -o "lowerdir=$cmp/lower,upperdir=$cmp/upper,workdir=$cmp/work" "$cmp/merged"
  chmod 0755 "$cmp/merged"
  echo "kernel overlayfs: $(run_suite "$cmp/merged" "$DIR/pjdfstest-overlay.log")"
  umount "$cmp/merged"
fi

passed=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$lazy")
if [ "${PJDFSTEST_SHOW_FAILED:-1}" = 1 ]; then
  grep -E 'FAILED$' "$DIR/pjdfstest-lazysnap.log" | grep -v '::char' | head -n 40 >&2 || true
fi
[ -n "$passed" ] && [ "$passed" -ge "$MIN" ] || die "pjdfstest on lazysnap: ${passed:-no} tests passed, want at least $MIN"
