"""Asyncio SIP transports: UDP datagrams and TCP with Content-Length framing.

The one place where SIP touches sockets. Incoming bytes are parsed with the sans-IO parser and
handed to ``on_message(message, source, transport_name)``. Malformed input: a request whose start
line and headers could be read is answered 400 (505 for another SIP version) with a Warning;
anything else is dropped with one log line. Reads are bounded by ``max_size``.

Hostile traffic (issue 10): no destination taken from the wire reaches a socket unchecked
(``sipcore.resolver.check_destination``; DNS names are resolved off the loop), so no send error
can close a listener; a listener lost anyway is reopened, and when that fails ``on_fatal`` is
called so the process exits non-zero and its supervisor restarts it. TCP connections are capped
globally and per source address, and a connection that has not delivered a parsable message
within ``tcp_first_message_timeout`` is closed.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import Any, Callable

from sipcore.errors import SIPParseError, error_response
from sipcore.message import SIPMessage, SIPResponse, parse_message
from sipcore.resolver import BadDestination, Resolver, check_destination

log = logging.getLogger(__name__)

OnMessage = Callable[[SIPMessage, tuple[str, int], str], None]
KEEPALIVE_PAYLOADS = (b"\r\n", b"\r\n\r\n", b"\n", b"\0\0\0\0")
UDP_BATCH = 16                 # datagrams read per wake-up of the loop (then other callbacks run)
UDP_RCVBUF = 1024 * 1024       # asked for (kernel caps: net.core.rmem_max); deeper only adds delay
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)       # Linux: kernel receive time per datagram
_TIMESPEC = struct.Struct("@qq")
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


def error_reply(data: bytes, exc: SIPParseError, host: str) -> SIPResponse | None:
    """The 400/505 to send for unparsable ``data``, or None when no response can be built."""
    return error_response(exc.partial, exc, warn_host=host)


class _UDPListener:
    """The UDP SIP socket, read straight from the loop's reader callback (works on the standard
    loop and on uvloop): up to ``UDP_BATCH`` datagrams per wake-up instead of one loop iteration
    per datagram, each with the kernel's receive time (``SO_TIMESTAMPNS``), so the server knows how
    long a message waited in the socket queue (``SIPTransport.rx_age``: overload control).
    Sends go straight to the socket; a full send buffer or any send error drops that datagram
    with one log line (UDP semantics) and never closes the socket. Offers the small part of a
    DatagramTransport the rest uses (``sendto``, ``get_extra_info``, ``close``, ``abort``)."""

    def __init__(self, owner: "SIPTransport", sock: socket.socket, loop: asyncio.AbstractEventLoop):
        self.owner, self.sock, self.loop = owner, sock, loop
        self._closed = False
        self._timestamps = True
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            self._timestamps = False
        loop.add_reader(sock.fileno(), self._read_ready)

    @classmethod
    async def open(cls, owner: "SIPTransport", host: str, port: int) -> "_UDPListener":
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            except OSError:
                pass
            sock.bind(addr)
        except BaseException:
            sock.close()
            raise
        return cls(owner, sock, loop)

    def _read_ready(self) -> None:
        sock, incoming, now = self.sock, self.owner._incoming, time.time
        unpack, ts = _TIMESPEC.unpack, self._timestamps
        for _ in range(UDP_BATCH):
            try:
                data, anc, _flags, addr = sock.recvmsg(65536, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:      # ICMP errors of earlier sends (ECONNREFUSED ...): not fatal
                if self._closed:
                    return
                log.debug("udp receive error (ignored): %s", exc)
                continue
            age = 0.0
            if ts and anc:
                for _level, kind, cdata in anc:
                    if kind == SO_TIMESTAMPNS and len(cdata) >= _TIMESPEC.size:
                        sec, nsec = unpack(cdata[:_TIMESPEC.size])
                        age = now() - (sec + nsec * 1e-9)
            incoming(data, (addr[0], addr[1]), "udp", None, age)
            if self._closed:
                return

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except BlockingIOError:
            self.owner.stats["udp_send_full"] += 1
            log.debug("udp send buffer full: datagram to %s:%s dropped", *addr)
        except (OSError, ValueError, TypeError, OverflowError) as exc:
            # EACCES, EMSGSIZE, ENETUNREACH, an address of the other family ...
            log.info("udp send error (message dropped): %s", exc)

    def get_extra_info(self, name: str, default=None):
        if name == "sockname":
            return self.sock.getsockname() if not self._closed else default
        if name == "socket":
            return self.sock
        return default

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError, RuntimeError):
            pass
        self.sock.close()

    def abort(self) -> None:
        """Close as if the socket had been lost (the owner reopens it)."""
        self.close()
        self.owner._udp_lost(self, None)


class SIPTransport:
    def __init__(self, on_message: OnMessage, max_size: int = 65535, bad_request_host: str = "-",
                 tcp_idle_timeout: float = 600.0, *, tcp_first_message_timeout: float = 10.0,
                 tcp_max_connections: int = 1000, tcp_max_per_source: int = 32,
                 resolver: Resolver | None = None, on_fatal: Callable[[str], None] | None = None):
        self.on_message = on_message
        self.max_size = max_size
        self.host = bad_request_host
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_first_message_timeout = tcp_first_message_timeout
        self.tcp_max_connections = tcp_max_connections
        self.tcp_max_per_source = tcp_max_per_source
        self.resolver = resolver or Resolver()
        self.on_fatal = on_fatal
        self._udp: _UDPListener | None = None
        self._udp_addr: tuple[str, int] | None = None
        self._tcp_server: asyncio.base_events.Server | None = None
        self._tcp_conns: dict[tuple[str, int], asyncio.StreamWriter] = {}
        self._tcp_per_source: dict[str, int] = {}
        self._tcp_refused_logged = 0.0
        self._closing = False
        self._tasks: set[asyncio.Task] = set()
        self.stats = {"rx": 0, "tx": 0, "bad": 0, "oversize": 0, "bad_destination": 0,
                      "udp_reopened": 0, "udp_send_full": 0, "tcp_refused": 0, "tcp_idle_closed": 0}
        # seconds the message being handed to on_message waited in the kernel's socket queue
        # (UDP, from the kernel's receive time; 0.0 for TCP): the server's overload control reads it
        self.rx_age = 0.0

    # --- listening ----------------------------------------------------------------------------
    async def listen_udp(self, host: str, port: int) -> None:
        self._udp = await _UDPListener.open(self, host, port)
        bound = self._udp.get_extra_info("sockname")
        self._udp_addr = (host, bound[1] if bound else port)    # the real port, also for port 0

    async def listen_tcp(self, host: str, port: int) -> None:
        self._tcp_server = await asyncio.start_server(self._tcp_client, host, port, limit=self.max_size + 4096)

    def close(self) -> None:
        self._closing = True
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp_server is not None:
            self._tcp_server.close()
            self._tcp_server = None
        for w in self._tcp_conns.values():
            w.close()
        self._tcp_conns.clear()
        self._tcp_per_source.clear()
        for task in list(self._tasks):
            task.cancel()
        self.resolver.close()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _udp_lost(self, listener: "_UDPListener", exc: Exception | None) -> None:
        """The UDP socket was closed under us (it should not happen: destinations are checked).
        Reopen it; if that fails, report a fatal error so the process exits non-zero."""
        if self._closing or listener is not self._udp or self._udp_addr is None:
            return
        log.error("udp listener %s:%s lost (%s); reopening", *self._udp_addr, exc or "closed")
        self._udp = None
        self._spawn(self._reopen_udp())

    async def _reopen_udp(self) -> None:
        assert self._udp_addr is not None
        for delay in (0.0, 0.1, 0.5, 1.0, 2.0):
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                await self.listen_udp(*self._udp_addr)
            except OSError as exc:
                log.error("udp listener %s:%s: reopen failed: %s", *self._udp_addr, exc)
                continue
            self.stats["udp_reopened"] += 1
            log.warning("udp listener %s:%s reopened", *self._udp_addr)
            return
        if self.on_fatal is not None:
            self.on_fatal(f"udp listener {self._udp_addr[0]}:{self._udp_addr[1]} lost and cannot be reopened")

    # --- intake -------------------------------------------------------------------------------
    def _incoming(self, data: bytes, source: tuple[str, int], transport: str, writer, age: float = 0.0) -> bool:
        """Parse and hand on one message; True when it was a parsable SIP message. ``age``:
        seconds it waited in the socket queue (``rx_age`` while ``on_message`` runs)."""
        if data in KEEPALIVE_PAYLOADS or not data.strip(b"\r\n\0 "):
            if writer is not None and data == b"\r\n\r\n":
                writer.write(b"\r\n")     # RFC 5626 pong
            return False
        self.stats["rx"] += 1
        if len(data) > self.max_size:
            self.stats["oversize"] += 1
            log.warning("dropping %d-byte message from %s:%s (limit %d)", len(data), *source, self.max_size)
            return False
        try:
            msg = parse_message(data, self.max_size, stream=transport == "tcp")
        except SIPParseError as exc:
            self.stats["bad"] += 1
            reply = error_reply(data, exc, self.host)
            if reply is not None:
                log.info("malformed request from %s:%s (%s): answering %d", *source, exc.reason, reply.status)
                self.send(reply, source, transport)
            else:
                log.info("dropping malformed message from %s:%s: %s", *source, exc.reason)
            return False
        self.rx_age = age
        self.on_message(msg, source, transport)
        return True

    def _admit_tcp(self, ip: str) -> str | None:
        """None when a new connection from ``ip`` may be served, else why not."""
        if len(self._tcp_conns) >= self.tcp_max_connections:
            return f"{len(self._tcp_conns)} connections open (limit {self.tcp_max_connections})"
        if self._tcp_per_source.get(ip, 0) >= self.tcp_max_per_source:
            return f"{self.tcp_max_per_source} connections from this address (limit)"
        return None

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          trusted: bool = False) -> None:
        """Serve one TCP connection. ``trusted``: one we opened ourselves (counts as validated)."""
        peer = writer.get_extra_info("peername")
        if not peer:
            writer.close()
            return
        source = (peer[0], peer[1])
        refusal = None if trusted else self._admit_tcp(source[0])
        if refusal is not None:
            self.stats["tcp_refused"] += 1
            now = time.monotonic()
            if now - self._tcp_refused_logged >= 1.0:     # one line per second under a flood
                self._tcp_refused_logged = now
                log.warning("tcp connection from %s:%s refused: %s (%d refused so far)", *source, refusal,
                            self.stats["tcp_refused"])
            writer.transport.abort()
            return
        self._tcp_conns[source] = writer
        self._tcp_per_source[source[0]] = self._tcp_per_source.get(source[0], 0) + 1
        validated = trusted
        deadline = time.monotonic() + self.tcp_first_message_timeout
        try:
            while True:
                timeout = self.tcp_idle_timeout if validated else max(0.0, deadline - time.monotonic())
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                except asyncio.LimitOverrunError:
                    log.warning("tcp %s:%s: header block over %d bytes, closing", *source, self.max_size)
                    return
                except asyncio.TimeoutError:
                    if not validated:
                        self.stats["tcp_idle_closed"] += 1
                        log.info("tcp %s:%s: no valid SIP message within %.0fs, closing", *source,
                                 self.tcp_first_message_timeout)
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                stripped = head.lstrip(b"\r\n")
                if not stripped:
                    if head == b"\r\n\r\n":
                        writer.write(b"\r\n")
                    continue
                length = 0
                for line in stripped.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() in (b"content-length", b"l"):
                        try:
                            length = int(value.strip())
                        except ValueError:
                            log.warning("tcp %s:%s: bad Content-Length, closing", *source)
                            return
                if length < 0 or len(stripped) + length > self.max_size:
                    log.warning("tcp %s:%s: message over %d bytes, closing", *source, self.max_size)
                    return
                body_timeout = 30.0 if validated else max(0.0, deadline - time.monotonic())
                try:
                    body = await asyncio.wait_for(reader.readexactly(length), body_timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    log.info("tcp %s:%s: incomplete body, closing", *source)
                    return
                if self._incoming(stripped + body, source, "tcp", writer):
                    validated = True
        finally:
            if self._tcp_conns.get(source) is writer:
                del self._tcp_conns[source]
            left = self._tcp_per_source.get(source[0], 1) - 1
            if left > 0:
                self._tcp_per_source[source[0]] = left
            else:
                self._tcp_per_source.pop(source[0], None)
            writer.close()

    # --- sending ------------------------------------------------------------------------------
    # ``addr`` may come from the wire (Via, Contact): anything, checked by check_destination
    def send(self, msg: SIPMessage | bytes, addr: Any, transport: str = "udp") -> None:
        data = msg if isinstance(msg, bytes) else msg.to_bytes()
        self.send_raw(data, addr, transport)

    def send_raw(self, data: bytes, addr: Any, transport: str = "udp") -> None:
        """Send ``data``; never raises and never closes a listener. A destination from the wire
        that is not usable drops the message with one log line; a DNS name is resolved off the
        loop first (sipcore.resolver)."""
        self.stats["tx"] += 1
        try:
            host, port, is_ip = check_destination(addr)
        except BadDestination as exc:
            self._dropped(addr, str(exc))
            return
        if not is_ip:
            if not self.resolver.enabled:
                self._dropped(addr, "host names are not resolved (DNS_RESOLVE=0)")
                return
            known, address = self.resolver.cached(host)
            if not known:
                self._spawn(self._resolve_and_send(data, host, port, transport))
                return
            if address is None:
                self._dropped(addr, f"{host!r} does not resolve")
                return
            host = address
        self._send_to(data, (host, port), transport)

    def _dropped(self, addr, why: str) -> None:
        self.stats["bad_destination"] += 1
        log.info("not sending to %r: %s (message dropped)", addr, why)

    async def _resolve_and_send(self, data: bytes, name: str, port: int, transport: str) -> None:
        try:
            address = await self.resolver.resolve(name)
        except BadDestination as exc:
            self._dropped((name, port), str(exc))
            return
        if address is None:
            self._dropped((name, port), f"{name!r} does not resolve (or timed out)")
            return
        self._send_to(data, (address, port), transport)

    def _send_to(self, data: bytes, addr: tuple[str, int], transport: str) -> None:
        if transport == "tcp":
            writer = self._tcp_conns.get(addr)
            if writer is not None and not writer.is_closing():
                writer.write(data)
                return
            self._spawn(self._tcp_connect_send(data, addr))
            return
        if self._udp is None:
            log.info("udp transport closed; not sending to %s:%s", *addr)
            return
        try:
            self._udp.sendto(data, addr)
        except Exception as exc:   # noqa: BLE001 - belt and braces: a send must never raise
            log.warning("send to %s:%s failed: %s", *addr, exc)

    async def _tcp_connect_send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(addr[0], addr[1]), 5.0)
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("tcp connect to %s:%s failed: %s", *addr, exc)
            return
        writer.write(data)
        self._spawn(self._tcp_client(reader, writer, trusted=True))
