"""Requests the proxy originates itself (BYE when the operator ends a call, keepalive OPTIONS),
sans-IO: each runs in its own RFC 3261 client transaction (sipcore.transaction) keyed by the
branch of its Via; the outcome is reported as ``OriginatedDone(branch, final response or None)``.
``build_bye`` writes the BYE on behalf of one party of a call towards the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sipcore.call import Call
from sipcore.errors import SIPParseError
from sipcore.message import Headers, SIPMessage, SIPRequest, SIPResponse, new_branch, new_tag
from sipcore.transaction import BoundTransaction, ClientTransaction
from sipcore.uri import NameAddr, SipURI

Address = tuple[str, int]


@dataclass
class OriginatedDone:
    branch: str
    response: SIPResponse | None      # None: Timer B/F fired (no final answer)


class OriginatedRequests:
    def __init__(self, send: Callable[[SIPMessage, Address, str], None],
                 report: Callable[[OriginatedDone], None], scheduler: Callable[[BoundTransaction], None]):
        self._send = send
        self._report = report
        self._scheduler = scheduler
        self._running: dict[str, BoundTransaction] = {}

    def __contains__(self, branch: str) -> bool:
        return branch in self._running

    def start(self, request: SIPRequest, dest: Address, transport: str, now: float) -> str:
        txn = ClientTransaction(request, reliable=transport != "udp")
        branch = txn.key[0]
        run = BoundTransaction(txn, self._send, dest, transport,
                               on_timeout=lambda: self._report(OriginatedDone(branch, None)),
                               scheduler=self._scheduler)
        self._running[branch] = run
        run.start(now)
        return branch

    def on_response(self, branch: str, resp: SIPResponse, now: float) -> None:
        run = self._running.get(branch)
        if run is None:
            return
        for passed in run.response(resp, now):
            if passed.status >= 200:
                self._report(OriginatedDone(branch, passed))

    def forget(self, branch: str) -> None:
        run = self._running.pop(branch, None)
        if run is not None:
            run.stop()


BYE_BY_OPERATOR = "Terminated by operator"


def build_bye(call: Call, to_leg: str, via: str, why: str = BYE_BY_OPERATOR) -> tuple[SIPRequest, Address, str]:
    """BYE on behalf of the other party, towards ``to_leg`` ('caller' or 'callee'); ``via`` is
    our Via value without the branch parameter's value (``{branch}`` is filled in); ``why`` goes
    into the Reason header's text."""
    headers = Headers()
    headers.add("Via", via.format(branch=new_branch()))
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
        assert call.callee_flow is not None
        seq, target_contact, dest, tr = (call.caller_cseq, call.callee_contact or call.callee_to,
                                         call.callee_flow, call.callee_transport)
    headers.add("From", str(from_na))
    headers.add("To", str(to_na))
    headers.add("Call-ID", call.call_id)
    headers.add("CSeq", f"{seq} BYE")
    headers.add("Reason", f'SIP;cause=200;text="{why}"')
    try:
        uri = NameAddr.parse(target_contact).uri or SipURI(host=dest[0], port=dest[1])
    except SIPParseError:
        uri = SipURI(host=dest[0], port=dest[1])
    return SIPRequest("BYE", uri, headers), dest, tr
