"""Keys that come due at a time (a timer heap), sans-IO: the clock value is passed in.

The proxy's housekeeping used to walk every transaction and every call once a second to find the
few whose linger time had passed; with a ``Deadlines`` it pops only the keys that are due.
``add`` on a key that is already scheduled moves it (the old heap entry goes stale and is skipped
or compacted away), ``discard`` unschedules it.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._seq = itertools.count()

    def add(self, key: K, when: float) -> None:
        """Schedule ``key`` at ``when`` (moving it if already scheduled)."""
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        if len(self._heap) > 2 * len(self._due) + 1024:     # many moves: drop the stale entries
            self._heap = [(w, s, k) for w, s, k in self._heap if self._due.get(k) == w]
            heapq.heapify(self._heap)

    def discard(self, key: K) -> None:
        self._due.pop(key, None)

    def when(self, key: K) -> float | None:
        return self._due.get(key)

    def pop_due(self, now: float) -> list[K]:
        """Unschedule and return the keys due at or before ``now``, earliest first."""
        out: list[K] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            if self._due.get(key) == when:
                del self._due[key]
                out.append(key)
        return out

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due
