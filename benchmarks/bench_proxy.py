"""Complete call flows per second through the sipcore proxy, in one process, without sockets.

Each call is INVITE/100/180/200/ACK/BYE/200 between two registered users, every message parsed
from bytes as the transport would hand it over, through the proxy with its transaction layer, the
CDR rows written to real files (a temporary directory; ``--no-cdr`` to leave them out) and a
pass-through media backend. This isolates the signalling path's CPU cost from SIPp and the
kernel (``harness bench`` measures the whole thing over UDP). The output says what is left out.

    .venv/bin/python benchmarks/bench_proxy.py [--calls 3000] [--repeat 3] [--no-cdr] [--stage 1|2]

``--stage 2`` adds stage 2's NAT helper (nat_uac_test on every INVITE/response, force_rport).
"""
import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sipcore.call_records import CDREvents  # noqa: E402
from sipcore.cdr import CDRWriter  # noqa: E402
from sipcore.message import parse_message  # noqa: E402
from sipcore.nat_helper import init_nat_helper  # noqa: E402
from sipcore.proxy_driver import ProxyDriver  # noqa: E402
from sipcore.registrar import Registrar  # noqa: E402
from sipcore.stage_policy import StagePolicy  # noqa: E402

SERVER = ("198.51.100.1", 5060)
ALICE = ("203.0.113.10", 40000)
BOB = ("203.0.113.20", 41000)
SDP = ("v=0\r\no=a 1 1 IN IP4 203.0.113.10\r\ns=-\r\nc=IN IP4 203.0.113.10\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n")


class PassThroughMedia:
    name = "pass-through"

    async def offer(self, call_id, from_tag, to_tag, sdp, source):
        return sdp

    async def answer(self, call_id, from_tag, to_tag, sdp, source):
        return sdp

    async def delete(self, call_id, from_tag=None, to_tag=None):
        pass


class NoEvents:
    def __getattr__(self, name):
        return lambda *args: None


class Wire:
    """Serialises what the proxy sends (as the transport would) and keeps the last request."""
    def __init__(self):
        self.last_request = None

    def __call__(self, msg, addr, transport):
        data = msg.to_bytes()
        if data[:4] != b"SIP/":
            self.last_request = data


def _request(method, i, branch, cseq, body="", to_tag=""):
    to = f"<sip:1002@sip.local>{';tag=' + to_tag if to_tag else ''}"
    uri = "sip:1002@sip.local" if not to_tag else "sip:1002@203.0.113.20:41000"
    route = f"Route: <sip:{SERVER[0]}:{SERVER[1]};lr>\r\n" if to_tag else ""
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:40000;branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n{route}From: \"Alice\" <sip:1001@sip.local>;tag=a{i}\r\nTo: {to}\r\n"
            f"Call-ID: bench-{i}\r\nCSeq: {cseq} {method}\r\nContact: <sip:1001@203.0.113.10:40000>\r\n"
            f"{ctype}Content-Length: {len(body)}\r\n\r\n{body}").encode()


def _response(forwarded: bytes, status: int, reason: str, body: str = "") -> bytes:
    fwd = parse_message(forwarded)
    vias = "".join(f"Via: {v}\r\n" for v in fwd.headers.get_raw("Via"))
    rr = "".join(f"Record-Route: {v}\r\n" for v in fwd.headers.get_raw("Record-Route"))
    tag = ";tag=b" if status > 100 else ""
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (f"SIP/2.0 {status} {reason}\r\n{vias}{rr}From: {fwd.headers.get('From')}\r\n"
            f"To: {fwd.headers.get('To')}{tag}\r\nCall-ID: {fwd.call_id}\r\nCSeq: {fwd.headers.get('CSeq')}\r\n"
            f"Contact: <sip:1002@203.0.113.20:41000>\r\n{ctype}Content-Length: {len(body)}\r\n\r\n{body}").encode()


async def run_calls(calls: int, cdr_dir: str | None = None, stage: int = 1) -> tuple[float, float]:
    """(call flows per wall-clock second, per CPU-second of this process)."""
    wire = Wire()
    writer = CDRWriter(cdr_dir) if cdr_dir else None
    events = CDREvents(writer, server_ip=SERVER[0], server_port=SERVER[1]) if writer else NoEvents()
    nat = init_nat_helper(server_ip=SERVER[0], local_networks=[]) if stage == 2 else None
    policy = StagePolicy(stage, nat)
    registrar = Registrar(contact_policy=policy.register_contact)
    registrar.handle_register(parse_message((
        "REGISTER sip:sip.local SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.20:41000;branch=z9hG4bKr\r\n"
        "From: <sip:1002@sip.local>;tag=r\r\nTo: <sip:1002@sip.local>\r\nCall-ID: reg\r\nCSeq: 1 REGISTER\r\n"
        "Contact: <sip:1002@203.0.113.20:41000>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n").encode()),
        BOB, "udp", time.time())
    proxy = ProxyDriver(host=SERVER[0], port=SERVER[1], policy=policy, registrar=registrar,
                        media=PassThroughMedia(), events=events, send=wire)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(calls):
        await proxy.on_request(parse_message(_request("INVITE", i, f"z9hG4bKi{i}", 1, SDP)), ALICE, "udp")
        fwd_invite = wire.last_request
        await proxy.on_response(parse_message(_response(fwd_invite, 180, "Ringing")), BOB, "udp")
        await proxy.on_response(parse_message(_response(fwd_invite, 200, "OK", SDP)), BOB, "udp")
        await proxy.on_request(parse_message(_request("ACK", i, f"z9hG4bKa{i}", 1, to_tag="b")), ALICE, "udp")
        await proxy.on_request(parse_message(_request("BYE", i, f"z9hG4bKb{i}", 2, to_tag="b")), ALICE, "udp")
        await proxy.on_response(parse_message(_response(wire.last_request, 200, "OK")), BOB, "udp")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert proxy.stats["calls"] == calls
    if writer is not None:
        writer.close()
    return calls / elapsed, calls / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-cdr", action="store_true", help="leave CDR writing out")
    ap.add_argument("--stage", type=int, choices=(1, 2), default=1,
                    help="the stage policy: 1 (no NAT handling) or 2 (NAT helper, force_rport)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cdr-") as tmp:
        runs = [asyncio.run(run_calls(a.calls, None if a.no_cdr else tmp, a.stage)) for _ in range(a.repeat)]
    left_out = ["sockets and the asyncio transport", "SIPp/kernel", "digest authentication",
                "the media relay (pass-through backend: no RTPProxy round trip)", "logging"]
    if a.no_cdr:
        left_out.append("CDR rows")
    print(json.dumps({"call flows per second (best of runs)": round(max(r[0] for r in runs)),
                      "call flows per CPU-second (best of runs)": round(max(r[1] for r in runs)),
                      "CPU ms per call flow (best)": round(1000 / max(r[1] for r in runs), 3),
                      "runs": [round(r[0]) for r in runs], "calls per run": a.calls, "stage": a.stage,
                      "includes": "parse, proxy, transactions, Record-Route token" + ("" if a.no_cdr else ", CDR rows to files"),
                      "leaves out": left_out, "load": os.getloadavg(),
                      "python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
                     indent=2))


if __name__ == "__main__":
    main()
