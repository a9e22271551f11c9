"""The RTPProxy client's retransmissions and timeouts, against a real UDP peer on loopback that
answers some commands (late, out of order, only a repeated copy) and never others: every command
ends in time with its own reply or TimeoutError, a lost datagram costs one retransmission
interval (the same cookie: relays answer a repeated cookie from their reply cache), and no timer
is left behind."""
import asyncio
import collections
import contextlib
import socket
import time

from refactored import rtpproxy_protocol as proto
from refactored.rtpproxy_client import RETRANSMIT_FIRST, RTPProxyClient


class Peer:
    """A relay stand-in. ``answer MS``: answered after MS ms; ``second``: only its second copy is
    answered (the first is "lost"); anything else is never answered. Counts copies per cookie."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.copies: collections.Counter = collections.Counter()

    async def serve(self):
        loop = asyncio.get_running_loop()
        while True:
            data, addr = await loop.sock_recvfrom(self.sock, 2048)
            cookie, _, text = data.decode().partition(" ")
            self.copies[cookie] += 1
            if text.startswith("answer "):
                delay = int(text.split()[1]) / 1000
                loop.call_later(delay, self.sock.sendto, f"{cookie} 0".encode(), addr)
            elif text == "second" and self.copies[cookie] == 2:
                self.sock.sendto(f"{cookie} 0".encode(), addr)


@contextlib.asynccontextmanager
async def peer_and_client(timeout: float, retries: int):
    """A Peer serving on the running loop and a client of it; both closed afterwards."""
    peer = Peer()
    server = asyncio.get_running_loop().create_task(peer.serve())
    client = RTPProxyClient(f"udp:127.0.0.1:{peer.port}", timeout=timeout, retries=retries)
    try:
        yield peer, client
    finally:
        client.close()
        server.cancel()
        peer.sock.close()


def test_each_command_gets_its_reply_or_its_own_timeout():
    async def run():
        async with peer_and_client(1.0, 0) as (peer, client):

            async def one(text: str, budget: float):
                t0 = time.monotonic()
                try:
                    reply = await client._datagram_command(proto.Command(text, "V"), budget)
                except asyncio.TimeoutError:
                    reply = "timeout"
                return reply, time.monotonic() - t0

            await client._connect()
            # a long budget first, then shorter ones: each must still end at its own deadline
            results = await asyncio.gather(one("silent", 1.0), one("answer 300", 1.0), one("silent", 0.15),
                                           one("answer 50", 0.5), one("silent", 0.4), one("answer 900", 0.6),
                                           one("second", 1.0))
            (r1, t1), (r2, t2), (r3, t3), (r4, t4), (r5, t5), (r6, t6), (r7, t7) = results
            assert (r1, r2, r3, r4, r5, r6, r7) == ("timeout", "0", "timeout", "0", "timeout", "timeout", "0")
            # lower bounds are exact (a timer never fires early), upper ones leave room for a loaded machine
            assert 0.95 <= t1 < 1.6 and 0.29 <= t2 < 0.9 and 0.14 <= t3 < 0.7 and t4 < 0.6
            assert 0.38 <= t5 < 0.9 and 0.58 <= t6 < 1.1
            assert RETRANSMIT_FIRST - 0.01 <= t7 < RETRANSMIT_FIRST + 0.4     # the lost first copy cost one interval
            # copies sent: a silent command over 1 s at 0, 0.2 and 0.6 s; one over 0.15 s once
            by_text = sorted(peer.copies.values())
            assert max(by_text) == 3 and peer.copies and min(by_text) == 1
            # nothing waits any more: the timer went with the last deadline
            await asyncio.sleep(0.05)
            assert client._expiry is None and not client._deadlines and not client._waiting
            # and it comes back for the next command
            assert (await one("answer 10", 1.0))[0] == "0"
            assert (await one("silent", 0.1))[0] == "timeout"
    asyncio.run(run())


def test_a_silent_relay_is_unavailable_after_the_whole_budget():
    async def run():
        async with peer_and_client(0.3, 1) as (peer, client):
            t0 = time.monotonic()
            try:
                await client.command(proto.Command("silent", "V"))
                raise AssertionError("a silent relay answered")
            except Exception as exc:      # noqa: BLE001 - the type is what is checked
                assert type(exc).__name__ == "RTPProxyUnavailable" and "TimeoutError" in str(exc)
            assert 0.58 <= time.monotonic() - t0 < 1.2          # timeout * (retries + 1)
            assert list(peer.copies.values()) == [2]            # at 0 and 0.2 s, one cookie; given up at 0.6
    asyncio.run(run())


def test_concurrent_commands_share_one_socket_and_leave_no_timers_behind():
    async def run():
        async with peer_and_client(0.3, 0) as (peer, client):
            # 100 at once: the first ones open ONE socket between them, all are answered
            replies = await asyncio.gather(*(client.command(proto.Command("answer 1", "V")) for _ in range(100)))
            assert replies == ["0"] * 100
            assert sum(peer.copies.values()) == 100            # answered at once: nothing sent twice
            loop = asyncio.get_running_loop()
            scheduled = len(loop._scheduled)       # noqa: SLF001 - the loop's timer heap, read only
            assert scheduled <= 2, scheduled       # one retransmission timer at most (plus the peer's last reply)
            await asyncio.sleep(0.4)               # it fires once, finds everything answered
            assert client._expiry is None and not client._deadlines
    asyncio.run(run())
