"""A small scripted SIP/RTP client that drives a server through the legacy-fidelity cases and
returns what each party observed, normalised so that runs of different servers compare.

It is deliberately independent of ``sipcore`` (standard library only, its own text parsing and
digest code), so the same file drives the original server (recorded once into
``tests/golden/legacy/``) and our stage 0 (``tests/server/test_legacy_fidelity.py``).

Record against a server you started yourself (see tests/golden/README.md)::

    python tests/golden/legacy_client.py --server 127.0.0.1:5060 --cdr-dir /path/to/CDR \
        --out tests/golden/legacy

Only the address given with ``--server`` is ever contacted; the client binds its SIP and RTP
sockets on that address's host (normally loopback).
"""
from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import random
import re
import socket
import string
import struct
import sys
import time

DOMAIN = "sip.local"
PASSWORD = "1234"
CALLER, CALLEE, UNREGISTERED, UNPROVISIONED = "1001", "1002", "1003", "1999"
PUNCH_WINDOW = 1.0          # seconds after the 200 OK during which relay packets count as "punch"
RTP_PACKETS = 20            # packets each side sends after the ACK
COMPACT = {"v": "via", "i": "call-id", "f": "from", "t": "to", "m": "contact", "l": "content-length",
           "c": "content-type", "k": "supported", "s": "subject"}
# headers whose presence/value the golden data records
KEPT_HEADERS = ("server", "allow", "accept", "supported", "www-authenticate", "proxy-authenticate",
                "record-route", "route", "contact", "content-type", "date", "warning", "user-agent")


def _rand(n: int = 10) -> str:
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(n))


