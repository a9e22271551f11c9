"""Asyncio RTPProxy control client (udp, udp6, unix datagram, tcp stream) and a weighted node pool.

A call sticks to the node it was created on; a node that stops answering is marked down, skipped,
and re-probed with ``V`` until it answers again.
"""
from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
import random
import socket
import time
from typing import Any

from mypy_extensions import mypyc_attr

from refactored import rtpproxy_protocol as proto
from sipcore.errors import MediaCapacityError

log = logging.getLogger(__name__)

HOW_TO_START = ("start one with: ims-rtpproxy -l <SERVER_IP> -s udp:127.0.0.1:7722 -m 20000 -M 29999 "
                "(or a real rtpproxy: rtpproxy -F -l <SERVER_IP> -s udp:127.0.0.1:7722), "
                "or set RTPPROXY_AUTO_START=1")


@mypyc_attr(native_class=False)          # an exception class: a plain Python class when compiled
class RTPProxyUnavailable(MediaCapacityError):
    """No relay answers (503 to the caller)."""


def parse_spec(spec: str) -> tuple[str, Any]:
    """(kind, address): address a (host, port) pair, or a path for unix."""
    kind, _, rest = spec.partition(":")
    if kind in ("udp", "tcp"):
        host, _, port = rest.rpartition(":")
        return kind, (host, int(port))
    if kind == "udp6":
        host, _, port = rest.rpartition(":")
        return kind, (host.strip("[]"), int(port))
    if kind == "unix":
        return kind, rest
    raise ValueError(f"bad rtpproxy socket spec {spec!r}")


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: "RTPProxyClient"):
        self.client = client

    def datagram_received(self, data, addr):
        self.client._reply(data)


class _UDPControl:
    """The UDP control socket read straight from the loop's reader callback, every queued reply
    per wake-up: replies are never left waiting behind a busy SIP socket (the server reads SIP in
    batches; a transport reading one datagram per loop turn let replies age into timeouts under
    load). ``sendto(data)`` and ``close()`` as a connected DatagramTransport."""

    def __init__(self, client: "RTPProxyClient", sock: socket.socket, loop: asyncio.AbstractEventLoop):
        self.client, self.sock, self.loop = client, sock, loop
        loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        for _ in range(1024):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:        # ICMP port unreachable of an earlier command: no relay
                log.debug("rtpproxy control socket: %s", exc)
                # a fresh socket for the next command (uvloop stops polling one after an error);
                # what was in flight is lost anyway: nothing listens there
                if self.client._transport is self:
                    self.client.close()
                return
            self.client._reply(data)

    def sendto(self, data: bytes) -> None:
        self.sock.send(data)               # OSError (no relay, buffer full): the command is retried

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError, RuntimeError):
            pass
        self.sock.close()


RETRANSMIT_FIRST = 0.2        # seconds before an unanswered datagram command is sent again (then doubling)


class _Waiting:
    """A datagram command waiting for its reply."""

    __slots__ = ("fut", "data", "final", "interval", "seq")

    def __init__(self, fut: asyncio.Future, data: bytes, final: float, interval: float, seq: int) -> None:
        self.fut, self.data, self.final, self.interval, self.seq = fut, data, final, interval, seq


