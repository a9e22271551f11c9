"""A scriptable SIP user agent (UDP) built on sipcore messages: register, call, answer, reject,
cancel, hold/resume, MESSAGE, OPTIONS, BYE, with digest auth and RFC 3261 retransmissions.
It records what it saw (final codes, SDP received, Via received/rport) for the harness."""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field

from harness.peers.correlate import RUN_HEADER, parse_run, run_value
from harness.rtp_stream import RtpStream
from sipcore.digest import compute_ha1, compute_response, parse_auth_params
from sipcore.errors import SDPParseError, SIPParseError
from sipcore.message import (Headers, SIPRequest, SIPResponse, build_response, new_branch, new_tag,
                             parse_message)
from sipcore.sdp import SessionDescription
from sipcore.transaction import ClientTransaction
from sipcore.transaction_runner import RunningTransaction
from sipcore.uri import NameAddr, SipURI, equivalent

log = logging.getLogger(__name__)
T1, T2 = 0.5, 4.0


@dataclass
class UAConfig:
    user: str
    password: str = ""
    domain: str = "sip.local"
    server: tuple[str, int] = ("127.0.0.1", 5060)
    local_ip: str = "127.0.0.1"
    sip_port: int = 5060
    rtp_port: int = 40000
    contact_params: str = ""
    expires: int = 300
    display: str = ""
    advertise_rtcp: bool = False
    answer_mode: str = "auto"           # auto | busy | ring | ignore | early_media | early_media_100rel
    answer_after_ms: int = 200
    rtp_mode: str = "active"            # active | silent | after_first_packet
    rtp_from_port: int | None = None
    timer_b: float = 32.0
    late_offer: bool = False            # INVITE without SDP: the offer comes in the 200 / reliable 183
    early_update: bool = False          # after a reliable 183 and its PRACK: UPDATE with SDP before the 200
    decline_video: bool = False         # answer an offered video stream with port 0
    run_id: str = ""                    # X-Ims-Scenario-Run on every request (harness.peers.correlate)


@dataclass
class Call:
    call_id: str
    local_tag: str
    remote_uri: str
    outgoing: bool
    remote_tag: str | None = None
    remote_target: str | None = None
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 1
    invite: SIPRequest | None = None
    state: str = "init"
    rtp: RtpStream | None = None
    final_code: int | None = None
    local_sdp_version: int = 1
    pending_200: SIPResponse | None = None
    offer_answered: bool = False        # our late offer's exchange completed in a PRACK
    video: bool = False
    from_hdr: str = ""
    to_hdr: str = ""


