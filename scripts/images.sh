#!/usr/bin/env bash
# images.sh build|push [ENV_DIR]|list|dir
#   build  build the test images (once) into the cache ${LAZYSNAP_IMAGE_CACHE:-/var/cache/lazysnap-test-images}
#          as one OCI layout, keyed by a hash of the builder scripts; prints the layout path
#   push   build if needed, then push every image to the registry of the environment in
#          ENV_DIR (default $LAZYSNAP_TEST_ENV); pushes once per environment
#   list   print "ref" of every image, one a line
#   dir    print the cache directory of the current builder version
# Images: test/busybox:latest, test/python:latest, cases/bNN:t (see scripts/testimg/build.py).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

here=$LAZYSNAP_REPO/scripts
key=$(cat "$here/images.sh" "$here/testimg/build.py" "$here/testimg/tk.py" | sha256sum | cut -c1-16)
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
    umoci new --image "$tmp/oci:$tag"
    for l in $(jq -r ".[$i].layers[]" "$tmp/images.json"); do
      umoci raw add-layer --image "$tmp/oci:$tag" "$tmp/layers/$l.tar"
    done
    local -a cmdargs=()
    while IFS= read -r c; do cmdargs+=(--config.cmd "$c"); done < <(jq -r ".[$i].cmd[]" "$tmp/images.json")
    umoci config --image "$tmp/oci:$tag" --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      --config.workingdir / "${cmdargs[@]}"
  done
  umoci gc --layout "$tmp/oci"
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
    skopeo copy -q --dest-tls-verify=false "oci:$cache/oci:$tag" "docker://$REGISTRY/$ref" >/dev/null ||
      die "pushing $ref to $REGISTRY failed"
  done
  touch "$envdir/images-pushed.$key"
  exec 8>&-
  log "pushed $n images to $REGISTRY"
}

case ${1:-} in
  build) build; echo "$cache/oci" ;;
  push) push "${2:-}" ;;
  list) build; jq -r '.[].ref' "$cache/images.json" ;;
  dir) echo "$cache" ;;
  *) die "usage: images.sh build|push [ENV_DIR]|list|dir" ;;
esac
