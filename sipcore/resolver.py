"""Destination addresses taken from the wire (Via sent-by/received/rport, Route, Request-URI), made
safe to hand to a socket.

Two jobs, both there so that a single message can neither close a listener nor stall the loop:

* ``check_destination(addr)`` validates a (host, port) pair before any ``sendto``/``connect``: the
  port must be an integer 1-65535 and the host an IP literal or a syntactically valid DNS name.
  Anything else raises ``BadDestination`` (asyncio turns a non-OSError from ``sendto`` -- e.g. the
  ``OverflowError`` of port 99999 -- into "Fatal write error" and closes the socket).
* ``Resolver`` resolves DNS names without blocking the event loop: ``getaddrinfo`` runs in its own
  daemon thread (so a black-hole DNS server ties up at most ``max_pending`` threads, never the
  loop, asyncio's default executor or the process exit), every lookup has a timeout, answers and failures
  are cached for a short time, and when too many lookups are already pending the message is
  refused at once instead of queueing without bound.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import socket
import threading
import time

log = logging.getLogger(__name__)

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


class BadDestination(ValueError):
    """A destination from the wire that no socket may be given."""


def ip_literal(host: str) -> str | None:
    """The normalised IP address when ``host`` is an IPv4/IPv6 literal (brackets allowed), else None."""
    if not isinstance(host, str) or not host:
        return None
    return _ip_literal(host)


@functools.lru_cache(maxsize=4096)
def _ip_literal(host: str) -> str | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def is_hostname(host: str) -> bool:
    """RFC 1123 host name (ASCII labels, letters/digits/hyphen, plus '_' seen in the wild)."""
    if not isinstance(host, str) or not 0 < len(host) <= 253 or not host.isascii():
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if labels[-1].isdigit():       # 999.1.1.1 is a broken IPv4 literal, not a name to look up
        return False
    return all(_LABEL.match(label) for label in labels)


def check_destination(addr) -> tuple[str, int, bool]:
    """(host, port, is_ip) for a destination that may be used, else ``BadDestination``."""
    try:
        host, port = addr[0], addr[1]
    except (TypeError, IndexError, KeyError):
        raise BadDestination(f"not a (host, port) pair: {addr!r}"[:120]) from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
        raise BadDestination(f"bad port {port!r}"[:120])
    if not isinstance(host, str):
        raise BadDestination(f"bad host {host!r}"[:120])
    ip = ip_literal(host)
    if ip is not None:
        return ip, port, True
    if is_hostname(host):
        return host.rstrip(".").lower(), port, False
    raise BadDestination(f"bad host {host!r}"[:120])


class Resolver:
    """Asynchronous, bounded, cached name resolution for message destinations."""

    def __init__(self, timeout: float = 2.0, max_pending: int = 4, ttl: float = 60.0,
                 negative_ttl: float = 30.0, family: int = socket.AF_INET, clock=time.monotonic,
                 enabled: bool = True):
        self.enabled = enabled          # DNS_RESOLVE=0: names are refused, nothing is looked up
        self.timeout = timeout
        self.max_pending = max_pending
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.family = family
        self.clock = clock
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self.stats = {"lookups": 0, "refused_busy": 0, "failed": 0, "timeouts": 0}

    def cached(self, name: str) -> tuple[bool, str | None]:
        """(known, address): known=False when the name must still be looked up."""
        hit = self._cache.get(name)
        if hit is None:
            return False, None
        until, address = hit
        if until < self.clock():
            del self._cache[name]
            return False, None
        return True, address

    async def resolve(self, name: str) -> str | None:
        """The first address of ``name`` for our socket family, or None (failure, timeout, busy)."""
        if not self.enabled:
            raise BadDestination(f"host name {name!r} not resolved (DNS_RESOLVE=0)")
        known, address = self.cached(name)
        if known:
            return address
        pending = self._inflight.get(name)
        if pending is None:
            if len(self._inflight) >= self.max_pending:
                self.stats["refused_busy"] += 1
                raise BadDestination(f"{len(self._inflight)} DNS lookups already pending; not resolving {name!r}")
            loop = asyncio.get_running_loop()
            self.stats["lookups"] += 1
            pending = loop.create_future()
            self._inflight[name] = pending
            # a daemon thread per lookup (at most max_pending): a lookup stuck in a black-holed
            # resolver for its full resolv.conf timeout must not delay the process exit, which a
            # ThreadPoolExecutor would (its workers are joined at exit)
            threading.Thread(target=_lookup_into, args=(name, self.family, loop, pending),
                             name="sip-dns", daemon=True).start()
            pending.add_done_callback(functools.partial(self._done, name))
        try:
            return await asyncio.wait_for(asyncio.shield(pending), self.timeout)
        except asyncio.TimeoutError:
            self.stats["timeouts"] += 1
            self._cache[name] = (self.clock() + self.negative_ttl, None)
            return None

    def _done(self, name: str, fut: asyncio.Future) -> None:
        self._inflight.pop(name, None)
        address = None if fut.cancelled() or fut.exception() is not None else fut.result()
        if address is None:
            self.stats["failed"] += 1
        self._cache[name] = (self.clock() + (self.ttl if address else self.negative_ttl), address)
        if len(self._cache) > 4096:       # bounded: drop the expired, then the oldest
            now = self.clock()
            for key in [k for k, (until, _) in self._cache.items() if until < now][:2048] or list(self._cache)[:1024]:
                self._cache.pop(key, None)

    def close(self) -> None:
        for fut in list(self._inflight.values()):
            fut.cancel()
        self._inflight.clear()


def _lookup_into(name: str, family: int, loop: asyncio.AbstractEventLoop, fut: asyncio.Future) -> None:
    address = _lookup(name, family)

    def deliver() -> None:
        if not fut.done():
            fut.set_result(address)
    try:
        loop.call_soon_threadsafe(deliver)
    except RuntimeError:      # the loop is closed: nobody waits any more
        pass


def _lookup(name: str, family: int) -> str | None:
    try:
        infos = socket.getaddrinfo(name, None, family, socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    return str(infos[0][4][0]) if infos else None
