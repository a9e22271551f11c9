"""Offer/answer tracking per dialog, sans-IO: where RFC 3264 puts the offer and the answer in SIP.

The proxy shows every SDP-relevant message of a call to ``OfferAnswer`` (which side sent it, the
transaction's method and CSeq, the status and reliability of a response, whether it carries SDP)
and gets back a ``Step``: is the SDP in this message an offer, an answer (and who made the offer,
so the relay gets the tags in the right order), or nothing the relay must see.

Positions (RFC 3261 §13.2.1 and §14, RFC 3262 §5, RFC 3311 §5.1):
- INVITE (initial or re-INVITE) with SDP: offer; the answer comes in a 1xx/2xx to it (an
  unreliable 183 is a preview; the 2xx, or a reliable 1xx, is the answer: the final one wins).
- INVITE without SDP: the offer comes in the first reliable 1xx (100rel) or the 2xx from the
  other side; its answer in the PRACK (offer in a reliable 1xx) or the ACK (offer in the 2xx).
- PRACK with SDP when no offer is outstanding: an offer, answered in the PRACK's 2xx.
- UPDATE with SDP (early or confirmed dialog): an offer, answered in the UPDATE's 2xx.
- A failure response to the transaction that carries an outstanding offer withdraws it.

``legacy=True`` is stage 0's original behaviour: only INVITE bodies (offers) and 2xx-to-INVITE
bodies (always taken as the answer) are seen by the relay; 183, PRACK, UPDATE and ACK bodies are
relayed untouched, as the original server did.

No I/O and no clock: the proxy's media hand-off calls the backend for the returned step.
"""
from __future__ import annotations

from dataclasses import dataclass

CALLER, CALLEE = "caller", "callee"
OFFER, ANSWER, NONE = "offer", "answer", "none"


def other_leg(leg: str) -> str:
    return CALLEE if leg == CALLER else CALLER


@dataclass(frozen=True)
class Offer:
    offerer: str            # CALLER or CALLEE
    method: str             # method of the transaction that carries the offer
    cseq: int
    in_response: bool = False   # late offer: made in a reliable 1xx or a 2xx
    status: int = 0             # the response that carried it (in_response only)


@dataclass(frozen=True)
class Step:
    role: str               # OFFER, ANSWER or NONE
    offerer: str | None = None
    note: str = ""

    @property
    def answerer(self) -> str | None:
        return other_leg(self.offerer) if self.offerer else None


NOTHING = Step(NONE)


class OfferAnswer:
    """The offer/answer state of one dialog (one Call)."""

    def __init__(self, legacy: bool = False):
        self.legacy = legacy
        self.pending: Offer | None = None       # the outstanding offer
        self.settled: Offer | None = None       # the last offer that got its (final) answer
        self.awaiting: tuple[str, int, str] | None = None   # (method, cseq, side) that owes the offer

    # ------------------------------------------------------------------------------------------
    def on_request(self, sender: str, method: str, cseq: int, has_sdp: bool) -> Step:
        if method == "INVITE":
            if has_sdp:
                self.pending, self.awaiting = Offer(sender, method, cseq), None
                return Step(OFFER, sender, "offer in INVITE")
            if self.legacy:
                return NOTHING
            self.pending, self.awaiting = None, (method, cseq, other_leg(sender))
            return Step(NONE, note="INVITE without SDP: the offer will come in the response")
        if self.legacy:
            return NOTHING
        pending = self.pending
        if method == "ACK":
            if pending is not None and pending.in_response and pending.status >= 200 \
                    and pending.offerer != sender and pending.cseq == cseq:
                self._settle()
                return Step(ANSWER, pending.offerer, "answer in ACK") if has_sdp else NOTHING
            return NOTHING
        if method == "PRACK":
            if pending is not None and pending.in_response and pending.status < 200 and pending.offerer != sender:
                if has_sdp:
                    self._settle()
                    return Step(ANSWER, pending.offerer, "answer in PRACK")
                return NOTHING
            if has_sdp:
                self.pending = Offer(sender, method, cseq)
                return Step(OFFER, sender, "offer in PRACK")
            return NOTHING
        if method == "UPDATE" and has_sdp:
            self.pending = Offer(sender, method, cseq)
            return Step(OFFER, sender, "offer in UPDATE")
        return NOTHING

    def on_response(self, sender: str, method: str, cseq: int, status: int, reliable: bool,
                    has_sdp: bool) -> Step:
        """``sender`` is the side that sent the response (the request's receiver); ``reliable``
        is True for a 2xx and for a 1xx sent with 100rel (RSeq)."""
        pending = self.pending
        ours = pending is not None and pending.method == method and pending.cseq == cseq
        if status >= 300:
            if ours and not pending.in_response:
                self.pending = None         # offer rejected: the previous session stays
            if self.awaiting is not None and self.awaiting[:2] == (method, cseq):
                self.awaiting = None
            return NOTHING
        if status < 101 or not has_sdp:
            return NOTHING
        if self.legacy:
            # the original treated the SDP of every 2xx to an INVITE as the answer to the INVITE's
            # sender, whether or not that INVITE made an offer (a late offer then finds no relay
            # session: not relayed at all)
            if method == "INVITE" and status >= 200:
                if ours:
                    self._settle()
                return Step(ANSWER, other_leg(sender), "answer in 2xx")
            return NOTHING
        if ours and pending.offerer != sender:
            # the answer; an unreliable 1xx only previews it, the 2xx or a reliable 1xx settles it
            if status >= 200 or reliable:
                self._settle()
            return Step(ANSWER, pending.offerer, f"answer in {status}")
        settled = self.settled
        if pending is None and settled is not None and self.awaiting is None:
            # SDP again after the exchange settled (a 200 whose SDP differs from the reliable
            # 183's, or repeats it): it updates what the sender's side said; the final one wins
            if settled.offerer != sender:
                return Step(ANSWER, settled.offerer, f"answer repeated in {status}")
            return Step(OFFER, sender, f"offer repeated in {status}")
        if method == "INVITE" and self.awaiting is not None and self.awaiting == ("INVITE", cseq, sender):
            if status >= 200 or reliable:
                self.awaiting = None
            self.pending = Offer(sender, method, cseq, in_response=True, status=status if (status >= 200 or reliable) else 0)
            return Step(OFFER, sender, f"offer in {status} (late offer)")
        if ours and pending.in_response and pending.offerer == sender:
            # a 2xx repeating (or revising) the offer its reliable 1xx already made
            self.pending = Offer(sender, method, cseq, in_response=True,
                                 status=status if (status >= 200 or reliable) else pending.status)
            return Step(OFFER, sender, f"offer repeated in {status}")
        return NOTHING

    def _settle(self) -> None:
        self.settled, self.pending = self.pending, None

    def describe(self) -> str:
        p = self.pending
        if p is None:
            return "idle" if self.awaiting is None else f"waiting for the offer in the {self.awaiting[0]} response"
        where = f"{p.status} to {p.method}" if p.in_response else p.method
        return f"offer by {p.offerer} in {where} (CSeq {p.cseq}) waiting for its answer"
