"""Bounded memo dicts: recent results kept for values that repeat (a response echoes its
request's Vias, From and To; a call makes the same route token twice and checks it on ACK and
BYE; a few addresses are classified over and over).

The one policy of all of them: a dict of at most ``size`` entries, emptied when it is full
(amortised O(1), no bookkeeping per hit). Keys derived from the wire are kept only when short;
each caller checks its own length bound before calling ``keep``."""
from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def keep(cache: dict[K, V], key: K, value: V, size: int) -> None:
    """Store ``value`` under ``key``, emptying ``cache`` first when it holds ``size`` entries."""
    if len(cache) >= size:
        cache.clear()
    cache[key] = value
