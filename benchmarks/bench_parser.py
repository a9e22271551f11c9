"""Parse+serialise throughput of sipcore messages (one core, one process).

    .venv/bin/python benchmarks/bench_parser.py [--seconds 3]
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sipcore.message import parse_message  # noqa: E402

SDP = ("v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n"
       "m=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
       "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")
INVITE = ("INVITE sip:1002@sip.local SIP/2.0\r\n"
          "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK776asdhds;rport\r\n"
          "Max-Forwards: 70\r\nTo: <sip:1002@sip.local>\r\n"
          "From: \"Alice\" <sip:1001@sip.local>;tag=1928301774\r\n"
          "Call-ID: a84b4c76e66710@10.0.0.2\r\nCSeq: 314159 INVITE\r\n"
          "Contact: <sip:1001@10.0.0.2:5060;transport=udp;ob>\r\nUser-Agent: bench\r\n"
          "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\nContent-Type: application/sdp\r\n"
          f"Content-Length: {len(SDP)}\r\n\r\n{SDP}").encode()
OK200 = INVITE.replace(b"INVITE sip:1002@sip.local SIP/2.0", b"SIP/2.0 200 OK").replace(
    b"To: <sip:1002@sip.local>", b"To: <sip:1002@sip.local>;tag=xyz")
REGISTER = ("REGISTER sip:sip.local SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKr;rport\r\n"
            "Max-Forwards: 70\r\nTo: <sip:1001@sip.local>\r\nFrom: <sip:1001@sip.local>;tag=1\r\n"
            "Call-ID: r1\r\nCSeq: 2 REGISTER\r\nContact: <sip:1001@10.0.0.2:5060>\r\nExpires: 3600\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def variants(data: bytes, n: int = 2000) -> list[bytes]:
    """Distinct copies (branch, tags): the parser caches parsed Via/From/To values per string, so
    parsing one message over and over would measure the cache, not the parser."""
    return [data.replace(b"z9hG4bK", b"z9hG4bK%d" % i).replace(b"tag=", b"tag=%d" % i) for i in range(n)]


def rate(data: bytes, seconds: float) -> float:
    """Messages per CPU-second of this process (less sensitive to other load than wall time)."""
    msgs = variants(data)
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        for m in msgs:
            parse_message(m).to_bytes()
        n += len(msgs)
    return n / (time.process_time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    out = {name: round(rate(data, a.seconds)) for name, data in
           (("INVITE+SDP", INVITE), ("200 OK+SDP", OK200), ("REGISTER", REGISTER))}
    print(json.dumps({"parse+serialise per CPU-second": out, "load": os.getloadavg(),
                      "python": platform.python_version(),
                      "cpu": platform.processor() or platform.machine()}, indent=2))


if __name__ == "__main__":
    main()
