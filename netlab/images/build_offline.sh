#!/usr/bin/env bash
# Build the lab image without any registry: debootstrap a minimal Debian bookworm rootfs with the
# tools a lab host needs, then `docker import` it. Usage: build_offline.sh TAG [CACHE_DIR]
set -euo pipefail
TAG=${1:?image tag}
CACHE=${2:-/var/cache/ims-migrate}
MIRROR=${IMS_DEBIAN_MIRROR:-$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | head -1 | awk '{print $2}' || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS="$CACHE/rootfs-bookworm"
PKGS=python3,iproute2,iptables,nftables,conntrack,tcpdump,procps,kmod,ca-certificates
mkdir -p "$CACHE"
if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
  rm -rf "$ROOTFS.tmp"
  debootstrap --variant=minbase --include="$PKGS" bookworm "$ROOTFS.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  rm -rf "$ROOTFS" && mv "$ROOTFS.tmp" "$ROOTFS"
fi
tar -C "$ROOTFS" -c . | docker import -c 'CMD ["sleep", "infinity"]' -m "ims-migrate lab image (debootstrap bookworm)" - "$TAG" >/dev/null
echo "$TAG"
