"""The call/dialog model the proxy keeps per INVITE dialog (what CDR rows and MML are made from).

A ``Call`` is plain data plus one state setter: every change of ``state`` goes through it and is
logged old -> new, so a call's life can be read from the log.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

from sipcore.offer_answer import OfferAnswer

log = logging.getLogger(__name__)
_ROOT = logging.getLogger()    # per-message DEBUG lines: its level read as an attribute, not a Logger call

Address = tuple[str, int]


class CallState(enum.StrEnum):
    TRYING = "trying"
    EARLY = "early"
    CONFIRMED = "confirmed"
    ENDED = "ended"


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
    _state: CallState = field(default=CallState.TRYING, repr=False)
    caller_cseq: int = 0
    callee_cseq: int = 0
    invite_cseq: int = 0
    answered_at: float | None = None
    ringing_at: float | None = None
    media: bool = False
    media_kinds: list[str] = field(default_factory=list)
    codecs: list[str] = field(default_factory=list)
    user_agent: str = ""
    offer_answer: OfferAnswer = field(default_factory=OfferAnswer)
    sdp_rewrites: dict = field(default_factory=dict)   # (sender, method, cseq, status, body) -> body sent
    cancel_requested: bool = False
    auth_user: str | None = None   # who authenticated the INVITE (CDR), None: nobody
    handed_over_at: float | None = None   # taken over from a previous server process (sipcore.call_handover)

    def __init__(self, call_id: str, caller_tag: str, caller_flow: Address, caller_transport: str, caller_from: str,
                 callee_to: str, caller_contact: str, started: float, callee_tag: str | None = None,
                 callee_flow: Address | None = None, callee_transport: str = "udp", callee_contact: str | None = None,
                 _state: CallState = CallState.TRYING, caller_cseq: int = 0, callee_cseq: int = 0,
                 invite_cseq: int = 0, answered_at: float | None = None, ringing_at: float | None = None,
                 media: bool = False, media_kinds: list[str] | None = None, codecs: list[str] | None = None,
                 user_agent: str = "", offer_answer: OfferAnswer | None = None, sdp_rewrites: dict | None = None,
                 cancel_requested: bool = False, auth_user: str | None = None,
                 handed_over_at: float | None = None) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.call_id, self.caller_tag, self.caller_flow, self.caller_transport = \
            call_id, caller_tag, caller_flow, caller_transport
        self.caller_from, self.callee_to, self.caller_contact, self.started = \
            caller_from, callee_to, caller_contact, started
        self.callee_tag, self.callee_flow, self.callee_transport, self.callee_contact = \
            callee_tag, callee_flow, callee_transport, callee_contact
        self._state = _state
        self.caller_cseq, self.callee_cseq, self.invite_cseq = caller_cseq, callee_cseq, invite_cseq
        self.answered_at, self.ringing_at, self.media = answered_at, ringing_at, media
        self.media_kinds = [] if media_kinds is None else media_kinds
        self.codecs = [] if codecs is None else codecs
        self.user_agent = user_agent
        self.offer_answer = OfferAnswer() if offer_answer is None else offer_answer
        self.sdp_rewrites = {} if sdp_rewrites is None else sdp_rewrites
        self.cancel_requested, self.auth_user, self.handed_over_at = cancel_requested, auth_user, handed_over_at

    @property
    def state(self) -> CallState:
        return self._state

    @state.setter
    def state(self, new: CallState) -> None:
        if type(new) is not CallState:
            new = CallState(new)          # a plain "ended" from an older caller
        if new is not self._state:
            if _ROOT.level <= logging.DEBUG:
                log.debug("call %s: %s -> %s", self.call_id, self._state, new)
            self._state = new

    @property
    def ended(self) -> bool:
        return self._state is CallState.ENDED

    def leg_of(self, from_tag: str | None) -> str:
        return "caller" if from_tag == self.caller_tag else "callee"

    def as_dict(self, now: float) -> dict:
        return {"call_id": self.call_id, "state": self.state.value,
                "caller": self.caller_from, "callee": self.callee_to,
                "caller_flow": f"{self.caller_flow[0]}:{self.caller_flow[1]}",
                "callee_flow": f"{self.callee_flow[0]}:{self.callee_flow[1]}" if self.callee_flow else "",
                "duration": round(now - self.answered_at, 1) if self.answered_at else 0.0,
                "media": ",".join(self.media_kinds)}
