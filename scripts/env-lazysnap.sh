#!/usr/bin/env bash
# env-lazysnap.sh DIR start|stop|kill|restart|restart-kill: manage the lazysnap daemon of the
# test environment in DIR (made by env-up.sh). The command line it uses is recorded in
# DIR/lazysnap.cmd (one argument per line) so a restart uses exactly the same arguments.
#   stop          SIGTERM, then SIGKILL after a timeout
#   kill          SIGKILL (a crash)
#   restart       stop + start
#   restart-kill  kill + start (the B16 crash sequence)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ $# -eq 2 ] || die "usage: env-lazysnap.sh DIR start|stop|kill|restart|restart-kill"
DIR=$(realpath "$1")
action=$2
pidfile=$DIR/lazysnap.pid
sock=$DIR/lazysnap.sock

do_start() {
  [ -s "$DIR/lazysnap.cmd" ] || die "$DIR/lazysnap.cmd missing (run env-up.sh first)"
  local -a cmd
  mapfile -t cmd <"$DIR/lazysnap.cmd"
  local bin=${cmd[0]}
  [ -x "$bin" ] || die "$bin is not built (run scripts/setup.sh)"
  if [ -s "$pidfile" ] && pid_matches "$(cat "$pidfile")" "$DIR"; then
    die "lazysnap already running (pid $(cat "$pidfile"))"
  fi
  printf '=== start %s ===\n' "$(date -Is)" >>"$DIR/lazysnap.log"
  # setsid: its own session, so a Ctrl-C of the caller does not reach it
  setsid "${cmd[@]}" </dev/null >>"$DIR/lazysnap.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$pidfile"
  if ! wait_until 30 "lazysnap on $sock" "$bin" status --lazysnap-address "$sock"; then
    if ! kill -0 "$pid" 2>/dev/null; then log "lazysnap exited; end of $DIR/lazysnap.log:"; else log "lazysnap (pid $pid) does not answer; end of $DIR/lazysnap.log:"; fi
    tail -n 30 "$DIR/lazysnap.log" >&2
    return 1
  fi
  # containerd reconnects to a restarted proxy plugin with a backoff (grpc: 1 s and growing);
  # until then its calls fail with "connection refused". Wait until a call that reaches the
  # daemon through containerd works: Stat of the probe snapshot made by env-up.sh.
  if [ -f "$DIR/probe-created" ] && [ -s "$DIR/containerd.pid" ] &&
    pid_matches "$(cat "$DIR/containerd.pid")" "$DIR"; then
    wait_until 60 "containerd to reconnect to lazysnap" \
      ctr -a "$DIR/containerd.sock" -n lazysnap-probe snapshots --snapshotter lazysnap info probe ||
      { log "containerd does not reach lazysnap"; return 1; }
  fi
  # keep the env file's PID current
  if [ -f "$DIR/env" ]; then
    sed -i "s/^LAZYSNAP_PID=.*/LAZYSNAP_PID=$pid/" "$DIR/env"
  fi
}

do_stop() {
  local sig=$1
  [ -s "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if [ "$sig" = KILL ]; then
    if pid_matches "$pid" "$DIR"; then
      kill -KILL "$pid"
      # wait until it has really exited (closed its database and /dev/fuse), as systemd
      # does before Restart=
      local t0=$SECONDS
      wait_gone "$pid" 60 || die "lazysnap (pid $pid) did not exit within 60s of SIGKILL"
      [ $((SECONDS - t0)) -lt 3 ] || log "lazysnap (pid $pid) took $((SECONDS - t0))s to exit after SIGKILL"
    fi
  else
    stop_pid "$pid" "$DIR" 20
  fi
  rm -f "$pidfile"
}

case $action in
  start) do_start ;;
  stop) do_stop TERM ;;
  kill) do_stop KILL ;;
  restart) do_stop TERM; do_start ;;
  restart-kill) do_stop KILL; do_start ;;
  *) die "unknown action $action" ;;
esac
