"""Source blacklist (file backed, re-read on change) and the failed-attempt rate limiter.

Unlike the original, blocked packets still count, so the auto-blacklist threshold is reachable,
and authentication failures count as failures (not only lookups of unknown users).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections import deque

log = logging.getLogger(__name__)


def _normalise(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"not an IP address: {ip!r}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return str(addr)


class Blacklist:
    """One IP per line, ``#`` comments. Reloaded when the file's mtime changes."""

    def __init__(self, path: str):
        self.path = path
        self._ips: set[str] = set()
        self._mtime: float | None = None
        self._lock = threading.Lock()
        self.reload()

    def reload(self) -> bool:
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            self._ips, self._mtime = set(), None
            return False
        if mtime == self._mtime:
            return False
        ips: set[str] = set()
        with open(self.path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                try:
                    ips.add(_normalise(line))
                except ValueError:
                    log.warning("%s:%d: ignoring %r (not an IP address)", self.path, n, line)
        with self._lock:
            self._ips, self._mtime = ips, mtime
        log.info("blacklist loaded: %d addresses from %s", len(ips), self.path)
        return True

    def __contains__(self, ip: str) -> bool:
        if not self._ips:           # checked for every message: no address parsing for an empty list
            return False
        try:
            return _normalise(ip) in self._ips
        except ValueError:
            return False

    def list(self) -> list[str]:
        return sorted(self._ips)

    def add(self, ip: str) -> bool:
        ip = _normalise(ip)
        if ip in self._ips:
            return False
        self._ips.add(ip)
        self._save()
        return True

    def remove(self, ip: str) -> bool:
        ip = _normalise(ip)
        if ip not in self._ips:
            return False
        self._ips.discard(ip)
        self._save()
        return True

    def _save(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("# ims-migrate IP blacklist: one address per line\n")
            for ip in sorted(self._ips):
                fh.write(ip + "\n")
        os.replace(tmp, self.path)
        self._mtime = os.stat(self.path).st_mtime


class FailureLimiter:
    """Counts failures per source IP in a sliding window; blocks an IP at ``block_after``
    failures for ``window`` seconds and adds it to the blacklist at ``blacklist_after``."""

    def __init__(self, block_after: int = 10, window: float = 60.0, blacklist_after: int = 50,
                 blacklist: Blacklist | None = None, clock=time.monotonic, total_ttl: float = 3600.0):
        self.block_after = block_after
        self.window = window
        self.blacklist_after = blacklist_after
        self.blacklist = blacklist
        self.clock = clock
        self.total_ttl = total_ttl          # an address without failures this long is forgotten
        self._fails: dict[str, deque] = {}
        self._totals: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def _recent(self, ip: str, create: bool = False) -> deque | None:
        q = self._fails.get(ip)
        if q is None:
            if not create:
                return None
            q = self._fails[ip] = deque()
        limit = self.clock() - self.window
        while q and q[0] < limit:
            q.popleft()
        return q

    def _count(self, ip: str, q: deque) -> int:
        now = self.clock()
        q.append(now)
        self._last[ip] = now
        total = self._totals[ip] = self._totals.get(ip, 0) + 1
        return total

    def failure(self, ip: str, what: str = "") -> None:
        q = self._recent(ip, create=True)
        assert q is not None
        total = self._count(ip, q)
        if len(q) == self.block_after:
            log.warning("rate limit: %s blocked for %.0fs after %d failures (%s)", ip, self.window, len(q), what)
        if self.blacklist is not None and total >= self.blacklist_after and ip not in self.blacklist:
            self.blacklist.add(ip)
            log.warning("rate limit: %s added to the blacklist after %d failures", ip, total)

    def blocked(self, ip: str) -> bool:
        """Checked for every message: must not allocate anything for addresses without failures."""
        q = self._recent(ip)
        if q is not None and len(q) >= self.block_after:
            total = self._count(ip, q)          # blocked traffic keeps counting
            if self.blacklist is not None and total >= self.blacklist_after and ip not in self.blacklist:
                self.blacklist.add(ip)
                log.warning("rate limit: %s added to the blacklist", ip)
            return True
        return False

    def prune(self) -> int:
        """Return the memory of addresses whose failures expired; returns how many were forgotten."""
        now = self.clock()
        gone = [ip for ip, q in list(self._fails.items())
                if not self._recent(ip) and now - self._last.get(ip, 0.0) > max(self.total_ttl, self.window)]
        for ip in gone:
            self._fails.pop(ip, None)
            self._totals.pop(ip, None)
            self._last.pop(ip, None)
        return len(gone)

    def __len__(self) -> int:
        return len(self._fails)

    def stats(self) -> dict[str, dict]:
        return {ip: {"recent": len(self._recent(ip) or ()), "total": self._totals.get(ip, 0),
                     "blocked": len(self._recent(ip) or ()) >= self.block_after}
                for ip in list(self._fails)}
