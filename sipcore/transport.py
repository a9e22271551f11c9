"""Asyncio SIP transports: UDP datagrams and TCP with Content-Length framing.

The one place where SIP touches sockets. Incoming bytes are parsed with the sans-IO parser and
handed to ``on_message(message, source, transport_name)``. Malformed input: a request whose start
line and headers could be read is answered 400 (505 for another SIP version) with a Warning;
anything else is dropped with one log line. Reads are bounded by ``max_size``.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from sipcore.errors import SIPParseError, error_response
from sipcore.message import SIPMessage, SIPResponse, parse_message

log = logging.getLogger(__name__)

OnMessage = Callable[[SIPMessage, tuple[str, int], str], None]
KEEPALIVE_PAYLOADS = (b"\r\n", b"\r\n\r\n", b"\n", b"\0\0\0\0")


def error_reply(data: bytes, exc: SIPParseError, host: str) -> SIPResponse | None:
    """The 400/505 to send for unparsable ``data``, or None when no response can be built."""
    return error_response(exc.partial, exc, warn_host=host)


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: "SIPTransport"):
        self.owner = owner

    def datagram_received(self, data: bytes, addr) -> None:
        self.owner._incoming(data, (addr[0], addr[1]), "udp", None)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


class SIPTransport:
    def __init__(self, on_message: OnMessage, max_size: int = 65535, bad_request_host: str = "-",
                 tcp_idle_timeout: float = 600.0):
        self.on_message = on_message
        self.max_size = max_size
        self.host = bad_request_host
        self.tcp_idle_timeout = tcp_idle_timeout
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.base_events.Server | None = None
        self._tcp_conns: dict[tuple[str, int], asyncio.StreamWriter] = {}
        self.stats = {"rx": 0, "tx": 0, "bad": 0, "oversize": 0}

    # --- listening ----------------------------------------------------------------------------
    async def listen_udp(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _UDPProtocol(self), local_addr=(host, port))

    async def listen_tcp(self, host: str, port: int) -> None:
        self._tcp_server = await asyncio.start_server(self._tcp_client, host, port, limit=self.max_size + 4096)

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp_server is not None:
            self._tcp_server.close()
            self._tcp_server = None
        for w in self._tcp_conns.values():
            w.close()
        self._tcp_conns.clear()

    # --- intake -------------------------------------------------------------------------------
    def _incoming(self, data: bytes, source: tuple[str, int], transport: str, writer) -> None:
        if data in KEEPALIVE_PAYLOADS or not data.strip(b"\r\n\0 "):
            if writer is not None and data == b"\r\n\r\n":
                writer.write(b"\r\n")     # RFC 5626 pong
            return
        self.stats["rx"] += 1
        if len(data) > self.max_size:
            self.stats["oversize"] += 1
            log.warning("dropping %d-byte message from %s:%s (limit %d)", len(data), *source, self.max_size)
            return
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
            return
        self.on_message(msg, source, transport)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = (peer[0], peer[1])
        self._tcp_conns[source] = writer
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.tcp_idle_timeout)
                except asyncio.LimitOverrunError:
                    log.warning("tcp %s:%s: header block over %d bytes, closing", *source, self.max_size)
                    return
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
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
                try:
                    body = await asyncio.wait_for(reader.readexactly(length), 30.0)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    log.info("tcp %s:%s: incomplete body, closing", *source)
                    return
                self._incoming(stripped + body, source, "tcp", writer)
        finally:
            self._tcp_conns.pop(source, None)
            writer.close()

    # --- sending ------------------------------------------------------------------------------
    def send(self, msg: SIPMessage | bytes, addr: tuple[str, int], transport: str = "udp") -> None:
        data = msg if isinstance(msg, bytes) else msg.to_bytes()
        self.send_raw(data, addr, transport)

    def send_raw(self, data: bytes, addr: tuple[str, int], transport: str = "udp") -> None:
        self.stats["tx"] += 1
        if transport == "tcp":
            writer = self._tcp_conns.get((addr[0], addr[1]))
            if writer is not None and not writer.is_closing():
                writer.write(data)
                return
            asyncio.get_running_loop().create_task(self._tcp_connect_send(data, addr))
            return
        if self._udp is None:
            log.debug("udp transport closed; not sending to %s:%s", *addr)
            return
        try:
            self._udp.sendto(data, addr)
        except OSError as exc:
            log.warning("send to %s:%s failed: %s", *addr, exc)

    async def _tcp_connect_send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(addr[0], addr[1]), 5.0)
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("tcp connect to %s:%s failed: %s", *addr, exc)
            return
        writer.write(data)
        asyncio.get_running_loop().create_task(self._tcp_client(reader, writer))
