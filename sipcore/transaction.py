"""RFC 3261 §17 transaction state machines, sans-IO: events and a clock in, actions out.

    tx = ClientTransaction(request, reliable=False)
    actions = tx.start(now)              # [Send(request)]
    actions = tx.on_response(resp, now)  # [PassUp(resp)] / [Send(ack), PassUp(resp)] / []
    actions = tx.on_timer(now)           # retransmissions, Timeout, Terminated
    tx.next_deadline()                   # when on_timer must be called next (None: never)

Timers: A/B/D (INVITE client), E/F/K (non-INVITE client), G/H/I (INVITE server), J (non-INVITE
server). INVITE transactions follow RFC 6026 for 2xx: both sides enter "accepted" (Timer M on the
client, L on the server) so 2xx retransmissions still pass while retransmitted INVITEs are absorbed.
Timer B only runs in "calling": once a provisional arrived, giving up is the proxy's Timer C.
``server_key`` gives the §17.2.3 matching key; client transactions are matched by the branch the
sender chose plus the CSeq method (§17.1.3).
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from sipcore.message import Headers, SIPRequest, SIPResponse, build_response

log = logging.getLogger(__name__)
_ROOT = logging.getLogger()    # per-message DEBUG lines: its level read as an attribute, not a Logger call


@dataclass(frozen=True)
class Timers:
    T1: float = 0.5
    T2: float = 4.0
    T4: float = 5.0


@dataclass
class Send:
    message: SIPRequest | SIPResponse

    def __init__(self, message: SIPRequest | SIPResponse) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.message = message


@dataclass
class PassUp:
    message: SIPRequest | SIPResponse

    def __init__(self, message: SIPRequest | SIPResponse) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.message = message


@dataclass
class Timeout:
    pass


@dataclass
class Terminated:
    pass


class TxState(enum.StrEnum):
    INIT = "init"
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class _Base:
    def __init__(self, timers: Timers, reliable: bool):
        self.timers = timers
        self.reliable = reliable
        self._state = TxState.INIT
        self._deadlines: dict[str, float] = {}

    @property
    def state(self) -> TxState:
        return self._state

    @state.setter
    def state(self, new: TxState) -> None:
        """The one place a transaction changes state; logged old -> new."""
        if new is not self._state:
            if _ROOT.level <= logging.DEBUG:
                log.debug("%s %s: %s -> %s", type(self).__name__, self._label(), self._state, new)
            self._state = new

    def _label(self) -> str:
        request = getattr(self, "request", None)
        return f"{request.method} {request.call_id}" if request is not None else "?"

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values()) if self._deadlines else None

    def _set(self, name: str, at: float) -> None:
        self._deadlines[name] = at

    def _clear(self, *names: str) -> None:
        for n in names:
            self._deadlines.pop(n, None)

    def _due(self, now: float) -> list[str]:
        return sorted((n for n, t in self._deadlines.items() if t <= now), key=lambda n: self._deadlines[n])

    def _terminate(self) -> list:
        self.state = TxState.TERMINATED
        self._deadlines.clear()
        return [Terminated()]


class ClientTransaction(_Base):
    """INVITE client (§17.1.1) or non-INVITE client (§17.1.2) transaction."""

    def __init__(self, request: SIPRequest, reliable: bool = False, timers: Timers = Timers()):
        super().__init__(timers, reliable)
        self.request = request
        self.invite = request.method == "INVITE"
        self._interval = timers.T1
        self.ack: SIPRequest | None = None

    @property
    def key(self) -> tuple[str, str]:
        via = self.request.top_via()
        return (via.branch if via is not None else None) or "", self.request.method

    def start(self, now: float) -> list:
        t = self.timers
        self.state = TxState.CALLING if self.invite else TxState.TRYING
        if not self.reliable:
            self._set("A" if self.invite else "E", now + t.T1)
        self._set("B" if self.invite else "F", now + 64 * t.T1)
        return [Send(self.request)]

    def on_response(self, resp: SIPResponse, now: float) -> list:
        t = self.timers
        if self.state in ("terminated",):
            return []
        if self.invite:
            if self.state in ("calling", "proceeding"):
                if resp.status < 200:
                    self.state = TxState.PROCEEDING
                    self._clear("A", "B")
                    return [PassUp(resp)]
                if resp.status < 300:                               # the TU ACKs 2xx end to end
                    self.state = TxState.ACCEPTED
                    self._clear("A", "B")
                    self._set("M", now + 64 * t.T1)
                    return [PassUp(resp)]
                self.state = TxState.COMPLETED
                self._clear("A", "B")
                self.ack = self._build_ack(resp)
                self._set("D", now + (0 if self.reliable else 32.0))
                return [Send(self.ack), PassUp(resp)]
            if self.state == "completed" and resp.status >= 300:
                assert self.ack is not None                         # built with the first final
                return [Send(self.ack)]                            # retransmitted final: ACK again
            if self.state == "accepted" and 200 <= resp.status < 300:
                return [PassUp(resp)]                              # 2xx retransmission or another fork
            return []
        if self.state in ("trying", "proceeding"):
            if resp.status < 200:
                self.state = TxState.PROCEEDING
                return [PassUp(resp)]
            self.state = TxState.COMPLETED
            self._clear("E", "F")
            self._set("K", now + (0 if self.reliable else t.T4))
            return [PassUp(resp)]
        return []

    def on_timer(self, now: float) -> list:
        t = self.timers
        out: list = []
        for name in self._due(now):
            if name == "A":
                self._interval *= 2
                self._set("A", now + self._interval)
                out.append(Send(self.request))
            elif name == "E":
                self._interval = min(self._interval * 2, t.T2) if self.state == "trying" else t.T2
                self._set("E", now + self._interval)
                out.append(Send(self.request))
            elif name in ("B", "F"):
                return out + [Timeout()] + self._terminate()
            elif name in ("D", "K", "M"):
                return out + self._terminate()
        return out

    def build_cancel(self) -> SIPRequest:
        """CANCEL for this INVITE (§9.1): same Request-URI, top Via (branch), Route, From, To,
        Call-ID and CSeq number. It is sent in its own non-INVITE client transaction."""
        return self._hop_request("CANCEL", self.request.headers.get("To"))

    def _build_ack(self, resp: SIPResponse) -> SIPRequest:
        """ACK for a non-2xx final response (§17.1.1.3): same branch, To from the response."""
        return self._hop_request("ACK", resp.headers.get("To"))

    def _hop_request(self, method: str, to_value: str | None) -> SIPRequest:
        req = self.request
        h = Headers()
        h.add("Via", req.headers.get_raw("Via")[0])
        for v in req.headers.get_raw("Route"):
            h.add("Route", v)
        h.add("Max-Forwards", req.headers.get("Max-Forwards") or "70")
        h.add("From", req.headers.get("From") or "")
        if to_value is not None:
            h.add("To", to_value)
        h.add("Call-ID", req.call_id or "")
        h.add("CSeq", f"{req.cseq[0]} {method}")
        return SIPRequest(method, req.uri.copy(), h)


class ServerTransaction(_Base):
    """INVITE server (§17.2.1) or non-INVITE server (§17.2.2) transaction."""

    def __init__(self, request: SIPRequest, reliable: bool = False, timers: Timers = Timers(),
                 auto_trying_after: float | None = 0.2):
        super().__init__(timers, reliable)
        self.request = request
        self.invite = request.method == "INVITE"
        self.last_response: SIPResponse | None = None
        self._interval = timers.T1
        self.auto_trying_after = auto_trying_after

    def start(self, now: float) -> list:
        self.state = TxState.PROCEEDING if self.invite else TxState.TRYING
        if self.invite and self.auto_trying_after is not None:
            if self.auto_trying_after <= 0:
                return self.respond(build_response(self.request, 100), now) + [PassUp(self.request)]
            self._set("trying", now + self.auto_trying_after)
        return [PassUp(self.request)]

    def on_request(self, request: SIPRequest, now: float) -> list:
        """A retransmission (or, for INVITE, the ACK of a non-2xx final) for this transaction."""
        if self.state == "accepted":
            return []                                   # RFC 6026: INVITE retransmissions absorbed
        if request.method == "ACK" and self.invite:
            if self.state == "completed":
                self.state = TxState.CONFIRMED
                self._clear("G", "H")
                self._set("I", now + (0 if self.reliable else self.timers.T4))
            return []
        if self.last_response is not None and self.state in ("proceeding", "completed"):
            return [Send(self.last_response)]
        return []

    def respond(self, resp: SIPResponse, now: float) -> list:
        t = self.timers
        if self.state == "accepted" and 200 <= resp.status < 300:
            return [Send(resp)]                         # the TU's 2xx retransmissions pass
        if self.state in ("completed", "confirmed", "accepted", "terminated"):
            return []
        self._clear("trying")
        self.last_response = resp
        if resp.status < 200:
            self.state = TxState.PROCEEDING
            return [Send(resp)]
        if self.invite and resp.status < 300:
            self.state = TxState.ACCEPTED                     # 2xx retransmission is the TU's job
            self._set("L", now + 64 * t.T1)
            return [Send(resp)]
        self.state = TxState.COMPLETED
        if self.invite:
            if not self.reliable:
                self._set("G", now + t.T1)
            self._set("H", now + 64 * t.T1)
        else:
            self._set("J", now + (0 if self.reliable else 64 * t.T1))
        return [Send(resp)]

    def on_timer(self, now: float) -> list:
        out: list = []
        for name in self._due(now):
            if name == "trying":
                self._clear("trying")
                if self.last_response is None:
                    out += self.respond(build_response(self.request, 100), now)
            elif name == "G":
                self._interval = min(self._interval * 2, self.timers.T2)
                self._set("G", now + self._interval)
                assert self.last_response is not None              # G runs only after a final
                out.append(Send(self.last_response))
            elif name == "H":
                return out + [Timeout()] + self._terminate()
            elif name in ("I", "J", "L"):
                return out + self._terminate()
        return out


def server_key(request: SIPRequest, method: str | None = None) -> tuple:
    """Server transaction matching (§17.2.3): top Via branch + sent-by + method. An ACK matches
    its INVITE; a CANCEL looks its INVITE up with ``method="INVITE"``. Requests without a branch
    (RFC 2543 peers) fall back to Call-ID and CSeq number."""
    via = request.top_via()
    branch = (via.branch if via is not None and via.branch else "") or \
        f"rfc2543-{request.call_id}-{request.cseq[0]}"
    sent_by = (via.host.lower(), via.port or 5060) if via is not None else ("", 0)
    if method is None:
        method = "INVITE" if request.method == "ACK" else request.method
    return (branch, *sent_by, method)


class BoundTransaction:
    """One transaction bound to where its messages go, still sans-IO: the caller passes the time.

    ``send(message, dest, transport)`` receives what the state machine sends, Timer B/F/H call
    ``on_timeout``, pass-ups are returned. After every event ``scheduler(self)`` (when given) is
    told so it can (re)arm ``deadline()``; ``stop()`` silences the timers until the next event.
    The proxy core runs many of these on its one clock; ``transaction_runner.RunningTransaction``
    runs one on the asyncio loop.
    """
    __slots__ = ("txn", "send", "dest", "transport", "on_timeout", "scheduler", "scheduled", "_stopped")

    def __init__(self, txn: ClientTransaction | ServerTransaction, send, dest: tuple[str, int],
                 transport: str, on_timeout=None, scheduler=None):
        self.txn = txn
        self.send = send
        self.dest = dest
        self.transport = transport
        self.on_timeout = on_timeout
        self.scheduler = scheduler
        self.scheduled: float | None = None     # the scheduler's bookkeeping: deadline last armed
        self._stopped = False

    @property
    def state(self) -> str:
        return self.txn.state

    def start(self, now: float) -> list:
        return self._feed(self.txn.start(now))

    def response(self, resp: SIPResponse, now: float) -> list:
        """A response for a client transaction; returns the responses passed up."""
        return self._feed(self.txn.on_response(resp, now))      # type: ignore[union-attr]

    def request(self, request: SIPRequest, now: float) -> list:
        """A retransmission (or the ACK of a non-2xx final) for a server transaction."""
        return self._feed(self.txn.on_request(request, now))    # type: ignore[union-attr]

    def respond(self, resp: SIPResponse, now: float) -> bool:
        """Send a response through a server transaction; False when the state machine dropped it."""
        actions = self.txn.respond(resp, now)                   # type: ignore[union-attr]
        if not actions:
            return False
        self._feed(actions)
        for a in actions:
            if type(a) is Send:
                return True
        return False

    def timer(self, now: float) -> list:
        return self._feed(self.txn.on_timer(now))

    def deadline(self) -> float | None:
        if self._stopped or self.txn.state == "terminated":
            return None
        return self.txn.next_deadline()

    def stop(self) -> None:
        self._stopped = True
        if self.scheduler is not None:
            self.scheduler(self)

    def _feed(self, actions: list) -> list:
        passed = []
        for action in actions:
            if isinstance(action, Send):
                self.send(action.message, self.dest, self.transport)
            elif isinstance(action, PassUp):
                passed.append(action.message)
            elif isinstance(action, Timeout) and self.on_timeout is not None:
                self.on_timeout()
        self._stopped = False
        if self.scheduler is not None:
            self.scheduler(self)
        return passed