# --- messages ---------------------------------------------------------------------------------------
class Msg:
    def __init__(self, data: bytes, source: tuple[str, int]):
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        self.first = lines[0]
        self.source = source
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and self.headers:
                name, value = self.headers[-1]
                self.headers[-1] = (name, value + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            self.headers.append((COMPACT.get(name, name), value.strip()))
        self.body = body
        parts = self.first.split(" ", 2)
        self.is_response = parts[0].startswith("SIP/")
        self.status = int(parts[1]) if self.is_response else 0
        self.reason = parts[2] if self.is_response and len(parts) > 2 else ""
        self.method = "" if self.is_response else parts[0]
        self.uri = "" if self.is_response else parts[1]

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    @property
    def cseq_method(self) -> str:
        return (self.get("cseq") or " ").split()[-1]

    def tag(self, header: str) -> str | None:
        m = re.search(r";\s*tag=([^;>\s]+)", self.get(header) or "")
        return m.group(1) if m else None


def _digest(user: str, password: str, method: str, uri: str, challenge: str) -> str:
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    realm, nonce = params.get("realm", ""), params.get("nonce", "")
    ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    if "auth" in params.get("qop", "").split(","):
        cnonce, nc = _rand(8), "00000001"
        resp = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
        extra = f', qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        resp = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
        extra = ""
    algo = params.get("algorithm", "MD5")
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{resp}", algorithm={algo}{extra}')


# --- a user agent -----------------------------------------------------------------------------------
class UA:
    def __init__(self, name: str, user: str, host: str, server: tuple[str, int], log: list):
        self.name, self.user, self.server, self.log = name, user, server, log
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind((host, 0))
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.rtp_port = self.rtp.getsockname()[1]
        self.inbox: list[Msg] = []
        self.reg_call_id = f"reg-{_rand()}"
        self.reg_cseq = 0

    def close(self) -> None:
        self.sock.close()
        self.rtp.close()

    # wire
    def send(self, text: str, body: bytes = b"", dest: tuple[str, int] | None = None) -> None:
        text = text.replace("\n", "\r\n")
        data = text.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        self.sock.sendto(data, dest or self.server)

    def _pump(self, timeout: float) -> None:
        self.sock.settimeout(max(0.001, timeout))
        try:
            data, src = self.sock.recvfrom(65535)
        except (socket.timeout, BlockingIOError):
            return
        if not data.strip():
            return
        msg = Msg(data, src)
        self.inbox.append(msg)
        self.log.append((self.name, msg))

    def wait(self, pred, timeout: float = 3.0) -> Msg | None:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.inbox:
                if pred(m):
                    self.inbox.remove(m)
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pump(left)

    def response(self, call_id: str, method: str, final: bool = True, timeout: float = 3.0) -> Msg | None:
        return self.wait(lambda m: m.is_response and m.get("call-id") == call_id and m.cseq_method == method
                         and (m.status >= 200 or not final), timeout)

    def request(self, method: str, call_id: str | None = None, timeout: float = 3.0) -> Msg | None:
        return self.wait(lambda m: not m.is_response and m.method == method
                         and (call_id is None or m.get("call-id") == call_id), timeout)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())

    # helpers
    def via(self, branch: str) -> str:
        return f"SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{branch};rport"

    def contact(self) -> str:
        return f"<sip:{self.user}@{self.host}:{self.port}>"

    def sdp(self, session: str = "1") -> bytes:
        return (f"v=0\r\no={self.user} {session} 1 IN IP4 {self.host}\r\ns=call\r\nc=IN IP4 {self.host}\r\n"
                f"t=0 0\r\nm=audio {self.rtp_port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
                f"a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n").encode()

    def register(self, expires: int = 3600, password: str = PASSWORD, call_id: str | None = None) -> list[Msg]:
        """REGISTER, answering one 401 with credentials; returns every final response."""
        call_id = call_id or self.reg_call_id
        tag = _rand()
        out = []
        auth = None
        for _ in range(2):
            self.reg_cseq += 1
            text = (f"REGISTER sip:{DOMAIN} SIP/2.0\nVia: {self.via(_rand())}\nMax-Forwards: 70\n"
                    f"From: <sip:{self.user}@{DOMAIN}>;tag={tag}\nTo: <sip:{self.user}@{DOMAIN}>\n"
                    f"Call-ID: {call_id}\nCSeq: {self.reg_cseq} REGISTER\nContact: {self.contact()}\n"
                    f"Expires: {expires}\nUser-Agent: golden-client/1\n")
            if auth:
                text += f"Authorization: {auth}\n"
            self.send(text)
            resp = self.response(call_id, "REGISTER")
            out.append(resp)
            if resp is None or resp.status != 401 or auth:
                break
            auth = _digest(self.user, password, "REGISTER", f"sip:{DOMAIN}", resp.get("www-authenticate") or "")
        return out

    def rtp_send(self, dest: tuple[str, int], count: int, ssrc: int) -> None:
        for seq in range(count):
            pkt = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + b"\x55" * 160
            self.rtp.sendto(pkt, dest)
            time.sleep(0.005)

    def rtp_collect(self, seconds: float) -> dict:
        """Packets received on the RTP socket: per (source-role-less) count and per SSRC."""
        deadline = time.monotonic() + seconds
        got = {"packets": 0, "ssrcs": {}, "payload_sizes": set(), "sources": set()}
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.rtp.settimeout(left)
            try:
                data, src = self.rtp.recvfrom(2048)
            except (socket.timeout, BlockingIOError):
                break
            got["packets"] += 1
            got["sources"].add(src)
            if len(data) >= 12:
                ssrc = struct.unpack("!I", data[8:12])[0]
                got["ssrcs"][ssrc] = got["ssrcs"].get(ssrc, 0) + 1
                got["payload_sizes"].add(len(data) - 12)
        return got


def sdp_audio(body: bytes) -> tuple[str, int] | None:
    text = body.decode("utf-8", "replace")
    c = re.findall(r"^c=IN IP4 (\S+)", text, re.M)
    m = re.search(r"^m=audio (\d+)", text, re.M)
    if not c or not m:
        return None
    return c[-1], int(m.group(1))


