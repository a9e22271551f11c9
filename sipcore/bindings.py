"""Registrar bindings and where they are kept (the location store seam), sans-IO.

``Binding`` is one registered Contact of an address of record. ``BindingStore`` is the small
interface the registrar reads and writes bindings through; ``MemoryBindingStore`` is the
in-memory index every server runs with:

- bindings by AOR in a dict, an index user -> AOR(s) and one contact URI -> binding, so REGISTER,
  call routing and unknown-dialog routing cost O(1) in the number of registered users;
- expiry in a timing wheel of one-second slots (a dict of sets): ``expire(now)`` touches only the
  slots that came due since the last call, and a refresh moves the binding to its new slot, so no
  stale entries pile up;
- the dicts are rebuilt when they shrink to a quarter of their peak, so memory is returned after a
  mass expiry (CPython dicts never shrink by themselves).

A persistent or shared location store (write-through SQLite/Redis) subclasses
``MemoryBindingStore`` and overrides ``put``/``clear``/``expire`` to also write through, and loads
its rows with ``put`` at start: the hot path stays in memory.
"""
from __future__ import annotations

import abc
import sys
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from mypy_extensions import mypyc_attr

from sipcore.uri import SipURI


def aor_user(aor: str) -> str:
    """User part of an AOR key (``sip:user@domain`` -> ``user``; '' when none)."""
    rest = aor.split(":", 1)[1] if ":" in aor else aor
    return rest.split("@", 1)[0] if "@" in rest else ""


_REASONS: dict[tuple[str, ...], tuple[str, ...]] = {}   # the few distinct NAT reason tuples, shared


