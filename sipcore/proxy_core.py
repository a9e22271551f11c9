"""The record-routing stateful proxy (the original server's call routing), sans-IO.

Events in, actions out, one injected clock. ``ProxyCore`` never touches a socket, a timer or the
event loop:

* events: ``on_request`` / ``on_response`` (a parsed message, its source and transport),
  ``on_timer`` (the time in ``next_deadline()`` has come), ``start_originated`` / ``end_call``;
* actions: ``take_actions()`` returns what to do now - ``Transmit`` (send a message) and
  ``OriginatedDone`` (a request we originated has its final answer or timed out);
* the media backend is the one thing the core must wait for: the event methods are generators
  that yield ``MediaOp`` (sipcore.media_session) and get the backend's answer sent back in.

The asyncio side (socket, one loop timer, awaiting the media backend) is sipcore.proxy_driver.

Transactions (RFC 3261 §17, RFC 6026) come from sipcore.transaction, bound here to where their
messages go and run on the core's clock: each incoming request gets a server transaction keyed by
its top Via branch (retransmissions answered or absorbed, non-2xx finals retransmitted until ACKed
over UDP), each forwarded branch a client transaction (Timer A/E retransmissions, B/F timeouts,
the ACK of a non-2xx final), and each CANCEL its own client transaction, sent once the branch has a
provisional answer (§9.1). The core adds what is a proxy's job: forking, best-response choice,
Timer C for branches that only ring, and forwarding of 2xx. The call/dialog model is
sipcore.call, the media hand-off sipcore.media_session, requests we originate sipcore.originated,
REGISTER a ``RegistrationHandler`` collaborator (sipcore.registration).
"""
from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import os
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Callable, Generator, Protocol

from sipcore.admission import Admission
from sipcore.call import Call, CallState
from sipcore.deadlines import Deadlines
from sipcore.errors import SDPParseError, SIPParseError
from sipcore.media_session import MediaHandoff, MediaOp
from sipcore.message import SIPMessage, SIPRequest, SIPResponse, Via, build_response, new_tag, remember_via
from sipcore.offer_answer import CALLER, OfferAnswer, other_leg
from sipcore.originated import BYE_BY_OPERATOR, OriginatedDone, OriginatedRequests, build_bye
from sipcore.record_route import Flow, RouteTokens
from sipcore.registrar import Binding, Registrar
from sipcore.sdp import SessionDescription
from sipcore.stage_policy import StagePolicy
from sipcore.transaction import BoundTransaction, ClientTransaction, ServerTransaction, server_key
from sipcore.uri import SipURI

log = logging.getLogger(__name__)

T1 = 0.5
TX_LINGER = 32.0          # 64*T1: how long finished transactions answer retransmissions
TIMER_C = 180.0           # an INVITE branch that only rings gives up after this
TX_RECHECK = 2.0          # a transaction still in use is looked at again after this
CALL_RECHECK = 5.0        # a call not ended (or ended within TX_LINGER of its start): again after this
SWEEP_INTERVAL = 1.0      # how often finished transactions / Timer C are looked at
TIMERS_PER_RUN = 256      # transaction timers handled per on_timer (the rest at once after other work)


Address = tuple[str, int]
Steps = Generator[MediaOp, "SessionDescription | None", None]


@dataclass(slots=True)
class Transmit:
    """Action: send ``message`` to ``dest`` over ``transport``."""
    message: SIPMessage
    dest: Address
    transport: str

    def __init__(self, message: SIPMessage, dest: Address, transport: str) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.message, self.dest, self.transport = message, dest, transport


class CallEvents(Protocol):
    """What the proxy reports (CDR writer adapter, statistics)."""
    def call_started(self, call: Call, request: SIPRequest) -> None: ...
    def call_ringing(self, call: Call, response: SIPResponse) -> None: ...
    def call_answered(self, call: Call, response: SIPResponse) -> None: ...
    def call_ended(self, call: Call, reason: str, request: SIPMessage | None) -> None: ...
    def call_cancelled(self, call: Call, request: SIPRequest) -> None: ...
    def call_failed(self, call: Call, status: int, reason: str) -> None: ...
    def call_refused(self, call: Call, status: int, reason: str) -> None: ...
    def message(self, request: SIPRequest, source: Address, status: int, reason: str, callee: Binding | None) -> None: ...
    def options(self, request: SIPRequest, source: Address) -> None: ...


class Authorizer(Protocol):
    def check(self, request: SIPRequest, source: Address, header: str) -> SIPResponse | None:
        """None when authorised, else the response to send (401/407/403)."""


