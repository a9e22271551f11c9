"""Loop-stall detector for the whole suite (issue 10, class 4): every event-loop callback in a
test process is timed by sipcore.loopwatch (asyncio's slow-callback check, threshold 100 ms,
run-queue wait of a loaded machine not counted), and a test during which any callback blocked
its loop longer than that fails in its teardown with the stall lines. Server subprocesses get
the same check through ``IMS_LOOP_STALL_MS`` (sipcore.app); the hostile suite asserts their logs
hold no ``loop stall:`` line. A test that blocks a loop on purpose (the detector's self-test)
carries the ``loop_stall_allowed`` marker."""
from __future__ import annotations

import pytest

from sipcore import loopwatch

THRESHOLD = 0.100
_records: list[str] = []


def pytest_configure(config) -> None:
    """Loaded for the project's suite by ``-p tests.loopstall`` (pyproject addopts)."""
    loopwatch.install(THRESHOLD, _records.append)


def take() -> list[str]:
    out = list(_records)
    _records.clear()
    return out


@pytest.fixture(autouse=True)
def _loop_stall_guard(request):
    take()
    yield
    stalls = take()
    if stalls and request.node.get_closest_marker("loop_stall_allowed") is None:
        pytest.fail(f"event loop stalled > {THRESHOLD * 1000:.0f} ms ({len(stalls)}x):\n" + "\n".join(stalls[:5]),
                    pytrace=False)
