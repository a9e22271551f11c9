"""Helpers to drive the sans-IO proxy in unit tests: a recorder for what it sends, an event log,
and a pass-through media backend (the real backends have their own tests in tests/media)."""
from __future__ import annotations

import time

from sipcore.media import MediaBackend
from sipcore.message import parse_message
from sipcore.proxy_driver import ProxyDriver
from sipcore.registrar import Registrar
from sipcore.stage_policy import StagePolicy

SERVER = ("198.51.100.1", 5060)
ALICE = ("203.0.113.10", 40000)
BOB = ("203.0.113.20", 41000)
SDP_A = "v=0\r\no=a 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
SDP_B = "v=0\r\no=b 1 1 IN IP4 192.168.2.20\r\ns=-\r\nc=IN IP4 192.168.2.20\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"


class RelayAt(MediaBackend):
    """Rewrites SDP to a fixed relay address and records the calls made to it."""
    name = "test-relay"

    def __init__(self):
        self.calls = []

    async def start(self):
        pass

    async def stop(self):
        pass

    async def offer(self, call_id, from_tag, to_tag, sdp, source):
        self.calls.append(("offer", call_id, from_tag, to_tag, sdp.media_address(0), source))
        out = sdp.copy()
        out.set_media_address(0, "198.51.100.1")
        out.set_media_port(0, 30000)
        return out

    async def answer(self, call_id, from_tag, to_tag, sdp, source):
        self.calls.append(("answer", call_id, from_tag, to_tag, sdp.media_address(0), source))
        out = sdp.copy()
        out.set_media_address(0, "198.51.100.1")
        out.set_media_port(0, 30002)
        return out

    async def delete(self, call_id, from_tag=None, to_tag=None):
        self.calls.append(("delete", call_id))


class EventLog:
    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        def record(*args):
            self.events.append((name, args))
        return record

    def names(self):
        return [n for n, _ in self.events]


class Wire:
    def __init__(self):
        self.sent = []

    def __call__(self, msg, addr, transport):
        self.sent.append((parse_message(msg.to_bytes()), addr))

    def take(self):
        out, self.sent = self.sent, []
        return out

    def take_request(self, method="INVITE"):
        """Take everything sent; return the (first) request of ``method`` among it."""
        return [m for m, _ in self.take() if getattr(m, "method", None) == method][0]


def make_proxy(stage=1, nat=None):
    wire, events, media = Wire(), EventLog(), RelayAt()
    policy = StagePolicy(stage, nat)
    reg = Registrar(contact_policy=policy.register_contact)
    proxy = ProxyDriver(host=SERVER[0], port=SERVER[1], policy=policy, registrar=reg, media=media,
                        events=events, send=wire, user_exists=lambda u: u in ("1001", "1002"))
    return proxy, wire, events, media, reg


def register(reg, user, source, contact_host):
    msg = parse_message((
        f"REGISTER sip:sip.local SIP/2.0\r\nVia: SIP/2.0/UDP {contact_host}:5060;branch=z9hG4bKreg{user}\r\n"
        f"From: <sip:{user}@sip.local>;tag=r\r\nTo: <sip:{user}@sip.local>\r\nCall-ID: reg-{user}\r\n"
        f"CSeq: 1 REGISTER\r\nContact: <sip:{user}@{contact_host}:5060>\r\nContent-Length: 0\r\n\r\n").encode())
    reg.handle_register(msg, source, "udp", time.time())


def invite(branch="z9hG4bKinv1", max_forwards=70, to_user="1002", body=SDP_A, call_id="call1"):
    return parse_message((
        f"INVITE sip:{to_user}@sip.local SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.10:5060;branch={branch};rport\r\n"
        f"Max-Forwards: {max_forwards}\r\nFrom: \"Alice\" <sip:1001@sip.local>;tag=ftag\r\n"
        f"To: <sip:{to_user}@sip.local>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:1001@192.168.1.10:5060>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}").encode())


def response_to(forwarded, status, reason, to_tag="ttag", body="", contact="<sip:1002@192.168.2.20:5060>"):
    vias = "".join(f"Via: {v}\r\n" for v in forwarded.headers.get_raw("Via"))
    rr = "".join(f"Record-Route: {v}\r\n" for v in forwarded.headers.get_raw("Record-Route"))
    to = forwarded.headers.get("To") + (f";tag={to_tag}" if status > 100 else "")
    ct = "Content-Type: application/sdp\r\n" if body else ""
    return parse_message((
        f"SIP/2.0 {status} {reason}\r\n{vias}{rr}From: {forwarded.headers.get('From')}\r\nTo: {to}\r\n"
        f"Call-ID: {forwarded.call_id}\r\nCSeq: {forwarded.headers.get('CSeq')}\r\nContact: {contact}\r\n"
        f"{ct}Content-Length: {len(body)}\r\n\r\n{body}").encode())


def in_dialog(method, branch, from_tag="ftag", to_tag="ttag", cseq=2, call_id="call1",
              from_user="1001", to_user="1002", route=f"<sip:{SERVER[0]}:{SERVER[1]};lr>", body=""):
    """An in-dialog request; ``route`` is its Route value (None: no Route header)."""
    route_line = f"Route: {route}\r\n" if route else ""
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return parse_message((
        f"{method} sip:{to_user}@192.168.2.20:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.10:5060;branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\n{route_line}"
        f"From: <sip:{from_user}@sip.local>;tag={from_tag}\r\nTo: <sip:{to_user}@sip.local>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{ctype}Content-Length: {len(body)}\r\n\r\n{body}").encode())