class RegistrationHandler(Protocol):
    def handle(self, request: SIPRequest, source: Address, transport: str, now: float) -> SIPResponse:
        """The final response to a REGISTER (authentication, binding update, CDR are its job)."""


@dataclass(slots=True)
class Branch:
    branch: str
    request: SIPRequest            # as forwarded
    dest: Address
    transport: str
    binding: Binding | None = None
    provisional: bool = False
    final: int | None = None
    cancelled: bool = False        # CANCEL wanted (sent as soon as the branch has a provisional)
    started: float = 0.0
    client: BoundTransaction | None = None
    cancel_client: BoundTransaction | None = None

    def __init__(self, branch: str, request: SIPRequest, dest: Address, transport: str,
                 binding: Binding | None = None, started: float = 0.0) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.branch, self.request, self.dest, self.transport = branch, request, dest, transport
        self.binding, self.started = binding, started
        self.provisional = self.cancelled = False
        self.final = None
        self.client = self.cancel_client = None


@dataclass(slots=True)
class ServerTx:
    key: tuple                     # sipcore.transaction.server_key: (branch, host, port, method)
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
    call: Call | None = None
    server: BoundTransaction | None = None    # None for ACK (no transaction of its own)
    auth_user: str | None = None   # who authenticated the request (sipcore.admission)
    outbound: Flow | None = None   # the operator's OUTBOUND_ROUTE for a foreign destination

    def __init__(self, key: tuple, request: SIPRequest, source: Address, transport: str, created: float) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.key, self.request, self.source, self.transport, self.created = key, request, source, transport, created
        self.branches = []
        self.last_response = self.best = None
        self.final_sent = self.cancelled = False
        self.finished_at = None
        self.call = None
        self.server = None
        self.auth_user = None
        self.outbound = None


