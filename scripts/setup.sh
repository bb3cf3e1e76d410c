#!/usr/bin/env bash
# setup.sh [--no-build]: install the Debian packages that lazysnap's scripts and tests
# need (only the missing ones), check the Rust toolchain, and build the release binary.
# Idempotent and quiet when everything is already there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

build=1
for a in "$@"; do
  case $a in
    --no-build) build=0 ;;
    *) die "usage: setup.sh [--no-build]" ;;
  esac
done

PACKAGES=(
  containerd runc fuse3 docker-registry skopeo umoci stargz-snapshotter protobuf-compiler
  busybox-static debootstrap jq curl attr python3 e2fsprogs iproute2 util-linux
  libcap2-bin ca-certificates gcc libc6-dev pkg-config
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}: run as root (or apt-get install them)"
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# /dev/fuse must exist for the daemon's mounts.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || log "warning: /dev/fuse is missing; lazysnap cannot mount"

# Rust >= 1.88 (the crate's rust-version).
if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  die "cargo not found. Install Rust >= 1.88 with rustup:
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
  . \"\$HOME/.cargo/env\""
fi
ver=$(cargo --version | awk '{print $2}')
if ! printf '1.88.0\n%s\n' "${ver%%-*}" | sort -V -C; then
  die "cargo $ver is older than 1.88: run 'rustup update stable' (or install rustup, see https://rustup.rs)"
fi

if [ "$build" = 1 ]; then
  cd "$LAZYSNAP_REPO"
  [ -x "$LAZYSNAP_TARGET/release/lazysnap" ] || log "building lazysnap (release; a few minutes on a first run)"
  if ! out=$(cargo build --release --quiet 2>&1); then
    printf '%s\n' "$out" >&2
    die "cargo build --release failed"
  fi
fi
