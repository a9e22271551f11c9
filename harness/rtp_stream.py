"""Marked RTP/RTCP streams built with scapy, and per-direction receive statistics.

Every payload starts with ``IMSH`` + 8-byte sender id + 1-byte leg id + 4-byte sequence, so a
receiver can tell who sent each packet (across relays that rewrite nothing in the payload), and
count loss, duplicates and reordering per sender.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import struct
import time
from dataclasses import dataclass, field

from scapy.layers.rtp import RTP

log = logging.getLogger(__name__)

MAGIC = b"IMSH"
PAYLOAD_SIZE = 160


def ssrc_for(sender: str, leg: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{sender}/{leg}".encode()).digest()[:4], "big")


def build_rtp(sender: str, leg: int, seq: int, ssrc: int, timestamp: int, pt: int = 0) -> bytes:
    payload = MAGIC + sender.encode()[:8].ljust(8, b"\0") + bytes([leg & 0xFF]) + struct.pack("!I", seq)
    payload = payload.ljust(PAYLOAD_SIZE, b"\xff")
    return bytes(RTP(version=2, payload_type=pt, sequence=seq & 0xFFFF, timestamp=timestamp,
                     sourcesync=ssrc) / payload)


RTCP_EVERY = 25                  # RTP packets between sender reports


def build_rtcp_sr(ssrc: int, packets: int, octets: int) -> bytes:
    # RTCP sender report (RFC 3550 §6.4.1), no report blocks
    now = time.time() + 2208988800
    ntp_hi, ntp_lo = int(now), int((now % 1) * (1 << 32))
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, ntp_hi, ntp_lo, 0, packets, octets)


def parse_marked(data: bytes) -> tuple[str, int, int] | None:
    """(sender, leg, seq) of a marked RTP packet, else None."""
    if len(data) < 12 + 17 or data[0] >> 6 != 2:
        return None
    cc = data[0] & 0x0F
    off = 12 + 4 * cc
    body = data[off:]
    if not body.startswith(MAGIC):
        return None
    sender = body[4:12].rstrip(b"\0").decode(errors="replace")
    return sender, body[12], struct.unpack("!I", body[13:17])[0]


@dataclass
class Received:
    packets: int = 0
    seqs: set = field(default_factory=set)
    max_seq: int = -1
    out_of_order: int = 0
    duplicates: int = 0
    first: float | None = None
    last: float | None = None
    sources: dict = field(default_factory=dict)

    def add(self, seq: int, src: str) -> None:
        now = time.time()
        self.packets += 1
        if seq in self.seqs:
            self.duplicates += 1
        elif seq < self.max_seq:
            self.out_of_order += 1
        self.seqs.add(seq)
        self.max_seq = max(self.max_seq, seq)
        self.first = self.first or now
        self.last = now
        self.sources[src] = self.sources.get(src, 0) + 1

    def summary(self) -> dict:
        expected = self.max_seq + 1 if self.max_seq >= 0 else 0
        unique = len(self.seqs)
        return {"packets": self.packets, "unique": unique, "expected_upto": expected,
                "lost": max(0, expected - unique), "out_of_order": self.out_of_order,
                "duplicates": self.duplicates, "sources": dict(self.sources),
                "first": self.first, "last": self.last}


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, stream: "RtpStream", rtcp: bool, wrong_port: bool = False):
        self.stream, self.rtcp, self.wrong_port = stream, rtcp, wrong_port

    def datagram_received(self, data, addr):
        if self.wrong_port:     # a phone only reads the port it advertised
            self.stream.received_on_send_port += 1
            return
        self.stream._received(data, f"{addr[0]}:{addr[1]}", self.rtcp)


class RtpStream:
    """One media stream of a call: receive on ``port`` (+1 RTCP); send to the remote SDP target."""

    def __init__(self, sender: str, leg: int, local_ip: str, port: int, pps: int = 50,
                 mode: str = "active", from_port: int | None = None):
        self.sender, self.leg, self.local_ip, self.port = sender, leg, local_ip, port
        self.pps, self.mode, self.from_port = pps, mode, from_port
        self.ssrc = ssrc_for(sender, str(leg))
        self.remote: tuple[str, int] | None = None
        self.remote_rtcp: tuple[str, int] | None = None
        self.sent = 0
        self.rtcp_sent = 0
        self.rx: dict[str, Received] = {}
        self.rtcp_rx = 0
        self.unmarked = 0
        self.received_on_send_port = 0
        self.paused = False
        self._t_rtp = self._t_rtcp = self._t_send = None
        self._task: asyncio.Task | None = None
        self._got_first = asyncio.Event()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._t_rtp, _ = await loop.create_datagram_endpoint(lambda: _Proto(self, False), local_addr=(self.local_ip, self.port))
        self._t_rtcp, _ = await loop.create_datagram_endpoint(lambda: _Proto(self, True), local_addr=(self.local_ip, self.port + 1))
        if self.from_port:
            self._t_send, _ = await loop.create_datagram_endpoint(lambda: _Proto(self, False, True),
                                                                  local_addr=(self.local_ip, self.from_port))
        else:
            self._t_send = self._t_rtp

    async def move(self, port: int) -> None:
        """Receive and send on ``port`` (+1 RTCP) from now on, as a UA that re-offers its media on a
        new port does; the counters go on."""
        if self.from_port:
            raise ValueError("a stream sending from a separate port cannot move")
        old = {self._t_rtp, self._t_rtcp}
        self.port = port
        await self.open()
        for t in old:
            if t is not None:
                t.close()

    def set_remote(self, ip: str, port: int, rtcp: tuple[str, int] | None = None) -> None:
        self.remote = (ip, port)
        self.remote_rtcp = rtcp or (ip, port + 1)

    def start(self) -> None:
        if self._task is None and self.mode != "silent":
            self._task = asyncio.get_running_loop().create_task(self._send_loop())

    async def _send_loop(self) -> None:
        if self.mode == "after_first_packet":
            await self._got_first.wait()
        interval = 1.0 / self.pps
        seq = 0
        next_t = time.monotonic()
        while True:
            if self.remote and not self.paused and self.remote[0] not in ("0.0.0.0", "::"):
                pkt = build_rtp(self.sender, self.leg, seq, self.ssrc, seq * 160)
                try:
                    self._t_send.sendto(pkt, self.remote)
                    self.sent += 1
                except OSError:
                    pass
                seq += 1
                # RTCP with the first packet, then every 0.5 s at 50 pps: behind NAT the first report
                # of whichever side sends first is lost (the peer's RTCP mapping does not exist yet),
                # so one report per second made "RTCP crosses" depend on who sent first.
                if (seq == 1 or seq % RTCP_EVERY == 0) and self.remote_rtcp:
                    try:
                        self._t_rtcp.sendto(build_rtcp_sr(self.ssrc, self.sent, self.sent * PAYLOAD_SIZE), self.remote_rtcp)
                        self.rtcp_sent += 1
                    except OSError:
                        pass
            next_t += interval
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))

    def _received(self, data: bytes, src: str, rtcp: bool) -> None:
        if rtcp:
            self.rtcp_rx += 1
            return
        marked = parse_marked(data)
        if marked is None:
            self.unmarked += 1
            return
        sender, leg, seq = marked
        self.rx.setdefault(sender, Received()).add(seq, src)
        self._got_first.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for t in {self._t_rtp, self._t_rtcp, self._t_send}:
            if t is not None:
                t.close()

    def stop_sending(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def stats(self) -> dict:
        return {"local_port": self.port, "from_port": self.from_port, "remote": list(self.remote) if self.remote else None,
                "sent": self.sent, "rtcp_sent": self.rtcp_sent, "rtcp_received": self.rtcp_rx,
                "unmarked": self.unmarked, "received_on_send_port": self.received_on_send_port,
                "received": {k: v.summary() for k, v in self.rx.items()}}


def free_udp_port(ip: str = "127.0.0.1") -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port
