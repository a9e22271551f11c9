"""Attacks run INSIDE a lab network namespace (started by tests/hostile/test_fuzz_and_dns.py with
``ip netns exec``): the server under attack and the attacker share the namespace's loopback, and
the namespace has no route anywhere else, so whatever a hostile message makes the server send
(a Via, Route or R-URI naming any address) cannot leave the lab.

    python -m tests.hostile.attacks fuzz --stage 2 --workdir DIR --batches 40 --batch-size 30
    python -m tests.hostile.attacks dns  --stage 2 --workdir DIR --seconds 6

Prints one JSON object with the figures (messages sent, deaf periods, tracebacks, ...).
``fuzz``: hypothesis generates batches of SIP-like datagrams (hostile Via/Route/R-URI values,
non-UTF-8 bytes, bad numbers, broken framing, byte-level mutations); each batch goes over UDP
and partly over TCP, then the server must answer OPTIONS, be alive and have logged no traceback,
loop stall or internal error. ``dns``: the namespace's resolv.conf points at a black-hole DNS
server; messages naming hosts arrive all the time while OPTIONS latency is measured.
"""
from __future__ import annotations

import argparse
import os
import json
import socket
import sys
import time

from hypothesis import HealthCheck, Phase, example, given, settings, strategies as st

from tests.hostile.target import Target

METHODS = ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE", "INFO", "UPDATE", "PRACK",
           "SUBSCRIBE", "NOTIFY", "REFER", "PUBLISH", "XFOO", "invite"]
# hosts a message may name: loopback, names (refused or black-holed), and broken values
HOSTS = ["127.0.0.1"] * 6 + ["127.0.0.2", "[::1]", "blackhole.invalid", "sip.blackhole.invalid", "a..b", "999.1.1.1",
         "localhost", "-bad-", "\udcff\udcfe.invalid", "x" * 300, "[::ffff:127.0.0.1]", "0.0.0.0", "%00"]
PORTS = [""] * 5 + [":5060", ":0", ":65535", ":65536", ":99999", ":-1", ":abc", ":" + "9" * 30]
VIA_PARAMS = [""] * 6 + [";rport", ";rport=99999", ";rport=0", ";rport=-5", ";rport=x", ";received=999.1.1.1",
              ";received=blackhole.invalid", ";received=::1", ";received=127.0.0.1", ";received=\udcff",
              ";received=", ";maddr=127.0.0.3", ";ttl=999", ";branch=", ";branch=z9hG4bK" + "b" * 200]
STATUS = [100, 180, 183, 200, 202, 302, 401, 407, 408, 481, 486, 487, 500, 503, 603, 699, 99, 700]
NAMES = ["Via", "v", "Route", "Record-Route", "Contact", "m", "From", "To", "Call-ID", "i", "CSeq",
         "Max-Forwards", "Content-Length", "l", "Content-Type", "c", "Expires", "Authorization",
         "Proxy-Authorization", "Require", "Proxy-Require", "Supported", "Event", "Refer-To", "X-Junk"]

hexid = st.text("0123456789abcdef", min_size=4, max_size=12)
text_bytes = st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))
junk = st.one_of(text_bytes, st.sampled_from(["", " ", ";", "<", ">", "\"", ",", "*", "sip:", "\t", "%", "@@"]),
                 st.integers(-2**63, 2**64).map(str))
# strategies are built once here: building them inside a composite on every draw is slow
S_HOST, S_PORT = st.sampled_from(HOSTS), st.sampled_from(PORTS)
S_USER = st.one_of(st.sampled_from(["", "1001@", "1002@", "9999@", "1001;x=y@"]),
                   text_bytes.map(lambda t: t.replace("@", "") + "@"))
S_URI_PARAMS = st.lists(st.sampled_from([";lr", ";transport=tcp", ";transport=udp", ";alias=127.0.0.1~99999~1",
                                         ";alias=blackhole.invalid~5060~1", ";ob", ";x=\udcff", ";maddr=x"]),
                        max_size=3)
