#!/usr/bin/env bash
# build-stargz-grpc.sh: build tools/stargz-grpc (our small containerd-stargz-grpc stand-in;
# Debian 12 packages stargz-snapshotter's Go sources but not its daemon) and print the
# binary's path, for the benchmark's stargz contender:
#   CONTAINERD_STARGZ_GRPC=$(scripts/build-stargz-grpc.sh) scripts/bench.sh ... --contenders stargz
# Works offline: installs the Debian golang-*-dev packages it needs with apt-get when missing
# (Debian's apt is reachable; Go modules are not) and builds in GOPATH mode against
# /usr/share/gocode. Output: ${LAZYSNAP_STARGZ_CACHE:-/var/cache/lazysnap-stargz}/containerd-stargz-grpc,
# built once and rebuilt only when tools/stargz-grpc/main.go is newer. Progress goes to
# stderr; stdout is only the path.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

CACHE=${LAZYSNAP_STARGZ_CACHE:-/var/cache/lazysnap-stargz}
OUT=$CACHE/containerd-stargz-grpc
SRC=$LAZYSNAP_REPO/tools/stargz-grpc

if [ -x "$OUT" ] && [ "$OUT" -nt "$SRC/main.go" ]; then
  echo "$OUT"
  exit 0
fi

# The Go toolchain, fusermount (FUSE mounts), and every Debian package in the import closure
# of tools/stargz-grpc (go list -deps, mapped with dpkg -S).
pkgs=(
  golang-go fuse3
  golang-github-containerd-stargz-snapshotter-dev golang-github-containerd-containerd-dev
  golang-github-containerd-continuity-dev golang-github-burntsushi-toml-dev
  golang-github-beorn7-perks-dev golang-github-cespare-xxhash-dev golang-github-coreos-bbolt-dev
  golang-github-docker-go-metrics-dev golang-github-gogo-protobuf-dev
  golang-github-golang-groupcache-dev golang-github-golang-protobuf-1-3-dev
  golang-github-hanwen-go-fuse-dev golang-github-hashicorp-errwrap-dev
  golang-github-hashicorp-go-cleanhttp-dev golang-github-hashicorp-go-multierror-dev
  golang-github-hashicorp-go-retryablehttp-dev golang-github-klauspost-compress-dev
  golang-github-moby-locker-dev golang-github-moby-sys-dev golang-github-opencontainers-go-digest-dev
  golang-github-opencontainers-image-spec-dev golang-github-prometheus-client-golang-dev
  golang-github-prometheus-client-model-dev golang-github-prometheus-common-dev
  golang-github-prometheus-procfs-dev golang-github-sirupsen-logrus-dev
  golang-github-vbatts-tar-split-dev golang-golang-x-net-dev golang-golang-x-sync-dev
  golang-golang-x-sys-dev golang-golang-x-text-dev golang-google-genproto-dev
  golang-google-grpc-dev golang-google-protobuf-dev golang-protobuf-extensions-dev
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "building $OUT (GOPATH mode against /usr/share/gocode)"
(
  cd "$SRC"
  GO111MODULE=off GOFLAGS= GOPATH="$work/gopath:/usr/share/gocode" \
    GOCACHE=${GOCACHE:-$CACHE/go-build} go build -p 2 -o "$OUT.tmp" .
) >&2
mv "$OUT.tmp" "$OUT"
echo "$OUT"
