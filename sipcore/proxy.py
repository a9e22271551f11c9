"""Record-routing stateful proxy with media relay hooks (the original server's call routing).

The proxy receives parsed messages with their source and transport and sends through a
``send(message, address, transport)`` callable, so it has no sockets of its own. Media backends
are awaited for SDP rewriting, which is why the handlers are coroutines.

Transactions: each incoming request is tracked by its top Via branch (RFC 3261 §17.2.3); a
retransmission is answered from the transaction (last response, or 100 Trying). Each forwarded
branch is retransmitted by the proxy itself over UDP (Timer A for INVITE until a provisional
answer, Timer E for the others), because once we answered 100 Trying the caller stops
retransmitting and a request lost on the second leg would otherwise be lost for good. Requests
the proxy originates itself (BYE from MML, keepalive OPTIONS) are retransmitted by
``originate()`` with RFC 3261 Timer E/F.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from sipcore.errors import MediaBackendError, SDPParseError, SIPParseError
from sipcore.message import (Headers, SIPMessage, SIPRequest, SIPResponse, Via, build_response,
                             new_branch, new_tag)
from sipcore.registrar import Binding, Registrar, aor_user
from sipcore.sdp import SessionDescription
from sipcore.stage_policy import StagePolicy
from sipcore.transaction import ClientTransaction, PassUp, Send, Timeout
from sipcore.uri import NameAddr, SipURI

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, REFER, NOTIFY, SUBSCRIBE, MESSAGE, REGISTER, INFO"
RELAYED_METHODS = frozenset(("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "UPDATE", "PRACK",
                             "INFO", "REFER", "NOTIFY", "SUBSCRIBE"))
T1 = 0.5
T2 = 4.0
TX_LINGER = 32.0          # 64*T1: how long finished transactions answer retransmissions
TIMER_C = 180.0           # an INVITE branch that only rings gives up after this


Address = tuple[str, int]
SendFn = Callable[[SIPMessage, Address, str], None]


class CallEvents(Protocol):
    """What the proxy reports (CDR writer adapter, statistics)."""
    def call_started(self, call: "Call", request: SIPRequest) -> None: ...
    def call_ringing(self, call: "Call", response: SIPResponse) -> None: ...
    def call_answered(self, call: "Call", response: SIPResponse) -> None: ...
    def call_ended(self, call: "Call", reason: str, request: SIPMessage | None) -> None: ...
    def call_cancelled(self, call: "Call", request: SIPRequest) -> None: ...
    def call_failed(self, call: "Call", status: int, reason: str) -> None: ...
    def message(self, request: SIPRequest, source: Address, status: int, reason: str, callee: Binding | None) -> None: ...
    def options(self, request: SIPRequest, source: Address) -> None: ...


class Authorizer(Protocol):
    def check(self, request: SIPRequest, source: Address, header: str) -> SIPResponse | None:
        """None when authorised, else the response to send (401/407/403)."""


@dataclass
class Branch:
    branch: str
    request: SIPRequest            # as forwarded
    dest: Address
    transport: str
    binding: Binding | None = None
    provisional: bool = False
    final: int | None = None
    to_tag: str | None = None
    cancelled: bool = False
    started: float = 0.0
    retransmit: "asyncio.Task | None" = None


@dataclass
class ServerTx:
    key: tuple[str, str]           # (incoming branch, method)
    request: SIPRequest            # as received
    source: Address
    transport: str
    created: float
    branches: list[Branch] = field(default_factory=list)
    last_response: SIPResponse | None = None
    final_sent: bool = False
    finished_at: float | None = None
    cancelled: bool = False
    best: SIPResponse | None = None
    call: "Call | None" = None


@dataclass
class Call:
    call_id: str
    caller_tag: str
    caller_flow: Address
    caller_transport: str
    caller_from: str               # raw From header value (CDR caller_uri)
    callee_to: str                 # raw To header value of the INVITE (CDR callee_uri)
    caller_contact: str
    started: float
    callee_tag: str | None = None
    callee_flow: Address | None = None
    callee_transport: str = "udp"
    callee_contact: str | None = None
    state: str = "trying"          # trying / early / confirmed / ended
    caller_cseq: int = 0
    callee_cseq: int = 0
    invite_cseq: int = 0
    answered_at: float | None = None
    ringing_at: float | None = None
    media: bool = False
    media_kinds: list[str] = field(default_factory=list)
    codecs: list[str] = field(default_factory=list)
    user_agent: str = ""
    last_answer_body: bytes | None = None
    last_answer_out: bytes | None = None
    cancel_requested: bool = False
    route_caller: list[str] = field(default_factory=list)   # Record-Route seen by the callee side

    def leg_of(self, from_tag: str | None) -> str:
        return "caller" if from_tag == self.caller_tag else "callee"

    def as_dict(self, now: float) -> dict:
        return {"call_id": self.call_id, "state": self.state,
                "caller": self.caller_from, "callee": self.callee_to,
                "caller_flow": f"{self.caller_flow[0]}:{self.caller_flow[1]}",
                "callee_flow": f"{self.callee_flow[0]}:{self.callee_flow[1]}" if self.callee_flow else "",
                "duration": round(now - self.answered_at, 1) if self.answered_at else 0.0,
                "media": ",".join(self.media_kinds)}


class Proxy:
    def __init__(self, *, host: str, port: int, policy: StagePolicy, registrar: Registrar,
                 media, events: CallEvents, send: SendFn, authorizer: Authorizer | None = None,
                 user_exists: Callable[[str], bool] = lambda u: False,
                 server_header: str = "ims-migrate", clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.port = port
        self.policy = policy
        self.registrar = registrar
        self.media = media
        self.events = events
        self.send = send
        self.authorizer = authorizer
        self.user_exists = user_exists
        self.server_header = server_header
        self.clock = clock
        self.wall = time.time
        self.server_txs: dict[tuple[str, str], ServerTx] = {}
        self.branches: dict[str, tuple[ServerTx, Branch]] = {}
        self.calls: dict[str, Call] = {}
        self._originated: dict[str, asyncio.Queue] = {}
        self.stats = {"requests": 0, "responses": 0, "calls": 0, "dropped": 0}

    # ==========================================================================================
    # helpers
    # ==========================================================================================
    def our_uri(self) -> str:
        return f"sip:{self.host}:{self.port};lr"

    def is_us(self, uri: SipURI) -> bool:
        return uri.host == self.host and (uri.port or 5060) == self.port

    def _branch_for(self, incoming: str, call_id: str, seq: int, index: int) -> str:
        h = hashlib.sha1(f"{incoming}|{call_id}|{seq}|{index}".encode()).hexdigest()[:20]
        return "z9hG4bK" + h

    def _via(self, branch: str, transport: str) -> str:
        return f"SIP/2.0/{transport.upper()} {self.host}:{self.port};branch={branch};rport"

    def _respond(self, tx_or_req, status: int, reason: str | None = None, extra=(), source=None,
                 transport="udp", to_tag: str | None = None) -> SIPResponse:
        if isinstance(tx_or_req, ServerTx):
            req, source, transport = tx_or_req.request, tx_or_req.source, tx_or_req.transport
        else:
            req = tx_or_req
        resp = build_response(req, status, reason,
                              to_tag=to_tag or (hashlib.sha1((req.call_id or "").encode()).hexdigest()[:10]
                                                if status > 100 else None),
                              extra_headers=list(extra) + [("Server", self.server_header)])
        if status in (405, 200) and req.method in ("OPTIONS",) or status == 405:
            resp.headers.add("Allow", ALLOW)
        self.send(resp, source, transport)
        if isinstance(tx_or_req, ServerTx):
            tx_or_req.last_response = resp
            if status >= 200:
                tx_or_req.final_sent = True
                tx_or_req.finished_at = self.clock()
        return resp

    def _stamp_via(self, request: SIPRequest, source: Address) -> None:
        """Stage 2 (force_rport): received + rport written into the top Via (RFC 3261 §18.2.1,
        RFC 3581). Stages 0/1 keep the original behaviour: the Via is not touched and responses
        go back to the stored request source instead."""
        if not self.policy.force_rport:
            return
        values = request.headers.get_raw("Via")
        if not values:
            return
        via = Via.parse(request.headers.get("Via"))
        via.params["received"] = source[0]
        via.params["rport"] = str(source[1])
        request.headers.remove_first("Via")
        request.headers.add("Via", str(via), top=True)

    # ==========================================================================================
    # requests
    # ==========================================================================================
    async def on_request(self, req: SIPRequest, source: Address, transport: str) -> None:
        self.stats["requests"] += 1
        try:
            top = req.top_via()
        except SIPParseError as exc:
            self._respond(req, 400, extra=[("Warning", f'399 {self.host} "{exc.reason}"')], source=source, transport=transport)
            return
        if top is not None and top.host == self.host and (top.port or 5060) == self.port \
                and top.branch and top.branch in self.branches:
            log.warning("loop detected for %s %s from %s:%s", req.method, req.call_id, *source)
            self._respond(req, 482, source=source, transport=transport)
            return
        branch = (top.branch if top and top.branch else "") or f"rfc2543-{req.call_id}-{req.cseq[0]}"
        method = req.method
        # retransmission / ACK / CANCEL matching
        if method == "ACK":
            tx = self.server_txs.get((branch, "INVITE"))
            if tx is not None and tx.last_response is not None and tx.last_response.status >= 300:
                return   # ACK for our non-2xx final: absorbed (hop by hop)
        elif method == "CANCEL":
            await self._on_cancel(req, branch, source, transport)
            return
        else:
            tx = self.server_txs.get((branch, method))
            if tx is not None:
                await self._on_retransmission(tx)
                return
        if method not in RELAYED_METHODS and method != "REGISTER":
            self._respond(req, 405, source=source, transport=transport)
            return
        if not req.uri.is_sip and method != "ACK":
            self._respond(req, 416, source=source, transport=transport)      # RFC 4475 novelsc
            return
        mf = req.headers.get("Max-Forwards")
        hops = int(mf) if mf is not None else 70
        if hops <= 0 and method not in ("REGISTER",):
            if method == "OPTIONS" and req.uri.user is None:
                pass   # OPTIONS to us with Max-Forwards 0 is answered (RFC 3261 §11)
            else:
                self._respond(req, 483, source=source, transport=transport)
                return
        if method != "REGISTER":
            req.headers.set("Max-Forwards", str(max(0, hops - 1)))
        self._stamp_via(req, source)
        tx = ServerTx((branch, method), req, source, transport, self.clock())
        if method != "ACK":
            self.server_txs[tx.key] = tx
        if method == "REGISTER":
            await self.on_register(tx)
            return
        if self.authorizer is not None and method in ("INVITE", "MESSAGE") and req.to_tag is None:
            denial = self.authorizer.check(req, source, "Proxy-Authorization")
            if denial is not None:
                self.send(denial, source, transport)
                tx.last_response, tx.final_sent, tx.finished_at = denial, True, self.clock()
                return
        if req.to_tag is not None or method == "ACK":
            await self._in_dialog(tx)
        elif method == "OPTIONS" and (req.uri.user is None or self.is_us(req.uri)
                                      or not self.registrar.lookup(req.uri.user or "", self.wall())):
            self.events.options(req, source)
            self._respond(tx, 200, extra=[("Accept", "application/sdp"),
                                          ("Supported", "100rel, timer, path")])
        else:
            await self._initial(tx)

    async def on_register(self, tx: ServerTx) -> None:
        raise NotImplementedError   # provided by the server (needs auth + CDR); see SIPServer

    async def _on_retransmission(self, tx: ServerTx) -> None:
        if tx.last_response is not None and (tx.final_sent or any(b.provisional for b in tx.branches)):
            self.send(tx.last_response, tx.source, tx.transport)
            return
        if tx.request.method == "INVITE" and tx.last_response is None:
            self._respond(tx, 100)
        for b in tx.branches:
            if b.final is None and not b.provisional and b.transport != "udp":
                self.send(b.request, b.dest, b.transport)      # reliable hop: no timers of ours

    async def _on_cancel(self, req: SIPRequest, branch: str, source: Address, transport: str) -> None:
        tx = self.server_txs.get((branch, "INVITE"))
        if tx is None:
            self._respond(req, 481, source=source, transport=transport)
            return
        self._respond(req, 200, source=source, transport=transport)
        if tx.final_sent:
            return
        tx.cancelled = True
        if tx.call is not None:
            tx.call.cancel_requested = True
        for b in tx.branches:
            if b.final is None:
                self._send_cancel(b)
        if not tx.branches:
            self._final_to_caller(tx, self._respond_obj(tx, 487))

    def _hop_request(self, b: Branch, method: str, to_value: str | None = None) -> SIPRequest:
        """CANCEL or non-2xx ACK for a forwarded branch (RFC 3261 §9.1, §17.1.1.3): same Via
        (branch), Route, From, Call-ID and CSeq number as the request it refers to."""
        fwd = b.request
        headers = Headers()
        headers.add("Via", fwd.headers.get_raw("Via")[0])
        for v in fwd.headers.get_raw("Route"):
            headers.add("Route", v)
        for name in ("Max-Forwards", "From", "To", "Call-ID"):
            v = to_value if name == "To" and to_value else fwd.headers.get(name)
            if v is not None:
                headers.add(name, v)
        headers.add("CSeq", f"{fwd.cseq[0]} {method}")
        return SIPRequest(method, fwd.uri.copy(), headers)

    def _send_cancel(self, b: Branch) -> None:
        b.cancelled = True
        self.send(self._hop_request(b, "CANCEL"), b.dest, b.transport)

    def _forward(self, b: Branch, method: str) -> None:
        """Send a branch and, over UDP, retransmit it like an RFC 3261 client transaction:
        Timer A (INVITE, until a provisional or final answer) or Timer E (others, until a final
        answer, interval capped at T2), giving up after 64*T1 (Timer B/F)."""
        self.send(b.request, b.dest, b.transport)
        if b.transport != "udp":
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        b.retransmit = loop.create_task(self._retransmit(b, method))

    async def _retransmit(self, b: Branch, method: str) -> None:
        interval, waited = T1, 0.0
        while waited < TX_LINGER:
            await asyncio.sleep(interval)
            waited += interval
            if b.final is not None or (method == "INVITE" and b.provisional) or b.cancelled and method == "INVITE":
                return
            log.debug("retransmitting %s to %s:%s", method, *b.dest)
            self.send(b.request, b.dest, b.transport)
            interval = interval * 2 if method == "INVITE" else min(interval * 2, T2)

    def _respond_obj(self, tx: ServerTx, status: int) -> SIPResponse:
        return build_response(tx.request, status, to_tag=new_tag(),
                              extra_headers=[("Server", self.server_header)])

    # --- initial requests ---------------------------------------------------------------------
    async def _initial(self, tx: ServerTx) -> None:
        req = tx.request
        user = req.uri.user
        now = self.wall()
        bindings = self.registrar.lookup(user, now) if user else []
        # never route back to the sender's own binding (original behaviour) unless it is the only one
        if len(bindings) > 1:
            bindings = [b for b in bindings if b.source != tx.source] or bindings
        is_call = req.method == "INVITE"
        call = None
        if is_call:
            call = self._new_call(tx)
        if not bindings:
            status = 480 if (user and self.user_exists(user)) else 404
            log.info("%s %s: callee %s not reachable -> %d", req.method, req.call_id, user, status)
            resp = self._respond(tx, status)
            if call is not None:
                self.events.call_failed(call, status, resp.reason)
                self.calls.pop(call.call_id, None)
            elif req.method == "MESSAGE":
                self.events.message(req, tx.source, status, resp.reason, None)
            return
        if is_call:
            self._respond(tx, 100)
            if req.has_sdp():
                self.policy.on_request(req, tx.source)
                if not await self._media_offer(req, tx.source, call, req.from_tag, None):
                    self._respond(tx, 488 if call.media is False else 500)
                    self.events.call_failed(call, 488, "Not Acceptable Here")
                    self.calls.pop(call.call_id, None)
                    return
            elif self.policy.nat is not None:
                self.policy.on_request(req, tx.source)
        else:
            self.policy.on_request(req, tx.source)
        for index, binding in enumerate(bindings):
            uri, dest = binding.target()
            fwd = req.copy()
            if self.policy.stage < 2:
                # the original strips ;ob and ;transport from the target before relaying
                uri.params.pop("ob", None)
                uri.params.pop("transport", None)
            fwd.uri = uri
            fwd.headers.remove("Route")
            if req.method in ("INVITE", "SUBSCRIBE", "REFER", "MESSAGE"):
                fwd.headers.add("Record-Route", f"<{self.our_uri()}>", top=True)
            branch = self._branch_for(tx.key[0], req.call_id or "", req.cseq[0], index)
            fwd.headers.add("Via", self._via(branch, binding.transport), top=True)
            b = Branch(branch, fwd, dest, binding.transport, binding, started=self.clock())
            tx.branches.append(b)
            self.branches[branch] = (tx, b)
            log.info("%s %s -> %s at %s:%s", req.method, req.call_id, uri, *dest)
            self._forward(b, req.method)

    def _new_call(self, tx: ServerTx) -> Call:
        req = tx.request
        contact = req.headers.get("Contact") or ""
        call = Call(call_id=req.call_id or "", caller_tag=req.from_tag or "", caller_flow=tx.source,
                    caller_transport=tx.transport, caller_from=req.headers.get("From") or "",
                    callee_to=req.headers.get("To") or "", caller_contact=contact,
                    started=self.wall(), invite_cseq=req.cseq[0], caller_cseq=req.cseq[0],
                    user_agent=req.headers.get("User-Agent") or "")
        old = self.calls.get(call.call_id)
        if old is not None and old.state != "ended":
            return old
        self.calls[call.call_id] = call
        tx.call = call
        self.stats["calls"] += 1
        if req.has_sdp():
            try:
                sd = SessionDescription.parse(req.body)
                call.media_kinds, call.codecs = sd.media_kinds(), sd.codec_names()
            except SDPParseError:
                pass
        self.events.call_started(call, req)
        return call

    async def _media_offer(self, msg: SIPMessage, source: Address, call: Call | None,
                           from_tag: str | None, to_tag: str | None) -> bool:
        return await self._media(self.media.offer, "offer", msg, source, call, from_tag, to_tag)

    async def _media_answer(self, msg: SIPMessage, source: Address, call: Call | None,
                            from_tag: str | None, to_tag: str | None) -> bool:
        if call is not None and call.last_answer_body == msg.body and call.last_answer_out is not None:
            msg.body = call.last_answer_out       # retransmitted 200/183: same rewrite
            return True
        return await self._media(self.media.answer, "answer", msg, source, call, from_tag, to_tag)

    async def _media(self, operation, kind: str, msg: SIPMessage, source: Address, call: Call | None,
                     from_tag: str | None, to_tag: str | None) -> bool:
        """Hand the SDP (with the stage's relay targets) to the media backend; forward its SDP."""
        original = msg.body
        try:
            sd = SessionDescription.parse(msg.body)
        except SDPParseError as exc:
            log.warning("%s from %s:%s has bad SDP: %s", kind, *source, exc.reason)
            return False
        try:
            out = await operation(msg.call_id, from_tag or "", to_tag, self.policy.media_target_sdp(sd, source), source)
        except MediaBackendError as exc:
            log.error("media %s failed for %s: %s", kind, msg.call_id, exc)
            return False
        msg.body = out.to_bytes()
        if call is not None:
            if kind == "offer":
                call.media = True
                call.media_kinds, call.codecs = sd.media_kinds(), sd.codec_names()
            else:
                call.last_answer_body, call.last_answer_out = original, msg.body
        return True

    # --- in-dialog requests -------------------------------------------------------------------
    async def _in_dialog(self, tx: ServerTx) -> None:
        req = tx.request
        call = self.calls.get(req.call_id or "")
        # pop our own Route entries (loose routing)
        routes = req.headers.get_all("Route")
        while routes:
            try:
                r = NameAddr.parse(routes[0])
            except SIPParseError:
                break
            if r.uri is not None and r.uri.is_sip and self.is_us(r.uri):
                req.headers.remove_first("Route")
                routes = routes[1:]
            else:
                break
        dest, transport = self._in_dialog_target(req, call, tx.source)
        if dest is None:
            if req.method != "ACK":
                self._respond(tx, 481 if call is None else 408)
            return
        if call is not None:
            leg = call.leg_of(req.from_tag)
            seq = req.cseq[0]
            if leg == "caller":
                call.caller_cseq = max(call.caller_cseq, seq)
                call.caller_flow = tx.source   # follow NAT rebinding
            else:
                call.callee_cseq = max(call.callee_cseq, seq)
                call.callee_flow = tx.source
        if req.method in ("INVITE", "UPDATE") and req.has_sdp():
            self.policy.on_request(req, tx.source)
            await self._media_offer(req, tx.source, call, req.from_tag, req.to_tag)
        elif req.method == "ACK" and req.has_sdp() and call is not None and call.media is False:
            self.policy.on_request(req, tx.source)   # late offer: answer in ACK
            await self._media_answer(req, tx.source, call, req.to_tag, req.from_tag)
        else:
            self.policy.on_request(req, tx.source)
        fwd = req.copy()
        if req.method == "INVITE":
            fwd.headers.add("Record-Route", f"<{self.our_uri()}>", top=True)
        branch = self._branch_for(tx.key[0], req.call_id or "", req.cseq[0],
                                  100 if req.method == "ACK" else 0)
        fwd.headers.add("Via", self._via(branch, transport), top=True)
        if req.method == "ACK":
            self.send(fwd, dest, transport)
            return
        b = Branch(branch, fwd, dest, transport, started=self.clock())
        tx.branches.append(b)
        self.branches[branch] = (tx, b)
        if req.method == "BYE" and call is not None and call.state != "ended":
            call.state = "ended"
            self.events.call_ended(call, "Normal", req)
            await self._delete_media(call)
        self._forward(b, req.method)

    def _in_dialog_target(self, req: SIPRequest, call: Call | None, source: Address) -> tuple[Address | None, str]:
        if call is not None:
            if call.leg_of(req.from_tag) == "caller":
                if call.callee_flow is not None:
                    return call.callee_flow, call.callee_transport
            else:
                return call.caller_flow, call.caller_transport
        # unknown dialog: a remaining Route, else the R-URI (with ;alias when present)
        routes = req.headers.get_all("Route")
        target = req.uri
        if routes:
            try:
                target = NameAddr.parse(routes[0]).uri or target
            except SIPParseError:
                pass
        alias = target.params.get("alias")
        if alias:
            parts = alias.split("~")
            if len(parts) >= 2 and parts[1].isdigit():
                return (parts[0], int(parts[1])), "udp"
        if target.is_sip and not self.is_us(target):
            # a registered user's R-URI resolves through its binding flow
            for b in self.registrar.all_bindings(self.wall()):
                if b.contact == str(target) or b.original_contact == str(target):
                    return b.source, b.transport
            return (target.host, target.port or 5060), target.params.get("transport", "udp")
        return None, "udp"

    async def _delete_media(self, call: Call) -> None:
        if not call.media:
            return
        try:
            await self.media.delete(call.call_id, call.caller_tag, call.callee_tag)
        except MediaBackendError as exc:
            log.warning("media delete failed for %s: %s", call.call_id, exc)
        call.media = False

    # ==========================================================================================
    # responses
    # ==========================================================================================
    async def on_response(self, resp: SIPResponse, source: Address, transport: str) -> None:
        self.stats["responses"] += 1
        try:
            via = resp.top_via()
        except SIPParseError:
            log.info("dropping response with bad Via from %s:%s", *source)
            return
        if via is None or via.branch is None:
            return
        queue = self._originated.get(via.branch)
        if queue is not None:
            queue.put_nowait(resp)
            return
        entry = self.branches.get(via.branch)
        if entry is None:
            if via.host == self.host and (via.port or 5060) == self.port:
                await self._stray_response(resp, source)
            else:
                log.info("dropping response %d not for us (Via %s)", resp.status, via.host)
                self.stats["dropped"] += 1
            return
        tx, b = entry
        method = resp.cseq[1]
        if method == "CANCEL" or (method != tx.request.method and method != "ACK"):
            return     # the answer to our own hop-by-hop CANCEL shares the INVITE's branch
        resp.headers.remove_first("Via")
        if resp.status < 200:
            b.provisional = True
            if resp.status == 100:
                return    # hop by hop
        elif b.final is not None and not (200 <= resp.status < 300):
            # retransmitted non-2xx final: ACK again (absorbed otherwise)
            if method == "INVITE":
                self._ack_non2xx(b, resp)
            return
        call = tx.call if tx.call is not None else self.calls.get(resp.call_id or "")
        if method == "INVITE":
            await self._invite_response(tx, b, resp, source, call)
        else:
            self.policy.on_response(resp, source) if resp.has_sdp() else None
            if method == "UPDATE" and resp.has_sdp() and 200 <= resp.status < 300:
                await self._media_answer(resp, source, call, tx.request.from_tag, tx.request.to_tag)
            if resp.status >= 200:
                b.final = resp.status
            self._relay_response(tx, resp)
            if resp.status >= 200 and method == "MESSAGE" and tx.request.to_tag is None:
                self.events.message(tx.request, tx.source, resp.status, resp.reason, b.binding)

    async def _invite_response(self, tx: ServerTx, b: Branch, resp: SIPResponse, source: Address,
                               call: Call | None) -> None:
        initial = tx.request.to_tag is None
        status = resp.status
        if resp.has_sdp() or status >= 180:
            self.policy.on_response(resp, source)
        if call is not None and initial and status > 100:
            to_tag = resp.to_tag
            if call.callee_tag is None or status < 300:
                call.callee_tag = to_tag or call.callee_tag
                call.callee_flow, call.callee_transport = source, b.transport
                call.callee_contact = resp.headers.get("Contact") or call.callee_contact
        if resp.has_sdp() and (status < 300):
            req_from = tx.request.from_tag
            req_to = tx.request.to_tag or resp.to_tag
            if not tx.request.has_sdp() and initial and call is not None and not call.media:
                # late offer: the 200 carries the offer from the callee
                await self._media_offer(resp, source, call, resp.to_tag, req_from)
            else:
                await self._media_answer(resp, source, call, req_from, req_to)
        if status < 200:
            if call is not None and initial and status in (180, 183) and call.ringing_at is None:
                call.ringing_at = self.wall()
                call.state = "early"
                self.events.call_ringing(call, resp)
            self._relay_response(tx, resp)
            return
        b.final = status
        if status < 300:
            if call is not None and initial and call.state not in ("confirmed", "ended"):
                call.state = "confirmed"
                call.answered_at = self.wall()
                self.events.call_answered(call, resp)
            self._relay_response(tx, resp, final=True)
            # a 2xx ends the other forks
            for other in tx.branches:
                if other is not b and other.final is None:
                    self._send_cancel(other)
            return
        self._ack_non2xx(b, resp)
        pending = [o for o in tx.branches if o.final is None]
        if tx.best is None or _better(resp, tx.best):
            tx.best = resp
        if pending:
            return
        if any(o.final is not None and o.final < 300 for o in tx.branches):
            return
        await self._final_failure(tx, tx.best or resp, call)

    async def _final_failure(self, tx: ServerTx, resp: SIPResponse, call: Call | None) -> None:
        self._final_to_caller(tx, resp)
        if call is not None and tx.request.to_tag is None and call.state != "ended":
            call.state = "ended"
            if tx.cancelled or call.cancel_requested:
                self.events.call_cancelled(call, tx.request)
            else:
                self.events.call_failed(call, resp.status, resp.reason)
            await self._delete_media(call)

    def _final_to_caller(self, tx: ServerTx, resp: SIPResponse) -> None:
        self._relay_response(tx, resp, final=True)

    def _relay_response(self, tx: ServerTx, resp: SIPResponse, final: bool | None = None) -> None:
        if final is None:
            final = resp.status >= 200
        if tx.final_sent and not (200 <= resp.status < 300 and tx.request.method == "INVITE"):
            return   # only 2xx retransmissions pass a completed INVITE transaction
        tx.last_response = resp
        if final:
            tx.final_sent = True
            tx.finished_at = self.clock()
        self.send(resp, tx.source, tx.transport)

    def _ack_non2xx(self, b: Branch, resp: SIPResponse) -> None:
        self.send(self._hop_request(b, "ACK", resp.headers.get("To")), b.dest, b.transport)

    async def _stray_response(self, resp: SIPResponse, source: Address) -> None:
        """A 2xx retransmission for a transaction we already forgot: relay by the next Via."""
        resp.headers.remove_first("Via")
        nxt = resp.top_via()
        if nxt is None:
            return
        call = self.calls.get(resp.call_id or "")
        if call is not None and 200 <= resp.status < 300 and resp.cseq[1] == "INVITE":
            if resp.has_sdp():
                self.policy.on_response(resp, source)
                await self._media_answer(resp, source, call, call.caller_tag, call.callee_tag)
            self.send(resp, call.caller_flow, call.caller_transport)
            return
        self.send(resp, nxt.response_address(), nxt.transport.lower())

    # ==========================================================================================
    # requests we originate (RMV CALL, keepalive)
    # ==========================================================================================
    async def originate(self, request: SIPRequest, dest: Address, transport: str = "udp",
                        timeout: float = 32 * T1) -> SIPResponse | None:
        """Send a request we originate through an RFC 3261 client transaction (sipcore.transaction)
        and return its final response, or None on Timer B/F (or ``timeout``)."""
        tx = ClientTransaction(request, reliable=transport != "udp")
        loop = asyncio.get_running_loop()
        responses: asyncio.Queue = asyncio.Queue()
        branch = tx.key[0]
        self._originated[branch] = responses
        give_up = loop.time() + timeout
        actions = tx.start(loop.time())
        try:
            while True:
                for action in actions:
                    if isinstance(action, Send):
                        self.send(action.message, dest, transport)
                    elif isinstance(action, PassUp) and action.message.status >= 200:
                        return action.message
                    elif isinstance(action, Timeout):
                        return None
                if tx.state == "terminated" or loop.time() >= give_up:
                    return None
                deadline = min(d for d in (tx.next_deadline(), give_up) if d is not None)
                try:
                    resp = await asyncio.wait_for(responses.get(), max(0.0, deadline - loop.time()))
                    actions = tx.on_response(resp, loop.time())
                except asyncio.TimeoutError:
                    actions = tx.on_timer(loop.time())
        finally:
            self._originated.pop(branch, None)

    def build_bye(self, call: Call, to_leg: str) -> tuple[SIPRequest, Address, str]:
        """BYE on behalf of the other party, towards ``to_leg`` ('caller' or 'callee')."""
        branch = new_branch()
        headers = Headers()
        headers.add("Via", self._via(branch, "udp"))
        headers.add("Max-Forwards", "70")
        if to_leg == "caller":
            # from the callee to the caller: From = callee (To of the INVITE + its tag)
            to_na = NameAddr.parse(call.caller_from)
            from_na = NameAddr.parse(call.callee_to)
            from_na.params["tag"] = call.callee_tag or new_tag()
            call.callee_cseq = max(call.callee_cseq, 0) + 1
            seq, target_contact, dest, tr = call.callee_cseq, call.caller_contact, call.caller_flow, call.caller_transport
        else:
            to_na = NameAddr.parse(call.callee_to)
            to_na.params["tag"] = call.callee_tag or ""
            from_na = NameAddr.parse(call.caller_from)
            call.caller_cseq += 1
            seq, target_contact, dest, tr = call.caller_cseq, call.callee_contact or call.callee_to, call.callee_flow, call.callee_transport
        headers.add("From", str(from_na))
        headers.add("To", str(to_na))
        headers.add("Call-ID", call.call_id)
        headers.add("CSeq", f"{seq} BYE")
        headers.add("Reason", 'SIP;cause=200;text="Terminated by operator"')
        try:
            uri = NameAddr.parse(target_contact).uri or SipURI(host=dest[0], port=dest[1])
        except SIPParseError:
            uri = SipURI(host=dest[0], port=dest[1])
        return SIPRequest("BYE", uri, headers), dest, tr

    async def end_call(self, call_id: str, reason: str = "FORCED_TERMINATION_BY_MML") -> bool:
        call = self.calls.get(call_id)
        if call is None or call.state == "ended":
            return False
        call.state = "ended"
        jobs = []
        for leg in ("caller", "callee"):
            if leg == "callee" and call.callee_flow is None:
                continue
            req, dest, tr = self.build_bye(call, leg)
            jobs.append(self.originate(req, dest, tr, timeout=4.0))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        self.events.call_ended(call, reason, None)
        await self._delete_media(call)
        log.info("call %s ended by operator: BYE answers %s", call_id,
                 [r.status if isinstance(r, SIPResponse) else None for r in results])
        return True

    # ==========================================================================================
    # housekeeping
    # ==========================================================================================
    async def sweep(self) -> None:
        """Expire finished transactions; time out branches that never answered."""
        now = self.clock()
        for key, tx in list(self.server_txs.items()):
            if tx.finished_at is not None and now - tx.finished_at > TX_LINGER:
                self._forget(key, tx)
                continue
            if tx.final_sent or not tx.branches:
                if not tx.final_sent and now - tx.created > TX_LINGER:
                    self._forget(key, tx)
                continue
            for b in tx.branches:
                if b.final is not None:
                    continue
                limit = TIMER_C if b.provisional and tx.request.method == "INVITE" else TX_LINGER
                if now - b.started > limit:
                    b.final = 408
                    if b.provisional:
                        self._send_cancel(b)
            if all(b.final is not None for b in tx.branches) and not tx.final_sent:
                best = tx.best or self._respond_obj(tx, 408)
                if tx.request.method == "INVITE":
                    call = tx.call
                    if tx.best is None:
                        best = self._respond_obj(tx, 408)
                    await self._final_failure(tx, best, call)
                else:
                    self._relay_response(tx, best if tx.best else self._respond_obj(tx, 408), final=True)
        for call_id, call in list(self.calls.items()):
            if call.state == "ended" and self.wall() - call.started > TX_LINGER:
                del self.calls[call_id]

    def _forget(self, key, tx: ServerTx) -> None:
        self.server_txs.pop(key, None)
        for b in tx.branches:
            self.branches.pop(b.branch, None)
            if b.retransmit is not None:
                b.retransmit.cancel()

    def active_calls(self) -> list[Call]:
        return [c for c in self.calls.values() if c.state != "ended"]


def _better(a: SIPResponse, b: SIPResponse) -> bool:
    """RFC 3261 §16.7 step 6 (simplified): 6xx wins, then the lowest class, 503 avoided."""
    def rank(r: SIPResponse) -> tuple:
        cls = r.status // 100
        return (0 if cls == 6 else 1, cls, 1 if r.status == 503 else 0, r.status)
    return rank(a) < rank(b)