# --- the cases ----------------------------------------------------------------------------------
class Session:
    """One run against one server: the two registered users and the message log."""

    def __init__(self, server: tuple[str, int], cdr_dir: str | None):
        self.server = server
        self.cdr_dir = cdr_dir
        self.log: list = []
        host = server[0]
        self.alice = UA("alice", CALLER, host, server, self.log)
        self.bob = UA("bob", CALLEE, host, server, self.log)
        self.cdr_seen = len(self._cdr_rows())

    def close(self) -> None:
        self.alice.close()
        self.bob.close()

    def _cdr_rows(self) -> list[dict]:
        if not self.cdr_dir:
            return []
        rows: list[dict] = []
        for path in sorted(glob.glob(os.path.join(self.cdr_dir, "*", "cdr_*.csv"))):
            with open(path, newline="", encoding="utf-8") as fh:
                rows.extend(csv.DictReader(fh))
        return rows

    def new_cdr_rows(self, settle: float = 0.3) -> list[dict]:
        time.sleep(settle)
        rows = self._cdr_rows()
        new, self.cdr_seen = rows[self.cdr_seen:], len(rows)
        return new

    def invite_text(self, ua: UA, target: str, call_id: str, tag: str, branch: str, cseq: int = 1,
                    has_body: bool = True) -> str:
        return (f"INVITE sip:{target}@{DOMAIN} SIP/2.0\nVia: {ua.via(branch)}\nMax-Forwards: 70\n"
                f"From: <sip:{ua.user}@{DOMAIN}>;tag={tag}\nTo: <sip:{target}@{DOMAIN}>\n"
                f"Call-ID: {call_id}\nCSeq: {cseq} INVITE\nContact: {ua.contact()}\n"
                f"User-Agent: golden-client/1\n" + ("Content-Type: application/sdp\n" if has_body else ""))

    def answer(self, ua: UA, req: Msg, status: int, reason: str, to_tag: str, body: bytes = b"") -> None:
        """A response built from a received request (Via/From/To/Call-ID/CSeq/Record-Route copied)."""
        text = f"SIP/2.0 {status} {reason}\n"
        for v in req.all("via"):
            text += f"Via: {v}\n"
        to = req.get("to") or ""
        if status > 100 and ";tag=" not in to:
            to += f";tag={to_tag}"
        text += f"From: {req.get('from')}\nTo: {to}\nCall-ID: {req.get('call-id')}\nCSeq: {req.get('cseq')}\n"
        for rr in req.all("record-route"):
            text += f"Record-Route: {rr}\n"
        if 200 <= status < 300 and req.method in ("INVITE", "MESSAGE"):
            text += f"Contact: {ua.contact()}\n"
        if body:
            text += "Content-Type: application/sdp\n"
        ua.send(text, body, dest=req.source)

    def ack_2xx(self, ua: UA, ok: Msg, call_id: str, tag: str, body: bytes = b"") -> None:
        """ACK for a 2xx: to the Contact, via the Record-Route set (route set = RR reversed)."""
        contact = re.search(r"<([^>]+)>", ok.get("contact") or "")
        target = contact.group(1) if contact else f"sip:{CALLEE}@{DOMAIN}"
        routes = list(reversed(ok.all("record-route")))
        text = (f"ACK {target} SIP/2.0\nVia: {ua.via(_rand())}\nMax-Forwards: 70\n"
                f"From: <sip:{ua.user}@{DOMAIN}>;tag={tag}\nTo: {ok.get('to')}\nCall-ID: {call_id}\n"
                f"CSeq: 1 ACK\n")
        for r in routes:
            text += f"Route: {r}\n"
        if body:
            text += "Content-Type: application/sdp\n"
        ua.send(text, body)

    def ack_failure(self, ua: UA, invite: Msg, final: Msg, call_id: str) -> None:
        """ACK for a non-2xx final: same branch and R-URI as the INVITE (RFC 3261 17.1.1.3)."""
        text = (f"ACK sip:{CALLEE}@{DOMAIN} SIP/2.0\nVia: {invite.all('via')[-1]}\nMax-Forwards: 70\n"
                f"From: {final.get('from')}\nTo: {final.get('to')}\nCall-ID: {call_id}\nCSeq: 1 ACK\n")
        ua.send(text)

    def in_dialog(self, ua: UA, method: str, peer: Msg, call_id: str, tag: str, cseq: int, peer_is_callee: bool,
                  route_from: Msg) -> None:
        contact = re.search(r"<([^>]+)>", peer.get("contact") or "")
        target = contact.group(1) if contact else f"sip:{CALLEE}@{DOMAIN}"
        routes = route_from.all("record-route")
        if peer_is_callee:
            routes = list(reversed(routes))
            frm, to = f"<sip:{ua.user}@{DOMAIN}>;tag={tag}", route_from.get("to")
        else:
            frm, to = route_from.get("to"), route_from.get("from")
        text = (f"{method} {target} SIP/2.0\nVia: {ua.via(_rand())}\nMax-Forwards: 70\nFrom: {frm}\n"
                f"To: {to}\nCall-ID: {call_id}\nCSeq: {cseq} {method}\n")
        for r in routes:
            text += f"Route: {r}\n"
        ua.send(text)