class RTPProxyClient:
    """One control socket. ``await client.command(cmd)`` returns the reply text (no cookie)."""

    def __init__(self, spec: str, timeout: float = 1.0, retries: int = 2):
        self.spec = spec
        self.kind, self.address = parse_spec(spec)
        self.timeout = timeout
        self.retries = retries
        # _UDPControl (udp), a DatagramTransport (unix), or a reader/writer pair (tcp)
        self._transport: Any = None
        # datagram commands waiting for their reply: when each is sent again or given up, as
        # (time, seq, cookie) in a heap under ONE loop timer, armed for the earliest (a loop
        # timer per command cost a timer, a cancel and heap work each)
        self._waiting: dict[str, _Waiting] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_loop: asyncio.AbstractEventLoop | None = None
        self._expiry_at = 0.0
        self._cookies = itertools.count(random.randrange(1, 1 << 20))
        self._stream_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._reader: Any = None
        self._writer: Any = None

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if self.kind in ("udp", "udp6"):
            family = socket.AF_INET6 if self.kind == "udp6" else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, self.address)
            except BaseException:
                sock.close()
                raise
            self._transport = _UDPControl(self, sock, loop)
        elif self.kind == "unix":
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _DatagramProtocol(self), remote_addr=self.address, family=socket.AF_UNIX)
        else:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(*self.address), self.timeout)

    def _reply(self, data: bytes) -> None:
        cookie = data.split(b" ", 1)[0].decode("ascii", "replace")
        waiting = self._waiting.get(cookie)
        if waiting is not None and not waiting.fut.done():
            waiting.fut.set_result(data)

    async def command(self, cmd: proto.Command) -> str:
        """The reply to ``cmd``. Over a datagram socket it is sent again with the same cookie
        (the relay answers a repeated cookie from its reply cache, so nothing is done twice)
        after RETRANSMIT_FIRST seconds, then at doubling intervals, for ``timeout * (retries +
        1)`` seconds in all; a stream socket waits ``timeout`` per attempt."""
        last_exc: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                if self._transport is None and self._writer is None:
                    async with self._connect_lock:     # commands that find no socket open ONE
                        if self._transport is None and self._writer is None:
                            await self._connect()
                if self.kind == "tcp":
                    return await self._stream_command(cmd)
                return await self._datagram_command(cmd, self.timeout * (self.retries + 1))
            except asyncio.TimeoutError as exc:
                last_exc = exc
                if self.kind != "tcp":      # sent again all along: the relay does not answer
                    break
                self.close()                # a stream out of step: start a new one
                # (a datagram socket stays: closing it would lose the replies of every other
                # command in flight; under load one late reply then failed them all)
            except (OSError, ConnectionError) as exc:
                last_exc = exc
                self.close()
        why = (str(last_exc) or type(last_exc).__name__) if last_exc is not None else "timeout"
        raise RTPProxyUnavailable(f"rtpproxy at {self.spec} does not answer ({why}); {HOW_TO_START}")

    async def _datagram_command(self, cmd: proto.Command, budget: float) -> str:
        cookie = f"{next(self._cookies)}_{int(time.monotonic() * 1000) % 100000}"
        # the control socket's loop (asking asyncio costs a getpid() per call on Python 3.11)
        loop = self._transport.loop if isinstance(self._transport, _UDPControl) else asyncio.get_running_loop()
        fut = loop.create_future()
        data = proto.frame(cmd, cookie)
        now = time.monotonic()
        first = min(RETRANSMIT_FIRST, budget)
        waiting = _Waiting(fut, data, now + budget, first, next(self._seq))
        self._waiting[cookie] = waiting
        self._push(loop, now + first, waiting.seq, cookie)
        try:
            self._transport.sendto(data)
            reply = await fut
        finally:
            self._waiting.pop(cookie, None)
        return proto.split_reply(reply, cookie)

    def _push(self, loop: asyncio.AbstractEventLoop, when: float, seq: int, cookie: str) -> None:
        heapq.heappush(self._deadlines, (when, seq, cookie))
        if self._expiry is None or when < self._expiry_at or self._expiry_loop is not loop:
            self._arm_expiry(loop, when)

    def _arm_expiry(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at, self._expiry_loop = deadline, loop
        self._expiry = loop.call_later(max(0.0, deadline - time.monotonic()), self._expire_due)

    def _expire_due(self) -> None:
        """Send again the commands still unanswered at their time, fail those past their budget
        with TimeoutError (answered ones just leave the heap), then arm the timer for the next."""
        self._expiry = None
        loop = self._expiry_loop if self._expiry_loop is not None else asyncio.get_running_loop()
        now = time.monotonic()
        heap, waiting = self._deadlines, self._waiting
        while heap:
            when, seq, cookie = heap[0]
            w = waiting.get(cookie)
            if w is None or w.seq != seq or w.fut.done():
                heapq.heappop(heap)          # answered, or an entry replaced by a later one
                continue
            if when > now:
                self._arm_expiry(loop, when)
                return
            heapq.heappop(heap)
            if now >= w.final:
                w.fut.set_exception(asyncio.TimeoutError())
                continue
            transport = self._transport
            if transport is None:
                w.fut.set_exception(ConnectionError("rtpproxy control socket closed"))
                continue
            try:
                transport.sendto(w.data)
            except OSError as exc:
                w.fut.set_exception(exc)
                continue
            w.interval *= 2
            w.seq = next(self._seq)
            heapq.heappush(heap, (min(now + w.interval, w.final), w.seq, cookie))

    async def _stream_command(self, cmd: proto.Command) -> str:
        async with self._stream_lock:
            self._writer.write(proto.frame(cmd, None))
            await self._writer.drain()
            line = await asyncio.wait_for(self._reader.readline(), self.timeout)
            if not line:
                raise ConnectionError("rtpproxy closed the connection")
            return proto.split_reply(line, None)

    def close(self) -> None:
        if self._expiry is not None and not self._waiting:
            self._expiry.cancel()         # nothing waits: no timer left behind
            self._expiry = None
            self._deadlines.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._writer is not None:
            self._writer.close()
            self._writer = self._reader = None


class Node:
    def __init__(self, spec: str, weight: int, timeout: float):
        self.spec = spec
        self.weight = weight
        self.client = RTPProxyClient(spec, timeout=timeout)
        self.up = True
        self.down_since: float | None = None


@mypyc_attr(allow_interpreted_subclasses=True)    # refactored.rtpproxy_launcher.AutoStartPool
class RTPProxyPool:
    def __init__(self, nodes: list[tuple[str, int]], timeout: float = 1.0, reprobe: float = 5.0):
        if not nodes:
            raise ValueError("at least one rtpproxy node is needed")
        self.nodes = [Node(s, w, timeout) for s, w in nodes]
        self.reprobe = reprobe
        self._sticky: dict[str, Node] = {}

    async def probe(self, node: Node, announce: bool = True) -> bool:
        """``V``/``VF`` to the node; marks it up or down (logged when that changes, if ``announce``)."""
        try:
            ver = await node.client.command(proto.version())
            proto.check_error(ver)
            ok = await node.client.command(proto.feature())
            if ok.strip() != "1":
                raise proto.RTPProxyError(99, f"base protocol {proto.BASE_VERSION} not supported")
            if not node.up and announce:
                log.info("rtpproxy %s is back", node.spec)
            node.up, node.down_since = True, None
            return True
        except (RTPProxyUnavailable, proto.RTPProxyError) as exc:
            if node.up and announce:
                log.warning("rtpproxy %s marked down: %s", node.spec, exc)
            node.up, node.down_since = False, time.monotonic()
            return False

    async def start(self) -> None:
        results = await asyncio.gather(*(self.probe(n) for n in self.nodes))
        if not any(results):
            specs = ", ".join(n.spec for n in self.nodes)
            raise RTPProxyUnavailable(f"no rtpproxy answers at {specs}; {HOW_TO_START}")

    async def _revive(self) -> None:
        """Probe nodes that have been down for ``reprobe`` seconds; when every node is down, probe
        them now: a call has nowhere else to go, and one missed reply (a busy relay) must not
        fail every call until the re-probe interval has passed."""
        now = time.monotonic()
        all_down = not any(n.up for n in self.nodes)
        for n in self.nodes:
            if not n.up and n.down_since is not None and (all_down or now - n.down_since >= self.reprobe):
                await self.probe(n)

    def _choose(self, call_id: str) -> Node:
        up = [n for n in self.nodes if n.up]
        if not up:
            raise RTPProxyUnavailable(f"all rtpproxy nodes are down; {HOW_TO_START}")
        total = sum(n.weight for n in up)
        point = int(hashlib.sha1(call_id.encode("utf-8", "surrogateescape")).hexdigest(), 16) % total
        for n in up:
            if point < n.weight:
                return n
            point -= n.weight
        return up[-1]

    async def command(self, call_id: str, cmd: proto.Command) -> str:
        await self._revive()
        node = self._sticky.get(call_id)
        if node is None or not node.up:
            node = self._choose(call_id)
        for _ in range(len(self.nodes)):
            try:
                reply = await node.client.command(cmd)
                if cmd.kind in ("U", "L"):
                    self._sticky[call_id] = node
                elif cmd.kind == "D":
                    self._sticky.pop(call_id, None)
                return reply
            except RTPProxyUnavailable as exc:
                log.warning("rtpproxy %s failed: %s", node.spec, exc)
                node.up, node.down_since = False, time.monotonic()
                if cmd.kind in ("D", "Q"):
                    raise
                node = self._choose(call_id)
        raise RTPProxyUnavailable(f"no rtpproxy node answered; {HOW_TO_START}")

    async def any_command(self, cmd: proto.Command) -> str:
        for n in self.nodes:
            if n.up:
                return await n.client.command(cmd)
        raise RTPProxyUnavailable(f"all rtpproxy nodes are down; {HOW_TO_START}")

    def close(self) -> None:
        for n in self.nodes:
            n.client.close()

    async def aclose(self) -> None:
        self.close()
