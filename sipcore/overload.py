"""Overload control, sans-IO: refuse new work cheaply while the server is behind, so the calls it
has accepted still complete and goodput stays near the knee instead of collapsing.

Without it, a UDP server offered more than it can do falls behind, the socket queue grows, every
message waits longer than the peers' retransmission timer (T1 = 500 ms), the retransmissions
multiply the load and soon no call completes at all. Kamailio's practice, kept here: a new
request that would start work (INVITE, REGISTER, MESSAGE, SUBSCRIBE without a To tag) is answered
statelessly with ``503 Service Unavailable`` and ``Retry-After`` when

* it waited in the socket queue longer than ``queue_limit`` (``OVERLOAD_QUEUE_MS``, from the
  kernel's receive time of the datagram: the direct measure of how far behind the server is), or
* more than ``max_pending`` server transactions have no final answer yet (``OVERLOAD_MAX_PENDING``).

Retransmissions of a refused request get the same 503 again and its ACK is absorbed, both from a
bounded memory of refused transactions, without any other work. Requests inside dialogs, CANCEL,
ACK, OPTIONS and every response are never refused: they finish work already accepted (or cost
next to nothing). Retransmissions of transactions the proxy holds are absorbed by the proxy's own
transaction layer as always.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from sipcore.message import SIPRequest, build_response
from sipcore.transaction import server_key

log = logging.getLogger(__name__)

SHED_METHODS = frozenset(("INVITE", "REGISTER", "MESSAGE", "SUBSCRIBE"))
REFUSED_KEPT = 65536          # refused transactions remembered (retransmissions, ACKs)
LOG_EVERY = 1.0               # seconds between two "overload" log lines


@dataclass
class Verdict:
    """What to do with a request: ``reply`` bytes to send back (503), or ``drop`` it (the ACK of
    a 503), or neither (handle it as usual)."""
    reply: bytes | None = None
    drop: bool = False

    def __init__(self, reply: bytes | None = None, drop: bool = False) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.reply, self.drop = reply, drop


PASS = Verdict()


@dataclass
class OverloadGuard:
    queue_limit: float = 0.2        # seconds; 0 turns the queue test off
    max_pending: int = 5000         # server transactions without a final answer; 0 turns it off
    retry_after: int = 5            # seconds, in the 503's Retry-After
    server_header: str = "ims-migrate"
    refused: int = 0
    _memory: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _logged_at: float = -1e9
    _logged_count: int = 0

    @property
    def enabled(self) -> bool:
        return self.queue_limit > 0 or self.max_pending > 0

    def check(self, req: SIPRequest, age: float, pending: int, known, now: float) -> Verdict:
        """``age``: seconds the request waited in the socket queue; ``pending``: server
        transactions without a final answer; ``known(key)``: the proxy holds that transaction."""
        method = req.method
        if method == "ACK":
            if self._memory and server_key(req) in self._memory:
                return Verdict(drop=True)      # the ACK of our 503 (hop by hop, ends here)
            return PASS
        if method not in SHED_METHODS or req.to_tag is not None:
            return PASS
        key = server_key(req)
        again = self._memory.get(key) if self._memory else None
        if again is not None:
            return Verdict(reply=again)        # a retransmission of a refused request
        over_queue = self.queue_limit > 0 and age > self.queue_limit
        over_pending = self.max_pending > 0 and pending >= self.max_pending
        if not (over_queue or over_pending) or known(key):
            return PASS
        reply = build_response(req, 503, to_tag=_refusal_tag(req),
                               extra_headers=[("Retry-After", str(self.retry_after)),
                                              ("Server", self.server_header)]).to_bytes()
        self._memory[key] = reply
        if len(self._memory) > REFUSED_KEPT:
            self._memory.popitem(last=False)
        self.refused += 1
        if now - self._logged_at >= LOG_EVERY:
            why = f"waited {age * 1000:.0f} ms in the socket queue (limit {self.queue_limit * 1000:.0f} ms)" \
                if over_queue else f"{pending} transactions pending (limit {self.max_pending})"
            log.warning("overload: new requests answered 503 (%s); %d refused since the last line, %d in all",
                        why, self.refused - self._logged_count, self.refused)
            self._logged_at, self._logged_count = now, self.refused
        return Verdict(reply=reply)


def _refusal_tag(req: SIPRequest) -> str:
    via = req.top_via()
    branch = via.branch if via is not None and via.branch else ""
    return "ovl" + format(abs(hash((req.call_id, branch))) % (1 << 40), "x")
