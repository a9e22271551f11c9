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
import select
import socket
import struct
import time
from dataclasses import dataclass, field

from legacy.port_pool import PortPool
from sipcore.errors import MediaBackendError
from sipcore.media import MediaBackend
from sipcore.resolver import ip_literal
from sipcore.sdp import SessionDescription

log = logging.getLogger(__name__)

# The relay's sockets are plain non-blocking UDP sockets (not datagram transports: a call opens 4
# and closes them again, and a transport + protocol per socket cost more per call than everything
# else the relay does), read from loop reader callbacks (the standard loop: one reader for all of
# them, _EpollReaders; uvloop: one per socket, _LoopReaders) and closed synchronously, so a
# deleted call's ports bind again at once.
RECV_SIZE = 65536         # any UDP datagram fits whole (nothing is ever truncated)
READY_BATCH = 64          # ready sockets taken from the relay's epoll set per poll
TURN_BUDGET = 256         # datagrams relayed per readiness of that set before the loop runs other work
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)     # Linux: non-blocking from the start, no fcntl
_NONBLOCKING_DGRAM = socket.SOCK_DGRAM | _SOCK_NONBLOCK
_SEQ_TS = struct.Struct("!HI")              # RTP sequence number and timestamp, bytes 2-7
_SSRC = struct.Struct("!I")                 # RTP SSRC, bytes 8-11
# a punch packet: V=2, no padding/extension/CSRC, M=0, PT=0 (PCMU), 160 bytes of 0xFF (silence)
_PUNCH = bytes([0x80, 0]) + bytes(10) + b"\xff" * 160


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
    rtp_sock: socket.socket | None = None
    rtcp_sock: socket.socket | None = None


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


BIND_ATTEMPTS = 16        # port pairs tried for one leg before the call gets 488


