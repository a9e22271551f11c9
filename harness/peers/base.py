"""What the peer user agents (SIPp, baresip) share behind the agent protocol: the steps every peer
takes the same way, and ending a child process."""
from __future__ import annotations

import asyncio

from harness.agent import JsonLineAgent


class PeerAgent(JsonLineAgent):
    """A peer implements ``_register``, ``_call``, ``_hangup``, ``_observations`` and
    ``_transcript``; ``handle`` passes every command it does not take itself to ``common_step``."""

    kind = "peer"

    async def common_step(self, cmd: str | None, msg: dict) -> dict:
        if cmd == "register":
            return await self._register(msg.get("expires"))
        if cmd == "call":
            return await self._call(msg["target"])
        if cmd == "hangup":
            return await self._hangup()
        if cmd == "sleep":
            await asyncio.sleep(float(msg.get("seconds", 1)))
            return {}
        if cmd == "wait":
            return await self.wait_event(msg.get("event"), float(msg.get("timeout", 5)))
        if cmd == "observations":
            return await self._observations()
        if cmd == "transcript":
            return {"text": self._transcript()}
        raise ValueError(f"{self.kind} peer: command {cmd!r} is not supported (harness.peers.PEER_STEPS)")


async def terminate(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
