"""Class 5: bytes that are not UTF-8 in From/To/R-URI/Call-ID. Every stage: OPTIONS answered 200,
a real call (harness UAs, RTP both ways) set up and ended with BYE relayed, the CDR row written
with the bytes escaped, the media session freed, no traceback."""
from __future__ import annotations

import socket
import time

import pytest

from tests.hostile.target import Target
from tests.stack import agent, sent

BAD = "\udcff\udcfe\udcc3("        # bytes ff fe c3 28 on the wire (surrogateescape): not UTF-8


def _options_with_bad_bytes(srv: Target) -> bytes:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(3)
    p, me = srv.ports.sip, s.getsockname()[1]
    msg = (f"OPTIONS sip:127.0.0.1:{p};x={BAD} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKu8\r\n"
           f"From: \"{BAD}\" <sip:{BAD}@127.0.0.1>;tag=1\r\nTo: <sip:{BAD}@127.0.0.1>\r\n"
           f"Call-ID: u8-{BAD}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    s.sendto(msg.encode("utf-8", "surrogateescape"), ("127.0.0.1", p))
    try:
        return s.recv(65535)
    finally:
        s.close()


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_non_utf8_headers_in_options_and_a_call(stage, tmp_path):
    with Target(stage, str(tmp_path)) as srv:
        reply = _options_with_bad_bytes(srv)
        assert reply.startswith(b"SIP/2.0 200 ") and b"u8-\xff\xfe\xc3(" in reply   # Call-ID echoed byte for byte
        alice = agent("alice", "1001", srv, 0, display=BAD)
        bob = agent("bob", "1002", srv, 1, display=BAD)
        try:
            assert alice.request("register")["code"] == 200
            assert bob.request("register")["code"] == 200
            call = alice.request("call", target=f"sip:1002@sip.local;x={BAD}")
            assert call["code"] == 200
            time.sleep(1.0)
            assert srv.mml("DSP SRVSTAT")["retcode"] == 0
            assert alice.request("hangup")["code"] == 200          # the BYE was relayed and answered
            time.sleep(0.3)
            assert sent(alice.request("stats")) > 20 and sent(bob.request("stats")) > 20
        finally:
            alice.close()
            bob.close()
        stat = srv.mml("DSP SRVSTAT")
        assert "'media_sessions', 0" in str(stat) or _media_sessions(stat) == 0, stat   # session freed
        srv.check("non-UTF-8 call")
        rows = srv.cdr_rows()
        [row] = [r for r in rows if r["record_type"] == "CALL"]
        assert row["call_state"] == "ENDED" and row["caller_number"] == "1001" and row["callee_number"] == "1002"
        assert "\\xff\\xfe" in row["caller_uri"] + row["callee_uri"]       # escaped, not lost
        assert any(r["record_type"] == "OPTIONS" and "\\xff" in r["call_id"] for r in rows)


def _media_sessions(stat: dict) -> int | None:
    text = str(stat.get("output", ""))
    for line in text.splitlines():
        if "media_sessions" in line:
            digits = "".join(ch for ch in line.split("media_sessions", 1)[1] if ch.isdigit())
            return int(digits) if digits else None
    return None
