"""Class 6 (memory): what a stranger makes the server remember is returned when it expires.
The failed-auth limiter used to create an entry for every source address that sent anything;
the registrar must drop every index of an expired binding."""
from __future__ import annotations

from sipcore.message import parse_message
from sipcore.registrar import Registrar
from sipcore.security import FailureLimiter


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failure_limiter_remembers_only_failures_and_forgets_them():
    clock = Clock()
    limiter = FailureLimiter(block_after=3, window=60.0, clock=clock, total_ttl=600.0)
    for i in range(5000):                               # a scan from 5000 addresses, no failures
        assert not limiter.blocked(f"198.51.100.{i % 250}.{i}")
    assert len(limiter) == 0
    for i in range(300):
        limiter.failure(f"203.0.113.{i % 250}-{i}")
    for _ in range(3):
        limiter.failure("203.0.113.7")
    assert limiter.blocked("203.0.113.7") and len(limiter) == 301
    clock.now += 120                                    # window over, total still remembered
    assert limiter.prune() == 0 and not limiter.blocked("203.0.113.7")
    clock.now += 601
    assert limiter.prune() == 301 and len(limiter) == 0
    assert limiter.stats() == {}


def _register(user: str, expires: int) -> object:
    return parse_message((f"REGISTER sip:sip.local SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{user}\r\n"
                          f"From: <sip:{user}@sip.local>;tag=1\r\nTo: <sip:{user}@sip.local>\r\n"
                          f"Call-ID: reg-{user}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@127.0.0.1:5070>\r\n"
                          f"Expires: {expires}\r\nContent-Length: 0\r\n\r\n").encode())


def test_registrar_returns_memory_of_expired_bindings():
    registrar = Registrar(min_expires=60, max_expires=3600, default_expires=60)
    now = 5000.0
    for i in range(2000):
        out = registrar.handle_register(_register(f"u{i}", 60), ("127.0.0.1", 5070 + i % 50), "udp", now)
        assert out.response.status == 200
    assert registrar.count(now) == 2000
    registrar.expire(now + 61)
    assert registrar.count(now + 61) == 0 and registrar.all_bindings(now + 61) == []
    store = registrar.store
    leftovers = {name: len(getattr(store, name)) for name in ("_by_aor", "_by_user", "_by_contact", "_nated", "_wheel")
                 if hasattr(store, name)}
    assert leftovers and all(n == 0 for n in leftovers.values()), leftovers