def case_options(s: Session) -> dict:
    a = s.alice
    call_id = f"opt-{_rand()}"
    a.send(f"OPTIONS sip:{DOMAIN} SIP/2.0\nVia: {a.via(_rand())}\nMax-Forwards: 70\n"
           f"From: <sip:{CALLER}@{DOMAIN}>;tag={_rand()}\nTo: <sip:{DOMAIN}>\nCall-ID: {call_id}\n"
           f"CSeq: 1 OPTIONS\nUser-Agent: golden-client/1\n")
    resp = a.response(call_id, "OPTIONS")
    return {"responses": [resp], "cdr": s.new_cdr_rows()}


def case_register(s: Session) -> dict:
    """401 challenge, 200; a refresh on the same Call-ID; both users end up registered."""
    first = s.alice.register()
    refresh = s.alice.register()
    bob = s.bob.register()
    return {"responses": first + refresh + bob, "cdr": s.new_cdr_rows()}


def case_register_wrong_password(s: Session) -> dict:
    ua = UA("carol", UNREGISTERED, s.server[0], s.server, s.log)
    try:
        out = ua.register(password="wrong")
    finally:
        ua.close()
    return {"responses": out, "cdr": s.new_cdr_rows()}


def case_unregister(s: Session) -> dict:
    """An unregister on a Call-ID of its own (the original writes one row per Call-ID), then a new
    registration."""
    out = s.alice.register(expires=0, call_id=f"unreg-{_rand()}")
    out += s.alice.register(call_id=f"rereg-{_rand()}")
    return {"responses": out, "cdr": s.new_cdr_rows()}


def _invite_to(s: Session, target: str) -> dict:
    a = s.alice
    call_id, tag = f"inv-{_rand()}", _rand()
    branch = _rand()
    text = s.invite_text(a, target, call_id, tag, branch)
    a.send(text, a.sdp())
    final = a.response(call_id, "INVITE")
    provisional = [m for m in a.inbox if m.is_response and m.get("call-id") == call_id]
    a.inbox.clear()
    if final is not None:     # ACK the non-2xx final (hop by hop, same branch)
        a.send(f"ACK sip:{target}@{DOMAIN} SIP/2.0\nVia: {a.via(branch)}\nMax-Forwards: 70\n"
               f"From: {final.get('from')}\nTo: {final.get('to')}\nCall-ID: {call_id}\nCSeq: 1 ACK\n")
    return {"responses": provisional + [final], "cdr": s.new_cdr_rows(), "final": final}


def case_callee_unprovisioned(s: Session) -> dict:
    out = _invite_to(s, UNPROVISIONED)
    out.pop("final")
    return out


def case_callee_unregistered(s: Session) -> dict:
    out = _invite_to(s, UNREGISTERED)
    out.pop("final")
    return out


def case_message(s: Session) -> dict:
    a, b = s.alice, s.bob
    call_id = f"msg-{_rand()}"
    body = b"hello golden"
    a.send(f"MESSAGE sip:{CALLEE}@{DOMAIN} SIP/2.0\nVia: {a.via(_rand())}\nMax-Forwards: 70\n"
           f"From: <sip:{CALLER}@{DOMAIN}>;tag={_rand()}\nTo: <sip:{CALLEE}@{DOMAIN}>\nCall-ID: {call_id}\n"
           f"CSeq: 1 MESSAGE\nUser-Agent: golden-client/1\nContent-Type: text/plain\n", body)
    got = b.request("MESSAGE", call_id)
    responses = []
    if got is not None:
        s.answer(b, got, 200, "OK", _rand())
    final = a.response(call_id, "MESSAGE")
    responses.append(final)
    return {"responses": responses, "callee_received": [got], "cdr": s.new_cdr_rows()}


