"""The suite's loop-stall detector (tests/loopstall.py) and the server's IMS_LOOP_STALL_MS switch
really see a blocked loop."""
import asyncio
import time

import pytest

from tests import loopstall


@pytest.mark.loop_stall_allowed
def test_detector_sees_a_blocking_callback():
    async def main():
        await asyncio.sleep(0)
        time.sleep(0.15)          # blocks the loop: what a synchronous DNS lookup or fsync does

    asyncio.run(main())
    stalls = loopstall.take()
    assert len(stalls) == 1 and "blocked the loop for 1" in stalls[0], stalls


@pytest.mark.loop_stall_allowed
def test_garbage_collection_is_named_not_counted():
    """A collection pause inside a callback is left out (it is the heap's size, not a blocking
    call); the same callback blocking in a syscall as long is reported."""
    import gc

    from sipcore import loopwatch
    heap = [[i] for i in range(800_000)]             # containers the collector must walk

    async def main(block: bool):
        await asyncio.sleep(0)
        t0 = time.monotonic()
        gc.collect()
        spent = time.monotonic() - t0
        if block:
            time.sleep(0.05)
        return spent

    loopwatch.install(0.02)                          # below one collection of this heap
    try:
        spent = asyncio.run(main(False))
        quiet = loopstall.take()
        asyncio.run(main(True))
        loud = loopstall.take()
    finally:
        loopwatch.install(loopstall.THRESHOLD)
        del heap
    assert spent > 0.02 and quiet == [], (spent, quiet)
    assert len(loud) == 1 and "ms garbage collection not counted" in loud[0], loud
    collected = int(loud[0].split(" ms run-queue wait and ")[1].split(" ms")[0])
    assert collected >= 15, loud


def test_detector_quiet_for_a_well_behaved_loop():
    async def main():
        for _ in range(5):
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert loopstall.take() == []
