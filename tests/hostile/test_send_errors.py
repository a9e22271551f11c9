"""Class 1: no send error closes a listener; a listener lost anyway is reopened or the server
exits non-zero. In-process SIPTransport on real loopback sockets, plus every stage as a real
process hit with the datagrams that made it deaf."""
from __future__ import annotations

import asyncio
import socket

import pytest

from sipcore.resolver import BadDestination, check_destination
from sipcore.transport import SIPTransport
from tests.hostile.target import Target

OPTIONS = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n"
           b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")

BAD_DESTINATIONS = [
    ("127.0.0.1", 99999), ("127.0.0.1", 65536), ("127.0.0.1", -1), ("127.0.0.1", 0), ("127.0.0.1", "5060"),
    ("999.1.1.1", 5060), ("a b", 5060), ("", 5060), ("host\x00name", 5060), ("\udcff\udcfe", 5060),
    (None, 5060), ("127.0.0.1",), "not-a-tuple", ("x" * 300, 5060),
]


@pytest.mark.parametrize("addr", BAD_DESTINATIONS, ids=repr)
def test_check_destination_refuses(addr):
    with pytest.raises(BadDestination):
        check_destination(addr)


def test_check_destination_accepts_ips_and_names():
    assert check_destination(("127.0.0.1", 5060)) == ("127.0.0.1", 5060, True)
    assert check_destination(("[::1]", 5060)) == ("::1", 5060, True)
    assert check_destination(("Sip.Example.COM.", 5061)) == ("sip.example.com", 5061, False)


async def _udp_pair():
    got: asyncio.Queue = asyncio.Queue()
    t = SIPTransport(lambda msg, src, tr: got.put_nowait(msg), resolver=None)
    t.resolver.enabled = False
    await t.listen_udp("127.0.0.1", 0)
    port = t._udp.get_extra_info("sockname")[1]
    return t, port, got


def _poke(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(OPTIONS, ("127.0.0.1", port))
    s.close()


def test_no_send_error_closes_the_udp_listener():
    async def main():
        t, port, got = await _udp_pair()
        listener = t._udp
        payloads = [b"x" * 70000, b"small"]           # EMSGSIZE and a normal one
        # refused before any socket sees them; then OSErrors from sendto itself: EAFNOSUPPORT-ish
        # gaierror (IPv6 on an IPv4 socket), EACCES (broadcast), EMSGSIZE, ECONNREFUSED (ICMP)
        for addr in BAD_DESTINATIONS:
            for data in payloads:
                t.send_raw(data, addr)
                t.send_raw(data, addr, "tcp")
        for addr in [("::1", 9), ("255.255.255.255", 9), ("127.0.0.1", 9)]:
            for data in payloads:
                t.send_raw(data, addr)
        await asyncio.sleep(0.2)
        assert t._udp is listener and not listener.is_closing()
        _poke(port)
        msg = await asyncio.wait_for(got.get(), 2)
        assert msg.method == "OPTIONS"
        assert t.stats["bad_destination"] >= 2 * len(BAD_DESTINATIONS)
        t.close()
    asyncio.run(main())


def test_lost_udp_listener_is_reopened():
    async def main():
        t, port, got = await _udp_pair()
        t._udp.abort()                                  # whatever closed it: it must come back
        for _ in range(50):
            await asyncio.sleep(0.02)
            if t._udp is not None:
                break
        assert t.stats["udp_reopened"] == 1 and t._udp.get_extra_info("sockname")[1] == port
        _poke(port)
        assert (await asyncio.wait_for(got.get(), 2)).method == "OPTIONS"
        t.close()
    asyncio.run(main())


def test_listener_that_cannot_be_reopened_is_fatal(monkeypatch):
    async def main():
        fatal: list[str] = []
        t, port, got = await _udp_pair()
        t.on_fatal = fatal.append

        monkeypatch.setattr(asyncio, "sleep", _fast_sleep)
        t._udp.abort()
        # another process takes the port before the listener comes back: every reopen fails
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        squatter.bind(("127.0.0.1", port))
        for _ in range(100):
            await _REAL_SLEEP(0.01)
            if fatal:
                break
        squatter.close()
        assert fatal and "cannot be reopened" in fatal[0]
        t.close()
    asyncio.run(main())


_REAL_SLEEP = asyncio.sleep


async def _fast_sleep(delay, *a, **kw):
    await _REAL_SLEEP(0)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_stage_stays_listening_after_poison_datagrams(stage, tmp_path):
    """The datagrams of class 1 against a real server: each used to close its SIP socket."""
    with Target(stage, str(tmp_path)) as srv:
        assert srv.options()[0] == 200
        p = srv.ports.sip
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        hostile_vias = ["127.0.0.1:5;rport=99999", "127.0.0.1:5;received=999.1.1.1", "127.0.0.1:5;rport=0",
                        "127.0.0.1:5;received=::1", "127.0.0.1:5;received=a%20b", "blackhole.invalid:5060",
                        "127.0.0.1:5;received=255.255.255.255", "127.0.0.1:5;rport=-3"]
        for i, via in enumerate(hostile_vias):
            stray = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch=z9hG4bKnope{i}\r\n"
                     f"Via: SIP/2.0/UDP {via};branch=z9hG4bKa{i}\r\nFrom: <sip:a@x>;tag=1\r\n"
                     f"To: <sip:b@x>;tag=2\r\nCall-ID: stray{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
            s.sendto(stray.encode(), ("127.0.0.1", p))
            # and the same Via on a request (answered to the Via in stage 2, force_rport)
            req = (f"OPTIONS sip:127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKq{i}\r\n"
                   f"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: req{i}\r\nCSeq: 1 OPTIONS\r\n"
                   f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
            s.sendto(req.encode(), ("127.0.0.1", p))
        s.close()
        srv.check("poison Via values")
        srv.wait_log("not sending to")
    assert srv.proc.returncode == 0
