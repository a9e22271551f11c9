#!/usr/bin/env bash
# Base of the lab image without any container registry: debootstrap a minimal Debian bookworm
# rootfs (from the host's apt mirror) with the tools a lab host needs, then `docker import` it.
#
#   build_offline.sh --rootfs ROOTFS_DIR        # rootfs only (netlab/image.py imports it via the SDK)
#   build_offline.sh TAG [CACHE_DIR]            # rootfs in CACHE_DIR/rootfs-bookworm, then
#                                               # `tar | docker import` as TAG
#
# The rootfs is kept as a cache: a second run reuses it. The full image (the project and its
# Python dependencies on top of this base) is built by `python -m netlab.image`.
# Environment: IMS_DEBIAN_MIRROR (default: the host's first apt URI, else deb.debian.org).
set -euo pipefail
USAGE="usage: build_offline.sh --rootfs ROOTFS_DIR | build_offline.sh TAG [CACHE_DIR]"
if [ "${1:-}" = "--rootfs" ]; then
  ROOTFS=${2:?$USAGE}
  TAG=
else
  TAG=${1:?$USAGE}
  ROOTFS=${2:-/var/cache/ims-migrate}/rootfs-bookworm
fi
SUITE=bookworm
# Keep this list in sync with netlab/images/Dockerfile (the registry path).
PKGS=python3,python3-venv,iproute2,iptables,nftables,conntrack,tcpdump,procps,iputils-ping

first_apt_uri() {
  grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
    | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true
}
MIRROR=${IMS_DEBIAN_MIRROR:-$(first_apt_uri)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if [ "$(id -u)" -ne 0 ]; then echo "build_offline.sh: debootstrap needs root" >&2; exit 1; fi
command -v debootstrap >/dev/null || { echo "build_offline.sh: apt-get install debootstrap" >&2; exit 1; }

if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
  mkdir -p "$(dirname "$ROOTFS")"
  rm -rf "$ROOTFS.tmp"
  trap 'rm -rf "$ROOTFS.tmp"' EXIT
  if ! debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$ROOTFS.tmp" "$MIRROR" \
      >"$ROOTFS.log" 2>&1; then
    echo "build_offline.sh: debootstrap $SUITE from $MIRROR failed; last lines of $ROOTFS.log:" >&2
    tail -20 "$ROOTFS.log" >&2
    exit 1
  fi
  # smaller image: no apt lists, caches, docs
  rm -rf "$ROOTFS.tmp"/var/cache/apt/archives/*.deb "$ROOTFS.tmp"/var/lib/apt/lists/* \
         "$ROOTFS.tmp"/usr/share/doc/* "$ROOTFS.tmp"/usr/share/man/*
  rm -rf "$ROOTFS" && mv "$ROOTFS.tmp" "$ROOTFS"
  trap - EXIT
fi
if [ -n "$TAG" ]; then
  tar -C "$ROOTFS" --numeric-owner -c . \
    | docker import -c 'CMD ["sleep", "infinity"]' -m "ims-migrate lab base (debootstrap $SUITE)" - "$TAG" >/dev/null
  echo "$TAG"
fi
