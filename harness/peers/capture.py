"""The capture a peer agent takes in its own namespace (tcpdump on its lab interface, UDP only),
read back into observations with harness.peers.correlate. The one place a peer touches tcpdump."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil

from harness.pcap import read_pcap
from harness.peers.base import terminate
from harness.peers.correlate import PeerCapture


log = logging.getLogger("harness.peers.capture")


class NamespaceCapture:
    def __init__(self, path: str, iface: str = "any"):
        self.path = path
        self.iface = iface
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if shutil.which("tcpdump") is None:
            raise RuntimeError("tcpdump is not installed (apt-get install tcpdump): a peer UA is judged from a capture")
        self.proc = await asyncio.create_subprocess_exec(
            "tcpdump", "-U", "--immediate-mode", "-B", "4096", "-n", "-s", "0", "-i", self.iface, "-w", self.path,
            "udp",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        for _ in range(250):            # until tcpdump has opened the interfaces (5 s at most)
            if os.path.exists(self.path) and os.path.getsize(self.path) >= 24:
                return
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.02)
        err = (await self.proc.stderr.read()).decode(errors="replace")[:300] if self.proc.returncode is not None else ""
        raise RuntimeError(f"tcpdump did not start a capture: {err or 'no file after 5 s'}")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        await asyncio.sleep(0.2)        # the last packets reach the file (-U flushes per packet)
        await terminate(proc)
        if proc.stderr is not None:     # its counts ("N packets dropped by kernel") to the agent's log
            log.info("capture %s: %s", self.path, (await proc.stderr.read()).decode(errors="replace").strip()[-300:])

    def observations(self, local_ip: str, sip_port: int, sender: str) -> dict:
        try:
            datagrams = read_pcap(self.path)
        except (OSError, ValueError):
            datagrams = []
        return PeerCapture(local_ip, sip_port).feed(datagrams).observations(sender)
