"""Media backends on loopback with real parts: the RTPProxy protocol codec, the client against a
real RTPProxy (rtp.io), weighted failover between two relays, and the legacy Python relay."""
import asyncio
import re
import socket
import subprocess

import pytest
from hypothesis import given, strategies as st

from legacy.port_pool import PortPool
from legacy.rtp_relay import LegacyRelay
from refactored import rtpproxy_protocol as proto
from refactored.rtpproxy_client import RTPProxyPool, RTPProxyUnavailable
from refactored.rtpproxy_launcher import LocalRTPProxy
from refactored.rtpproxy_media import RTPProxyBackend
from sipcore.errors import MediaBackendError
from sipcore.sdp import SessionDescription
from harness.rtp_stream import free_udp_port as free_port
from tests.stack import worker_index


def sdp(port: int, extra: str = "") -> SessionDescription:
    return SessionDescription.parse(f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                                    f"m=audio {port} RTP/AVP 0\r\n{extra}".encode())


def test_commands_and_replies():
    assert proto.offer("abc@h", "10.0.0.1", 4000, "ft").text == "U abc@h 10.0.0.1 4000 ft"
    assert proto.answer("abc", "10.0.0.1", 4002, "ft", "tt", media_index=2).text == "L abc 10.0.0.1 4002 ft;2 tt;2"
    assert proto.frame(proto.version(), "c1") == b"c1 V"
    assert proto.frame(proto.version(), None) == b"V\n"
    assert proto.parse_port_reply("30038 127.0.0.1").port == 30038
    with pytest.raises(proto.RTPProxyError) as exc:
        proto.parse_port_reply("E50")
    assert exc.value.code == 50 and "not found" in str(exc.value)
    with pytest.raises(ValueError):
        proto.offer("c", "not-an-ip", 4000, "t")


@given(st.text(min_size=1, max_size=40))
def test_hostile_call_ids_never_split_a_command(call_id):
    cmd = proto.offer(call_id, "127.0.0.1", 4000, call_id)
    tokens = cmd.text.split(" ")
    assert len(tokens) == 5 and "\n" not in cmd.text and "\0" not in cmd.text
    assert proto.decode_token(tokens[1]) == call_id


@pytest.fixture
def relay_range():
    base = 28000 + (worker_index() % 4) * 1000      # below the ephemeral range, beside tests.stack.Ports
    return base, base + 900


@pytest.fixture
def rtpproxy(relay_range, tmp_path):
    spec = f"udp:127.0.0.1:{free_port()}"
    local = LocalRTPProxy("127.0.0.1", spec, *relay_range, workdir=str(tmp_path))
    local.start()
    yield spec, local
    local.stop()


async def wait_up(pool):
    for _ in range(50):
        if await pool.probe(pool.nodes[0]):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("rtpproxy did not answer")


async def exchange(a_port, b_port, to_b, to_a, n=20):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", a_port))
    b.bind(("127.0.0.1", b_port))
    a.setblocking(False)
    b.setblocking(False)
    pkt = bytes([0x80, 0]) + b"\0" * 10 + b"x" * 160
    for _ in range(n):
        a.sendto(pkt, to_b)
        b.sendto(pkt, to_a)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    counts = []
    for s in (a, b):
        c = 0
        while True:
            try:
                s.recv(2000)
                c += 1
            except BlockingIOError:
                break
        s.close()
        counts.append(c)
    return counts


def test_rtpproxy_backend_offer_answer_relays_both_ways_and_deletes(rtpproxy):
    spec, _ = rtpproxy

    async def run():
        pool = RTPProxyPool([(spec, 1)])
        await wait_up(pool)
        backend = RTPProxyBackend(pool, "127.0.0.1")
        pa, pb = free_port(), free_port()
        offer = await backend.offer("call 1\r\nD x", "ftag", None, sdp(pa, "a=rtcp:9999 IN IP4 10.9.9.9\r\n"), ("127.0.0.1", 1))
        answer = await backend.answer("call 1\r\nD x", "ftag", "ttag", sdp(pb), ("127.0.0.1", 1))
        assert offer.media[0].port != pa and offer.media[0].rtcp[0] == offer.media[0].port + 1
        got_a, got_b = await exchange(pa, pb, ("127.0.0.1", offer.media[0].port), ("127.0.0.1", answer.media[0].port))
        assert got_a >= 18 and got_b >= 18
        stats = proto.parse_query_reply(await pool.command("call 1\r\nD x", proto.query("call 1\r\nD x", "ftag", "ttag", 1)))
        assert stats["packets_relayed"] >= 36
        await backend.delete("call 1\r\nD x")
        with pytest.raises(proto.RTPProxyError):
            proto.parse_query_reply(await pool.command("x", proto.query("call 1\r\nD x", "ftag", "ttag", 1)))
        pool.close()
    asyncio.run(run())


