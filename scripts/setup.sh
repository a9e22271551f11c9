#!/usr/bin/env bash
# Install everything ims-migrate needs on a fresh Debian/Ubuntu machine (run as root).
# Idempotent: a second run only checks and returns quickly.
#   - system packages: iproute2, iptables/nftables, conntrack, SIPp (sip-tester), SIPVicious, tcpdump, baresip-core,
#     docker.io + debootstrap (Docker lab backend), python3-venv, chromium (headless, for the
#     HTML report test), redis-server (location store tests start their own instances)
#     gcc (the bench's C RTP generator), kamailio and rtpengine-daemon (reference/relay rows of
#     `harness bench` and the rtpengine launcher test; not started as services), python3-dev
#   - the project virtualenv in .venv with the project installed editable (+ test, sippy, fast extras)
#   - the mypyc build of the server's hot modules in build/compiled (sipcore/compiled.py)
#   - a Docker engine (dockerd) when none answers (skip with IMS_SKIP_DOCKER=1)
#   - the MML management token config/mml.token (random, mode 0600, owner root; kept if present)
#   - pm2 (npm) into .venv/pm2, only for the test that runs ecosystem.config.js under a real pm2
#     (skip with IMS_SKIP_PM2=1); production installs pm2 their own way
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh must run as root (network namespaces, iptables, apt): sudo bash scripts/setup.sh" >&2
  exit 2
fi

PKGS="iproute2 iptables nftables conntrack sip-tester sipvicious tcpdump procps kmod python3-venv debootstrap docker.io"
PKGS="$PKGS chromium redis-server"   # report.html rendering test; shared location store tests
PKGS="$PKGS gcc libc6-dev kamailio rtpengine-daemon"   # harness bench: rtpgen, reference rows
PKGS="$PKGS python3-dev"   # headers for the mypyc build of the hot modules (scripts/build_compiled.py)
PKGS="$PKGS baresip-core"   # harness peer UA (ua: baresip): the softphone and its modules
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "[setup] installing system packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# the C RTP load generator of `harness bench` (sendmmsg/recvmmsg; rebuilt when its source changes)
if [ ! -x benchmarks/mediagen/rtpgen ] || [ benchmarks/mediagen/rtpgen.c -nt benchmarks/mediagen/rtpgen ]; then
  echo "[setup] building benchmarks/mediagen/rtpgen"
  gcc -O2 -Wall -o benchmarks/mediagen/rtpgen benchmarks/mediagen/rtpgen.c
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
STAMP=.venv/.ims-installed
WANT=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing the project into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e ".[test,sippy,fast]"
  echo "$WANT" > "$STAMP"
fi

# sipcore's hot modules compiled with mypyc (sipcore/compiled.py; ~1-2 min, skipped when current).
# A failed build leaves the pure-Python modules in use: same behaviour, about 1.3x the CPU per call.
.venv/bin/python scripts/build_compiled.py || echo "[setup] WARNING: the compiled build failed (above); the server runs pure Python"

# the MML token the server and ims-mml read by default (never committed: .gitignore)
.venv/bin/ims-mml --create-token-file config/mml.token >/dev/null

PM2_VERSION=7.0.4
if [ "${IMS_SKIP_PM2:-0}" != 1 ] && [ ! -x .venv/pm2/node_modules/.bin/pm2 ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "[setup] installing nodejs + npm (for the pm2 test)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  echo "[setup] installing pm2 $PM2_VERSION into .venv/pm2 (test of ecosystem.config.js)"
  npm install --silent --no-audit --no-fund --prefix .venv/pm2 "pm2@$PM2_VERSION" >/dev/null
fi

# kernel modules used by the NAT labs (SIP ALG profile); harmless when built in or absent
modprobe nf_conntrack_sip 2>/dev/null || true
modprobe nf_nat_sip 2>/dev/null || true

if [ "${IMS_SKIP_DOCKER:-0}" != 1 ] && [ -x scripts/docker-engine.sh ]; then
  bash scripts/docker-engine.sh || echo "[setup] warning: no Docker engine; the docker lab backend will be unavailable" >&2
fi
echo "[setup] ready: $ROOT/.venv/bin/harness"