def _call(s: Session, late_offer: bool = False, cancel: bool = False, busy: bool = False) -> dict:
    a, b = s.alice, s.bob
    call_id, atag, btag = f"call-{_rand()}", _rand(), _rand()
    a.send(s.invite_text(a, CALLEE, call_id, atag, _rand(), has_body=not late_offer),
           b"" if late_offer else a.sdp())
    invite = b.request("INVITE", call_id)
    out: dict = {"callee_received": [invite], "responses": []}
    if invite is None:
        out["responses"].append(a.response(call_id, "INVITE"))
        out["cdr"] = s.new_cdr_rows()
        return out
    s.answer(b, invite, 180, "Ringing", btag)
    ringing = a.response(call_id, "INVITE", final=False)
    while ringing is not None and ringing.status == 100:
        out["responses"].append(ringing)
        ringing = a.response(call_id, "INVITE", final=False)
    out["responses"].append(ringing)
    if busy:
        s.answer(b, invite, 486, "Busy Here", btag)
        final = a.response(call_id, "INVITE")
        out["responses"].append(final)
        if final is not None:
            s.ack_failure(a, invite, final, call_id)
        out["callee_received"].append(b.request("ACK", call_id, timeout=1.0))
        out["cdr"] = s.new_cdr_rows()
        return out
    if cancel:
        a.send(f"CANCEL sip:{CALLEE}@{DOMAIN} SIP/2.0\nVia: {invite.all('via')[-1]}\nMax-Forwards: 70\n"
               f"From: <sip:{CALLER}@{DOMAIN}>;tag={atag}\nTo: <sip:{CALLEE}@{DOMAIN}>\nCall-ID: {call_id}\n"
               f"CSeq: 1 CANCEL\n")
        out["responses"].append(a.response(call_id, "CANCEL"))
        got_cancel = b.request("CANCEL", call_id)
        out["callee_received"].append(got_cancel)
        if got_cancel is not None:
            s.answer(b, got_cancel, 200, "OK", btag)
            s.answer(b, invite, 487, "Request Terminated", btag)
        final = a.response(call_id, "INVITE", timeout=2.0)
        out["responses"].append(final)
        if final is not None:
            s.ack_failure(a, invite, final, call_id)
        out["callee_received"].append(b.request("ACK", call_id, timeout=1.0))
        # where did the 487 go, if not to the caller
        a.drain(0.3)
        b.drain(0.3)
        stray = [m for m in (a.inbox + b.inbox) if m.is_response and m.get("call-id") == call_id]
        out["stray_responses"] = stray
        a.inbox.clear()
        b.inbox.clear()
        out["cdr"] = s.new_cdr_rows()
        return out
    s.answer(b, invite, 200, "OK", btag, b.sdp("2"))
    ok = a.response(call_id, "INVITE")
    out["responses"].append(ok)
    # punch packets: what reaches each UA's RTP port before anyone sends media
    punch_a, punch_b = a.rtp_collect(PUNCH_WINDOW / 2), b.rtp_collect(PUNCH_WINDOW / 2)
    if ok is None:
        out["cdr"] = s.new_cdr_rows()
        return out
    s.ack_2xx(a, ok, call_id, atag, a.sdp() if late_offer else b"")
    ack = b.request("ACK", call_id)
    out["callee_received"].append(ack)
    more_a, more_b = a.rtp_collect(PUNCH_WINDOW / 2), b.rtp_collect(PUNCH_WINDOW / 2)
    out["punch"] = {"alice": _rtp_summary(punch_a, more_a), "bob": _rtp_summary(punch_b, more_b)}
    # media both ways, each side to the address the SDP it received names
    a_dest = sdp_audio(ok.body)
    b_dest = sdp_audio(ack.body if late_offer and ack is not None and ack.body else invite.body)
    media = {}
    if a_dest and b_dest:
        a.rtp_send(a_dest, RTP_PACKETS, 0xA1)
        b.rtp_send(b_dest, RTP_PACKETS, 0xB2)
        got_b, got_a = b.rtp_collect(0.5), a.rtp_collect(0.3)
        media = {"alice_to_bob": got_b["ssrcs"].get(0xA1, 0), "bob_to_alice": got_a["ssrcs"].get(0xB2, 0),
                 "alice_sends_to": "callee" if a_dest == (b.host, b.rtp_port) else "relay",
                 "bob_sends_to": "caller" if b_dest == (a.host, a.rtp_port) else "relay"}
    out["media"] = media
    time.sleep(0.4)
    s.in_dialog(a, "BYE", ok, call_id, atag, 2, True, ok)
    bye = b.request("BYE", call_id)
    out["callee_received"].append(bye)
    if bye is not None:
        s.answer(b, bye, 200, "OK", btag)
        out["responses"].append(a.response(call_id, "BYE"))
    out["responses"] = [r for r in out["responses"] if r is not None] or [None]
    out["cdr"] = s.new_cdr_rows()
    return out