def test_pool_fails_over_and_reprobes(rtpproxy, relay_range, tmp_path):
    spec_a, local_a = rtpproxy
    spec_b = f"udp:127.0.0.1:{free_port()}"
    local_b = LocalRTPProxy("127.0.0.1", spec_b, relay_range[0] + 450, relay_range[1], workdir=str(tmp_path))
    local_b.start()

    async def run():
        pool = RTPProxyPool([(spec_a, 1), (spec_b, 1)], timeout=0.3, reprobe=0.5)
        for n in pool.nodes:
            for _ in range(50):
                if await pool.probe(n):
                    break
                await asyncio.sleep(0.1)
        await asyncio.to_thread(local_a.stop)     # stopping a process waits: not on the loop
        for i in range(6):                       # every call lands on the surviving node
            reply = proto.parse_port_reply(await pool.command(f"c{i}", proto.offer(f"c{i}", "127.0.0.1", 4000, "t")))
            assert reply.port >= relay_range[0] + 450
        assert not pool.nodes[0].up
        await asyncio.to_thread(local_b.stop)
        with pytest.raises(RTPProxyUnavailable) as exc:
            await pool.command("cx", proto.offer("cx", "127.0.0.1", 4000, "t"))
        assert "ims-rtpproxy -l" in str(exc.value)          # says how to start one
        pool.close()
    try:
        asyncio.run(run())
    finally:
        local_b.stop()


def free_port_pair() -> int:
    """A UDP port whose next port is free too (RTCP goes to RTP + 1): both are bound to check."""
    for _ in range(50):
        first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port < 65535:
                try:
                    second.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue
        finally:
            first.close()
            second.close()
    raise RuntimeError("no two free consecutive UDP ports")


def test_legacy_relay_latches_once_and_forwards_rtcp(relay_range):
    async def run():
        relay = LegacyRelay("127.0.0.1", "127.0.0.1", *relay_range, inactivity_timeout=1.0)
        await relay.start()
        pa, pb, pa_other = free_port(), free_port_pair(), free_port()
        offer = await relay.offer("c1", "ft", None, sdp(pa), ("127.0.0.1", 1))
        answer = await relay.answer("c1", "ft", "tt", sdp(pb), ("127.0.0.1", 1))
        to_b, to_a = ("127.0.0.1", offer.media[0].port), ("127.0.0.1", answer.media[0].port)
        # the caller sends from another port: the relay latches there (one shot)
        got_a, got_b = await exchange(pa_other, pb, to_a, to_b)
        assert got_b >= 18 and got_a >= 18            # the latched source gets B's audio
        [s] = relay.sessions()
        assert s["a_latched"] and s["a_target"].endswith(str(pa_other))
        # RTCP: to target port+1, not latched
        rc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rc.bind(("127.0.0.1", pb + 1))
        rc.setblocking(False)                 # the relay shares this event loop: never block it
        snd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        snd.sendto(b"\x80\xc8" + b"\0" * 26, (to_a[0], to_a[1] + 1))     # arrives on the A leg's RTCP port
        await asyncio.sleep(0.3)
        assert rc.recvfrom(100)[0].startswith(b"\x80\xc8")
        rc.close()
        snd.close()
        await asyncio.sleep(3.5)                      # inactivity timeout releases the ports
        assert relay.sessions() == [] and relay.pool.in_use == 0
        await relay.stop()
    asyncio.run(run())


def test_port_pool_exhaustion_is_a_clear_error():
    pool = PortPool(30000, 30004)
    assert [pool.allocate(), pool.allocate()] == [30000, 30002]
    with pytest.raises(RuntimeError, match="no free RTP ports"):
        pool.allocate()

    async def run():
        relay = LegacyRelay("127.0.0.1", "127.0.0.1", 45990, 45993)      # room for one call
        await relay.offer("c1", "f", None, sdp(4000), ("127.0.0.1", 1))
        with pytest.raises(MediaBackendError, match="no free RTP ports"):
            await relay.offer("c2", "f", None, sdp(4002), ("127.0.0.1", 1))
        await relay.stop()
    asyncio.run(run())


