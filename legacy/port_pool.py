"""Even-port pool for the legacy relay (RTP on even ports, RTCP = RTP+1), lowest free first."""
from __future__ import annotations

import heapq


class PortPool:
    def __init__(self, low: int = 20000, high: int = 29999):
        if low % 2:
            low += 1
        if high - low < 3:
            raise ValueError(f"port range {low}-{high} too small")
        self.low, self.high = low, high
        self._free = list(range(low, high, 2))     # RTCP port p+1 must stay <= high
        heapq.heapify(self._free)
        self._used: set[int] = set()

    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError(f"no free RTP ports left in {self.low}-{self.high}")
        port = heapq.heappop(self._free)
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        if port in self._used:
            self._used.discard(port)
            heapq.heappush(self._free, port)

    @property
    def in_use(self) -> int:
        return len(self._used)