def _rtp_summary(*parts: dict) -> dict:
    packets = sum(p["packets"] for p in parts)
    sizes = sorted(set().union(*(p["payload_sizes"] for p in parts)))
    return {"packets": packets, "payload_sizes": sizes}


def case_call(s: Session) -> dict:
    return _call(s)


def case_late_offer(s: Session) -> dict:
    return _call(s, late_offer=True)


def case_cancel(s: Session) -> dict:
    return _call(s, cancel=True)


def case_busy(s: Session) -> dict:
    return _call(s, busy=True)


# order matters: registration first, the unregister case re-registers alice
CASES = {
    "options": case_options,
    "register": case_register,
    "register_wrong_password": case_register_wrong_password,
    "callee_unprovisioned": case_callee_unprovisioned,
    "callee_unregistered": case_callee_unregistered,
    "message": case_message,
    "call": case_call,
    "late_offer": case_late_offer,
    "busy": case_busy,
    "cancel": case_cancel,
    "unregister": case_unregister,
}


# --- normalisation --------------------------------------------------------------------------------
class Normaliser:
    """Replaces what differs between runs (ports, tags, branches, Call-IDs, times, nonces) with
    role names and shapes, keeping what a UA or a billing importer sees."""

    def __init__(self, s: Session):
        a, b = s.alice, s.bob
        self.host = s.server[0]
        self.ports = {s.server[1]: "SERVER", a.port: "ALICE", b.port: "BOB",
                      a.rtp_port: "ALICE_RTP", b.rtp_port: "BOB_RTP"}

    def addr(self, text: str) -> str:
        def port(m: re.Match) -> str:
            p = int(m.group(2))
            return f"{m.group(1)}:{self.ports.get(p, 'PORT')}"
        text = re.sub(r"(\b\d{1,3}(?:\.\d{1,3}){3}):(\d+)", port, text)
        return text.replace(self.host, "HOST")

    def header(self, name: str, value: str) -> str:
        value = self.addr(value)
        value = re.sub(r"tag=[^;>\s,]+", "tag=T", value)
        value = re.sub(r"branch=[^;>\s,]+", "branch=B", value)
        value = re.sub(r'nonce="[^"]*"', 'nonce="N"', value)
        value = re.sub(r'opaque="[^"]*"', 'opaque="O"', value)
        value = re.sub(r"\b(reg|unreg|rereg|inv|call|msg|opt)-[a-z0-9]{10}\b", r"\1-ID", value)
        if name == "date":
            return "<date>"
        return value

    def message(self, m: "Msg | None") -> dict | None:
        if m is None:
            return None
        out = {"start": self.header("", m.first)}
        headers: dict[str, list[str]] = {}
        for name, value in m.headers:
            if name in KEPT_HEADERS:
                headers.setdefault(name, []).append(self.header(name, value))
        headers["via_count"] = [str(len(m.all("via")))]
        out["headers"] = dict(sorted(headers.items()))
        if m.body:
            dest = sdp_audio(m.body)
            if m.get("content-type", ) and "sdp" in (m.get("content-type") or ""):
                out["sdp_audio"] = self.addr(f"{dest[0]}:{dest[1]}") if dest else "none"
            else:
                out["body"] = m.body.decode("utf-8", "replace")
        return out

    def cdr(self, row: dict) -> dict:
        out = {}
        for k, v in row.items():
            out[k] = self.cdr_value(k, v)
        return out

    def cdr_value(self, column: str, v: str) -> str:
        if v == "":
            return ""
        if column == "record_id":
            return "<yyyymmddhhmmss+6>" if re.fullmatch(r"\d{20}", v) else f"<other:{len(v)}>"
        if column == "date":
            return "<yyyy-mm-dd>" if re.fullmatch(r"\d{4}-\d\d-\d\d", v) else v
        if column in ("start_time", "end_time"):
            return "<hh:mm:ss>" if re.fullmatch(r"\d\d:\d\d:\d\d", v) else v
        if column.endswith("_time") and column != "setup_time":
            return "<hh:mm:ss.mmm>" if re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", v) else v
        if column == "setup_time":
            return "<seconds.2f>s" if re.fullmatch(r"\d+\.\d\ds", v) else v
        if column == "duration":
            if v == repr(round(float(v), 2)) and not re.fullmatch(r"\d+\.\d0", v):
                return "<round(seconds,2)>"
            return "<seconds.2f>" if re.fullmatch(r"\d+\.\d\d", v) else v
        if column in ("caller_port", "callee_port", "server_port"):
            return self.ports.get(int(v), "PORT") if v.isdigit() else v
        if column in ("caller_ip", "callee_ip", "server_ip"):
            return "HOST" if v == self.host else v
        return self.header(column, v)


