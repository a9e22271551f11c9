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


def test_detector_quiet_for_a_well_behaved_loop():
    async def main():
        for _ in range(5):
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert loopstall.take() == []
