"""Calls in progress handed from a stopping server process to the next one (restart, cutover).

When the media relay outlives the process (RTPProxy run by pm2/systemd), a graceful stop keeps
the answered calls' relay sessions and, instead of closing their CDR rows as SERVER_SHUTDOWN,
writes what the calls need to a hand-over file next to the CDR (``.calls-in-progress.json``).
The next process loads it and ``revive``s each call as a confirmed dialog of the proxy, so its
in-dialog requests are handled as before the restart: a re-INVITE/UPDATE with SDP goes through
the relay (same Call-ID and tags: RTPProxy updates the session it kept), the BYE writes the
call's row as a normal end and deletes the relay session.

A handed-over call has a bounded life (``ending_reason``): it is ended (BYE to both parties as
the other party, CDR row, relay session deleted) when its relay session is gone (RTPProxy drops a
session after its own inactivity timeout) -> ``RELAY_TIMEOUT``, or when it has run
``HANDOVER_CALL_MAX_SECONDS`` since it was first handed over -> ``HANDOVER_TIMEOUT``.
Sans-IO apart from reading/writing that one small file.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field

from sipcore.call import Call, CallState
from sipcore.offer_answer import OfferAnswer

log = logging.getLogger(__name__)

FILE_NAME = ".calls-in-progress.json"
RELAY_TIMEOUT = "RELAY_TIMEOUT"          # CDR termination_reason: the relay dropped the session
HANDOVER_TIMEOUT = "HANDOVER_TIMEOUT"    # CDR termination_reason: HANDOVER_CALL_MAX_SECONDS reached
BYE_TEXT = {RELAY_TIMEOUT: "Media relay session timed out",
            HANDOVER_TIMEOUT: "Call time limit after a server restart"}


@dataclass
class HandedOverCall:
    """What a ``Call`` needs to go on in the next process: the CDR row's attributes
    (``CDREvents._call_row``) and the dialog's routing state (flows, contacts, CSeqs)."""
    call_id: str
    caller_tag: str
    caller_from: str
    callee_to: str
    caller_flow: tuple
    started: float
    callee_tag: str | None = None
    callee_flow: tuple | None = None
    answered_at: float | None = None
    ringing_at: float | None = None
    invite_cseq: int = 0
    media_kinds: list = field(default_factory=list)
    codecs: list = field(default_factory=list)
    user_agent: str = ""
    auth_user: str | None = None
    caller_transport: str = "udp"
    callee_transport: str = "udp"
    caller_contact: str = ""
    callee_contact: str | None = None
    caller_cseq: int = 0
    callee_cseq: int = 0
    handed_over_at: float | None = None     # the first hand-over (kept across later restarts)

    @classmethod
    def of(cls, call, now: float) -> "HandedOverCall":
        h = cls(**{k: getattr(call, k, None) for k in cls.__dataclass_fields__ if hasattr(call, k)})
        if h.handed_over_at is None:
            h.handed_over_at = now
        return h

    def revive(self, legacy_media_positions: bool = False) -> Call:
        """The call as a confirmed dialog with a relay session (the relay kept it)."""
        call = Call(call_id=self.call_id, caller_tag=self.caller_tag, caller_flow=tuple(self.caller_flow),
                    caller_transport=self.caller_transport, caller_from=self.caller_from,
                    callee_to=self.callee_to, caller_contact=self.caller_contact, started=self.started,
                    callee_tag=self.callee_tag,
                    callee_flow=tuple(self.callee_flow) if self.callee_flow else None,
                    callee_transport=self.callee_transport, callee_contact=self.callee_contact,
                    caller_cseq=self.caller_cseq, callee_cseq=self.callee_cseq, invite_cseq=self.invite_cseq,
                    answered_at=self.answered_at, ringing_at=self.ringing_at, media=True,
                    media_kinds=list(self.media_kinds), codecs=list(self.codecs), user_agent=self.user_agent,
                    offer_answer=OfferAnswer(legacy=legacy_media_positions), auth_user=self.auth_user,
                    handed_over_at=self.handed_over_at)
        call.state = CallState.CONFIRMED
        return call


def ending_reason(call: Call, now: float, max_seconds: float, relay_alive: bool | None) -> str | None:
    """Why a handed-over call must end now, or None. ``relay_alive``: the media backend's answer
    for the call's session (None: it cannot tell)."""
    if call.ended or call.handed_over_at is None:
        return None
    if relay_alive is False:
        return RELAY_TIMEOUT
    if now - call.handed_over_at >= max_seconds:
        return HANDOVER_TIMEOUT
    return None


def handover_path(cdr_dir: str) -> str:
    return os.path.join(cdr_dir, FILE_NAME)


def save(path: str, calls, now: float) -> int:
    items = [asdict(HandedOverCall.of(c, now)) for c in calls]
    if not items:
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(items, fh)
    os.replace(tmp, path)
    log.info("%d calls in progress handed over to the next server process (%s)", len(items), path)
    return len(items)


def load(path: str) -> dict[str, HandedOverCall]:
    """The handed-over calls by Call-ID; the file is consumed (removed)."""
    try:
        with open(path, encoding="utf-8") as fh:
            items = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("hand-over file %s unreadable, ignored: %s", path, exc)
        items = []
    try:
        os.unlink(path)
    except OSError:
        pass
    out: dict[str, HandedOverCall] = {}
    for d in items if isinstance(items, list) else []:
        try:
            c = HandedOverCall(**{k: v for k, v in d.items() if k in HandedOverCall.__dataclass_fields__})
            c.caller_flow = tuple(c.caller_flow)
            c.callee_flow = tuple(c.callee_flow) if c.callee_flow else None
        except (TypeError, ValueError, AttributeError):
            log.warning("hand-over file %s: an unusable entry ignored", path)
            continue
        out[c.call_id] = c
    if out:
        log.info("%d calls in progress taken over from the previous server process", len(out))
    return out
