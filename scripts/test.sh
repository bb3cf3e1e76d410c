#!/usr/bin/env bash
# test.sh: everything CI checks, in order: setup (packages + release build), cargo fmt --check,
# cargo clippy --all-targets -D warnings, then cargo test (unit, integration and the end-to-end
# tests, which share one registry + lazysnap + containerd environment started here and
# exported as LAZYSNAP_TEST_ENV), the layering check, pjdfstest on a lazysnap mount
# (scripts/pjdfstest.sh) and a short run of every fuzz target (scripts/fuzz-smoke.sh). Ends with one summary line; exit status 0 only if all passed.
# Extra arguments go to cargo test (e.g. scripts/test.sh --test e2e_cases).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
cd "$LAZYSNAP_REPO"
# One-shot builds gain nothing from incremental state, which costs ~2 GB of disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

start=$(date +%s)
results=()
failed=0
step() { # step NAME CMD...: run, record the result
  local name=$1; shift
  local t0=$(date +%s)
  log "── $name"
  if "$@"; then
    results+=("$name ok ($(( $(date +%s) - t0 ))s)")
  else
    results+=("$name FAILED")
    failed=1
  fi
}
summary() {
  local verdict=PASS
  [ "$failed" = 0 ] || verdict=FAIL
  printf '\n%s\n' "test.sh: $verdict — $(IFS=';'; echo "${results[*]}" | sed 's/;/; /g') — $(( $(date +%s) - start ))s total"
}

DIR=""
cleanup() {
  local rc=$?
  if [ -n "$DIR" ]; then
    scripts/env-down.sh --rm "$DIR" || { log "env-down left something behind in $DIR"; failed=1; results+=("cleanup FAILED"); }
  fi
  [ "$failed" = 0 ] || log "disk space at the end: $(df -h --output=avail,target "$LAZYSNAP_TARGET" 2>/dev/null | tail -n1)"
  summary
  [ "$failed" = 0 ] && [ "$rc" = 0 ] || exit 1
  exit 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "disk space: $(df -h --output=avail,target "$LAZYSNAP_REPO" | tail -n1) available (a full run needs about 6 GB)"
step setup scripts/setup.sh
if [ "$failed" != 0 ]; then exit 1; fi
step fmt cargo fmt --all -- --check
step clippy cargo clippy --quiet --all-targets -- -D warnings
step images scripts/images.sh build

DIR=$(mktemp -d /tmp/lazysnap-test.XXXXXX)
# pjdfstest switches to unprivileged users, who must reach the mount points below DIR.
chmod 0755 "$DIR"
if scripts/env-up.sh "$DIR" && scripts/images.sh push "$DIR" && scripts/images.sh push-estargz "$DIR"; then
  results+=("env ok")
  export LAZYSNAP_TEST_ENV=$DIR
  [ $# -eq 0 ] && step pjdfstest scripts/pjdfstest.sh "$DIR"
  t0=$(date +%s)
  log "── test"
  if cargo test --no-fail-fast "$@" 2>&1 | tee "$DIR/cargo-test.log"; then
    results+=("test ok ($(( $(date +%s) - t0 ))s)")
  else
    failed=1
    names=$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$DIR/cargo-test.log" | tr '\n' ' ' | sed 's/ $//')
    results+=("test FAILED${names:+ ($names)}")
  fi
  if [ $# -eq 0 ]; then
    step layering scripts/check-layers.sh
    step fuzz scripts/fuzz-smoke.sh 10
    # the cold-start benchmark's smoke mode (its own environment; ~1 min)
    step bench-quick scripts/bench.sh --quick --out "$DIR/bench"
  fi
  if [ "$failed" != 0 ] && [ -f "$DIR/lazysnap.log" ]; then
    log "daemon log: last lines of $DIR/lazysnap.log"
    tail -n 30 "$DIR/lazysnap.log" >&2
  fi
else
  results+=("env FAILED")
  failed=1
fi
