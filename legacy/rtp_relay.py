"""Stage 0: the original custom Python RTP relay, reproduced faithfully as a MediaBackend.

Per call and per m= line two port pairs (even RTP port, RTCP = RTP+1) from a pool (default
20000-29998): the A-leg pair faces the caller, the B-leg pair the callee. What arrives on the
A-leg port is sent to the B-leg target and vice versa. Initial targets are the addresses the
server passes in (signalling source IP + SDP port). Latching is one-shot and symmetric: the first
RTP packet (>= 12 bytes) received on a leg sets that leg's target to the packet's source; reset
by a new offer/answer. RTCP goes to target port+1 and is never latched. a=rtcp lines are left as
the UA wrote them. Sessions end on delete and after an inactivity timeout.

When a call is answered (and again on every later answer, which re-targets the legs) each leg
sends ``punch_packets`` (the original: 20) small RTP packets to its party's target from the port
that party sends to: payload type 0, 160 bytes of 0xFF, their own SSRC. The original did this
to open NAT mappings before media ("NAT punch"); UAs treat them as silence.

The NAT consequence the harness measures: a UA behind NAT that never sends RTP first is never
latched, so the relay keeps sending to the initial target, which for a NATed UA is the NAT's
address with the *private* SDP port: one-way audio when the NAT does not preserve that port.
"""
from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from dataclasses import dataclass, field

from legacy.port_pool import PortPool
from sipcore.errors import MediaBackendError
from sipcore.media import MediaBackend
from sipcore.resolver import ip_literal
from sipcore.sdp import SessionDescription

log = logging.getLogger(__name__)


@dataclass
class Leg:
    name: str                                  # "A" (caller side) / "B" (callee side)
    port: int
    target: tuple[str, int] | None = None      # where packets for this leg's party are sent
    latched: bool = False
    rx: int = 0
    tx: int = 0
    rtcp_rx: int = 0
    rtcp_tx: int = 0
    rtp_transport: asyncio.DatagramTransport | None = None
    rtcp_transport: asyncio.DatagramTransport | None = None


@dataclass
class Stream:
    index: int
    a: Leg
    b: Leg


@dataclass
class Session:
    call_id: str
    caller_tag: str
    streams: list[Stream] = field(default_factory=list)
    last_packet: float = field(default_factory=time.monotonic)
    created: float = field(default_factory=time.time)


class _LegProtocol(asyncio.DatagramProtocol):
    def __init__(self, relay: "LegacyRelay", session: Session, stream: Stream, leg: Leg, rtcp: bool):
        self.relay, self.session, self.stream, self.leg, self.rtcp = relay, session, stream, leg, rtcp

    def datagram_received(self, data, addr):
        self.relay._packet(self.session, self.stream, self.leg, self.rtcp, data, (addr[0], addr[1]))


BIND_ATTEMPTS = 16        # port pairs tried for one leg before the call gets 488


