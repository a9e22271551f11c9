"""The media session hand-off: what the proxy asks of the media backend, and what it does with
the answer, per call (sans-IO).

The methods are generators: each yields one ``MediaOp`` (offer / answer / delete) and receives the
backend's ``SessionDescription`` back (or has ``MediaBackendError`` thrown in). The proxy driver
(sipcore.proxy_driver) performs the operation on the real backend (sipcore.media.MediaBackend);
a test can drive a generator by hand. The stage's NAT policy chooses the SDP handed over (the
relay's initial targets); which message carries an offer or an answer is the call's offer/answer
state's call (sipcore.offer_answer); the SIP message's body is replaced with the backend's SDP.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Generator

from sipcore.call import Call
from sipcore.errors import MediaBackendError, SDPParseError, SIPError
from sipcore.message import SIPMessage, SIPResponse
from sipcore.offer_answer import CALLEE, CALLER, NONE, OFFER
from sipcore.sdp import SessionDescription
from sipcore.stage_policy import StagePolicy

log = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass
class MediaOp:
    """One call into the media backend: ``kind`` is the MediaBackend method's name."""
    kind: str                         # "offer" | "answer" | "delete"
    call_id: str
    from_tag: str | None
    to_tag: str | None
    sdp: SessionDescription | None = None
    source: Address | None = None

    def __init__(self, kind: str, call_id: str, from_tag: str | None, to_tag: str | None,
                 sdp: SessionDescription | None = None, source: Address | None = None) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.kind, self.call_id, self.from_tag, self.to_tag, self.sdp, self.source = \
            kind, call_id, from_tag, to_tag, sdp, source


MediaSteps = Generator[MediaOp, "SessionDescription | None", bool]
RelaySteps = Generator[MediaOp, "SessionDescription | None", "SIPError | None"]


class MediaHandoff:
    def __init__(self, policy: StagePolicy):
        self.policy = policy

    def sdp_step(self, call: Call | None, msg: SIPMessage, sender: str, source: Address,
                 method: str, cseq: int) -> RelaySteps:
        """Show a message of an INVITE/ACK/PRACK/UPDATE transaction to the call's offer/answer
        state (sipcore.offer_answer); an offer or answer goes to the relay, whose SDP replaces the
        body. A retransmission gets the same rewrite again. Returns None, or the error (with the
        SIP status it maps to) when the SDP could not be relayed."""
        if call is None:
            return None
        status = msg.status if isinstance(msg, SIPResponse) else 0
        key = (sender, method, cseq, status, msg.body)
        if msg.body and key in call.sdp_rewrites:
            msg.body = call.sdp_rewrites[key]
            return None
        has_sdp = msg.has_sdp()
        if isinstance(msg, SIPResponse):
            reliable = status >= 200 or msg.headers.get("RSeq") is not None
            step = call.offer_answer.on_response(sender, method, cseq, status, reliable, has_sdp)
        else:
            step = call.offer_answer.on_request(sender, method, cseq, has_sdp)
        if step.role == NONE:
            return None
        assert step.offerer is not None and step.answerer is not None      # an offer or an answer
        tags = {CALLER: call.caller_tag, CALLEE: call.callee_tag}
        failure = yield from self._exchange(step.role, msg, source, call, tags[step.offerer], tags[step.answerer])
        if failure is None:
            call.sdp_rewrites[key] = msg.body
        return failure

    def delete(self, call: Call) -> MediaSteps:
        if not call.media:
            return False
        yield from self.delete_session(call.call_id, call.caller_tag, call.callee_tag)
        call.media = False
        return True

    def delete_session(self, call_id: str, from_tag: str | None, to_tag: str | None) -> MediaSteps:
        """Release a relay session by Call-ID and tags, with or without a Call in memory."""
        try:
            yield MediaOp("delete", call_id, from_tag, to_tag)
        except MediaBackendError as exc:
            log.warning("media delete failed for %s: %s", call_id, exc)
        return True

    def _exchange(self, kind: str, msg: SIPMessage, source: Address, call: Call,
                  from_tag: str | None, to_tag: str | None) -> RelaySteps:
        """Hand the SDP (with the stage's relay targets) to the media backend; forward its SDP.
        None when done, else the error that stopped it."""
        try:
            sd = SessionDescription.parse(msg.body)
        except SDPParseError as exc:
            log.warning("%s from %s:%s has bad SDP: %s", kind, *source, exc.reason)
            return exc
        try:
            out = yield MediaOp(kind, msg.call_id or "", from_tag or "", to_tag,
                                self.policy.media_target_sdp(sd, source), source)
        except MediaBackendError as exc:
            log.error("media %s failed for %s: %s", kind, msg.call_id, exc)
            return exc
        assert out is not None
        msg.body = out.to_bytes()
        call.media = True
        if kind == OFFER:
            call.media_kinds, call.codecs = sd.media_kinds(), sd.codec_names()
        return None
