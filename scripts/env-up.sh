#!/usr/bin/env bash
# env-up.sh DIR: start a private test environment under DIR:
#   - docker-registry on 127.0.0.1:$LAZYSNAP_REGISTRY_PORT (default 5000; a free port if busy)
#   - the lazysnap daemon (root DIR/lazysnap, socket DIR/lazysnap.sock, log DIR/lazysnap.log,
#     Prometheus metrics on http://$METRICS_ADDRESS/metrics, a free port of 127.0.0.1)
#   - a private containerd (DIR/containerd.toml, socket DIR/containerd.sock) with lazysnap as a
#     proxy snapshotter and the CRI plugin disabled
# and write DIR/env (shell-sourceable). Stop it with env-down.sh DIR (also after a failure here).
# ENV_NO_LAZYSNAP=1 starts everything but the lazysnap daemon (for overlayfs-only runs).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ $# -eq 1 ] || die "usage: env-up.sh DIR"
mkdir -p "$1"
DIR=$(realpath "$1")
BIN=${LAZYSNAP_BIN:-$LAZYSNAP_TARGET/release/lazysnap}

if [ -f "$DIR/env" ]; then
  die "$DIR/env exists: an environment is (or was) running there; run env-down.sh $DIR first"
fi

# On failure, leave the pid files so that env-down.sh cleans up what did start.
trap 'log "env-up failed; run scripts/env-down.sh $DIR to clean up"' ERR

for t in docker-registry containerd ctr runc curl; do
  command -v "$t" >/dev/null || die "$t not found (run scripts/setup.sh)"
done

# ---- registry --------------------------------------------------------------------------
port=${LAZYSNAP_REGISTRY_PORT:-5000}
if port_busy "$port"; then
  port=$(free_port)
  log "port ${LAZYSNAP_REGISTRY_PORT:-5000} is busy; registry uses $port"
fi
mkdir -p "$DIR/registry/data"
cat >"$DIR/registry/config.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $DIR/registry/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
YML
setsid docker-registry serve "$DIR/registry/config.yml" </dev/null >"$DIR/registry.log" 2>&1 &
echo $! >"$DIR/registry.pid"
REGISTRY=127.0.0.1:$port
wait_until 30 "registry on $REGISTRY" curl -fsS "http://$REGISTRY/v2/" ||
  { tail -n 20 "$DIR/registry.log" >&2; exit 1; }

# ---- lazysnap --------------------------------------------------------------------------
mkdir -p "$DIR/lazysnap"
METRICS_ADDRESS=127.0.0.1:$(free_port)
cat >"$DIR/lazysnap.toml" <<TOML
root = "$DIR/lazysnap"
address = "$DIR/lazysnap.sock"
log_level = "debug"
# Tests measure what a lazy start fetches: no background fetch here.
background_fetch = false
metrics_address = "$METRICS_ADDRESS"
TOML
printf '%s\n' "$BIN" serve --config "$DIR/lazysnap.toml" --root "$DIR/lazysnap" \
  --address "$DIR/lazysnap.sock" --log-level debug >"$DIR/lazysnap.cmd"
if [ "${ENV_NO_LAZYSNAP:-0}" != 1 ]; then
  "$LAZYSNAP_REPO/scripts/env-lazysnap.sh" "$DIR" start
fi

# ---- containerd ------------------------------------------------------------------------
mkdir -p "$DIR/containerd/root" "$DIR/containerd/state" "$DIR/containerd/opt"
cat >"$DIR/containerd.toml" <<TOML
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$DIR/containerd.sock"

[ttrpc]
  address = "$DIR/containerd.sock.ttrpc"

[debug]
  address = "$DIR/containerd-debug.sock"
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/containerd/opt"

[proxy_plugins.lazysnap]
  type = "snapshot"
  address = "$DIR/lazysnap.sock"
TOML
setsid containerd --config "$DIR/containerd.toml" </dev/null >"$DIR/containerd.log" 2>&1 &
echo $! >"$DIR/containerd.pid"
wait_until 30 "containerd on $DIR/containerd.sock" ctr -a "$DIR/containerd.sock" version ||
  { tail -n 20 "$DIR/containerd.log" >&2; exit 1; }

# A probe snapshot (namespace lazysnap-probe, a gc root) whose Stat goes through containerd
# to lazysnap: env-lazysnap.sh uses it to see when containerd has reconnected after a restart.
if [ "${ENV_NO_LAZYSNAP:-0}" != 1 ]; then
  probe=(ctr -a "$DIR/containerd.sock" -n lazysnap-probe snapshots --snapshotter lazysnap)
  "${probe[@]}" prepare probe-active >/dev/null
  "${probe[@]}" commit probe probe-active
  "${probe[@]}" label probe containerd.io/gc.root=1 >/dev/null
  "${probe[@]}" info probe >/dev/null
  touch "$DIR/probe-created"
fi

cat >"$DIR/env" <<ENV
# lazysnap test environment (scripts/env-up.sh); source it: . DIR/env
# (the two sockets are exported: ctr and lazysnap's own commands read them)
ENV_DIR=$DIR
REGISTRY=$REGISTRY
export CONTAINERD_ADDRESS=$DIR/containerd.sock
export LAZYSNAP_ADDRESS=$DIR/lazysnap.sock
LAZYSNAP_ROOT=$DIR/lazysnap
LAZYSNAP_LOG=$DIR/lazysnap.log
LAZYSNAP_BIN=$BIN
METRICS_ADDRESS=$METRICS_ADDRESS
CONTAINERD_STATE=$DIR/containerd/state
REGISTRY_PID=$(cat "$DIR/registry.pid")
CONTAINERD_PID=$(cat "$DIR/containerd.pid")
LAZYSNAP_PID=$(cat "$DIR/lazysnap.pid" 2>/dev/null || echo)
ENV
log "environment up in $DIR (registry $REGISTRY)"
