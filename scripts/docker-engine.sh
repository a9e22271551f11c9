#!/usr/bin/env bash
# Make sure a Docker engine answers (for the docker lab backend). Idempotent, bounded, run as root.
#   - `docker info` answers            -> nothing to do, exit 0
#   - dockerd missing                  -> apt-get install Debian's docker.io
#   - start `dockerd --iptables=true` in the background (no systemd needed), wait <= 60 s
#   - the engine does not answer       -> exit 1 with the reason and the log's tail
# Environment: IMS_DOCKERD_LOG (default /var/log/ims-dockerd.log), IMS_DOCKERD_ARGS (extra dockerd
# arguments, e.g. for a second engine on another socket together with DOCKER_HOST),
# IMS_DOCKERD_WAIT (seconds, default 60).
set -uo pipefail
LOG=${IMS_DOCKERD_LOG:-/var/log/ims-dockerd.log}
WAIT=${IMS_DOCKERD_WAIT:-60}
say() { echo "[docker-engine] $*" >&2; }

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_answers; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  say "no Docker engine answers and starting one needs root (run: sudo bash $0)"
  exit 1
fi
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  say "installing Debian docker.io"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq docker.io >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    apt-get install -y -qq docker.io >/dev/null 2>&1 || { say "apt-get install docker.io failed"; exit 1; }
  fi
fi
# A pid file left by a dead dockerd makes the new one refuse to start.
PIDFILE=/var/run/docker.pid
for arg in ${IMS_DOCKERD_ARGS:-}; do case $arg in --pidfile=*) PIDFILE=${arg#--pidfile=};; esac; done
if [ -s "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  say "removing stale $PIDFILE"
  rm -f "$PIDFILE"
fi
mkdir -p "$(dirname "$LOG")"
# shellcheck disable=SC2086  # IMS_DOCKERD_ARGS is a list of words on purpose
nohup dockerd --iptables=true ${IMS_DOCKERD_ARGS:-} >"$LOG" 2>&1 </dev/null &
DOCKERD_PID=$!
for _ in $(seq 1 "$WAIT"); do
  if engine_answers; then
    say "engine started (dockerd pid $DOCKERD_PID, log $LOG)"
    exit 0
  fi
  if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
    say "dockerd exited at once; last lines of $LOG:"
    tail -5 "$LOG" >&2
    exit 1
  fi
  sleep 1
done
say "dockerd (pid $DOCKERD_PID) did not answer within $WAIT s; last lines of $LOG:"
tail -5 "$LOG" >&2
exit 1