def run_cases(server: tuple[str, int], cdr_dir: str | None, names=None) -> dict:
    """Drive every case (or ``names``) in order against ``server``; normalised results per case."""
    s = Session(server, cdr_dir)
    norm = Normaliser(s)
    results = {}
    try:
        for name, fn in CASES.items():
            if names and name not in names and name not in ("register",):
                continue
            s.log.clear()
            raw = fn(s)
            results[name] = normalise_case(norm, raw)
    finally:
        s.close()
    return results


def normalise_case(norm: Normaliser, raw: dict) -> dict:
    out = {}
    for key, value in raw.items():
        if key in ("responses", "callee_received", "stray_responses"):
            out[key] = [norm.message(m) for m in value]
        elif key == "cdr":
            out[key] = [norm.cdr(r) for r in value]
        else:
            out[key] = value
    return out


def flatten(obj, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = obj
    return out


def differences(golden: dict, observed: dict) -> dict[str, tuple]:
    """path -> (golden value, observed value) for every leaf that differs ('<absent>' if missing)."""
    g, o = flatten(golden), flatten(observed)
    return {k: (g.get(k, "<absent>"), o.get(k, "<absent>")) for k in sorted(set(g) | set(o))
            if g.get(k, "<absent>") != o.get(k, "<absent>")}


def load_golden(directory: str) -> dict:
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path, encoding="utf-8") as fh:
            out[os.path.basename(path)[:-5]] = json.load(fh)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="HOST:PORT of the server under test (loopback)")
    p.add_argument("--cdr-dir", help="the server's CDR directory (rows are read from its CSV files)")
    p.add_argument("--out", help="directory to write one <case>.json per case (default: print)")
    p.add_argument("--case", action="append", help="only this case (repeatable); register always runs")
    args = p.parse_args(argv)
    host, _, port = args.server.rpartition(":")
    results = run_cases((host, int(port)), args.cdr_dir, args.case)
    if not args.out:
        json.dump(results, sys.stdout, indent=1)
        return 0
    os.makedirs(args.out, exist_ok=True)
    for name, data in results.items():
        with open(os.path.join(args.out, f"{name}.json"), "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True, ensure_ascii=False)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