def test_missing_rtpproxy_says_how_to_start_one():
    async def run():
        pool = RTPProxyPool([(f"udp:127.0.0.1:{free_port()}", 1)], timeout=0.2)
        with pytest.raises(RTPProxyUnavailable) as exc:
            await pool.start()
        assert "ims-rtpproxy -l <SERVER_IP> -s udp:127.0.0.1:7722" in str(exc.value)
    asyncio.run(run())


async def call_through(spec: str, call_id: str):
    """One call's offer/answer through the relay at ``spec``, 20 packets each way, deleted after:
    (offer SDP, packets A got, packets B got)."""
    pool = RTPProxyPool([(spec, 1)])
    await wait_up(pool)
    backend = RTPProxyBackend(pool, "127.0.0.1")
    pa, pb = free_port(), free_port()
    offer = await backend.offer(call_id, "ftag", None, sdp(pa), ("127.0.0.1", 1))
    answer = await backend.answer(call_id, "ftag", "ttag", sdp(pb), ("127.0.0.1", 1))
    relay_ports = ("127.0.0.1", offer.media[0].port), ("127.0.0.1", answer.media[0].port)
    got_a, got_b = await exchange(pa, pb, *relay_ports)
    await backend.delete(call_id)
    # a deleted call is relayed no more (rtpengine's default delete delay kept it going for 30 s)
    assert await exchange(pa, pb, *relay_ports, n=5) == [0, 0]
    pool.close()
    return offer, got_a, got_b


def _threads(pid: int) -> set[str]:
    import os
    names = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as fh:
            names.add(fh.read().strip())
    return names


def test_embedded_rtpproxy_runs_without_rtp_io_default_modules(rtpproxy, tmp_path):
    """rtp-io loads acct_csv/catch_dtmf/dtls_gw/ice_lite by default: per-packet work and an
    accounting queue that overflowed under load. The launcher starts it without them."""
    spec, local = rtpproxy
    _, got_a, got_b = asyncio.run(call_through(spec, "m1"))
    assert got_a >= 18 and got_b >= 18
    threads = _threads(local.relay_pid())
    assert "rtpp_proc: RTP" in threads                      # it is the embedded rtpproxy
    assert not threads & {"acct_csv", "catch_dtmf", "dtls_gw", "ice_lite"}, threads
    assert not (tmp_path / "rtpproxy_acct.csv").exists()
    # its control socket holds thousands of commands, not the kernel default's ~270 (ss: rb<bytes>)
    port = spec.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-u", "-a", "-n", "-m", f"sport = :{port}"], capture_output=True, text=True).stdout
    rb = int(re.search(r"\brb(\d+)", out).group(1))
    assert rb >= 4 << 20, out


def test_rtpengine_engine_answers_the_rtpproxy_protocol_and_relays(relay_range, tmp_path):
    """`ims-rtpproxy --engine rtpengine` runs Debian's rtpengine behind the same client; two of them
    run side by side (Debian's config file would give both the same fixed NG/CLI ports)."""
    half = (relay_range[1] - relay_range[0]) // 2
    relays = []
    for i, (lo, hi) in enumerate([(relay_range[0], relay_range[0] + half - 1), (relay_range[0] + half, relay_range[1])]):
        spec = f"udp:127.0.0.1:{free_port()}"
        (tmp_path / str(i)).mkdir()
        relays.append((spec, lo, hi, LocalRTPProxy("127.0.0.1", spec, lo, hi, workdir=str(tmp_path / str(i)),
                                                    engine="rtpengine")))
    for *_, local in relays:
        local.start()
    try:
        for i, (spec, lo, hi, local) in enumerate(relays):
            offer, got_a, got_b = asyncio.run(call_through(spec, f"e{i}"))
            assert lo <= offer.media[0].port <= hi
            with open(f"/proc/{local.relay_pid()}/comm") as fh:
                assert fh.read().strip() == "rtpengine"
            assert local.alive()
            assert got_a >= 18 and got_b >= 18
    finally:
        for *_, local in relays:
            local.stop()
