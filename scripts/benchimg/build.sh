#!/usr/bin/env bash
# benchimg/build.sh: build the benchmark's large images (bench/large, bench/bigfile; see
# build.py) once into ${LAZYSNAP_BENCH_IMAGE_CACHE:-/var/cache/lazysnap-bench-images}/<key>/oci,
# keyed by a hash of the builder scripts, and print the OCI layout's path. Later calls print
# the path at once. Needs umoci, apt-get, dpkg-deb, busybox, python3 and jq.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"

here=$LAZYSNAP_REPO/scripts
store=${LAZYSNAP_BENCH_IMAGE_CACHE:-/var/cache/lazysnap-bench-images}
key=$(cat "$here/benchimg/build.sh" "$here/benchimg/build.py" "$here/testimg/build.py" "$here/testimg/tk.py" |
  sha256sum | cut -c1-16)
cache=$store/$key

if [ ! -f "$cache/done" ]; then
  mkdir -p "$store"
  exec 9>"$store/.lock"
  flock 9
  if [ ! -f "$cache/done" ]; then
    for t in umoci apt-get dpkg-deb busybox python3 jq; do
      command -v "$t" >/dev/null || die "$t not found (run scripts/setup.sh)"
    done
    log "building the benchmark images into $cache (once; a few minutes)"
    tmp=$store/.build.$$
    rm -rf "$tmp" "$cache"
    mkdir -p "$tmp"
    python3 "$here/benchimg/build.py" "$tmp"
    umoci init --layout "$tmp/oci"
    n=$(jq length "$tmp/images.json")
    for ((i = 0; i < n; i++)); do
      tag=$(jq -r ".[$i].tag" "$tmp/images.json")
      umoci new --image "$tmp/oci:$tag"
      for l in $(jq -r ".[$i].layers[]" "$tmp/images.json"); do
        umoci raw add-layer --image "$tmp/oci:$tag" "$tmp/layers/$l.tar"
      done
      cmdargs=()
      while IFS= read -r c; do cmdargs+=(--config.cmd "$c"); done < <(jq -r ".[$i].cmd[]" "$tmp/images.json")
      umoci config --image "$tmp/oci:$tag" \
        --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --config.workingdir / "${cmdargs[@]}"
    done
    umoci gc --layout "$tmp/oci"
    rm -rf "$tmp/layers"
    touch "$tmp/done"
    mv "$tmp" "$cache"
    # drop builds of older builder versions
    find "$store" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name '.*' ! -name conv ! -name records -exec rm -rf {} +
    log "benchmark images built"
  fi
  exec 9>&-
fi
echo "$cache/oci"
