#!/usr/bin/env bash
# images.sh build|push [ENV_DIR]|list|dir
#   build  build the test images (once) into the cache ${LAZYSNAP_IMAGE_CACHE:-/var/cache/lazysnap-test-images}
#          as one OCI layout, keyed by a hash of the builder scripts; prints the layout path
#   push   build if needed, then push every image to the registry of the environment in
#          ENV_DIR (default $LAZYSNAP_TEST_ENV); pushes once per environment
#   push-estargz [ENV_DIR]
#          push (if needed), then convert the images of ESTARGZ_IMAGES to eStargz with
#          `ctr-remote image convert --estargz --oci` in the environment's containerd (namespace
#          esgz-convert) and push them as `<repo>:esgz`; checks that every layer of the pushed
#          manifests carries containerd.io/snapshot/stargz/toc.digest; once per environment
#   push-zstd [ENV_DIR]
#          push (if needed), then copy the images of ZSTD_IMAGES with
#          `skopeo copy --format oci --dest-compress-format zstd:chunked` (via a local OCI
#          layout) to `<repo>:zstd`; checks
#          that every layer of the pushed manifests carries a zstd-chunked manifest-checksum
#          annotation (either key set); once per environment
#   list   print "ref" of every image, one a line
#   dir    print the cache directory of the current builder version
# Images: test/busybox:latest, test/python:latest, cases/bNN:t (see scripts/testimg/build.py);
# eStargz: test/busybox:esgz, test/python:esgz (+ variants esgz-*), cases/b10:esgz, cases/b26:esgz.
# zstd:chunked: test/busybox:zstd, test/python:zstd.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

here=$LAZYSNAP_REPO/scripts
key=$(cat "$here/images.sh" "$here/testimg/build.py" "$here/testimg/tk.py" "$here/testimg/index.py" | sha256sum | cut -c1-16)
# Images converted to eStargz by push-estargz: "source target [chunk size | optimize]";
# "optimize" runs `ctr-remote image optimize`, which runs python once and puts the files it
# read before the layers' .prefetch.landmark. The python
# variants differ only in their chunk size, so that their layer blobs differ: tests that count
# the bytes the registry serves each use their own variant and do not see another test's
# (or their own earlier) reads served from lazysnap's cache.
ESTARGZ_IMAGES=(
  "test/python:latest test/python:esgz"
  "test/busybox:latest test/busybox:esgz"
  "cases/b10:t cases/b10:esgz"
  "cases/b26:t cases/b26:esgz"
  "test/python:latest test/python:esgz-b17r 1048576"
  "test/python:latest test/python:esgz-b17i 786432"
  "test/python:latest test/python:esgz-bad 524288"
  "test/python:latest test/python:esgz-2ns 393216"
  "test/python:latest test/python:esgz-demo 262144"
  "test/python:latest test/python:esgz-redir 327680"
  "test/python:latest test/python:esgz-exp 458752"
  "test/python:latest test/python:esgz-auth 589824"
  "test/python:latest test/python:esgz-429 655360"
  "test/python:latest test/python:esgz-trunc 851968"
  "test/python:latest test/python:esgz-b25 917504"
  "test/python:latest test/python:esgz-opt optimize"
  "test/python:latest test/python:esgz-full 983040"
  "test/python:latest test/python:esgz-bg 1114112"
)
# Images copied to zstd:chunked by push-zstd: "source target".
ZSTD_IMAGES=(
  "test/python:latest test/python:zstd"
  "test/busybox:latest test/busybox:zstd"
)
cache=$LAZYSNAP_IMAGE_CACHE/$key