class ProxyCore:
    def __init__(self, *, host: str, port: int, policy: StagePolicy, registrar: Registrar,
                 events: CallEvents, clock: Callable[[], float],
                 registration: RegistrationHandler | None = None,
                 authorizer: Authorizer | None = None,
                 user_exists: Callable[[str], bool] = lambda u: False,
                 server_header: str = "ims-migrate", admission: Admission | None = None):
        self.host = host
        self.port = port
        self.policy = policy
        self.registrar = registrar
        self.events = events
        self.clock = clock
        self.registration = registration
        self.user_exists = user_exists
        self.server_header = server_header
        self.admission = admission or Admission(
            tokens=RouteTokens(os.urandom(32), host, port), local_domains=(host, "sip.local"),
            realm="sip.local", user_exists=user_exists, authorizer=authorizer,
            auth_invite=authorizer is not None, server_header=server_header)
        self.media = MediaHandoff(policy)
        self.server_txs: dict[tuple, ServerTx] = {}
        self.branches: dict[str, tuple[ServerTx, Branch]] = {}
        self.calls: dict[str, Call] = {}
        # housekeeping looks only at what is due, not at every transaction and call each second
        self._tx_due: Deadlines[tuple] = Deadlines()       # server transaction key -> next look
        self._calls_due: Deadlines[str] = Deadlines()      # Call-ID -> next look
        self._invites: dict[tuple, ServerTx] = {}          # INVITEs that may still ring (Timer C)
        self.stats = {"requests": 0, "responses": 0, "calls": 0, "dropped": 0}
        self.unanswered = 0      # server transactions without a final answer (overload control)
        self.retry_after = 5     # seconds, in the Retry-After of every 503 the proxy generates
        self.pending: list[Transmit | OriginatedDone] = []       # actions not taken yet
        self._timers: list[tuple[float, int, BoundTransaction]] = []     # heap; stale entries skipped
        self._seq = itertools.count()
        self._next_sweep = clock() + SWEEP_INTERVAL
        self._timed_out: list[tuple[ServerTx, Branch]] = []
        self.originated = OriginatedRequests(self.send, self._report, self._schedule)

    # ==========================================================================================
    # actions out, timers
    # ==========================================================================================
    def send(self, message: SIPMessage, dest: Address, transport: str) -> None:
        self.pending.append(Transmit(message, dest, transport))

    def take_actions(self) -> list[Transmit | OriginatedDone]:
        """What to do now, in order (then the list is empty again)."""
        out = self.pending
        self.pending = []
        return out

    def _report(self, done: OriginatedDone) -> None:
        self.pending.append(done)

    def next_deadline(self) -> float:
        """When ``on_timer`` is due next (on the core's clock)."""
        if self._timers and self._timers[0][0] < self._next_sweep:
            return self._timers[0][0]
        return self._next_sweep

    def _schedule(self, run: BoundTransaction) -> None:
        deadline = run.deadline()
        if deadline is not None and deadline != run.scheduled:
            heapq.heappush(self._timers, (deadline, next(self._seq), run))
        run.scheduled = deadline

    def _bind(self, txn: ClientTransaction | ServerTransaction, dest: Address, transport: str,
              on_timeout: Callable[[], None] | None = None) -> BoundTransaction:
        return BoundTransaction(txn, self.send, dest, transport, on_timeout, self._schedule)

    def on_timer(self) -> Steps:
        """Transaction timers that are due, then (once a second) the sweep."""
        now = self.clock()
        timers = self._timers
        budget = TIMERS_PER_RUN        # a burst of due timers is worked off over several loop turns
        while timers and timers[0][0] <= now and budget > 0:
            budget -= 1
            due, _, run = heapq.heappop(timers)
            if run.scheduled == due:
                run.scheduled = None
            deadline = run.deadline()
            if deadline is not None and deadline <= now:
                run.timer(now)
        while self._timed_out:
            tx, b = self._timed_out.pop(0)
            yield from self._conclude(tx)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            yield from self.sweep()

    # ==========================================================================================
    # helpers
    # ==========================================================================================
    def is_us(self, uri: SipURI) -> bool:
        return uri.host == self.host and (uri.port or 5060) == self.port

    def _branch_for(self, incoming: str, call_id: str, seq: int, index: int) -> str:
        h = hashlib.sha1(f"{incoming}|{call_id}|{seq}|{index}".encode("utf-8", "surrogateescape")).hexdigest()[:20]
        return "z9hG4bK" + h

    def _record_route(self, tx: ServerTx) -> str:
        """Our Record-Route with the route token (sipcore.record_route) naming the caller's flow."""
        req = tx.request
        return self.admission.tokens.record_route(req.call_id or "", req.from_tag or "",
                                                  Flow(tx.source[0], tx.source[1], tx.transport))

    def _via(self, branch: str, transport: str) -> str:
        text = f"SIP/2.0/{transport.upper()} {self.host}:{self.port};branch={branch};rport"
        if ":" not in self.host:       # what parsing it gives (it tops every response to come)
            remember_via(text, Via(transport.upper(), self.host, self.port, {"branch": branch, "rport": None}))
        return text

    def _respond(self, tx_or_req, status: int, reason: str | None = None, extra=(), source=None,
                 transport="udp", to_tag: str | None = None) -> SIPResponse:
        if isinstance(tx_or_req, ServerTx):
            req, source, transport = tx_or_req.request, tx_or_req.source, tx_or_req.transport
        else:
            req = tx_or_req
        resp = build_response(req, status, reason,
                              to_tag=to_tag or (hashlib.sha1((req.call_id or "").encode("utf-8", "surrogateescape")).hexdigest()[:10]
                                                if status > 100 else None),
                              extra_headers=list(extra) + self.local_headers())
        if status == 503:             # a temporary condition (relay down or out of ports): say when to retry
            resp.headers.add("Retry-After", str(self.retry_after))
        if (status == 405 or status == 200 and req.method == "OPTIONS") and not resp.headers.get("Allow"):
            resp.headers.add("Allow", ", ".join(self.policy.profile.allow))
        if isinstance(tx_or_req, ServerTx):
            self.reply(tx_or_req, resp)
        else:
            self.send(resp, source, transport)
        return resp

    def local_headers(self) -> list[tuple[str, str]]:
        """Headers of the responses the server generates itself (stage 0: Allow and Date as well,
        as the original put them on every one)."""
        out = [("Server", self.server_header)]
        if self.policy.profile.allow_and_date:
            out += [("Allow", ", ".join(self.policy.profile.allow)),
                    ("Date", formatdate(self.clock(), usegmt=True))]
        return out

    def reply(self, tx: ServerTx, resp: SIPResponse) -> bool:
        """Answer through the request's server transaction; False when its state machine dropped
        the response (e.g. a second final). 2xx to INVITE always pass (RFC 3261 §16.7 step 10)."""
        if tx.server is not None:
            sent = tx.server.respond(resp, self.clock())
        else:
            sent = False
        if not sent and (tx.server is None or resp.status // 100 == 2 and tx.request.method == "INVITE"):
            self.send(resp, tx.source, tx.transport)
            sent = True
        if sent:
            tx.last_response = resp
            if resp.status >= 200 and not tx.final_sent:
                tx.final_sent, tx.finished_at = True, self.clock()
                if tx.server is not None:
                    self.unanswered -= 1
        return sent

    def stamp_via(self, request: SIPRequest, source: Address) -> None:
        """Stage 2 (force_rport): received + rport written into the top Via (RFC 3261 §18.2.1,
        RFC 3581). Stages 0/1 keep the original behaviour: the Via is not touched and responses
        go back to the stored request source instead."""
        if not self.policy.force_rport:
            return
        top = request.top_via()         # parsed already (validation); shared: copied below
        if top is None:
            return
        params = dict(top.params)
        params["received"] = source[0]
        params["rport"] = str(source[1])
        via = Via(top.transport, top.host, top.port, params, top.protocol)
        text = str(via)
        remember_via(text, via)         # the responses echo it as the Via under ours
        request.headers.remove_first("Via")
        request.headers.add("Via", text, top=True)

    # ==========================================================================================
    # requests
    # ==========================================================================================
    def on_request(self, req: SIPRequest, source: Address, transport: str) -> Steps:
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
        key = server_key(req)
        method = req.method
        # retransmission / ACK / CANCEL matching
        if method == "ACK":
            tx = self.server_txs.get(key)
            if tx is not None and tx.server is not None and tx.server.state in ("completed", "confirmed"):
                tx.server.request(req, self.clock())   # ACK for our non-2xx final: ends Timer G (hop by hop)
                return
        elif method == "CANCEL":
            yield from self._on_cancel(req, source, transport)
            return
        else:
            tx = self.server_txs.get(key)
            if tx is not None:
                self._on_retransmission(tx, req)
                return
        if method not in self.policy.profile.allow:
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
        self.stamp_via(req, source)
        now = self.clock()
        tx = ServerTx(key, req, source, transport, now)
        if method != "ACK":
            tx.server = self._bind(ServerTransaction(req, reliable=transport != "udp", auto_trying_after=None),
                                   source, transport)
            tx.server.start(now)
            self.server_txs[tx.key] = tx
            self.unanswered += 1
            self._tx_due.add(tx.key, now + TX_LINGER)
            if method == "INVITE":
                self._invites[tx.key] = tx
        if method == "REGISTER":
            self._on_register(tx)
            return
        if req.to_tag is None and method != "ACK":
            decision = self.admission.initial(req, source)    # destination + caller identity
            if decision.response is not None:
                self.reply(tx, decision.response)
                return
            tx.auth_user, tx.outbound = decision.auth_user, decision.outbound
        self.admission.strip_credentials(req)
        if req.to_tag is not None or method == "ACK":
            yield from self._in_dialog(tx)
        elif method == "OPTIONS" and (self.policy.profile.options_local or req.uri.user is None
                                      or self.is_us(req.uri) or not self.registrar.lookup(req.uri.user or "", now)):
            self.events.options(req, source)
            self._respond(tx, 200, extra=[("Accept", "application/sdp"),
                                          ("Supported", "100rel, timer, path")])
        else:
            yield from self._initial(tx)

    def _on_register(self, tx: ServerTx) -> None:
        if self.registration is None:
            log.warning("REGISTER from %s:%s but no registrar is wired in", *tx.source)
            self._respond(tx, 501)
            return
        self.reply(tx, self.registration.handle(tx.request, tx.source, tx.transport, self.clock()))

    def _on_retransmission(self, tx: ServerTx, req: SIPRequest) -> None:
        """The server transaction re-sends its last response or absorbs the retransmission; an
        INVITE still waiting for its media offer gets its 100 Trying now."""
        if tx.server is not None:
            tx.server.request(req, self.clock())
        if tx.request.method == "INVITE" and tx.last_response is None:
            self._respond(tx, 100)

    def _on_cancel(self, req: SIPRequest, source: Address, transport: str) -> Steps:
        tx = self.server_txs.get(server_key(req, "INVITE"))
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
        if not tx.branches:      # still waiting for the media offer: nothing forwarded yet
            yield from self._final_failure(tx, self._respond_obj(tx, 487), tx.call)
        else:
            yield from self._conclude(tx)    # done if no branch had a provisional to CANCEL

    def _send_cancel(self, b: Branch) -> None:
        """CANCEL a pending INVITE branch. RFC 3261 §9.1 allows the CANCEL only once the branch
        has a provisional answer; a branch without one stops retransmitting and counts as 487 at
        once (Kamailio's default), and gets its CANCEL if a provisional still turns up."""
        if b.cancelled:
            return
        b.cancelled = True
        if b.provisional:
            self._start_cancel(b)
        else:
            if b.client is not None:
                b.client.stop()
            if b.final is None:
                b.final = 487

    def _start_cancel(self, b: Branch) -> None:
        if b.cancel_client is not None or b.client is None:
            return
        cancel = b.client.txn.build_cancel()      # type: ignore[union-attr]
        b.cancel_client = self._bind(ClientTransaction(cancel, reliable=b.transport != "udp"),
                                     b.dest, b.transport)
        b.cancel_client.start(self.clock())

    def _forward(self, tx: ServerTx, b: Branch) -> None:
        """Send a branch through its own client transaction (retransmissions, timeout, ACK)."""
        b.client = self._bind(ClientTransaction(b.request, reliable=b.transport != "udp"),
                              b.dest, b.transport, on_timeout=lambda: self._branch_timed_out(tx, b))
        b.client.start(self.clock())

    def _branch_timed_out(self, tx: ServerTx, b: Branch) -> None:
        """Timer B/F: the branch never answered (concluded by ``on_timer``)."""
        if b.final is not None:
            return
        log.info("%s %s: no answer from %s:%s (timeout)", tx.request.method, tx.request.call_id, *b.dest)
        b.final = 408
        self._timed_out.append((tx, b))

    def _conclude(self, tx: ServerTx, call: Call | None = None) -> Steps:
        """Once every branch is final and none succeeded: send the best answer (487 or 408 when
        no branch answered at all)."""
        if tx.final_sent or any(b.final is None for b in tx.branches):
            return
        if any(b.final < 300 for b in tx.branches if b.final is not None):
            return
        best = tx.best or self._respond_obj(tx, 487 if tx.cancelled else 408)
        if tx.request.method == "INVITE":
            yield from self._final_failure(tx, best, call or tx.call)
        else:
            self.reply(tx, best)

    def _respond_obj(self, tx: ServerTx, status: int) -> SIPResponse:
        return build_response(tx.request, status, to_tag=new_tag(), extra_headers=self.local_headers())

    # --- initial requests ---------------------------------------------------------------------
    def _initial(self, tx: ServerTx) -> Steps:
        req = tx.request
        user = req.uri.user
        bindings = self.registrar.lookup(user, self.clock()) if user else []
        if tx.outbound is not None:
            bindings = [Binding(aor="", contact=str(req.uri), original_contact=str(req.uri),
                                source=tx.outbound.address, transport=tx.outbound.transport,
                                expires_at=float("inf"), call_id="", cseq=0)]
        # never route back to the sender's own binding (original behaviour) unless it is the only one
        if len(bindings) > 1:
            bindings = [b for b in bindings if b.source != tx.source] or bindings
        is_call = req.method == "INVITE"
        call = None
        if is_call:
            call = self._new_call(tx)
        if not bindings:
            status = 480 if (user and self.user_exists(user)) else self.policy.profile.unknown_user_status
            log.info("%s %s: callee %s not reachable -> %d", req.method, req.call_id, user, status)
            resp = self._respond(tx, status)
            if call is not None:
                self.events.call_refused(call, status, resp.reason)
                self.calls.pop(call.call_id, None)
            elif req.method == "MESSAGE":
                self.events.message(req, tx.source, status, resp.reason, None)
            return
        if call is not None:
            self._respond(tx, 100)
            self.policy.on_request(req, tx.source)
            failure = yield from self.media.sdp_step(call, req, CALLER, tx.source, "INVITE", req.cseq[0])
            if failure is not None:
                resp = self._respond(tx, failure.status)
                self.events.call_refused(call, resp.status, resp.reason)
                self.calls.pop(call.call_id, None)
                return
            if tx.final_sent:        # CANCELled while the media backend answered
                yield from self.media.delete(call)
                return
        else:
            self.policy.on_request(req, tx.source)
        for index, binding in enumerate(bindings):
            uri, dest = binding.target()
            fwd = req.copy()
            if self.policy.spec.strip_target_params:
                # the original strips ;ob and ;transport from the target before relaying
                uri.params.pop("ob", None)
                uri.params.pop("transport", None)
            fwd.uri = uri
            fwd.headers.remove("Route")
            if req.method in ("INVITE", "SUBSCRIBE", "REFER", "MESSAGE"):
                fwd.headers.add("Record-Route", self._record_route(tx), top=True)
            branch = self._branch_for(tx.key[0], req.call_id or "", req.cseq[0], index)
            fwd.headers.add("Via", self._via(branch, binding.transport), top=True)
            b = Branch(branch, fwd, dest, binding.transport, binding, started=self.clock())
            tx.branches.append(b)
            self.branches[branch] = (tx, b)
            log.info("%s %s -> %s at %s:%s", req.method, req.call_id, uri, *dest)
            self._forward(tx, b)

    def _new_call(self, tx: ServerTx) -> Call:
        req = tx.request
        contact = req.headers.get("Contact") or ""
        call = Call(call_id=req.call_id or "", caller_tag=req.from_tag or "", caller_flow=tx.source,
                    caller_transport=tx.transport, caller_from=req.headers.get("From") or "",
                    callee_to=req.headers.get("To") or "", caller_contact=contact,
                    started=self.clock(), invite_cseq=req.cseq[0], caller_cseq=req.cseq[0],
                    user_agent=req.headers.get("User-Agent") or "",
                    offer_answer=OfferAnswer(legacy=self.policy.legacy_media_positions))
        old = self.calls.get(call.call_id)
        if old is not None and not old.ended:
            return old
        call.auth_user = tx.auth_user
        self.calls[call.call_id] = call
        self._calls_due.add(call.call_id, call.started + TX_LINGER)
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

    # --- in-dialog requests -------------------------------------------------------------------
    def adopt_call(self, call: Call) -> None:
        """A dialog taken over from a previous server process (sipcore.call_handover): its
        in-dialog requests are handled as if it had been set up here."""
        self.calls[call.call_id] = call
        self._calls_due.add(call.call_id, self.clock() + CALL_RECHECK)

    def _in_dialog(self, tx: ServerTx) -> Steps:
        req = tx.request
        call = self.calls.get(req.call_id or "")
        parties: tuple = (call.caller_flow, call.callee_flow) if call is not None and not call.ended else ()
        check = self.admission.in_dialog(req, tx.source, parties)     # loose_route + route token
        if check.status is not None:
            if req.method != "ACK":
                self._respond(tx, check.status, check.reason)
            return
        if call is None and check.route is not None:
            flow = check.route.target_for(req.from_tag)       # no state (restart): the token says
            dest, transport = (flow.address, flow.transport) if flow else (None, "udp")
            if req.method == "BYE" and flow is not None:
                # a call this process does not know (the previous one crashed: nothing was handed
                # over): its relay session, if the relay outlived the crash, ends with the call
                yield from self.media.delete_session(req.call_id or "", req.from_tag, req.to_tag)
        else:
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
        self.policy.on_request(req, tx.source)
        if req.method in ("INVITE", "UPDATE", "PRACK", "ACK") and call is not None:
            failure = yield from self.media.sdp_step(call, req, call.leg_of(req.from_tag), tx.source,
                                                     req.method, req.cseq[0])
            if failure is not None and req.method != "ACK":
                self._respond(tx, failure.status)
                return
        fwd = req.copy()
        if req.method == "INVITE":
            fwd.headers.add("Record-Route", self._record_route(tx), top=True)
        branch = self._branch_for(tx.key[0], req.call_id or "", req.cseq[0],
                                  100 if req.method == "ACK" else 0)
        fwd.headers.add("Via", self._via(branch, transport), top=True)
        if req.method == "ACK":
            self.send(fwd, dest, transport)
            return
        b = Branch(branch, fwd, dest, transport, started=self.clock())
        tx.branches.append(b)
        self.branches[branch] = (tx, b)
        if req.method == "BYE" and call is not None and not call.ended:
            call.state = CallState.ENDED
            self.events.call_ended(call, "Normal", req)
            yield from self.media.delete(call)
        self._forward(tx, b)

    def _in_dialog_target(self, req: SIPRequest, call: Call | None, source: Address) -> tuple[Address | None, str]:
        if call is not None:
            if call.leg_of(req.from_tag) == "caller":
                if call.callee_flow is not None:
                    return call.callee_flow, call.callee_transport
            else:
                return call.caller_flow, call.caller_transport
        # a dialog admitted by its route token but not in memory: only a registered contact
        target = req.uri
        if target.is_sip and not self.is_us(target):
            b = self.registrar.find_contact(str(target), self.clock())
            if b is not None:
                return b.source, b.transport
        return None, "udp"

    # ==========================================================================================
    # responses
    # ==========================================================================================
    def on_response(self, resp: SIPResponse, source: Address, transport: str) -> Steps:
        self.stats["responses"] += 1
        try:
            via = resp.top_via()
        except SIPParseError:
            log.info("dropping response with bad Via from %s:%s", *source)
            return
        if via is None or via.branch is None:
            return
        if via.branch in self.originated:
            self.originated.on_response(via.branch, resp, self.clock())
            return
        entry = self.branches.get(via.branch)
        if entry is None:
            if via.host == self.host and (via.port or 5060) == self.port:
                yield from self._stray_response(resp, source)
            else:
                log.info("dropping response %d not for us (Via %s)", resp.status, via.host)
                self.stats["dropped"] += 1
            return
        tx, b = entry
        method = resp.cseq[1]
        if method == "CANCEL":
            if b.cancel_client is not None:
                b.cancel_client.response(resp, self.clock())   # our hop-by-hop CANCEL shares the INVITE's branch
            return
        if method != tx.request.method:
            return
        if b.client is not None and not b.client.response(resp, self.clock()):
            return     # absorbed by the client transaction (retransmitted final: re-ACKed there)
        resp.headers.remove_first("Via")
        if tx.request.to_tag is None and 100 < resp.status < 300 and resp.to_tag:
            # the caller's copy of our Record-Route also names the callee's flow (restart-safe)
            self.admission.tokens.rewrite_response(
                resp, resp.call_id or "", tx.request.from_tag or "",
                Flow(tx.source[0], tx.source[1], tx.transport), Flow(source[0], source[1], b.transport))
        if resp.status < 200:
            b.provisional = True
            if b.cancelled:
                self._start_cancel(b)
            if resp.status == 100:
                return    # hop by hop
        call = tx.call if tx.call is not None else self.calls.get(resp.call_id or "")
        if method == "INVITE":
            yield from self._invite_response(tx, b, resp, source, call)
        else:
            self.policy.on_response(resp, source) if resp.has_sdp() else None
            if method in ("UPDATE", "PRACK") and call is not None:
                yield from self.media.sdp_step(call, resp, other_leg(call.leg_of(tx.request.from_tag)), source,
                                               method, resp.cseq[0])
            if resp.status >= 200:
                b.final = resp.status
            self.reply(tx, resp)
            if resp.status >= 200 and method == "MESSAGE" and tx.request.to_tag is None:
                self.events.message(tx.request, tx.source, resp.status, resp.reason, b.binding)

    def _invite_response(self, tx: ServerTx, b: Branch, resp: SIPResponse, source: Address,
                         call: Call | None) -> Steps:
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
        if call is not None:
            yield from self.media.sdp_step(call, resp, other_leg(call.leg_of(tx.request.from_tag)), source,
                                           "INVITE", resp.cseq[0])
        if status < 200:
            if call is not None and initial and status in (180, 183) and call.ringing_at is None:
                call.ringing_at = self.clock()
                call.state = CallState.EARLY
                self.events.call_ringing(call, resp)
            self.reply(tx, resp)
            return
        b.final = status
        if status < 300:
            if initial and self.policy.profile.route_on_invite_2xx:
                resp.headers.add("Route", f"<sip:{self.host}:{self.port};lr>")   # the original's, inert
            if call is not None and initial and call.state not in (CallState.CONFIRMED, CallState.ENDED):
                call.state = CallState.CONFIRMED
                call.answered_at = self.clock()
                self.events.call_answered(call, resp)
            self.reply(tx, resp)
            # a 2xx ends the other forks
            for other in tx.branches:
                if other is not b and other.final is None:
                    self._send_cancel(other)
            return
        if tx.best is None or _better(resp, tx.best):
            tx.best = resp
        yield from self._conclude(tx, call)

    def _final_failure(self, tx: ServerTx, resp: SIPResponse, call: Call | None) -> Steps:
        self.reply(tx, resp)
        if call is not None and tx.request.to_tag is None and not call.ended:
            call.state = CallState.ENDED
            if tx.cancelled or call.cancel_requested:
                self.events.call_cancelled(call, tx.request)
            else:
                self.events.call_failed(call, resp.status, resp.reason)
            yield from self.media.delete(call)

    def _stray_response(self, resp: SIPResponse, source: Address) -> Steps:
        """A 2xx retransmission for a transaction we already forgot: relay by the next Via."""
        resp.headers.remove_first("Via")
        nxt = resp.top_via()
        if nxt is None:
            return
        call = self.calls.get(resp.call_id or "")
        if call is not None and 200 <= resp.status < 300 and resp.cseq[1] == "INVITE":
            if resp.has_sdp():
                self.policy.on_response(resp, source)
            yield from self.media.sdp_step(call, resp, other_leg(call.leg_of(resp.from_tag)), source,
                                           "INVITE", resp.cseq[0])
            self.send(resp, call.caller_flow, call.caller_transport)
            return
        self.send(resp, nxt.response_address(), nxt.transport.lower())

    # ==========================================================================================
    # requests we originate (RMV CALL, keepalive)
    # ==========================================================================================
    def start_originated(self, request: SIPRequest, dest: Address, transport: str = "udp") -> str:
        """Send a request of ours through a client transaction; its outcome comes back as an
        ``OriginatedDone`` action carrying the returned branch."""
        return self.originated.start(request, dest, transport, self.clock())

    def forget_originated(self, branch: str) -> None:
        self.originated.forget(branch)

    def build_bye(self, call: Call, to_leg: str, why: str = BYE_BY_OPERATOR) -> tuple[SIPRequest, Address, str]:
        """BYE on behalf of the other party, towards ``to_leg`` ('caller' or 'callee')."""
        return build_bye(call, to_leg, self._via("{branch}", "udp"), why)

    def end_call(self, call_id: str, why: str = BYE_BY_OPERATOR) -> tuple[Call, list[tuple[SIPRequest, Address, str]]] | None:
        """The server ends a call (operator, time limit): the call is marked ended and returned
        with the BYEs to send (None when there is no such live call); ``why`` is the BYE's Reason
        text. ``call_ended_by_operator`` follows once they are answered."""
        call = self.calls.get(call_id)
        if call is None or call.ended:
            return None
        call.state = CallState.ENDED
        return call, [self.build_bye(call, leg, why) for leg in ("caller", "callee")
                      if not (leg == "callee" and call.callee_flow is None)]

    def call_ended_by_operator(self, call: Call, reason: str, answers: list) -> Steps:
        self.events.call_ended(call, reason, None)
        yield from self.media.delete(call)
        log.info("call %s ended by the server (%s): BYE answers %s", call.call_id, reason,
                 [r.status if isinstance(r, SIPResponse) else None for r in answers])

    # ==========================================================================================
    # housekeeping
    # ==========================================================================================
    def sweep(self) -> Steps:
        """Forget finished transactions and ended calls once they have lingered; Timer C for INVITE
        branches that only ring (the client transactions time out branches that never answered
        themselves). Only what is due is looked at (``Deadlines``), and Timer C only walks the
        INVITEs that have not been answered finally."""
        now = self.clock()
        for key in self._tx_due.pop_due(now):
            tx = self.server_txs.get(key)
            if tx is None:
                continue
            if tx.finished_at is not None:
                if now - tx.finished_at > TX_LINGER:
                    self._forget(key, tx)
                else:
                    self._tx_due.add(key, tx.finished_at + TX_LINGER + SWEEP_INTERVAL)
            elif not tx.final_sent and not tx.branches and now - tx.created > TX_LINGER:
                self._forget(key, tx)
            else:                                   # still in use: look again soon
                self._tx_due.add(key, now + TX_RECHECK)
        for key, tx in list(self._invites.items()):
            if tx.final_sent or self.server_txs.get(key) is not tx:
                del self._invites[key]
                continue
            ringing_too_long = [b for b in tx.branches
                                if b.final is None and b.provisional and now - b.started > TIMER_C]
            for b in ringing_too_long:
                log.info("INVITE %s: Timer C for %s:%s, cancelling", tx.request.call_id, *b.dest)
                b.final = 408
                self._send_cancel(b)
            if ringing_too_long:
                yield from self._conclude(tx)
        for call_id in self._calls_due.pop_due(now):
            call = self.calls.get(call_id)
            if call is None:
                continue
            if call.ended and now - call.started > TX_LINGER:
                del self.calls[call_id]
            else:
                self._calls_due.add(call_id, now + CALL_RECHECK)

    def _forget(self, key, tx: ServerTx) -> None:
        if self.server_txs.pop(key, None) is tx and tx.server is not None and not tx.final_sent:
            self.unanswered -= 1
        self._tx_due.discard(key)
        self._invites.pop(key, None)
        for run in (tx.server, *(r for b in tx.branches for r in (b.client, b.cancel_client))):
            if run is not None:
                run.stop()
        for b in tx.branches:
            self.branches.pop(b.branch, None)

    def active_calls(self) -> list[Call]:
        return [c for c in self.calls.values() if not c.ended]


def _better(a: SIPResponse, b: SIPResponse) -> bool:
    """RFC 3261 §16.7 step 6 (simplified): 6xx wins, then the lowest class, 503 avoided."""
    def rank(r: SIPResponse) -> tuple:
        cls = r.status // 100
        return (0 if cls == 6 else 1, cls, 1 if r.status == 503 else 0, r.status)
    return rank(a) < rank(b)


