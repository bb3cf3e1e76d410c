#!/usr/bin/env bash
# bench.sh [--quick] [--out DIR] [lazysnap bench options]: the cold-start benchmark (issue 6),
# a thin wrapper of `lazysnap bench` (src/cmd/bench.rs; `lazysnap bench --help` lists the
# options). Run as root on a machine set up by scripts/setup.sh.
#
#   scripts/bench.sh --quick           smoke mode: busybox and python, one run each, loopback
#                                      only; still writes the table, the CSVs and the plot
#   scripts/bench.sh                   full run: busybox, python, large (~32k files, 430 MB),
#                                      bigfile (one 600 MiB file) on loopback, 20 ms/200 Mbit
#                                      and 100 ms/20 Mbit, 5 runs each (long: hours with the
#                                      big images on the slow link)
#   scripts/bench.sh --images python,busybox --runs 3
#
# Results go to --out DIR (default bench-results/): results.md (table), results.csv
# (medians), runs.csv (every run), ttfo.svg (time to first output), logs/.
# Starts its own test environment (scripts/env-up.sh) unless --env DIR is given, and stops
# it at the end. CONTAINERD_STARGZ_GRPC=/path/to/containerd-stargz-grpc adds
# stargz-snapshotter. The large images are built once into
# ${LAZYSNAP_BENCH_IMAGE_CACHE:-/var/cache/lazysnap-bench-images}.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BIN=${LAZYSNAP_BIN:-$LAZYSNAP_TARGET/release/lazysnap}
SHAPER=$(dirname "$BIN")/lazysnap-shaper
if [ ! -x "$BIN" ] || [ ! -x "$SHAPER" ]; then
  log "building lazysnap and lazysnap-shaper (release)"
  (cd "$LAZYSNAP_REPO" && cargo build --release --quiet --bin lazysnap --bin lazysnap-shaper)
fi
for t in ctr skopeo umoci jq curl docker-registry containerd; do
  command -v "$t" >/dev/null || die "$t not found (run scripts/setup.sh)"
done
[ "$(id -u)" = 0 ] || die "run as root (containers, page-cache drops)"
exec "$BIN" bench --repo "$LAZYSNAP_REPO" --shaper "$SHAPER" "$@"
