"""What the MML executor needs from the running server (``sipcore.management`` implements it).

Only plain values cross this boundary (dicts, lists, strings, ints), so the executor can be tested
against a small fake.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class RegistrarView(Protocol):
    def bindings(self) -> list[dict]:
        """Each dict has at least aor, contact, source ("ip:port"), transport, expires (seconds left);
        optional: nated, nat_reasons, user_agent, keepalive_failures."""
    def remove(self, aor: str) -> int:
        """Drop the bindings of one AOR; returns how many were removed."""
    def clear(self) -> int:
        """Drop every binding; returns how many were removed."""


@runtime_checkable
class CallsView(Protocol):
    def list(self) -> list[dict]:
        """Active calls: call_id, state, caller, callee, caller_flow, callee_flow, duration, media."""
    async def end(self, call_id: str) -> bool:
        """End a call: BYE on both legs, media session deleted, CDR written. False if unknown."""
    async def end_all(self) -> int:
        """End every call; returns how many."""


@runtime_checkable
class MediaView(Protocol):
    name: str

    def sessions(self) -> list[dict]:
        """Relay sessions: call_id, legs, ports, packet counters."""


@runtime_checkable
class NATView(Protocol):
    def state(self) -> dict:
        """NAT helper state: nated_bindings (list of binding dicts), fix-up counters, keepalive stats."""


@runtime_checkable
class BlacklistView(Protocol):
    def list(self) -> list[str]: ...
    def add(self, ip: str) -> bool:
        """True if added, False if already listed; ValueError for a bad address."""
    def remove(self, ip: str) -> bool:
        """True if removed, False if it was not listed."""


@runtime_checkable
class ManagementContext(Protocol):
    users: object          # sipcore.users.UserStore
    cdr: object            # sipcore.cdr.CDRWriter
    config: object         # sipcore.config.Config
    registrar: RegistrarView
    calls: CallsView
    media: MediaView
    nat: NATView | None    # None for stages without the NAT helper
    blacklist: BlacklistView
    stage: int

    def stats(self) -> dict:
        """Counters: stage, stage_name, uptime, registrations, active_calls, media_sessions, ..."""
    def set_log_level(self, level: str) -> None:
        """Change the log level at run time (ValueError for an unknown level)."""
