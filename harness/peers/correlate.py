"""Correlation of what a run observed by the header the harness injects, not by Call-ID (sans-IO).

Every request the harness's own UA and the SIPp peer send carries ``X-Ims-Scenario-Run: <run>``;
the INVITE that starts the run's n-th call carries ``X-Ims-Scenario-Run: <run>;call=<n>``. A proxy
passes it on unchanged, so the callee's leg of call n carries it too, whatever Call-ID and tags a
B2BUA gives that leg. baresip cannot add a header: its calls are matched by position (the caller's
k-th call is the callee's k-th incoming INVITE dialog), which ``calls_of`` reports as ``by: order``.

Also here: what a peer UA saw, read from the capture taken in its own network namespace (the
SIP messages it received and the RTP it sent and received), in the shape of ``harness.ua``'s
observations so ``harness.observation`` treats every kind of UA alike.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.pcap import Datagram
from sipcore.errors import SDPParseError, SIPParseError
from sipcore.message import SIPRequest, SIPResponse, parse_message
from sipcore.sdp import SessionDescription

RUN_HEADER = "X-Ims-Scenario-Run"
_CALL = re.compile(r";\s*call=(\d+)")


def run_value(run_id: str, call: int | None = None) -> str:
    return run_id if call is None else f"{run_id};call={call}"


def parse_run(value: str | None) -> tuple[str, int | None]:
    """``(run id, call number or None)`` of a header value; ``("", None)`` when absent."""
    if not value:
        return "", None
    m = _CALL.search(value)
    return value.split(";", 1)[0].strip(), int(m.group(1)) if m else None


# --- peer observations from a capture -----------------------------------------------------------
def is_rtp(payload: bytes) -> bool:
    """RTP version 2 with an audio payload type (RTCP's 200-204 excluded; SIP text and STUN start
    with other bits)."""
    return len(payload) >= 12 and payload[0] >> 6 == 2 and not 72 <= (payload[1] & 0x7F) <= 76


_SILENCE = (0xFF, 0x7F, 0xD5, 0x55)     # G.711 mu-law / A-law digital silence


def is_silence(payload: bytes) -> bool:
    """An RTP packet whose audio is one G.711 silence value throughout: stage 0's NAT punch
    packets (legacy.rtp_relay), which prove that a relay port is open, not that audio arrived."""
    body = payload[12 + 4 * (payload[0] & 0x0F):]
    return bool(body) and body[0] in _SILENCE and body.count(body[0]) == len(body)


@dataclass
class PeerCapture:
    """What one peer UA sent and received, from datagrams captured in its own namespace."""
    local_ip: str
    sip_port: int = 5060
    observed: dict = field(default_factory=lambda: {"sdp_received": [], "vias": [], "codes": [],
                                                    "register_contacts": [], "messages": [],
                                                    "requests_received": [], "dialogs": []})
    media_ports: set[int] = field(default_factory=set)
    rtp_sent: int = 0
    rtp_received: int = 0
    silence_received: int = 0

    def feed(self, datagrams: list[Datagram]) -> "PeerCapture":
        sip = [d for d in datagrams if self.sip_port in (d.sport, d.dport) and not is_rtp(d.payload)]
        for d in sip:       # the media ports first: the SDP this UA sent names them
            if d.src == self.local_ip:
                msg = _parse(d.payload)
                if msg is not None and msg.has_sdp():
                    port = _media_port(msg.body)
                    if port:
                        self.media_ports.add(port)
        for d in sip:
            msg = _parse(d.payload)
            if msg is not None:
                self._sip(msg, outgoing=d.src == self.local_ip)
        sip_ids = {id(d) for d in sip}
        for d in datagrams:
            if id(d) in sip_ids or not is_rtp(d.payload):
                continue
            if d.src == self.local_ip and d.sport in self.media_ports:
                self.rtp_sent += 1
            elif d.dst == self.local_ip and d.dport in self.media_ports:
                if is_silence(d.payload):
                    self.silence_received += 1
                else:
                    self.rtp_received += 1
        return self

    def _sip(self, msg, outgoing: bool) -> None:
        run, call = parse_run(msg.headers.get(RUN_HEADER))
        if isinstance(msg, SIPRequest) and msg.method == "INVITE" and "tag=" not in (msg.headers.get("To") or "") \
                and msg.call_id not in {d["call_id"] for d in self.observed["dialogs"]}:     # not its 407 retry
            self.observed["dialogs"].append({"call_id": msg.call_id, "role": "uac" if outgoing else "uas",
                                             "run": run, "call": call})
        if outgoing:
            return
        if isinstance(msg, SIPResponse):
            method = msg.cseq[1] if msg.cseq else ""
            via = msg.top_via()
            if via is not None:
                self.observed["vias"].append({"method": method, "status": msg.status,
                                              "received": via.params.get("received"),
                                              "rport": via.params.get("rport")})
            if msg.status >= 200:
                self.observed["codes"].append({"method": method, "status": msg.status})
            where = str(msg.status)
        else:
            self.observed["requests_received"].append(msg.method)
            where = msg.method
        if msg.has_sdp():
            try:
                sd = SessionDescription.parse(msg.body)
            except SDPParseError:
                return
            if sd.media:
                m = sd.media[0]
                self.observed["sdp_received"].append({
                    "where": where, "c": sd.media_address(0), "o": sd.origin.address if sd.origin else None,
                    "m_port": m.port, "rtcp": None, "direction": m.direction})

    def observations(self, sender: str) -> dict:
        """``harness.ua``-shaped observations; RTP received is credited to ``sender`` (the other party)."""
        return {**self.observed, "rtp": {"capture": {"sent": self.rtp_sent, "silence_received": self.silence_received,
                                                     "received": {sender: {"unique": self.rtp_received}}}}}


def _parse(payload: bytes):
    try:
        return parse_message(payload)
    except SIPParseError:
        return None


def _media_port(body: bytes) -> int | None:
    try:
        sd = SessionDescription.parse(body)
    except SDPParseError:
        return None
    return sd.media[0].port if sd.media else None


# --- calls of a run across both legs ------------------------------------------------------------
def calls_of(run_id: str, dialogs: dict[str, list[dict]], caller: str = "alice", callee: str = "bob") -> list[dict]:
    """The run's calls, each with the Call-ID of its caller leg and of its callee leg.

    ``dialogs``: per party, the INVITE dialogs it saw (``{call_id, role, run, call}``). A leg is
    matched by the injected header (``by: header``) when both legs carry this run's call number,
    else by position (``by: order``)."""
    out_legs = [d for d in dialogs.get(caller, []) if d.get("role") == "uac"]
    in_legs = [d for d in dialogs.get(callee, []) if d.get("role") == "uas"]
    by_number = {d["call"]: d for d in in_legs if d.get("run") == run_id and d.get("call") is not None}
    calls = []
    for k, leg in enumerate(out_legs):
        n = leg.get("call") if leg.get("run") == run_id else None
        other = by_number.get(n) if n is not None else None
        by = "header"
        if other is None:       # baresip, or a server that drops the header (the Sippy B2BUA does)
            other, by = (in_legs[k] if k < len(in_legs) else None), "order"
        calls.append({"call": k + 1, "caller_call_id": leg.get("call_id"),
                      "callee_call_id": other.get("call_id") if other else None,
                      "by": by if other else "unmatched"})
    return calls