class UserAgent:
    def __init__(self, cfg: UAConfig, emit):
        self.cfg = cfg
        self.emit = emit                       # callback(dict) for events
        self.transport: asyncio.DatagramTransport | None = None
        # (branch, method) -> the client transaction and the future of its final response
        self.pending: dict[tuple, tuple[RunningTransaction, asyncio.Future]] = {}
        self.calls: dict[str, Call] = {}
        self.answered: dict[tuple, SIPResponse] = {}   # (call-id, cseq, method) -> response sent
        self.transcript: list[str] = []
        self.observed = {"sdp_received": [], "vias": [], "codes": [], "register_contacts": [],
                         "messages": [], "requests_received": [], "dialogs": []}
        self.reg_call_id = f"reg-{secrets.token_hex(6)}"
        self.reg_cseq = 0
        self.nc = 0
        self.calls_made = 0

    # --- transport ----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        class P(asyncio.DatagramProtocol):
            def datagram_received(p, data, addr):
                self._datagram(data, (addr[0], addr[1]))

        self.transport, _ = await loop.create_datagram_endpoint(P, local_addr=(self.cfg.local_ip, self.cfg.sip_port))

    def _log(self, direction: str, addr, data: bytes) -> None:
        self.transcript.append(f"--- {time.time():.3f} {direction} {addr[0]}:{addr[1]}\n"
                               + data.decode("utf-8", "replace"))

    def send(self, msg, addr) -> None:
        data = msg.to_bytes()
        self._log("TX", addr, data)
        self.transport.sendto(data, addr)

    def _datagram(self, data: bytes, addr) -> None:
        if not data.strip():
            return
        self._log("RX", addr, data)
        try:
            msg = parse_message(data)
        except SIPParseError as exc:
            log.info("unparsable message from %s: %s", addr, exc.reason)
            return
        if isinstance(msg, SIPResponse):
            self._response(msg)
        else:
            asyncio.get_running_loop().create_task(self._request(msg, addr))

    # --- client side --------------------------------------------------------------------------
    def _contact(self) -> str:
        return f"<sip:{self.cfg.user}@{self.cfg.local_ip}:{self.cfg.sip_port}{self.cfg.contact_params}>"

    def _base(self, method: str, uri: str, call_id: str, cseq: int, from_tag: str, to: str) -> SIPRequest:
        h = Headers()
        h.add("Via", f"SIP/2.0/UDP {self.cfg.local_ip}:{self.cfg.sip_port};branch={new_branch()};rport")
        h.add("Max-Forwards", "70")
        disp = f'"{self.cfg.display}" ' if self.cfg.display else ""
        h.add("From", f"{disp}<sip:{self.cfg.user}@{self.cfg.domain}>;tag={from_tag}")
        h.add("To", to)
        h.add("Call-ID", call_id)
        h.add("CSeq", f"{cseq} {method}")
        h.add("User-Agent", "ims-migrate-harness-ua")
        if self.cfg.run_id:
            h.add(RUN_HEADER, self.cfg.run_id)
        return SIPRequest(method, uri, h)

    def _response(self, resp: SIPResponse) -> None:
        via = resp.top_via()
        if via is None:
            return
        self.observed["vias"].append({"method": resp.cseq[1], "status": resp.status,
                                      "received": via.received, "rport": via.params.get("rport")})
        key = (via.branch or "", resp.cseq[1])
        if resp.cseq[1] == "INVITE" and 200 <= resp.status < 300 and key not in self.pending:
            call = self.calls.get(resp.call_id or "")
            if call is not None and call.state in ("confirmed", "ended") and call.remote_tag == resp.to_tag:
                self._ack_2xx(call, resp)      # retransmitted 2xx: ACK again
                return
        entry = self.pending.get(key)
        if entry is None:
            return
        run, fut = entry
        for passed in run.response(resp):      # the transaction ACKs a non-2xx final itself
            if passed.status < 200:
                self._on_provisional(passed)
            elif not fut.done():
                fut.set_result(passed)

    async def transact(self, req: SIPRequest, dest=None) -> SIPResponse | None:
        """Send through an RFC 3261 client transaction (sipcore.transaction: Timer A/E
        retransmissions, ACK of non-2xx finals); return the final response, or None after
        ``timer_b`` seconds (at most 64*T1, the transaction's own Timer B/F)."""
        dest = dest or self.cfg.server
        key = (req.top_via().branch, req.method)      # CANCEL shares the INVITE's branch
        fut = asyncio.get_running_loop().create_future()
        run = RunningTransaction(ClientTransaction(req), lambda msg, addr, _tr: self.send(msg, addr), dest, "udp",
                                 on_timeout=lambda: fut.done() or fut.set_result(None))
        self.pending[key] = (run, fut)
        try:
            run.start()
            resp = await asyncio.wait_for(fut, self.cfg.timer_b)
        except asyncio.TimeoutError:
            resp = None
        finally:
            if run.state == "completed":
                # a non-2xx final: the transaction stays to ACK its retransmissions until Timer D/K
                asyncio.get_running_loop().call_later(64 * T1, self._forget_transaction, key, run)
            else:
                run.stop()
                self.pending.pop(key, None)
        self.observed["codes"].append({"method": req.method, "status": resp.status if resp else 408})
        return resp

    def _forget_transaction(self, key: tuple, run: RunningTransaction) -> None:
        run.stop()
        if self.pending.get(key, (None,))[0] is run:
            del self.pending[key]

    def _authorize(self, req: SIPRequest, resp: SIPResponse) -> bool:
        header = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
        challenges = resp.headers.get_raw(header)
        chosen = None
        for c in challenges:
            _, p = parse_auth_params(c)
            if (p.get("algorithm") or "MD5").upper() in ("SHA-256", "MD5"):
                if chosen is None or (p.get("algorithm") or "").upper() == "SHA-256":
                    chosen = p
        if chosen is None:
            return False
        alg = (chosen.get("algorithm") or "MD5").upper()
        realm, nonce = chosen.get("realm", ""), chosen.get("nonce", "")
        ha1 = compute_ha1(self.cfg.user, realm, self.cfg.password, alg)
        self.nc += 1
        nc = f"{self.nc:08x}"
        cnonce = secrets.token_hex(8)
        uri = str(req.uri)
        qop = "auth" if "auth" in chosen.get("qop", "") else None
        response = compute_response(alg, ha1, nonce, req.method, uri, qop, nc if qop else None, cnonce if qop else None)
        value = (f'Digest username="{self.cfg.user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                 f'response="{response}", algorithm={alg}')
        if qop:
            value += f', qop=auth, nc={nc}, cnonce="{cnonce}"'
        name = "Authorization" if resp.status == 401 else "Proxy-Authorization"
        req.headers.remove(name)
        req.headers.add(name, value)
        return True

    async def request_with_auth(self, req: SIPRequest, dest=None) -> SIPResponse | None:
        resp = await self.transact(req, dest)
        if resp is not None and resp.status in (401, 407):
            if not self._authorize(req, resp):
                return resp
            cseq, method = req.cseq
            req.headers.set("CSeq", f"{cseq + 1} {method}")
            via = req.headers.get("Via")
            req.headers.set("Via", via.split(";branch=")[0] + f";branch={new_branch()};rport")
            resp = await self.transact(req, dest)
        return resp

    async def register(self, expires: int | None = None) -> dict:
        expires = self.cfg.expires if expires is None else expires
        self.reg_cseq += 1
        req = self._base("REGISTER", f"sip:{self.cfg.domain}", self.reg_call_id, self.reg_cseq, new_tag(),
                         f"<sip:{self.cfg.user}@{self.cfg.domain}>")
        req.headers.add("Contact", self._contact())
        req.headers.add("Expires", str(expires))
        resp = await self.request_with_auth(req)
        if resp is not None:
            self.reg_cseq = resp.cseq[0]
        contacts = resp.headers.get_all("Contact") if resp is not None else []
        self.observed["register_contacts"].append(contacts)
        return {"code": resp.status if resp else 408, "contacts": contacts, "own_binding": self._own_binding(contacts)}

    def _own_binding(self, contacts: list[str]) -> bool:
        """The REGISTER 200 lists our Contact as we sent it, with an expires parameter (RFC 3261
        §10.3 step 8): that is how a UA finds its own binding among the AOR's."""
        mine = NameAddr.parse(self._contact()).uri
        for value in contacts:
            try:
                na = NameAddr.parse(value)
            except SIPParseError:
                continue
            if na.uri is not None and equivalent(na.uri, mine) and "expires" in na.params:
                return True
        return False

    # --- SDP ----------------------------------------------------------------------------------
    def _sdp(self, call: Call, direction: str = "sendrecv", hold_zero: bool = False, video: bool | None = None) -> bytes:
        video = call.video if video is None else video
        ip = "0.0.0.0" if hold_zero else self.cfg.local_ip
        port = call.rtp.port if call.rtp else self.cfg.rtp_port
        lines = ["v=0", f"o={self.cfg.user} 1000 {call.local_sdp_version} IN IP4 {self.cfg.local_ip}", "s=ims-harness",
                 f"c=IN IP4 {ip}", "t=0 0", f"m=audio {port} RTP/AVP 0 101", "a=rtpmap:0 PCMU/8000",
                 "a=rtpmap:101 telephone-event/8000"]
        if self.cfg.advertise_rtcp:
            lines.append(f"a=rtcp:{port + 1} IN IP4 {self.cfg.local_ip}")
        lines.append(f"a={direction}")
        if video:
            vport = 0 if self.cfg.decline_video and not call.outgoing else port + 2
            lines += [f"m=video {vport} RTP/AVP 96", "a=rtpmap:96 H264/90000"]
        return ("\r\n".join(lines) + "\r\n").encode()

    def _apply_remote_sdp(self, call: Call, body: bytes, where: str) -> None:
        try:
            sd = SessionDescription.parse(body)
        except SDPParseError:
            return
        m = sd.media[0]
        rtcp = m.rtcp
        self.observed["sdp_received"].append({
            "where": where, "c": sd.media_address(0), "o": sd.origin.address if sd.origin else None,
            "m_port": m.port, "rtcp": [rtcp[0], rtcp[1].address if rtcp[1] else None] if rtcp else None,
            "direction": m.direction})
        if call.rtp is not None and sd.media_address(0):
            rtcp_target = None
            if rtcp:
                rtcp_target = (rtcp[1].address if rtcp[1] else sd.media_address(0), rtcp[0])
            call.rtp.set_remote(sd.media_address(0), m.port, rtcp_target)
            call.rtp.paused = sd.is_hold(0) and m.direction in ("recvonly", "inactive")

    async def _open_rtp(self, call: Call) -> None:
        if call.rtp is None:
            for other in self.calls.values():      # one media port per UA: close finished calls
                if other is not call and other.rtp is not None and other.rtp._t_rtp is not None:
                    await other.rtp.close()
                    other.rtp._t_rtp = None
            call.rtp = RtpStream(self.cfg.user, 1 if call.outgoing else 2, self.cfg.local_ip, self.cfg.rtp_port,
                                 mode=self.cfg.rtp_mode, from_port=self.cfg.rtp_from_port)
            await call.rtp.open()

    # --- calls (UAC) --------------------------------------------------------------------------
    async def call(self, target: str, video: bool = False) -> dict:
        uri = target if target.startswith("sip:") else f"sip:{target}@{self.cfg.domain}"
        call = Call(call_id=f"{secrets.token_hex(8)}@{self.cfg.local_ip}", local_tag=new_tag(), remote_uri=uri, outgoing=True)
        self.calls[call.call_id] = call
        await self._open_rtp(call)
        req = self._base("INVITE", uri, call.call_id, 1, call.local_tag, f"<{uri}>")
        self.calls_made += 1
        if self.cfg.run_id:     # the run's n-th call: what correlates both legs, whatever the server does to ids
            req.headers.replace_all(RUN_HEADER, [run_value(self.cfg.run_id, self.calls_made)])
        self.observed["dialogs"].append({"call_id": call.call_id, "role": "uac", "run": self.cfg.run_id,
                                         "call": self.calls_made if self.cfg.run_id else None})
        req.headers.add("Contact", self._contact())
        if not self.cfg.late_offer:
            req.headers.add("Content-Type", "application/sdp")
            req.body = self._sdp(call, video=video)
        call.invite = req
        call.video = video
        call.from_hdr, call.to_hdr = req.headers.get("From"), req.headers.get("To")
        call.state = "calling"
        dest = self._target_addr(uri)
        resp = await self.request_with_auth(req, dest)
        call.invite = req
        call.local_cseq = max(call.local_cseq, req.cseq[0])
        code = resp.status if resp else 408
        call.final_code = code
        if resp is not None and 200 <= code < 300:
            self._dialog_from_response(call, resp)
            if resp.has_sdp():
                self._apply_remote_sdp(call, resp.body, "200")
            call.state = "confirmed"
            # late offer: the 200 carried the offer, the answer goes in the ACK
            late = not req.has_sdp() and resp.has_sdp() and not call.offer_answered
            self._ack_2xx(call, resp, self._sdp(call) if late else None)
            call.rtp.start()
            self.emit({"event": "answered", "call_id": call.call_id})
        else:
            call.state = "ended"
            await call.rtp.close()
        return {"code": code, "call_id": call.call_id}

    def _target_addr(self, uri: str):
        u = SipURI.parse(uri)
        if u.host in (self.cfg.domain,) or u.host == self.cfg.server[0]:
            return self.cfg.server
        return (u.host, u.port or 5060)

    def _on_provisional(self, resp: SIPResponse) -> None:
        call = self.calls.get(resp.call_id or "")
        if call is None or resp.cseq[1] != "INVITE":
            return
        if resp.status == 180:
            self.emit({"event": "ringing", "call_id": call.call_id})
        if resp.status == 183 and resp.has_sdp() and call.state == "calling":
            self._apply_remote_sdp(call, resp.body, "183")
            call.state = "early"
            if call.rtp:
                call.rtp.start()
            self.emit({"event": "early_media", "call_id": call.call_id})
        rseq = resp.headers.get("RSeq")
        if rseq and "100rel" in (resp.headers.get("Require") or "") and call.remote_tag is None:
            self._dialog_from_response(call, resp)       # the early dialog (RFC 3262)
            asyncio.get_running_loop().create_task(self._prack(call, resp, rseq.strip()))

    async def _prack(self, call: Call, resp: SIPResponse, rseq: str) -> None:
        """PRACK a reliable provisional (RFC 3262 §4): with our answer when it carried the offer
        of our SDP-less INVITE; then, with ``early_update``, an UPDATE offer in the early dialog."""
        prack = self._in_dialog(call, "PRACK")
        prack.headers.add("RAck", f"{rseq} {resp.cseq[0]} INVITE")
        if resp.has_sdp() and call.invite is not None and not call.invite.has_sdp():
            prack.headers.add("Content-Type", "application/sdp")
            prack.body = self._sdp(call)
            call.offer_answered = True
        answer = await self.transact(prack, self._next_hop(call))
        if answer is None or answer.status >= 300 or not self.cfg.early_update:
            return
        update = self._in_dialog(call, "UPDATE")
        update.headers.add("Contact", self._contact())
        update.headers.add("Content-Type", "application/sdp")
        call.local_sdp_version += 1
        update.body = self._sdp(call)
        done = await self.transact(update, self._next_hop(call))
        if done is not None and 200 <= done.status < 300 and done.has_sdp():
            self._apply_remote_sdp(call, done.body, "update-200")

    def _dialog_from_response(self, call: Call, resp: SIPResponse) -> None:
        call.remote_tag = resp.to_tag
        call.to_hdr = resp.headers.get("To")
        contact = resp.headers.get("Contact")
        if contact:
            call.remote_target = str(NameAddr.parse(contact).uri)
        call.route_set = list(reversed(resp.headers.get_all("Record-Route")))

    def _in_dialog(self, call: Call, method: str) -> SIPRequest:
        if method != "ACK":
            call.local_cseq += 1
        target = call.remote_target or call.remote_uri
        req = self._base(method, target, call.call_id, call.local_cseq if method != "ACK" else call.invite.cseq[0] if call.invite else 1,
                         call.local_tag, call.to_hdr)
        req.headers.set("From", call.from_hdr)
        for r in call.route_set:
            req.headers.add("Route", r)
        return req

    def _ack_2xx(self, call: Call, resp: SIPResponse, body: bytes | None = None) -> None:
        ack = self._in_dialog(call, "ACK")
        ack.headers.set("CSeq", f"{resp.cseq[0]} ACK")
        if body:
            ack.headers.add("Content-Type", "application/sdp")
            ack.body = body
        self.send(ack, self._next_hop(call))

    def _next_hop(self, call: Call):
        if call.route_set:
            u = NameAddr.parse(call.route_set[0]).uri
            return (u.host, u.port or 5060)
        return self._target_addr(call.remote_target or call.remote_uri)

    async def hangup(self, call_id: str | None = None) -> dict:
        call = self._call(call_id)
        if call is None:
            return {"code": 481}
        req = self._in_dialog(call, "BYE")
        call.state = "ended"
        if call.rtp:
            call.rtp.stop_sending()          # a phone stops talking when it hangs up
        resp = await self.transact(req, self._next_hop(call))
        return {"code": resp.status if resp else 408}

    async def cancel(self, call_id: str | None = None) -> dict:
        call = self._call(call_id, states=("calling", "early"))
        if call is None or call.invite is None:
            return {"code": 481}
        inv = call.invite
        h = Headers()
        h.add("Via", inv.headers.get_raw("Via")[0])
        h.add("Max-Forwards", "70")
        for n in ("From", "To", "Call-ID"):
            h.add(n, inv.headers.get(n))
        h.add("CSeq", f"{inv.cseq[0]} CANCEL")
        cancel = SIPRequest("CANCEL", inv.uri.copy(), h)
        cancel.headers.set("Via", inv.headers.get_raw("Via")[0].split(";branch=")[0] + ";branch=" + inv.top_via().branch + ";rport")
        resp = await self.transact(cancel, self._target_addr(str(inv.uri)))
        return {"code": resp.status if resp else 408}

    async def reinvite(self, call_id: str | None, direction: str, hold_zero: bool = False,
                       with_sdp: bool = True, rtp_port: int | None = None) -> dict:
        """re-INVITE with our SDP (hold/resume), or without (``with_sdp=False``: the other side
        offers in its 200 and we answer in the ACK); ``rtp_port``: move our media there first
        and offer the new port."""
        call = self._call(call_id)
        if call is None:
            return {"code": 481}
        if rtp_port and call.rtp is not None:
            await call.rtp.move(int(rtp_port))
        req = self._in_dialog(call, "INVITE")
        req.headers.add("Contact", self._contact())
        call.local_sdp_version += 1
        if with_sdp:
            req.headers.add("Content-Type", "application/sdp")
            req.body = self._sdp(call, direction, hold_zero)
        resp = await self.request_with_auth(req, self._next_hop(call))
        if resp is not None and 200 <= resp.status < 300:
            if resp.has_sdp():
                self._apply_remote_sdp(call, resp.body, f"reinvite-{direction}" if with_sdp else "reoffer-200")
            ack = self._in_dialog(call, "ACK")
            ack.headers.set("CSeq", f"{resp.cseq[0]} ACK")
            if not with_sdp and resp.has_sdp():
                ack.headers.add("Content-Type", "application/sdp")
                ack.body = self._sdp(call, direction)
            self.send(ack, self._next_hop(call))
            if call.rtp:
                call.rtp.paused = direction in ("recvonly", "inactive")
        return {"code": resp.status if resp else 408}

    async def message(self, target: str, text: str) -> dict:
        uri = target if target.startswith("sip:") else f"sip:{target}@{self.cfg.domain}"
        req = self._base("MESSAGE", uri, f"{secrets.token_hex(8)}@{self.cfg.local_ip}", 1, new_tag(), f"<{uri}>")
        req.headers.add("Content-Type", "text/plain")
        req.body = text.encode()
        resp = await self.request_with_auth(req, self._target_addr(uri))
        return {"code": resp.status if resp else 408}

    async def options(self, target: str | None = None) -> dict:
        uri = target or f"sip:{self.cfg.domain}"
        req = self._base("OPTIONS", uri, f"{secrets.token_hex(8)}@{self.cfg.local_ip}", 1, new_tag(), f"<{uri}>")
        resp = await self.transact(req, self._target_addr(uri) if target else self.cfg.server)
        return {"code": resp.status if resp else 408}

    def _call(self, call_id=None, states=("confirmed", "early")) -> Call | None:
        if call_id:
            return self.calls.get(call_id)
        for c in reversed(list(self.calls.values())):
            if c.state in states:
                return c
        return None

    # --- server side --------------------------------------------------------------------------
    async def _request(self, req: SIPRequest, addr) -> None:
        key = (req.call_id, req.cseq[0], req.method)
        self.observed["requests_received"].append(req.method)
        if req.method != "ACK" and key in self.answered:
            self.send(self.answered[key], addr)      # retransmission: same answer
            return
        handler = getattr(self, f"_on_{req.method.lower()}", None)
        if handler is None:
            self._reply(req, addr, 405)
            return
        await handler(req, addr)

    def _reply(self, req: SIPRequest, addr, status: int, body: bytes = b"", to_tag: str | None = None,
               final_cache: bool = True, extra=()) -> SIPResponse:
        resp = build_response(req, status, to_tag=to_tag, extra_headers=list(extra))
        if req.method in ("INVITE", "SUBSCRIBE", "REFER") and 100 < status < 300:
            for rr in req.headers.get_raw("Record-Route"):     # RFC 3261 §12.1.1
                resp.headers.add("Record-Route", rr)
            resp.headers.add("Contact", self._contact())
        if body:
            resp.headers.add("Content-Type", "application/sdp")
            resp.body = body
        via = req.top_via()
        dest = addr if via is None else (addr[0], via.rport or addr[1]) if "rport" in via.params else addr
        self.send(resp, dest)
        if status >= 200 and final_cache:
            self.answered[(req.call_id, req.cseq[0], req.method)] = resp
        return resp

    async def _on_options(self, req, addr):
        self._reply(req, addr, 200)

    async def _on_message(self, req, addr):
        self.observed["messages"].append(req.body.decode("utf-8", "replace"))
        self._reply(req, addr, 200)
        self.emit({"event": "message_received", "text": req.body.decode("utf-8", "replace")})

    async def _on_invite(self, req: SIPRequest, addr):
        existing = self.calls.get(req.call_id or "")
        if existing is not None and req.to_tag:      # re-INVITE
            if req.has_sdp():
                self._apply_remote_sdp(existing, req.body, "reinvite-in")
            existing.local_sdp_version += 1
            self._reply(req, addr, 200, self._sdp(existing), to_tag=existing.local_tag)
            return
        if existing is not None:
            return                                  # retransmission while we are still deciding
        call = Call(call_id=req.call_id or "", local_tag=new_tag(), remote_uri=str(req.from_addr().uri), outgoing=False)
        call.remote_tag = req.from_tag
        contact = req.headers.get("Contact")
        call.remote_target = str(NameAddr.parse(contact).uri) if contact else call.remote_uri
        call.route_set = req.headers.get_all("Record-Route")
        to = req.to_addr()
        to.params["tag"] = call.local_tag
        call.from_hdr, call.to_hdr = str(to), req.headers.get("From")
        call.invite = req
        call.local_cseq = 0
        self.calls[call.call_id] = call
        run, number = parse_run(req.headers.get(RUN_HEADER))
        self.observed["dialogs"].append({"call_id": call.call_id, "role": "uas", "run": run, "call": number})
        self.emit({"event": "incoming_call", "call_id": call.call_id, "from": req.headers.get("From")})
        mode = self.cfg.answer_mode
        if mode == "ignore":
            return
        if mode == "busy":
            call.state = "ended"
            self._reply(req, addr, 486, to_tag=call.local_tag)
            return
        await self._open_rtp(call)
        if req.has_sdp():
            self._apply_remote_sdp(call, req.body, "invite")
            call.video = b"m=video" in req.body        # answer every offered m= line
        call.state = "early"
        if mode == "early_media":
            self._reply(req, addr, 183, self._sdp(call), to_tag=call.local_tag, final_cache=False)
            call.rtp.start()
        elif mode == "early_media_100rel":
            # reliable 183 (RFC 3262) with the answer, or the offer when the INVITE had no SDP
            self._reply(req, addr, 183, self._sdp(call), to_tag=call.local_tag, final_cache=False,
                        extra=(("Require", "100rel"), ("RSeq", "1")))
            call.offer_answered = not req.has_sdp()
            call.rtp.start()
        else:
            self._reply(req, addr, 180, to_tag=call.local_tag, final_cache=False)
        if mode == "ring":
            return
        await asyncio.sleep(self.cfg.answer_after_ms / 1000)
        if call.state != "early":
            return
        # after a reliable 183 the offer/answer is done: the 200 repeats our SDP only if the INVITE had one
        body = b"" if mode == "early_media_100rel" and not req.has_sdp() else self._sdp(call)
        ok = self._reply(req, addr, 200, body, to_tag=call.local_tag)
        call.state = "confirmed"
        call.pending_200 = ok
        call.rtp.start()
        self.emit({"event": "answered", "call_id": call.call_id})
        asyncio.get_running_loop().create_task(self._retransmit_200(call, ok, addr))

    async def _retransmit_200(self, call: Call, ok: SIPResponse, addr) -> None:
        interval = T1
        for _ in range(10):
            await asyncio.sleep(interval)
            if call.pending_200 is None:
                return
            self.send(ok, addr)
            interval = min(interval * 2, T2)

    async def _on_ack(self, req, addr):
        call = self.calls.get(req.call_id or "")
        if call is not None:
            call.pending_200 = None
            if req.has_sdp():
                self._apply_remote_sdp(call, req.body, "ack")

    async def _on_bye(self, req, addr):
        call = self.calls.get(req.call_id or "")
        self._reply(req, addr, 200 if call else 481)
        if call is not None and call.state != "ended":
            call.state = "ended"
            call.pending_200 = None
            if call.rtp:
                call.rtp.stop_sending()
            self.emit({"event": "call_ended", "call_id": call.call_id, "by": "remote"})

    async def _on_cancel(self, req, addr):
        call = self.calls.get(req.call_id or "")
        self._reply(req, addr, 200)
        if call is not None and call.state == "early" and call.invite is not None:
            call.state = "ended"
            self._reply(call.invite, addr, 487, to_tag=call.local_tag)
            if call.rtp:
                call.rtp.stop_sending()
            self.emit({"event": "call_ended", "call_id": call.call_id, "by": "cancel"})

    async def _on_update(self, req, addr):
        call = self.calls.get(req.call_id or "")
        if call and req.has_sdp():
            self._apply_remote_sdp(call, req.body, "update")
        self._reply(req, addr, 200, self._sdp(call) if call and req.has_sdp() else b"")

    async def _on_prack(self, req, addr):
        call = self.calls.get(req.call_id or "")
        if call is not None and req.has_sdp():
            self._apply_remote_sdp(call, req.body, "prack")     # the answer to our offer in the 183
        self._reply(req, addr, 200 if call else 481)

    async def _on_notify(self, req, addr):
        self._reply(req, addr, 200)

    _on_info = _on_notify

    # --- reporting ----------------------------------------------------------------------------
    def rtp_stats(self) -> dict:
        return {cid: c.rtp.stats() for cid, c in self.calls.items() if c.rtp is not None}

    async def close(self) -> None:
        for c in self.calls.values():
            if c.rtp and c.rtp._t_rtp is not None:
                await c.rtp.close()
        if self.transport:
            self.transport.close()
