#!/usr/bin/env bash
# fuzz-smoke.sh [SECONDS]: run every cargo-fuzz target in fuzz/ for SECONDS (default 10)
# each. The targets assert properties (round trips, in-bounds chunk spans, tiling), so a
# short run catches regressions in the parsers of untrusted bytes. Uses cargo-fuzz
# (installed from crates.io when missing) with --sanitizer none, which builds on stable.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$LAZYSNAP_REPO/fuzz"
secs=${1:-10}
if ! command -v cargo-fuzz >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
  log "installing cargo-fuzz from crates.io"
  cargo install --quiet --locked cargo-fuzz
fi
targets=$(cargo fuzz list)
cargo fuzz build --sanitizer none -O >/dev/null 2>&1 || cargo fuzz build --sanitizer none -O
for t in $targets; do
  out=$(cargo fuzz run --sanitizer none -O "$t" -- -max_total_time="$secs" 2>&1) || {
    printf '%s\n' "$out" | tail -n 30 >&2
    die "fuzz target $t failed"
  }
  log "$t: $(grep -E '^Done' <<<"$out" | tail -n1)"
done