class LegacyRelay(MediaBackend):
    name = "legacy-relay"

    def __init__(self, advertised_ip: str, bind_ip: str = "0.0.0.0", port_min: int = 20000,
                 port_max: int = 29999, inactivity_timeout: float = 60.0, punch_packets: int = 20):
        self.advertised_ip = advertised_ip
        self.punch_packets = punch_packets
        self.bind_ip = bind_ip
        self.pool = PortPool(port_min, port_max)
        self.inactivity_timeout = inactivity_timeout
        self._sessions: dict[str, Session] = {}
        self._reaper: asyncio.Task | None = None

    async def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="relay-reaper")
        log.info("legacy relay ready on %s, ports %d-%d", self.bind_ip, self.pool.low, self.pool.high)

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for call_id in list(self._sessions):
            await self.delete(call_id)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.inactivity_timeout / 2))
            now = time.monotonic()
            for call_id, s in list(self._sessions.items()):
                if now - s.last_packet > self.inactivity_timeout:
                    log.info("relay session %s released after %.0fs without packets", call_id, self.inactivity_timeout)
                    await self.delete(call_id)

    async def _open_leg(self, session: Session, stream: Stream, leg: Leg) -> None:
        loop = asyncio.get_running_loop()
        leg.rtp_transport, _ = await loop.create_datagram_endpoint(
            lambda: _LegProtocol(self, session, stream, leg, False), local_addr=(self.bind_ip, leg.port))
        leg.rtcp_transport, _ = await loop.create_datagram_endpoint(
            lambda: _LegProtocol(self, session, stream, leg, True), local_addr=(self.bind_ip, leg.port + 1))

    async def _bind_leg(self, session: Session, stream: Stream, leg: Leg, busy: list[int]) -> None:
        """Open ``leg`` on the lowest free pool pair that really binds. Another program may hold a
        port of the configured range: skip that pair (as rtpproxy does) instead of failing the call."""
        for _ in range(BIND_ATTEMPTS):
            try:
                leg.port = self.pool.allocate()
            except RuntimeError as exc:
                raise MediaBackendError(f"legacy relay: {exc}") from None
            try:
                await self._open_leg(session, stream, leg)
                return
            except OSError as exc:
                self._close_leg(leg)
                busy.append(leg.port)
                log.warning("legacy relay: port pair %d/%d is taken (%s); trying the next", leg.port,
                            leg.port + 1, exc.strerror or exc)
        raise MediaBackendError(f"legacy relay cannot bind any of {BIND_ATTEMPTS} port pairs "
                                f"(last {leg.port}/{leg.port + 1})")

    def _close_stream(self, stream: Stream) -> None:
        for leg in (stream.a, stream.b):
            if leg.port and leg.rtp_transport is not None:
                self._close_leg(leg)
                self.pool.release(leg.port)

    @staticmethod
    def _close_leg(leg: Leg) -> None:
        for tr in (leg.rtp_transport, leg.rtcp_transport):
            if tr is not None:
                tr.close()
        leg.rtp_transport = leg.rtcp_transport = None

    async def _stream(self, session: Session, index: int) -> Stream:
        for st in session.streams:
            if st.index == index:
                return st
        st = Stream(index, Leg("A", 0), Leg("B", 0))
        busy: list[int] = []
        try:
            for leg in (st.a, st.b):
                await self._bind_leg(session, st, leg, busy)
        except MediaBackendError:
            self._close_stream(st)
            raise
        finally:
            for port in busy:                  # held by another program now; try again later
                self.pool.release(port)
        session.streams.append(st)
        return st

    def _packet(self, session: Session, stream: Stream, leg: Leg, rtcp: bool, data: bytes, src) -> None:
        session.last_packet = time.monotonic()
        other = stream.b if leg is stream.a else stream.a
        if rtcp:
            leg.rtcp_rx += 1
            if other.target and other.rtcp_transport is not None and other.target[1] < 65535:
                other.rtcp_transport.sendto(data, (other.target[0], other.target[1] + 1))
                other.rtcp_tx += 1
            return
        leg.rx += 1
        if not leg.latched and len(data) >= 12:
            if leg.target != src:
                log.info("[RTP-LATCH] %s leg %s: %s -> %s:%s", session.call_id, leg.name, leg.target, *src)
            leg.target, leg.latched = src, True
        if other.target and other.rtp_transport is not None:
            other.rtp_transport.sendto(data, other.target)
            other.tx += 1

    def _rewrite(self, sdp: SessionDescription, session: Session, legs: list[Leg]) -> SessionDescription:
        out = sdp.copy()
        out.set_origin_address(self.advertised_ip)
        for i, leg in legs:
            out.set_media_address(i, self.advertised_ip)
            out.set_media_port(i, leg.port)
        return out

    async def offer(self, call_id, from_tag, to_tag, sdp, source):
        session = self._sessions.get(call_id)
        if session is None:
            session = self._sessions[call_id] = Session(call_id, from_tag)
        from_caller = from_tag == session.caller_tag
        legs = []
        for i, m in enumerate(sdp.media):
            if m.port == 0:
                continue
            st = await self._stream(session, i)
            mine, theirs = (st.a, st.b) if from_caller else (st.b, st.a)
            mine.target, mine.latched = _sdp_target(sdp, i, m.port, source), False
            theirs.latched = False
            legs.append((i, theirs))       # the other party sends to its own leg's port
        return self._rewrite(sdp, session, legs)

    async def answer(self, call_id, from_tag, to_tag, sdp, source):
        session = self._sessions.get(call_id)
        if session is None:
            raise MediaBackendError(f"legacy relay: answer for unknown call {call_id}")
        from_caller_request = from_tag == session.caller_tag
        legs = []
        for i, m in enumerate(sdp.media):
            if m.port == 0:
                continue
            st = await self._stream(session, i)
            # the answerer is the request's receiver
            answerer, offerer = (st.b, st.a) if from_caller_request else (st.a, st.b)
            answerer.target, answerer.latched = _sdp_target(sdp, i, m.port, source), False
            legs.append((i, offerer))
            for leg in (st.a, st.b):
                self._punch(leg)
        return self._rewrite(sdp, session, legs)

    def _punch(self, leg: Leg) -> None:
        if not self.punch_packets or leg.target is None or leg.rtp_transport is None:
            return
        ssrc = random.getrandbits(32)
        seq0, ts0 = random.getrandbits(16), random.getrandbits(32)
        for n in range(self.punch_packets):
            header = struct.pack("!BBHII", 0x80, 0, (seq0 + n) & 0xFFFF, (ts0 + 160 * n) & 0xFFFFFFFF, ssrc)
            leg.rtp_transport.sendto(header + b"\xff" * 160, leg.target)

    async def delete(self, call_id, from_tag=None, to_tag=None) -> None:
        session = self._sessions.pop(call_id, None)
        if session is None:
            return
        for st in session.streams:
            for leg in (st.a, st.b):
                for t in (leg.rtp_transport, leg.rtcp_transport):
                    if t is not None:
                        t.close()
        # asyncio closes datagram sockets on the next loop turn: only then may a new call bind them
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for st in session.streams:
            for leg in (st.a, st.b):
                self.pool.release(leg.port)

    def sessions(self) -> list[dict]:
        out = []
        for s in self._sessions.values():
            for st in s.streams:
                out.append({"call_id": s.call_id, "stream": st.index,
                            "a_port": st.a.port, "a_target": _fmt(st.a.target), "a_latched": st.a.latched,
                            "b_port": st.b.port, "b_target": _fmt(st.b.target), "b_latched": st.b.latched,
                            "a_rx": st.a.rx, "a_tx": st.a.tx, "b_rx": st.b.rx, "b_tx": st.b.tx})
        return out


def _fmt(addr) -> str:
    return f"{addr[0]}:{addr[1]}" if addr else ""


def _sdp_target(sdp: SessionDescription, index: int, port: int, source) -> tuple[str, int]:
    """Initial media target from the SDP. Only an IP literal is used: a host name in c= would be
    resolved synchronously by every sendto (the event loop stalls per packet), so a name -- or
    anything else -- falls back to the signalling source address (issue 10, class 4)."""
    return (ip_literal(sdp.media_address(index) or "") or source[0], port)
