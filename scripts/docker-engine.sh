#!/usr/bin/env bash
# Make sure a Docker engine answers (for the docker lab backend). Idempotent, bounded.
# Installs Debian's docker.io when missing and starts dockerd in the background (no systemd needed).
set -uo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null || { echo "[docker] cannot install docker.io" >&2; exit 1; }
fi
mkdir -p /var/log
nohup dockerd >/var/log/ims-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then echo "[docker] engine started"; exit 0; fi
  sleep 1
done
echo "[docker] dockerd did not answer within 60 s; see /var/log/ims-dockerd.log" >&2
tail -5 /var/log/ims-dockerd.log >&2
exit 1