class _LoopReaders:
    """A loop.add_reader per socket: on uvloop (cheap there, and libuv aborts the process when
    asked to watch an epoll descriptor) and wherever select.epoll is missing."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop

    def add(self, sock: socket.socket, callback, *args) -> None:
        self.loop.add_reader(sock.fileno(), callback, sock, *args)

    def remove(self, sock: socket.socket) -> None:
        self.loop.remove_reader(sock.fileno())

    def close(self) -> None:
        pass


class _EpollReaders:
    """The standard asyncio loop: the relay's sockets in one epoll set of its own, which the loop
    watches as a single reader. asyncio's add_reader and remove_reader each run dozens of Python
    lines (selector key, handle): about 200,000 instructions (callgrind) for the 4 sockets of a
    call, against about 13,000 for epoll register/unregister, one C call each; and each ready
    socket cost the loop a handle per datagram. Level-triggered, like the loop's own selector."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.epoll = select.epoll()
        self.watched: dict[int, tuple] = {}         # fd -> (callback, its arguments)
        loop.add_reader(self.epoll.fileno(), self._ready)

    def add(self, sock: socket.socket, callback, *args) -> None:
        fd = sock.fileno()
        self.epoll.register(fd, select.EPOLLIN)
        self.watched[fd] = (callback, (sock, *args))

    def remove(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self.watched.pop(fd, None) is not None:       # before close: the fd number is reused at once
            self.epoll.unregister(fd)

    def _ready(self) -> None:
        """Rounds of one datagram per ready socket until none is ready (the empty poll that ends
        them costs less than the BlockingIOError of a drained socket) or TURN_BUDGET datagrams are
        relayed (the loop runs other work, then reports the set again)."""
        watched, poll, budget = self.watched, self.epoll.poll, TURN_BUDGET
        while budget > 0:
            events = poll(0, READY_BATCH)
            if not events:
                return
            for fd, _ in events:
                entry = watched.get(fd)
                if entry is not None:
                    entry[0](*entry[1])
                else:                                 # not ours (cannot happen): never report it again
                    self._forget(fd)
            budget -= len(events)

    def _forget(self, fd: int) -> None:
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass

    def close(self) -> None:
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()


def _readers(loop: asyncio.AbstractEventLoop) -> _LoopReaders | _EpollReaders:
    if isinstance(loop, asyncio.SelectorEventLoop) and hasattr(select, "epoll"):
        return _EpollReaders(loop)
    return _LoopReaders(loop)


class LegacyRelay(MediaBackend):
    name = "legacy-relay"

    def __init__(self, advertised_ip: str, bind_ip: str = "0.0.0.0", port_min: int = 20000,
                 port_max: int = 29999, inactivity_timeout: float = 60.0, punch_packets: int = 20):
        self.advertised_ip = advertised_ip
        self.punch_packets = punch_packets
        self.bind_ip = bind_ip
        self._family = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
        self.pool = PortPool(port_min, port_max)
        self.inactivity_timeout = inactivity_timeout
        self._sessions: dict[str, Session] = {}
        self._reaper: asyncio.Task | None = None
        self._readers: _LoopReaders | _EpollReaders | None = None     # of the loop the sockets are on

    async def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="relay-reaper")
        log.info("legacy relay ready on %s, ports %d-%d", self.bind_ip, self.pool.low, self.pool.high)

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for call_id in list(self._sessions):
            await self.delete(call_id)
        if self._readers is not None:
            self._readers.close()
            self._readers = None

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.inactivity_timeout / 2))
            now = time.monotonic()
            for call_id, s in list(self._sessions.items()):
                if now - s.last_packet > self.inactivity_timeout:
                    log.info("relay session %s released after %.0fs without packets", call_id, self.inactivity_timeout)
                    await self.delete(call_id)

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(self._family, _NONBLOCKING_DGRAM)
        try:
            if not _NONBLOCKING_DGRAM & _SOCK_NONBLOCK:
                sock.setblocking(False)
            sock.bind((self.bind_ip, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def _open_leg(self, session: Session, stream: Stream, leg: Leg) -> None:
        """Bind the leg's RTP and RTCP sockets (OSError when either port is taken), then watch them."""
        readers = self._readers
        loop = asyncio.get_running_loop()
        if readers is None or readers.loop is not loop:
            readers = self._readers = _readers(loop)
        leg.rtp_sock = self._bind(leg.port)
        leg.rtcp_sock = self._bind(leg.port + 1)
        readers.add(leg.rtp_sock, self._rtp_readable, session, stream, leg)
        readers.add(leg.rtcp_sock, self._rtcp_readable, session, stream, leg)

    def _rtp_readable(self, sock: socket.socket, session: Session, stream: Stream, leg: Leg) -> None:
        """Reader callback of a leg's RTP socket, one datagram per call (a socket with more is
        reported again; a loop of reads would end each wake-up on a raised BlockingIOError, which
        costs as much as relaying a datagram): it latches the leg (once, on a packet of 12 bytes or
        more) and goes to the other leg's target from the other leg's socket. A send error
        (EAGAIN, an ICMP error queued on the socket) drops that datagram and nothing else; an empty
        datagram is counted but not sent (as the datagram transports did)."""
        try:
            data, src = sock.recvfrom(RECV_SIZE)
        except OSError:            # nothing after all; an ICMP error of an earlier send: not fatal
            return
        if len(src) != 2:
            src = (src[0], src[1])            # IPv6: (host, port, flowinfo, scope id)
        session.last_packet = time.monotonic()
        leg.rx += 1
        if not leg.latched and len(data) >= 12:
            if leg.target != src:
                log.info("[RTP-LATCH] %s leg %s: %s -> %s:%s", session.call_id, leg.name, leg.target, *src)
            leg.target, leg.latched = src, True
        other = stream.b if leg is stream.a else stream.a
        if other.target and other.rtp_sock is not None:
            if data:
                try:
                    other.rtp_sock.sendto(data, other.target)
                except (OSError, ValueError, OverflowError):
                    pass
            other.tx += 1

    def _rtcp_readable(self, sock: socket.socket, session: Session, stream: Stream, leg: Leg) -> None:
        """Reader callback of a leg's RTCP socket, one datagram per call: to the other leg's target
        port + 1, never latched."""
        try:
            data, _src = sock.recvfrom(RECV_SIZE)
        except OSError:
            return
        session.last_packet = time.monotonic()
        leg.rtcp_rx += 1
        other = stream.b if leg is stream.a else stream.a
        if other.target and other.rtcp_sock is not None and other.target[1] < 65535:
            if data:
                try:
                    other.rtcp_sock.sendto(data, (other.target[0], other.target[1] + 1))
                except (OSError, ValueError, OverflowError):
                    pass
            other.rtcp_tx += 1

    def _bind_leg(self, session: Session, stream: Stream, leg: Leg, busy: list[int]) -> None:
        """Open ``leg`` on the lowest free pool pair that really binds. Another program may hold a
        port of the configured range: skip that pair (as rtpproxy does) instead of failing the call."""
        for _ in range(BIND_ATTEMPTS):
            try:
                leg.port = self.pool.allocate()
            except RuntimeError as exc:
                raise MediaBackendError(f"legacy relay: {exc}") from None
            try:
                self._open_leg(session, stream, leg)
                return
            except OSError as exc:
                self._close_leg(leg)
                busy.append(leg.port)
                log.warning("legacy relay: port pair %d/%d is taken (%s); trying the next", leg.port,
                            leg.port + 1, exc.strerror or exc)
        raise MediaBackendError(f"legacy relay cannot bind any of {BIND_ATTEMPTS} port pairs "
                                f"(last {leg.port}/{leg.port + 1})")

    def _close_stream(self, stream: Stream) -> None:
        """Close both legs' sockets and give their ports back to the pool: they bind again at once."""
        for leg in (stream.a, stream.b):
            if leg.port and leg.rtp_sock is not None:
                self._close_leg(leg)
                self.pool.release(leg.port)

    def _close_leg(self, leg: Leg) -> None:
        readers = self._readers
        for sock in (leg.rtp_sock, leg.rtcp_sock):
            if sock is not None:
                if readers is not None:
                    readers.remove(sock)             # before close: the fd number is reused at once
                sock.close()
        leg.rtp_sock = leg.rtcp_sock = None

    def _stream(self, session: Session, index: int) -> Stream:
        for st in session.streams:
            if st.index == index:
                return st
        st = Stream(index, Leg("A", 0), Leg("B", 0))
        busy: list[int] = []
        try:
            for leg in (st.a, st.b):
                self._bind_leg(session, st, leg, busy)
        except MediaBackendError:
            self._close_stream(st)
            raise
        finally:
            for port in busy:                  # held by another program now; try again later
                self.pool.release(port)
        session.streams.append(st)
        return st

    def _rewrite(self, sdp: SessionDescription, session: Session, legs: list[tuple[int, Leg]]) -> SessionDescription:
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
        legs: list[tuple[int, Leg]] = []
        for i, m in enumerate(sdp.media):
            if m.port == 0:
                continue
            st = self._stream(session, i)
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
        legs: list[tuple[int, Leg]] = []
        for i, m in enumerate(sdp.media):
            if m.port == 0:
                continue
            st = self._stream(session, i)
            # the answerer is the request's receiver
            answerer, offerer = (st.b, st.a) if from_caller_request else (st.a, st.b)
            answerer.target, answerer.latched = _sdp_target(sdp, i, m.port, source), False
            legs.append((i, offerer))
            for leg in (st.a, st.b):
                self._punch(leg)
        return self._rewrite(sdp, session, legs)

    def _punch(self, leg: Leg) -> None:
        sock = leg.rtp_sock
        if not self.punch_packets or leg.target is None or sock is None:
            return
        ssrc = random.getrandbits(32)
        seq0, ts0 = random.getrandbits(16), random.getrandbits(32)
        packet = bytearray(_PUNCH)
        _SSRC.pack_into(packet, 8, ssrc)
        pack_into, sendto, target = _SEQ_TS.pack_into, sock.sendto, leg.target
        for n in range(self.punch_packets):
            pack_into(packet, 2, (seq0 + n) & 0xFFFF, (ts0 + 160 * n) & 0xFFFFFFFF)
            try:
                sendto(packet, target)
            except (OSError, ValueError, OverflowError):     # EAGAIN, a queued ICMP error ...: that packet is lost
                pass

    async def delete(self, call_id, from_tag=None, to_tag=None) -> None:
        session = self._sessions.pop(call_id, None)
        if session is None:
            return
        for st in session.streams:
            self._close_stream(st)        # closed at once: a new call may bind the ports right away

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
