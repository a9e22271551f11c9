"""The legacy relay's cheaper per-call work (issue 13: plain sockets read by one reader, punch
packets from a template, sockets closed at once) keeps what is on the wire and the relay's
behaviour: the punch packets byte for byte, relaying and latching, a port pair that will not bind
skipped, a deleted call's ports free at once; on the standard loop and on uvloop."""
from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from legacy import rtp_relay
from legacy.rtp_relay import BIND_ATTEMPTS, LegacyRelay
from sipcore.errors import MediaBackendError
from sipcore.sdp import SessionDescription
from tests.stack import FreePorts

LOOPS = ["asyncio", "uvloop"]


def run(loop: str, main) -> None:
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


def sdp(port: int) -> SessionDescription:
    return SessionDescription.parse(f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                                    f"m=audio {port} RTP/AVP 0\r\n".encode())


def udp(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.setblocking(False)          # the relay shares the test's event loop: never block it
    return s


def pending(sock: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    out = []
    while True:
        try:
            out.append(sock.recvfrom(65536))
        except BlockingIOError:
            return out


async def collect(sock: socket.socket, n: int, timeout: float = 2.0) -> list[tuple[bytes, tuple[str, int]]]:
    out: list = []
    for _ in range(int(timeout / 0.01)):
        out += pending(sock)
        if len(out) >= n:
            break
        await asyncio.sleep(0.01)
    return out


def open_fds() -> set[tuple[int, str]]:
    """(descriptor, what it is: socket:[inode], anon_inode:[eventpoll] ...) of this process."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            out.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except OSError:             # the directory's own descriptor, gone by now
            pass
    return out


def bindable(port: int) -> bool:
    try:
        udp(port).close()
        return True
    except OSError:
        return False


class ScriptedRandom:
    """Stands in for the relay's ``random``: hands out the given (bits, value) pairs in order."""

    def __init__(self, *values: tuple[int, int]):
        self.values = list(values)

    def getrandbits(self, k: int) -> int:
        bits, value = self.values.pop(0)
        assert bits == k
        return value


def original_punch(ssrc: int, seq0: int, ts0: int, count: int = 20) -> list[bytes]:
    """What the original relay sent, written as it wrote it."""
    return [struct.pack("!BBHII", 0x80, 0, (seq0 + n) & 0xFFFF, (ts0 + 160 * n) & 0xFFFFFFFF, ssrc) + b"\xff" * 160
            for n in range(count)]


@pytest.mark.parametrize("loop", LOOPS)
def test_punch_packets_are_the_originals_byte_for_byte(loop, monkeypatch):
    ports = FreePorts()
    # A leg first, then B; sequence numbers and timestamps that wrap within the burst
    monkeypatch.setattr(rtp_relay, "random", ScriptedRandom((32, 0xDEADBEEF), (16, 0xFFF5), (32, 0xFFFFF000),
                                                            (32, 0x01020304), (16, 7), (32, 1234)))

    async def main():
        caller, callee = udp(ports.rtp_ua[0]), udp(ports.rtp_ua[1])
        relay = LegacyRelay("127.0.0.1", "127.0.0.1", ports.relay_min, ports.relay_max)
        await relay.start()
        offer = await relay.offer("c1", "ft", None, sdp(ports.rtp_ua[0]), ("127.0.0.1", 5060))
        assert pending(caller) == pending(callee) == []          # the offer sends nothing
        answer = await relay.answer("c1", "ft", "tt", sdp(ports.rtp_ua[1]), ("127.0.0.1", 5060))
        a_port, b_port = answer.media[0].port, offer.media[0].port
        got_a, got_b = await collect(caller, 20), await collect(callee, 20)
        assert got_a == [(p, ("127.0.0.1", a_port)) for p in original_punch(0xDEADBEEF, 0xFFF5, 0xFFFFF000)]
        assert got_b == [(p, ("127.0.0.1", b_port)) for p in original_punch(0x01020304, 7, 1234)]
        await asyncio.sleep(0.05)
        assert pending(caller) == pending(callee) == []
        [s] = relay.sessions()
        assert (s["a_tx"], s["b_tx"], s["a_rx"], s["b_rx"]) == (0, 0, 0, 0)    # punches are not counted
        await relay.stop()
        caller.close()
        callee.close()
    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_relays_latches_forwards_rtcp_and_counts_as_before(loop, monkeypatch):
    ports = FreePorts()
    monkeypatch.setattr(rtp_relay, "TURN_BUDGET", 7)    # a burst takes several turns of the loop

    async def main():
        caller, callee = udp(ports.rtp_ua[0]), udp(ports.rtp_ua[1])
        callee_rtcp = udp(ports.rtp_ua[1] + 1)
        relay = LegacyRelay("127.0.0.1", "127.0.0.1", ports.relay_min, ports.relay_max, punch_packets=0)
        await relay.start()
        offer = await relay.offer("c1", "ft", None, sdp(ports.rtp_ua[0]), ("127.0.0.1", 5060))
        answer = await relay.answer("c1", "ft", "tt", sdp(ports.rtp_ua[1]), ("127.0.0.1", 5060))
        to_a, to_b = ("127.0.0.1", answer.media[0].port), ("127.0.0.1", offer.media[0].port)
        moved = udp(ports.spare_rtp[0])                    # the caller sends from another port
        sent = [bytes([0x80, 0]) + n.to_bytes(2, "big") + bytes(8) + bytes([n]) * 160 for n in range(60)]
        for p in sent:
            moved.sendto(p, to_a)
        got = await collect(callee, 60)
        assert [d for d, _ in got] == sent and {a for _, a in got} == {to_b}
        callee.sendto(b"\x80\x00" + bytes(170), to_b)
        assert await collect(moved, 1) == [(b"\x80\x00" + bytes(170), to_a)]      # latched
        moved.sendto(b"", to_a)                            # an empty datagram is counted, not sent
        moved.sendto(b"\x80\xc8" + bytes(26), (to_a[0], to_a[1] + 1))    # RTCP: to the SDP port + 1
        assert await collect(callee_rtcp, 1) == [(b"\x80\xc8" + bytes(26), (to_b[0], to_b[1] + 1))]
        assert pending(callee) == []
        [s] = relay.sessions()
        assert s == {"call_id": "c1", "stream": 0, "a_port": to_a[1], "a_target": f"127.0.0.1:{ports.spare_rtp[0]}",
                     "a_latched": True, "b_port": to_b[1], "b_target": f"127.0.0.1:{ports.rtp_ua[1]}",
                     "b_latched": True, "a_rx": 61, "a_tx": 1, "b_rx": 1, "b_tx": 61}
        await relay.stop()
        for sock in (caller, callee, callee_rtcp, moved):
            sock.close()
    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_port_pair_that_will_not_bind_is_skipped(loop):
    ports = FreePorts()
    low = ports.relay_min

    async def main():
        held = udp(low + 1)                                # another program holds the first pair's RTCP port
        relay = LegacyRelay("127.0.0.1", "127.0.0.1", low, ports.relay_max)
        await relay.offer("c1", "ft", None, sdp(ports.rtp_ua[0]), ("127.0.0.1", 5060))
        [s] = relay.sessions()
        assert (s["a_port"], s["b_port"]) == (low + 2, low + 4)
        assert bindable(low) and relay.pool.in_use == 2    # the half-opened pair is closed and back in the pool
        held.close()
        await relay.delete("c1")
        await relay.offer("c2", "ft", None, sdp(ports.rtp_ua[0]), ("127.0.0.1", 5060))
        [s] = relay.sessions()
        assert (s["a_port"], s["b_port"]) == (low, low + 2)
        await relay.stop()
    run(loop, main)


def test_no_bindable_pair_in_bind_attempts_is_a_488_with_nothing_left_open():
    ports = FreePorts()
    low = ports.relay_min
    assert (ports.relay_max - low + 1) // 2 > BIND_ATTEMPTS

    async def main():
        held = [udp(low + 2 * i + 1) for i in range(BIND_ATTEMPTS)]
        relay = LegacyRelay("127.0.0.1", "127.0.0.1", low, ports.relay_max)
        last = low + 2 * (BIND_ATTEMPTS - 1)
        with pytest.raises(MediaBackendError) as exc:
            await relay.offer("c1", "ft", None, sdp(ports.rtp_ua[0]), ("127.0.0.1", 5060))
        assert str(exc.value) == f"legacy relay cannot bind any of {BIND_ATTEMPTS} port pairs (last {last}/{last + 1})"
        assert relay.pool.in_use == 0 and relay.sessions() == []
        assert all(bindable(low + 2 * i) for i in range(BIND_ATTEMPTS))
        for sock in held:
            sock.close()
        await relay.stop()
    asyncio.run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_deleted_calls_ports_bind_at_once_and_nothing_leaks(loop):
    ports = FreePorts()
    low = ports.relay_min

    async def main():
        fds = open_fds()
        relay = LegacyRelay("127.0.0.1", "127.0.0.1", low, ports.relay_max)
        await relay.start()
        for i in range(3):
            await relay.offer(f"c{i}", "ft", None, sdp(ports.rtp_ua[0]), ("127.0.0.1", 5060))
            await relay.answer(f"c{i}", "ft", "tt", sdp(ports.rtp_ua[1]), ("127.0.0.1", 5060))
            [s] = relay.sessions()
            assert (s["a_port"], s["b_port"]) == (low, low + 2)       # the lowest pairs, every call
            deleting = relay.delete(f"c{i}")
            with pytest.raises(StopIteration):                        # no loop turn needed ...
                deleting.send(None)
            assert all(bindable(p) for p in (low, low + 1, low + 2, low + 3))    # ... the ports are free
            assert relay.pool.in_use == 0 and relay.sessions() == []
        await relay.stop()
        assert open_fds() - fds == set()      # (a loop of an earlier test may close its own meanwhile)
    run(loop, main)


def test_the_standard_loop_watches_one_descriptor_for_all_calls():
    """asyncio's add_reader/remove_reader per socket were most of a call's cost in the relay."""
    ports = FreePorts()

    async def main():
        loop = asyncio.get_running_loop()
        calls = {"add_reader": 0, "remove_reader": 0}
        for name in calls:
            def counted(*args, _name=name, _real=getattr(loop, name)):
                calls[_name] += 1
                return _real(*args)
            setattr(loop, name, counted)
        relay = LegacyRelay("127.0.0.1", "127.0.0.1", ports.relay_min, ports.relay_max)
        for i in range(5):
            await relay.offer(f"c{i}", "ft", None, sdp(ports.rtp_ua[0]), ("127.0.0.1", 5060))
            await relay.answer(f"c{i}", "ft", "tt", sdp(ports.rtp_ua[1]), ("127.0.0.1", 5060))
        for i in range(5):
            await relay.delete(f"c{i}")
        assert calls == {"add_reader": 1, "remove_reader": 0}
        await relay.stop()
        assert calls == {"add_reader": 1, "remove_reader": 1}
    asyncio.run(main())
