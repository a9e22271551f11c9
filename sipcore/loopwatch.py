"""Loop-stall detector: reports every event-loop callback that kept the loop from running for
longer than a threshold (asyncio's slow-callback check, ``slow_callback_duration``), but counts
only time the thread was running or blocked -- not time it waited for a CPU on the run queue
(``/proc/thread-self/schedstat``), so a loaded machine does not look like a blocking call while
a synchronous DNS lookup, an ``fsync`` or a long computation on the loop still does. Time spent
in the garbage collector (of any thread: it holds the GIL) is not counted either but named in
the line: a collection pause is a latency matter (the server tunes its thresholds and freezes its
start-up heap), not a blocking call, and in a test process it is the test runner's heap.

Off unless installed: ``sipcore.app`` installs it when ``IMS_LOOP_STALL_MS`` is set, the test
suite (tests/loopstall.py) for every test process. Each stall is one WARNING line starting with
``loop stall:``.
"""
from __future__ import annotations

import asyncio.events
import gc
import logging
import os
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

_original_run = asyncio.events.Handle._run
_state = threading.local()
_settings: dict = {"threshold": 0.1, "listeners": []}


_gc = {"total": 0.0, "started": 0.0, "waited": 0.0}


def _gc_timer(phase: str, info: dict) -> None:
    if phase == "start":
        _gc["started"] = time.monotonic()
        _gc["waited"] = _run_queue_wait()
    elif _gc["started"]:
        # the collection's own time: its wall clock less what the thread waited on a run queue
        # meanwhile, which the stall check already leaves out as run-queue wait (counting it in
        # both hid a real 50 ms block on a loaded machine)
        wall = time.monotonic() - _gc["started"]
        _gc["total"] += max(0.0, wall - (_run_queue_wait() - _gc["waited"]))
        _gc["started"] = 0.0


def _run_queue_wait() -> float:
    """Seconds this thread has waited on a run queue so far (0.0 when unavailable)."""
    fd = getattr(_state, "fd", None)
    if fd is None:
        try:
            fd = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            fd = -1
        _state.fd = fd
    if fd < 0:
        return 0.0
    try:
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _watched_run(self) -> None:
    t0 = time.monotonic()
    w0 = _run_queue_wait()
    g0 = _gc["total"]
    try:
        _original_run(self)
    finally:
        wall = time.monotonic() - t0
        threshold = _settings["threshold"]
        if wall >= threshold:
            waited = _run_queue_wait() - w0
            collecting = _gc["total"] - g0
            if wall - waited - collecting >= threshold:
                try:
                    what = repr(self)[:200]
                except Exception:   # noqa: BLE001
                    what = type(self).__name__
                text = f"loop stall: {what} blocked the loop for {wall * 1000:.0f} ms " \
                       f"({waited * 1000:.0f} ms run-queue wait and {collecting * 1000:.0f} ms garbage " \
                       f"collection not counted)"
                log.warning("%s", text)
                for listener in _settings["listeners"]:
                    listener(text)


def install(threshold: float = 0.1, listener: Callable[[str], None] | None = None) -> None:
    """Watch every loop callback in this process from now on (idempotent; the last threshold wins)."""
    _settings["threshold"] = threshold
    if listener is not None and listener not in _settings["listeners"]:
        _settings["listeners"].append(listener)
    if _gc_timer not in gc.callbacks:
        gc.callbacks.append(_gc_timer)
    asyncio.events.Handle._run = _watched_run     # type: ignore[method-assign]
