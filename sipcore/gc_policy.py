"""The server's garbage-collection policy: young objects collected, long-lived ones left alone,
one full collection at a long interval.

Why: a call's objects (messages, transactions, the Call) live on for the 32 s a finished
transaction answers retransmissions (64*T1). CPython's generational collector treats anything
that survives a young collection as "older" and scans it again in the middle generation: at 600
calls/s that generation held ~400,000 such objects and each of its collections paused the server
136 ms every few seconds (measured with gc.callbacks on a real stage-2 server under SIPp), for
nothing: the per-call path creates no reference cycles (the same run with the collector off
left 88 unreachable objects in 6,000 calls, all of them from start-up; tests/server/
test_gc_policy.py keeps it so).

So the server (``apply``):
  * freezes what start-up built (users, configuration, modules: never scanned again);
  * collects the youngest generation every ``YOUNG_THRESHOLD`` allocations (a few ms; it catches
    the rare cycle young) and never the older generations automatically;
  * runs one full collection every ``GC_FULL_INTERVAL`` seconds (default 3600; 0 = never) from a
    task of its own, logged with what it found and how long the loop stood still, so a code path
    that does leak cycles shows up in the log instead of as memory growth.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

YOUNG_THRESHOLD = 20000
NEVER = 1_000_000_000          # older generations: collected by the periodic full collection only
FULL_INTERVAL = 3600.0
CYCLES_WORTH_A_WARNING = 10000


def apply() -> None:
    """Thresholds for a server process (called before the event loop starts)."""
    gc.set_threshold(YOUNG_THRESHOLD, NEVER, NEVER)


def freeze_startup() -> None:
    """What exists now is start-up state: the collector never scans it again."""
    gc.freeze()


def full_collection() -> tuple[int, float]:
    """(unreachable objects found, seconds the collection took)."""
    t0 = time.perf_counter()
    found = gc.collect()
    return found, time.perf_counter() - t0


async def run_full_collections(interval: float) -> None:
    """Every ``interval`` seconds one full collection, logged (a task of the server's)."""
    while True:
        await asyncio.sleep(interval)
        found, seconds = full_collection()
        level = logging.WARNING if found >= CYCLES_WORTH_A_WARNING else logging.INFO
        log.log(level, "gc: full collection freed %d unreachable objects in %.0f ms", found, seconds * 1000)