S_SCHEME = st.sampled_from(["sip:"] * 10 + ["sips:", "tel:", "SIP:", "http:", ""])
S_TRANSPORT = st.sampled_from(["UDP"] * 6 + ["TCP", "TLS", "SCTP", "udp", "XYZ"])
S_VIA_PARAMS = st.lists(st.sampled_from(VIA_PARAMS), max_size=3)
S_C_HOST = st.sampled_from(["127.0.0.1", "blackhole.invalid", "999.1.1.1", "::1", "", "0.0.0.0"])
S_M_PORT = st.sampled_from(["4000", "0", "65535", "99999", "-1", "x", "4000/2"])
S_SDP_TAIL = st.sampled_from(["", "m=video 0 RTP/AVP 96\r\n", "a=" + "z" * 500 + "\r\n", "garbage\r\n"])
S_STATUS, S_REASON = st.sampled_from(STATUS), st.sampled_from(["OK", "Ringing", "", "x"])
S_METHOD = st.sampled_from(METHODS)
S_VERSION = st.sampled_from(["SIP/2.0"] * 8 + ["SIP/3.0", "sip/2.0"])
S_TAG = st.one_of(hexid.map(lambda h: ";tag=" + h), st.sampled_from(["", ";tag=", ";tag=\udcff"]))
S_TO_TAG = st.one_of(st.just(""), hexid.map(lambda h: ";tag=" + h), st.just(";tag=\udcfe"))
S_DISPLAY = st.one_of(st.just(""), text_bytes.map(lambda t: f'"{t}" '))
S_CALL_ID = st.one_of(hexid, text_bytes)
S_CSEQ = st.sampled_from(["1"] * 6 + ["0", "-1", "4294967296", "x", ""])
S_MAX_FORWARDS = st.sampled_from(["70"] * 6 + ["0", "1", "-1", "99999999999", "x"])
S_CONTACT_PARAMS = st.sampled_from(["", ";expires=0", ";expires=99999999999", ";q=2"])
S_NAME = st.sampled_from(NAMES)
S_EOL = st.sampled_from(["\r\n"] * 8 + ["\n", "\r"])
S_MUTATIONS = st.one_of(st.just([]), st.just([]), st.just([]),
                        st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "cut", "dup"]),
                                           st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=3))


@st.composite
def hostport(draw) -> str:
    return draw(S_HOST) + draw(S_PORT)


S_HOSTPORT = hostport()


@st.composite
def uri(draw) -> str:
    return draw(S_SCHEME) + draw(S_USER) + draw(S_HOSTPORT) + "".join(draw(S_URI_PARAMS))


S_URI = uri()


@st.composite
def via(draw, ours: str | None = None) -> str:
    sent_by = ours or draw(S_HOSTPORT)
    return f"SIP/2.0/{draw(S_TRANSPORT)} {sent_by};branch=z9hG4bK{draw(hexid)}" + "".join(draw(S_VIA_PARAMS))


S_VIA = via()


@st.composite
def sdp(draw) -> str:
    c_host, port = draw(S_C_HOST), draw(S_M_PORT)
    return (f"v=0\r\no=- 1 1 IN IP4 {c_host}\r\ns=-\r\nc=IN IP4 {c_host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtcp:{port}\r\n" + draw(S_SDP_TAIL))


S_BODY = st.one_of(st.just(""), sdp(), text_bytes)


@st.composite
def message(draw, server_port: int) -> bytes:
    ours = f"127.0.0.1:{server_port}"
    response = draw(st.integers(0, 4)) == 0
    headers: list[tuple[str, str]] = []
    if response:
        start = f"SIP/2.0 {draw(S_STATUS)} {draw(S_REASON)}"
        top = draw(st.integers(0, 2))
        headers.append(("Via", draw(via(ours=[ours, "127.0.0.1:5060", ours + ";x"][top]))))
    else:
        start = f"{draw(S_METHOD)} {draw(S_URI)} {draw(S_VERSION)}"
    for _ in range(draw(st.integers(0 if not response else 1, 3))):
        headers.append(("Via", draw(S_VIA)))
    disp = draw(S_DISPLAY)
    headers += [("From", f"{disp}<{draw(S_URI)}>{draw(S_TAG)}"), ("To", f"{disp}<{draw(S_URI)}>{draw(S_TO_TAG)}"),
                ("Call-ID", draw(S_CALL_ID)), ("CSeq", f"{draw(S_CSEQ)} {draw(S_METHOD)}"),
                ("Max-Forwards", draw(S_MAX_FORWARDS))]
    for _ in range(draw(st.integers(0, 3))):
        headers.append(("Route", f"<{draw(S_URI)}>"))
    if draw(st.booleans()):
        kind = draw(st.integers(0, 3))
        contact = ["*", f"<{draw(S_URI)}>", draw(S_URI), "<>"][kind]
        headers.append(("Contact", contact + draw(S_CONTACT_PARAMS)))
    for _ in range(draw(st.integers(0, 3))):
        headers.append((draw(S_NAME), draw(junk)))
    body = draw(S_BODY)
    if body and draw(st.booleans()):
        headers.append(("Content-Type", "application/sdp"))
    length = len(body.encode("utf-8", "surrogateescape"))
    headers.append(("Content-Length", [str(length), str(length), "0", str(length + 10), "-1", "99999999", "x"]
                    [draw(st.integers(0, 6))]))
    eol = draw(S_EOL)
    data = (start + eol + eol.join(f"{n}: {v}" for n, v in headers) + eol + eol + body).encode("utf-8", "surrogateescape")
    for op, pos, byte in draw(S_MUTATIONS):
        pos %= max(1, len(data))
        if op == "flip":
            data = data[:pos] + bytes([byte]) + data[pos + 1:]
        elif op == "insert":
            data = data[:pos] + bytes([byte]) + data[pos:]
        elif op == "delete":
            data = data[:pos] + data[pos + 1:]
        elif op == "cut":
            data = data[:pos]
        else:
            data = data[:pos] + data[pos:pos + 200] * 3 + data[pos + 200:]
    return data