def shared_reasons(reasons: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple object per distinct NAT reason combination (memory per binding)."""
    return _REASONS.setdefault(reasons, reasons)


@dataclass(slots=True, eq=False)
class Binding:
    aor: str                      # sip:user@domain (no port/params)
    contact: str                  # Contact URI as stored (after the stage's fix-ups)
    original_contact: str         # Contact URI as the UA sent it
    source: tuple[str, int]       # where the REGISTER came from (the flow)
    transport: str                # udp / tcp
    expires_at: float
    call_id: str
    cseq: int
    user_agent: str = ""
    nated: bool = False
    nat_reasons: tuple[str, ...] = ()
    keepalive_failures: int = 0
    registered_at: float = 0.0
    # store bookkeeping: the wheel slot it is filed in, the contact keys it is indexed under
    slot: list | None = field(default=None, init=False, repr=False)
    ix_contact: str | None = field(default=None, init=False, repr=False)
    ix_original: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # repeated values (NAT address, transport, User-Agent) share one string object
        self.source = (sys.intern(self.source[0]), self.source[1])
        self.transport = sys.intern(self.transport)
        self.user_agent = sys.intern(self.user_agent)
        self.nat_reasons = shared_reasons(self.nat_reasons)
        if self.original_contact == self.contact:
            self.original_contact = self.contact

    def expires_in(self, now: float) -> int:
        return max(0, int(round(self.expires_at - now)))

    def as_dict(self, now: float) -> dict:
        return {
            "aor": self.aor, "contact": self.contact, "original_contact": self.original_contact,
            "source": f"{self.source[0]}:{self.source[1]}", "transport": self.transport,
            "expires": self.expires_in(now), "user_agent": self.user_agent, "nated": self.nated,
            "nat_reasons": ",".join(self.nat_reasons), "keepalive_failures": self.keepalive_failures,
        }

    def target(self) -> tuple[SipURI, tuple[str, int]]:
        """Request-URI to use and the address to send to (always the registration flow)."""
        return SipURI.parse(self.contact), self.source


@mypyc_attr(allow_interpreted_subclasses=True)    # location_store's stores (not compiled)
class BindingStore(abc.ABC):
    """What the registrar needs from a location store. Lists returned are the caller's to keep."""

    @abc.abstractmethod
    def get(self, aor: str) -> list[Binding]:
        """Bindings of one AOR key (empty list when none)."""

    @abc.abstractmethod
    def aors_of_user(self, user: str) -> list[str]:
        """AOR keys whose user part is ``user`` (any domain)."""

    @abc.abstractmethod
    def by_contact(self, uri: str) -> Binding | None:
        """The binding whose stored or original Contact URI is ``uri``."""

    @abc.abstractmethod
    def put(self, aor: str, bindings: list[Binding]) -> None:
        """Replace the bindings of ``aor`` (an empty list removes the AOR). Bindings may have been
        changed in place since the last put (refresh): the store re-indexes them."""

    @abc.abstractmethod
    def expire(self, now: float) -> list[Binding]:
        """Remove and return every binding with ``expires_at <= now``."""

    @abc.abstractmethod
    def bindings(self) -> Iterator[Binding]:
        """Every stored binding (MML listing; O(n))."""

    @abc.abstractmethod
    def nated(self) -> list[Binding]:
        """Bindings flagged NATed (the keepalive's targets)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of bindings."""

    @abc.abstractmethod
    def clear(self) -> int:
        """Remove everything; returns how many bindings were removed."""


@mypyc_attr(allow_interpreted_subclasses=True)    # PersistentBindingStore (location_store)
class MemoryBindingStore(BindingStore):
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._by_aor: dict[str, Binding | list[Binding]] = {}  # one binding (common) or several
        self._by_user: dict[str, str | tuple[str, ...]] = {}   # one AOR (common) or several
        self._by_contact: dict[str, Binding] = {}
        self._nated: dict[Binding, None] = {}                  # ordered set
        self._wheel: dict[int, list[Binding]] = {}             # second -> bindings filed for it
        self._filed = 0                                        # wheel entries, stale ones included
        self._count = 0
        self._peak = 0
        self._swept = -1                                       # last second fully expired

    # --- queries ------------------------------------------------------------------------------
    def get(self, aor: str) -> list[Binding]:
        found = self._by_aor.get(aor)
        if found is None:
            return []
        return [found] if isinstance(found, Binding) else list(found)

    def aors_of_user(self, user: str) -> list[str]:
        found = self._by_user.get(user)
        if found is None:
            return []
        return [found] if isinstance(found, str) else list(found)

    def by_contact(self, uri: str) -> Binding | None:
        return self._by_contact.get(uri)

    def bindings(self) -> Iterator[Binding]:
        for found in list(self._by_aor.values()):
            if isinstance(found, Binding):
                yield found
            else:
                yield from found

    def nated(self) -> list[Binding]:
        return list(self._nated)

    def __len__(self) -> int:
        return self._count

    # --- changes ------------------------------------------------------------------------------
    def put(self, aor: str, bindings: list[Binding]) -> None:
        old = self.get(aor)
        for b in old:
            if not any(b is x for x in bindings):
                self._unindex(b)
        if bindings:
            if aor not in self._by_aor:
                self._add_user(aor)
            self._by_aor[aor] = bindings[0] if len(bindings) == 1 else list(bindings)
            for b in bindings:
                self._index(b)
        elif aor in self._by_aor:
            del self._by_aor[aor]
            self._drop_user(aor)
        self._count += len(bindings) - len(old)
        self._peak = max(self._peak, self._count)
        self._maybe_compact()

    def expire(self, now: float) -> list[Binding]:
        due_until = int(now)
        seconds: Iterable[int]
        if due_until <= self._swept:              # clock went back: only the current second
            seconds = (due_until,)
        elif due_until - self._swept > len(self._wheel):
            seconds = sorted(s for s in self._wheel if s <= due_until)
        else:
            seconds = range(self._swept + 1, due_until + 1)
        gone: list[Binding] = []
        for second in seconds:
            if second in self._wheel:
                gone.extend(self._expire_slot(second, now))
        self._swept = max(self._swept, due_until - 1)   # the current second may get more due in it
        return gone

    def clear(self) -> int:
        n = self._count
        for b in self.bindings():
            b.slot = b.ix_contact = b.ix_original = None
        self._reset()
        return n

    # --- internals ----------------------------------------------------------------------------
    def _expire_slot(self, second: int, now: float) -> list[Binding]:
        slot = self._wheel[second]
        gone: list[Binding] = []
        keep: list[Binding] = []
        for b in slot:
            if b.slot is not slot:                 # refreshed or removed since: a stale entry
                continue
            if b.expires_at <= now:
                gone.append(b)
            else:
                keep.append(b)
        self._filed -= len(slot) - len(keep)
        if keep:
            slot[:] = keep
        else:
            del self._wheel[second]
        for b in gone:
            b.slot = None
            self.put(b.aor, [x for x in self.get(b.aor) if x is not b])
        return gone

    def _index(self, b: Binding) -> None:
        second = max(int(b.expires_at), self._swept + 1)   # never behind the sweep
        slot = self._wheel.get(second)
        if slot is None or b.slot is not slot:
            if slot is None:
                slot = self._wheel[second] = []
            slot.append(b)                         # the old entry, if any, goes stale
            b.slot = slot
            self._filed += 1
        if b.ix_contact != b.contact or b.ix_original != b.original_contact:
            self._unkey(b)
            self._by_contact[b.contact] = b
            self._by_contact.setdefault(b.original_contact, b)
            b.ix_contact, b.ix_original = b.contact, b.original_contact
        if b.nated:
            self._nated[b] = None
        else:
            self._nated.pop(b, None)

    def _unindex(self, b: Binding) -> None:
        b.slot = None                              # its wheel entry goes stale
        self._unkey(b)
        self._nated.pop(b, None)

    def _unkey(self, b: Binding) -> None:
        for k in (b.ix_contact, b.ix_original):
            if k is not None and self._by_contact.get(k) is b:
                del self._by_contact[k]
        b.ix_contact = b.ix_original = None

    def _add_user(self, aor: str) -> None:
        user = aor_user(aor)
        cur = self._by_user.get(user)
        if cur is None:
            self._by_user[user] = aor
        elif isinstance(cur, str):
            self._by_user[user] = (cur, aor)
        else:
            self._by_user[user] = cur + (aor,)

    def _drop_user(self, aor: str) -> None:
        user = aor_user(aor)
        cur = self._by_user.get(user)
        if cur is None:
            return
        rest = () if isinstance(cur, str) else tuple(a for a in cur if a != aor)
        if not rest:
            del self._by_user[user]
        else:
            self._by_user[user] = rest[0] if len(rest) == 1 else rest

    def _maybe_compact(self) -> None:
        if self._filed > 2 * self._count + 1024:
            # refreshes leave stale wheel entries behind: refile the live ones (amortised O(1))
            wheel: dict[int, list[Binding]] = {}
            for second, slot in self._wheel.items():
                live = [b for b in slot if b.slot is slot]
                if live:
                    wheel[second] = live
                    for b in live:
                        b.slot = live
            self._wheel = wheel
            self._filed = sum(len(v) for v in wheel.values())
        if self._peak >= 1024 and self._count * 4 < self._peak:
            # CPython dicts keep their table after deletions: rebuild them once the store has
            # shrunk to a quarter of its peak, so memory comes back after a mass expiry
            self._by_aor = dict(self._by_aor)
            self._by_user = dict(self._by_user)
            self._by_contact = dict(self._by_contact)
            self._nated = dict(self._nated)
            self._wheel = dict(self._wheel)
            self._peak = self._count