build() {
  [ -f "$cache/done" ] && return 0
  mkdir -p "$LAZYSNAP_IMAGE_CACHE"
  exec 9>"$LAZYSNAP_IMAGE_CACHE/.lock"
  flock 9
  if [ -f "$cache/done" ]; then exec 9>&-; return 0; fi
  for t in umoci skopeo apt-get dpkg-deb busybox python3; do
    command -v "$t" >/dev/null || die "$t not found (run scripts/setup.sh)"
  done
  log "building test images into $cache"
  local tmp=$LAZYSNAP_IMAGE_CACHE/.build.$$
  rm -rf "$tmp" "$cache"
  mkdir -p "$tmp"
  python3 "$here/testimg/build.py" "$tmp"
  umoci init --layout "$tmp/oci"
  local n tag
  n=$(jq length "$tmp/images.json")
  for ((i = 0; i < n; i++)); do
    tag=$(jq -r ".[$i].tag" "$tmp/images.json")
    # OCI indexes are assembled after gc (testimg/index.py)
    [ "$(jq -r ".[$i].index // empty" "$tmp/images.json")" = "" ] || continue
    umoci new --image "$tmp/oci:$tag"
    for l in $(jq -r ".[$i].layers[]" "$tmp/images.json"); do
      umoci raw add-layer --image "$tmp/oci:$tag" "$tmp/layers/$l.tar"
    done
    local -a cmdargs=()
    while IFS= read -r c; do cmdargs+=(--config.cmd "$c"); done < <(jq -r ".[$i].cmd[]" "$tmp/images.json")
    umoci config --image "$tmp/oci:$tag" --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      --config.workingdir / "${cmdargs[@]}"
    arch=$(jq -r ".[$i].arch // empty" "$tmp/images.json")
    [ -z "$arch" ] || umoci config --image "$tmp/oci:$tag" --architecture "$arch"
  done
  umoci gc --layout "$tmp/oci"
  for ((i = 0; i < n; i++)); do
    [ "$(jq -r ".[$i].index // empty" "$tmp/images.json")" != "" ] || continue
    # shellcheck disable=SC2046
    python3 "$here/testimg/index.py" "$tmp/oci" "$(jq -r ".[$i].tag" "$tmp/images.json")" \
      $(jq -r ".[$i].index[]" "$tmp/images.json")
  done
  rm -rf "$tmp/layers"
  touch "$tmp/done"
  mv "$tmp" "$cache"
  # drop builds of older builder versions
  find "$LAZYSNAP_IMAGE_CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
  exec 9>&-
  log "test images built"
}

push() {
  local envdir=${1:-${LAZYSNAP_TEST_ENV:-}}
  [ -n "$envdir" ] && [ -f "$envdir/env" ] || die "push: no environment (give ENV_DIR or set LAZYSNAP_TEST_ENV; see env-up.sh)"
  build
  local REGISTRY
  REGISTRY=$(. "$envdir/env" && echo "$REGISTRY")
  exec 8>"$envdir/images.lock"
  flock 8
  if [ -f "$envdir/images-pushed.$key" ]; then exec 8>&-; return 0; fi
  local n tag ref
  n=$(jq length "$cache/images.json")
  for ((i = 0; i < n; i++)); do
    tag=$(jq -r ".[$i].tag" "$cache/images.json")
    ref=$(jq -r ".[$i].ref" "$cache/images.json")
    local -a all=()
    [ "$(jq -r ".[$i].index // empty" "$cache/images.json")" = "" ] || all=(--all)
    skopeo copy -q "${all[@]}" --dest-tls-verify=false "oci:$cache/oci:$tag" "docker://$REGISTRY/$ref" >/dev/null ||
      die "pushing $ref to $REGISTRY failed"
  done
  touch "$envdir/images-pushed.$key"
  exec 8>&-
  log "pushed $n images to $REGISTRY"
}

push_estargz() {
  local envdir=${1:-${LAZYSNAP_TEST_ENV:-}}
  push "$envdir"
  command -v ctr-remote >/dev/null || die "ctr-remote not found (apt-get install stargz-snapshotter)"
  local REGISTRY CONTAINERD_ADDRESS
  REGISTRY=$(. "$envdir/env" && echo "$REGISTRY")
  CONTAINERD_ADDRESS=$(. "$envdir/env" && echo "$CONTAINERD_ADDRESS")
  exec 8>"$envdir/images.lock"
  flock 8
  # ESTARGZ_ONLY="ref ref…" limits the conversion to those targets (the demo needs one)
  local marker=$envdir/images-esgz-pushed.$key
  [ -z "${ESTARGZ_ONLY:-}" ] || marker=$marker.$(echo "$ESTARGZ_ONLY" | sha256sum | cut -c1-8)
  if [ -f "$marker" ] || [ -f "$envdir/images-esgz-pushed.$key" ]; then exec 8>&-; return 0; fi
  local ns=esgz-convert entry src dst chunk m layers missing count=0
  local -a c=(ctr -a "$CONTAINERD_ADDRESS" -n "$ns") opts
  for entry in "${ESTARGZ_IMAGES[@]}"; do
    read -r src dst chunk <<<"$entry"
    if [ -n "${ESTARGZ_ONLY:-}" ] && [[ " $ESTARGZ_ONLY " != *" $dst "* ]]; then continue; fi
    count=$((count + 1))
    opts=()
    [ -z "$chunk" ] || [ "$chunk" = optimize ] || opts=(--estargz-chunk-size "$chunk")
    # content only (no unpack): ctr content fetch also records the image
    "${c[@]}" content fetch --plain-http "$REGISTRY/$src" >/dev/null || die "fetching $src failed"
    if [ "$chunk" = optimize ]; then
      ctr-remote -a "$CONTAINERD_ADDRESS" -n "$ns" image optimize --oci --period=5 \
        --entrypoint='[ "python3", "-c", "import json, email, http.client; print(1)" ]' \
        "$REGISTRY/$src" "$REGISTRY/$dst" >/dev/null 2>&1 || die "optimizing $src failed"
    else
      ctr-remote -a "$CONTAINERD_ADDRESS" -n "$ns" image convert --estargz --oci "${opts[@]}" \
        "$REGISTRY/$src" "$REGISTRY/$dst" >/dev/null || die "converting $src to eStargz failed"
    fi
    # containerd's push to docker-registry now and then ends in "unexpected EOF": retry.
    local try
    for try in 1 2 3; do
      "${c[@]}" images push --plain-http "$REGISTRY/$dst" >/dev/null && break
      [ "$try" = 3 ] && die "pushing $dst failed"
      log "pushing $dst failed (try $try); again"
      sleep 1
    done
    m=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
      "http://$REGISTRY/v2/${dst%:*}/manifests/${dst##*:}") || die "no manifest for $dst"
    layers=$(jq '.layers | length' <<<"$m")
    missing=$(jq '[.layers[] | select(.annotations["containerd.io/snapshot/stargz/toc.digest"] == null)] | length' <<<"$m")
    [ "$missing" = 0 ] || die "$dst: $missing of $layers layers have no stargz toc.digest annotation"
    "${c[@]}" images rm "$REGISTRY/$src" "$REGISTRY/$dst" >/dev/null 2>&1 || true
  done
  touch "$marker"
  exec 8>&-
  log "pushed $count eStargz images to $REGISTRY"
}

push_zstd() {
  local envdir=${1:-${LAZYSNAP_TEST_ENV:-}}
  push "$envdir"
  local REGISTRY
  REGISTRY=$(. "$envdir/env" && echo "$REGISTRY")
  exec 8>"$envdir/images.lock"
  flock 8
  local marker=$envdir/images-zstd-pushed.$key
  if [ -f "$marker" ]; then exec 8>&-; return 0; fi
  local entry src dst tag m layers missing count=0
  for entry in "${ZSTD_IMAGES[@]}"; do
    read -r src dst <<<"$entry"
    tag=$(jq -r --arg r "$src" '.[] | select(.ref == $r) | .tag' "$cache/images.json")
    [ -n "$tag" ] || die "push-zstd: no image $src"
    # Compress into a fresh local layout first: pushed straight to the registry, skopeo 1.9.3
    # would reuse the gzip blobs already there instead of recompressing.
    rm -rf "$envdir/zstd-oci"
    skopeo copy -q --format oci --dest-compress-format zstd:chunked \
      "oci:$cache/oci:$tag" "oci:$envdir/zstd-oci:$tag" >/dev/null || die "compressing $src as zstd:chunked failed"
    skopeo copy -q --format oci --dest-tls-verify=false \
      "oci:$envdir/zstd-oci:$tag" "docker://$REGISTRY/$dst" >/dev/null || die "pushing $dst failed"
    rm -rf "$envdir/zstd-oci"
    m=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
      "http://$REGISTRY/v2/${dst%:*}/manifests/${dst##*:}") || die "no manifest for $dst"
    layers=$(jq '.layers | length' <<<"$m")
    missing=$(jq '[.layers[] | select((.annotations // {}) | (has("io.github.containers.zstd-chunked.manifest-checksum") or has("io.containers.zstd-chunked.manifest-checksum")) | not)] | length' <<<"$m")
    [ "$missing" = 0 ] || die "$dst: $missing of $layers layers have no zstd-chunked manifest-checksum annotation"
    count=$((count + 1))
  done
  touch "$marker"
  exec 8>&-
  log "pushed $count zstd:chunked images to $REGISTRY"
}

case ${1:-} in
  build) build; echo "$cache/oci" ;;
  push) push "${2:-}" ;;
  push-estargz) push_estargz "${2:-}" ;;
  push-zstd) push_zstd "${2:-}" ;;
  list) build; jq -r '.[].ref' "$cache/images.json" ;;
  dir) echo "$cache" ;;
  *) die "usage: images.sh build|push [ENV_DIR]|push-estargz [ENV_DIR]|push-zstd [ENV_DIR]|list|dir" ;;
esac