def poison_stray(port: int, param: str = "rport=99999") -> bytes:
    """Known poison: a stray response relayed to a Via value no socket accepts (issue 10, class 1)."""
    return (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKgone\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5;{param};branch=z9hG4bKa\r\nFrom: <sip:a@x>;tag=1\r\n"
            f"To: <sip:b@x>;tag=2\r\nCall-ID: poison\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()


def non_utf8_options(port: int) -> bytes:
    """Known poison: bytes that are not UTF-8 in R-URI, From, To and Call-ID (class 5)."""
    return (f"OPTIONS sip:127.0.0.1:{port};x=\udcff SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKu\r\n"
            f"From: \"\udcff\udcfe\" <sip:\udcff@127.0.0.1>;tag=1\r\nTo: <sip:\udcfe@127.0.0.1>\r\n"
            f"Call-ID: \udcc3(\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode("utf-8", "surrogateescape")


class Figures:
    def __init__(self):
        self.udp = 0
        self.tcp = 0
        self.batches = 0
        self.t_send = 0.0
        self.t_check = 0.0
        self.t0 = time.monotonic()


def fuzz(stage: int, workdir: str, batches: int, batch_size: int) -> dict:
    """One hypothesis example = one hostile message (UDP, or TCP on a connection kept for the
    batch); after every ``batch_size`` messages the server is checked (Target.check)."""
    figures = Figures()
    with Target(stage, workdir) as srv:
        port = srv.ports.sip
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp: list[socket.socket] = []

        def tcp_send(data: bytes) -> None:
            for _ in range(2):
                if not tcp:
                    tcp.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                try:
                    tcp[0].sendall(data)
                    figures.tcp += 1
                    return
                except OSError:      # the server may close a connection on garbage: its right
                    tcp.pop().close()

        def end_batch() -> None:
            for conn in tcp:
                conn.close()
            tcp.clear()
            figures.batches += 1
            t1 = time.monotonic()
            srv.check(f"fuzz batch {figures.batches}")
            figures.t_check += time.monotonic() - t1

        @settings(max_examples=batches * batch_size, deadline=None, database=None, derandomize=False,
                  phases=(Phase.explicit, Phase.generate), print_blob=True,
                  suppress_health_check=list(HealthCheck))
        @given(message(port), st.integers(0, 9))
        @example(poison_stray(port), 5)
        @example(poison_stray(port, "received=999.1.1.1"), 5)
        @example(non_utf8_options(port), 5)
        @example(non_utf8_options(port), 0)
        def attack(data: bytes, route: int) -> None:
            t0 = time.monotonic()
            try:
                if route < 3:
                    tcp_send(data)
                else:
                    udp.sendto(data[:65507], ("127.0.0.1", port))
                    figures.udp += 1
            except OSError:
                pass
            figures.t_send += time.monotonic() - t0
            if (figures.udp + figures.tcp) % batch_size == 0:
                end_batch()

        error = None
        try:
            attack()
            if (figures.udp + figures.tcp) % batch_size:
                end_batch()
        except Exception as exc:   # noqa: BLE001 - reported as JSON, asserted by the test
            error = f"{type(exc).__name__}: {exc}"[:3000]
        udp.close()
        alive = srv.proc is not None and srv.proc.poll() is None
        rc = srv.stop()
        log = srv.log_text()
        return {"stage": stage, "messages": figures.udp + figures.tcp, "udp": figures.udp, "tcp": figures.tcp,
                "batches": figures.batches, "checks": srv.checks, "deaf_periods": srv.deaf_periods,
                "tracebacks": log.count("Traceback") + srv.output.count("Traceback"),
                "loop_stalls": log.count("loop stall:"), "problems": srv.problems(), "alive_at_end": alive,
                "exit_code": rc, "error": error, "dropped_lines": log.count("dropping") + log.count("not sending to"),
                "seconds": {"total": round(time.monotonic() - figures.t0, 1), "send": round(figures.t_send, 1),
                            "check": round(figures.t_check, 1)}}


def dns(stage: int, workdir: str, seconds: float) -> dict:
    """A message naming a host in its Via, Route, R-URI or Contact arrives before every OPTIONS
    probe (about every 25 ms) for ``seconds``; the resolver of this namespace never answers. The
    same probes without the attack first give the baseline of this (possibly loaded) machine."""
    # the server's own detector at 50 ms: no callback may keep OPTIONS waiting that long
    env = {"DNS_RESOLVE": "1", "DNS_TIMEOUT": "2", "IMS_LOOP_STALL_MS": os.environ.get("IMS_DNS_PROBE_STALL_MS", "50")}
    rtts: list[float] = []
    base: list[float] = []
    sent = 0
    with Target(stage, workdir, extra_env=env) as srv:
        p = srv.ports.sip
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        me = s.getsockname()[1]
        deadline = time.monotonic() + seconds / 2          # baseline: the same probes, no attack
        while time.monotonic() < deadline:
            status, rtt = srv.options(timeout=5.0)
            base.append(rtt if status == 200 else float("inf"))
            time.sleep(0.02)
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            name = f"h{n}.blackhole.invalid"
            attacks = [
                # stray response: relayed to the next Via's sent-by, a name
                f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch=z9hG4bKs{n}\r\n"
                f"Via: SIP/2.0/UDP {name}:5060;branch=z9hG4bKt{n}\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\n"
                f"Call-ID: dns-s{n}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
                # in-dialog request routed by a Route naming a host
                f"BYE sip:1002@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKr{n}\r\n"
                f"Route: <sip:{name};lr>\r\nFrom: <sip:1001@sip.local>;tag=1\r\nTo: <sip:1002@sip.local>;tag=9\r\n"
                f"Call-ID: dns-r{n}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                # in-dialog request whose R-URI names a host
                f"INFO sip:1002@{name}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKu{n}\r\n"
                f"From: <sip:1001@sip.local>;tag=1\r\nTo: <sip:1002@sip.local>;tag=9\r\n"
                f"Call-ID: dns-u{n}\r\nCSeq: 3 INFO\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                # a request with a host name as Via sent-by and a Contact naming a host (answered 401)
                f"REGISTER sip:sip.local SIP/2.0\r\nVia: SIP/2.0/UDP {name}:5060;branch=z9hG4bKv{n}\r\n"
                f"From: <sip:1001@sip.local>;tag=1\r\nTo: <sip:1001@sip.local>\r\nCall-ID: dns-v{n}\r\n"
                f"CSeq: 1 REGISTER\r\nContact: <sip:1001@{name}:5060>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            ]
            s.sendto(attacks[n % len(attacks)].encode(), ("127.0.0.1", p))    # one kind per round
            sent += 1
            status, rtt = srv.options(timeout=5.0)
            rtts.append(rtt if status == 200 else float("inf"))
            time.sleep(0.02)
        s.close()
        time.sleep(0.3)
        srv.check("black-hole DNS")
        rc = srv.stop()
        log = srv.log_text()
        if os.environ.get("IMS_DNS_PROBE_STALL_MS"):
            print("\n".join(line[60:300] for line in log.splitlines() if "loop stall" in line)[:6000])
    rtts.sort()
    base.sort()
    ms = lambda values, q: round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 1) if values else None  # noqa: E731
    return {"stage": stage, "messages": sent, "probes": len(rtts), "max_rtt_ms": ms(rtts, 1.0),
            "p50_rtt_ms": ms(rtts, 0.5), "p95_rtt_ms": ms(rtts, 0.95), "baseline_probes": len(base),
            "baseline_p50_ms": ms(base, 0.5), "baseline_p95_ms": ms(base, 0.95), "baseline_max_ms": ms(base, 1.0),
            "exit_code": rc,
            "tracebacks": log.count("Traceback"), "loop_stalls": log.count("loop stall:"),
            "name_drops": log.count("does not resolve") + log.count("DNS lookups already pending")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.hostile.attacks")
    ap.add_argument("what", choices=("fuzz", "dns"))
    ap.add_argument("--stage", type=int, required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=6.0)
    a = ap.parse_args(argv)
    if a.what == "fuzz":
        result = fuzz(a.stage, a.workdir, a.batches, a.batch_size)
    else:
        result = dns(a.stage, a.workdir, a.seconds)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
