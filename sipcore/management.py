"""The running server as seen by MML (implements sipcore.mml.context.ManagementContext)."""
from __future__ import annotations

import time
from typing import Any


class RegistrarView:
    def __init__(self, registrar):
        self._registrar = registrar

    def bindings(self) -> list[dict]:
        now = time.time()
        return [b.as_dict(now) for b in self._registrar.all_bindings(now)]

    def remove(self, aor: str) -> int:
        return self._registrar.remove_aor(aor)

    def clear(self) -> int:
        return self._registrar.clear()


class CallsView:
    """Calls of the proxy and, with SIGNALLING=sippy, of the signalling engine (same Call records)."""

    def __init__(self, proxy, engine=None):
        self._owners = [proxy] + ([engine] if engine is not None else [])

    def _active(self) -> list[tuple[Any, Any]]:
        return [(owner, c) for owner in self._owners for c in owner.active_calls()]

    def list(self) -> list[dict]:
        now = time.time()
        return [c.as_dict(now) for _, c in self._active()]

    async def end(self, call_id: str) -> bool:
        for owner in self._owners:
            if any(c.call_id == call_id for c in owner.active_calls()):
                return await owner.end_call(call_id, "FORCED_TERMINATION_BY_MML")
        return False

    async def end_all(self) -> int:
        n = 0
        for owner, c in self._active():
            if await owner.end_call(c.call_id, "FORCED_TERMINATION_BY_MML_CLR_ALL"):
                n += 1
        return n


class NATView:
    def __init__(self, server):
        self._server = server

    def state(self) -> dict:
        nat = self._server.policy.nat
        out = nat.state() if nat is not None else {}
        now = time.time()
        out["nated_bindings"] = [b.as_dict(now) for b in self._server.registrar.nated_bindings(now)]
        if self._server.keepalive is not None:
            out["keepalive"] = self._server.keepalive.state()
        return out


class ServerManagement:
    def __init__(self, server):
        self._server = server
        self.users = server.users
        self.cdr = server.cdr
        self.config = server.config
        self.registrar = RegistrarView(server.registrar)
        self.calls = CallsView(server.proxy, server.engine)
        self.media = server.media
        self.blacklist = server.blacklist
        self.stage = server.stage
        self.nat = NATView(server) if server.policy.nat is not None else None

    def stats(self) -> dict:
        return self._server.stats()

    def limiter_stats(self) -> dict:
        return self._server.limiter.stats()

    def set_log_level(self, level: str) -> None:
        from sipcore.logsetup import set_level
        set_level(level)
