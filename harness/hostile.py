"""The hostile peer of the harness: a host on the public lab segment that attacks the server while a
normal call runs, and reports what got through.

    python -m harness.hostile '{"attack": "dialog", "server": ["203.0.113.1", 5060], ...}'

prints one JSON line: ``{"attack", "sent", "answers": {status: count}, "unanswered", "relayed",
"alive"}``. ``relayed`` counts datagrams that reached the peer's own victim socket, which every
forged Route / Request-URI names (a server that relays forgeries anywhere sends them there);
requests relayed to the call's real parties are counted by the runner from the UAs' observations.
``alive``: the server still answers OPTIONS after the attack.

Attacks (``attack``):
  dialog     in-dialog requests with the real call's Call-ID and tags (as an on-path observer
             would have them): BYE both ways, re-INVITE with SDP, INFO with a second Route,
             MESSAGE, OPTIONS; Routes missing, tokenless, with a forged token, or foreign
  stranger   made-up dialogs (BYE, INVITE with SDP, MESSAGE, INFO with a second Route) and
             initial requests to a foreign destination (the victim), i.e. open-relay probes
  malformed  datagrams no parser should choke on (binary junk, truncated or contradictory
             headers, invalid UTF-8, absurd numbers, a response with an impossible Via port)

Only the server's address (given by the runner) and the peer's own sockets are ever used.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time

ATTACKS = ("dialog", "stranger", "malformed")
REPLY_WAIT = 1.0
SDP_TEMPLATE = ("v=0\r\no=eve 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
                "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def _branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def build_request(method: str, uri: str, me: tuple[str, int], *, call_id: str, from_uri: str, from_tag: str,
                  to_uri: str, to_tag: str | None, cseq: int, routes=(), body: str = "",
                  content_type: str = "application/sdp") -> bytes:
    lines = [f"{method} {uri} SIP/2.0", f"Via: SIP/2.0/UDP {me[0]}:{me[1]};branch={_branch()};rport",
             "Max-Forwards: 70", f"From: <{from_uri}>;tag={from_tag}",
             f"To: <{to_uri}>" + (f";tag={to_tag}" if to_tag else ""), f"Call-ID: {call_id}",
             f"CSeq: {cseq} {method}", f"Contact: <sip:eve@{me[0]}:{me[1]}>", "User-Agent: hostile-peer"]
    lines += [f"Route: {r}" for r in routes]
    if body:
        lines.append(f"Content-Type: {content_type}")
    return ("\r\n".join(lines) + f"\r\nContent-Length: {len(body.encode())}\r\n\r\n{body}").encode()


def dialog_attack(cfg: dict, me, victim) -> list[bytes]:
    """Forgeries inside the real call: its Call-ID, the caller's tag, the callee's target."""
    server = f"{cfg['server'][0]}:{cfg['server'][1]}"
    v = f"{victim[0]}:{victim[1]}"
    call_id, ftag = cfg["call_id"], cfg["from_tag"]
    target = cfg.get("target") or f"sip:1002@{v}"
    caller, callee = cfg.get("caller_uri", "sip:1001@sip.local"), cfg.get("callee_uri", "sip:1002@sip.local")
    sdp = SDP_TEMPLATE.format(ip=victim[0], port=victim[1])
    ours, forged = f"<sip:{server};lr>", f"<sip:{server};lr;rt=djEKZm9yZ2Vk.AAAAAAAAAAAAAAAAAAAAAA>"
    guess = secrets.token_hex(4)
    common = {"call_id": call_id}
    return [
        build_request("BYE", target, me, from_uri=caller, from_tag=ftag, to_uri=callee, to_tag=guess, cseq=900, **common),
        build_request("BYE", f"sip:1001@{v}", me, from_uri=callee, from_tag=guess, to_uri=caller, to_tag=ftag,
                      cseq=901, routes=(ours,), **common),
        build_request("INVITE", target, me, from_uri=caller, from_tag=ftag, to_uri=callee, to_tag=guess, cseq=902,
                      routes=(forged,), body=sdp, **common),
        build_request("INFO", target, me, from_uri=caller, from_tag=ftag, to_uri=callee, to_tag=guess, cseq=903,
                      routes=(ours, f"<sip:{v};lr>"), **common),
        build_request("MESSAGE", target, me, from_uri=caller, from_tag=ftag, to_uri=callee, to_tag=guess, cseq=904,
                      routes=(ours,), body="forged", content_type="text/plain", **common),
        build_request("OPTIONS", target, me, from_uri=caller, from_tag=ftag, to_uri=callee, to_tag=guess, cseq=905,
                      routes=(f"<sip:{v};lr>",), **common),
    ]


def stranger_attack(cfg: dict, me, victim) -> list[bytes]:
    """Made-up dialogs and initial requests to a destination that is not ours (open relay)."""
    server = f"{cfg['server'][0]}:{cfg['server'][1]}"
    v = f"{victim[0]}:{victim[1]}"
    sdp = SDP_TEMPLATE.format(ip=victim[0], port=victim[1])
    out = []
    for method, uri, routes, body in (
            ("BYE", f"sip:victim@{v}", (), ""),
            ("INVITE", f"sip:1002@{v}", (f"<sip:{server};lr>",), sdp),
            ("MESSAGE", f"sip:victim@{v}", (f"<sip:{server};lr>",), "spam"),
            ("INFO", f"sip:victim@{v}", (f"<sip:{server};lr>", f"<sip:{v};lr>"), "")):
        out.append(build_request(method, uri, me, call_id=secrets.token_hex(8), from_uri="sip:1001@sip.local",
                                 from_tag=secrets.token_hex(4), to_uri=f"sip:victim@{v}", to_tag=secrets.token_hex(4),
                                 cseq=1, routes=routes, body=body,
                                 content_type="text/plain" if method == "MESSAGE" else "application/sdp"))
    for method, body in (("INVITE", sdp), ("MESSAGE", "spam")):
        out.append(build_request(method, f"sip:victim@{v}", me, call_id=secrets.token_hex(8),
                                 from_uri="sip:mallory@foreign.example", from_tag=secrets.token_hex(4),
                                 to_uri=f"sip:victim@{v}", to_tag=None, cseq=1, body=body,
                                 content_type="text/plain" if method == "MESSAGE" else "application/sdp"))
    return out


def malformed_attack(cfg: dict, me, victim) -> list[bytes]:
    """Datagrams that must each be answered with 400 or dropped, never crash or deafen the server."""
    srv = f"{cfg['server'][0]}:{cfg['server'][1]}"
    via = f"Via: SIP/2.0/UDP {me[0]}:{me[1]};branch={_branch()}"
    base = (f"OPTIONS sip:{srv} SIP/2.0\r\n{via}\r\nFrom: <sip:eve@{me[0]}>;tag=1\r\nTo: <sip:{srv}>\r\n"
            f"Call-ID: {secrets.token_hex(6)}\r\nCSeq: 1 OPTIONS\r\n")
    rnd = os.urandom(300)
    return [
        b"\x00" * 64,
        rnd,
        b"\r\n\r\n" * 50,
        b"INVITE\r\n\r\n",
        (base + "Content-Length: 9999\r\n\r\nshort").encode(),
        (base.replace("CSeq: 1 OPTIONS", "CSeq: abc OPTIONS") + "\r\n").encode(),
        (base + "Max-Forwards: -1\r\n\r\n").encode(),
        base.encode().replace(b"eve@", b"\xff\xfe\xfd@") + b"\r\n",
        (base + "X-Long: " + "A" * 6000 + "\r\n\r\n").encode(),
        (f"OPTIONS sip:{srv} SIP/2.0\r\nVia: SIP/2.0/UDP [::1;branch=z9hG4bKx\r\n\r\n").encode(),
        (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {cfg['server'][0]}:{cfg['server'][1]};branch=z9hG4bKgone\r\n"
         f"Via: SIP/2.0/UDP {victim[0]}:70000;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n"
         f"Call-ID: {secrets.token_hex(6)}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode(),
    ]


def _drain(sock: socket.socket, seconds: float) -> list[bytes]:
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            out.append(sock.recvfrom(65535)[0])
        except TimeoutError:
            break
    return out


def _status(data: bytes) -> str:
    if data.startswith(b"SIP/2.0 "):
        return data[8:11].decode("ascii", "replace")
    return "request"


def server_alive(sock: socket.socket, me, server: tuple[str, int], tries: int = 3) -> bool:
    """OPTIONS to the server answered 200 (a few tries, 1 s each)."""
    for _ in range(tries):
        call_id = secrets.token_hex(6)
        msg = (f"OPTIONS sip:{server[0]}:{server[1]} SIP/2.0\r\nVia: SIP/2.0/UDP {me[0]}:{me[1]};branch={_branch()};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:eve@{me[0]}>;tag=probe\r\nTo: <sip:{server[0]}>\r\n"
               f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
        sock.sendto(msg, server)
        for data in _drain(sock, 1.0):
            if data.startswith(b"SIP/2.0 200") and call_id.encode() in data:
                return True
    return False


def attack(cfg: dict) -> dict:
    kind = cfg["attack"]
    if kind not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}")
    server = (cfg["server"][0], int(cfg["server"][1]))
    bind_ip = cfg.get("bind", "0.0.0.0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim_sock:
        sock.bind((bind_ip, 0))
        victim_sock.bind((bind_ip, 0))
        me = (cfg.get("advertise", bind_ip), sock.getsockname()[1])
        victim = (cfg.get("advertise", bind_ip), victim_sock.getsockname()[1])
        builder = {"dialog": dialog_attack, "stranger": stranger_attack, "malformed": malformed_attack}[kind]
        datagrams = builder(cfg, me, victim)
        for data in datagrams:
            sock.sendto(data, server)
            time.sleep(0.02)
        replies = _drain(sock, REPLY_WAIT)
        relayed = _drain(victim_sock, 0.2)
        answers: dict[str, int] = {}
        for r in replies:
            s = _status(r)
            if s != "100":
                answers[s] = answers.get(s, 0) + 1
        alive = server_alive(sock, me, server)
        relayed += _drain(victim_sock, 0.1)
    return {"attack": kind, "sent": len(datagrams), "answers": answers,
            "unanswered": max(0, len(datagrams) - sum(answers.values())), "relayed": len(relayed),
            "alive": alive}


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m harness.hostile JSON", file=sys.stderr)
        return 2
    try:
        result = attack(json.loads(args[0]))
    except (ValueError, KeyError, OSError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
