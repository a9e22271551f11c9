"""CDR rows: what the proxy and the registrar report, turned into the original's 34 columns with
the original's value formats. The one place that decides row content; ``sipcore.cdr.CDRWriter``
only appends rows to the daily file (and reads them back for MML).

Formats, as the original server writes them (measured, see tests/golden/legacy/):

* ``cseq`` is the whole CSeq header value of the event (``2 BYE``, ``1 INVITE``, ``1 CANCEL``,
  ``2 REGISTER``, ``1 MESSAGE``);
* ``duration`` is ``round(seconds, 2)`` as Python prints it (``1.3``, ``12.47``), blank when 0;
  ``setup_time`` is ``<seconds with 2 decimals>s``;
* CALL rows carry the raw From (with its tag) and To header values; REGISTER rows carry the AOR
  (``sip:1001@domain``) as ``caller_uri`` and no callee;
* ``caller_number`` / ``callee_number`` are what follows ``sip:`` up to ``@``, ``;`` or ``>``
  (so an OPTIONS to the domain has the domain as callee_number);
* MESSAGE rows: ``call_id`` is Call-ID + ``-`` + the whole CSeq, status 200 OK (the original wrote
  the row when it relayed the MESSAGE), no callee address;
* ``server_ip``/``server_port`` are blank on OPTIONS and UNREGISTERED rows, ``expires`` is blank
  on UNREGISTERED rows, ``ringing_time`` is never filled, CANCELLED rows have no status;
* rows exist only for: REGISTER success (first time a Call-ID is seen) and unregister, calls that
  were relayed (ENDED / CANCELLED / FAILED with the callee's answer), every relayed MESSAGE,
  every OPTIONS answered locally.

``extended=True`` (``CDR_EXTENDED=1``) adds rows the original never wrote, in the same columns
and formats: failed REGISTER authentication (with the status actually sent, 401 or 403), every
REGISTER refresh, calls and MESSAGEs the server refused itself (404/480/488), MESSAGEs with their
real final status (FAILED when not 2xx), and fills ``ringing_time`` on the first 180/183.
"""
from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict

from sipcore.cdr import CDRWriter, fmt_date, fmt_ms, fmt_time
from sipcore.errors import SDPParseError
from sipcore.message import SIPMessage, SIPRequest, SIPResponse
from sipcore.sdp import SessionDescription

log = logging.getLogger(__name__)

REGISTER_CALL_IDS_KEPT = 100_000     # bound of the "one REGISTER row per Call-ID" memory
_NUMBER_RE = re.compile(r"[^@;>]+")


def number_of(uri: str) -> str:
    """The original's ``caller_number``/``callee_number``: after ``sip:``, up to ``@``, ``;`` or ``>``."""
    i = (uri or "").find("sip:")
    if i < 0:
        return ""
    m = _NUMBER_RE.match(uri, i + 4)
    return m.group(0) if m else ""


def call_type_of(media_kinds) -> str:
    kinds = [k.upper() for k in dict.fromkeys(k.lower() for k in media_kinds) if k in ("audio", "video")]
    return "+".join(kinds) or "AUDIO"


def seconds(value: float) -> str:
    """``duration`` as the original prints it: round to 2 decimals, Python's shortest form; 0 is blank."""
    value = round(max(0.0, value), 2)
    return repr(value) if value else ""


def cseq_text(msg: SIPMessage | None) -> str:
    if msg is None:
        return ""
    return msg.headers.get("CSeq") or ""


class CDREvents:
    def __init__(self, writer: CDRWriter, server_ip: str, server_port: int, clock=time.time,
                 extended: bool = False):
        self.writer = writer
        self.server_ip = server_ip
        self.server_port = server_port
        self.clock = clock
        self.extended = extended
        self._register_call_ids: OrderedDict[str, None] = OrderedDict()

    # --- calls --------------------------------------------------------------------------------
    def _call_row(self, call, state: str, status, text: str, reason: str, end: float, cseq: str) -> dict:
        callee_ip, callee_port = call.callee_flow if call.callee_flow else ("", "")
        answered = call.answered_at
        return {
            "record_type": "CALL", "call_state": state, "date": fmt_date(call.started),
            "start_time": fmt_time(call.started), "end_time": fmt_time(end), "call_id": call.call_id,
            "caller_uri": call.caller_from, "caller_number": number_of(call.caller_from),
            "caller_ip": call.caller_flow[0], "caller_port": call.caller_flow[1],
            "callee_uri": call.callee_to, "callee_number": number_of(call.callee_to),
            "callee_ip": callee_ip, "callee_port": callee_port,
            "duration": seconds(end - answered) if answered and state == "ENDED" else "",
            "setup_time": f"{max(0.0, answered - call.started):.2f}s" if answered else "",
            "status_code": status, "status_text": text,
            "termination_reason": reason, "invite_time": fmt_ms(call.started),
            "ringing_time": fmt_ms(call.ringing_at) if self.extended else "",
            "answer_time": fmt_ms(answered), "bye_time": fmt_ms(end) if state == "ENDED" else "",
            "call_type": call_type_of(call.media_kinds), "codec": ", ".join(call.codecs),
            "user_agent": call.user_agent, "server_ip": self.server_ip, "server_port": self.server_port,
            "cseq": cseq,
            # who really authenticated the INVITE (sipcore.admission), whatever the From says
            "extra_info": f"auth_user={call.auth_user}" if getattr(call, "auth_user", None) else "",
        }

    def call_started(self, call, request: SIPRequest) -> None:
        log.info("call %s started: %s -> %s", call.call_id, number_of(call.caller_from), number_of(call.callee_to))

    def call_ringing(self, call, response) -> None:
        pass     # call.ringing_at is set by the proxy; written only in extended mode

    def call_answered(self, call, response) -> None:
        if response.has_sdp():
            try:
                sd = SessionDescription.parse(response.body)
                call.codecs = sd.codec_names() or call.codecs
            except SDPParseError:
                pass

    def call_ended(self, call, reason: str, request: SIPMessage | None) -> None:
        cseq = cseq_text(request) or f"{call.invite_cseq} INVITE"
        self.writer.write(self._call_row(call, "ENDED", 200, "OK", reason, self.clock(), cseq))

    def call_cancelled(self, call, request: SIPRequest) -> None:
        self.writer.write(self._call_row(call, "CANCELLED", "", "", "User Cancelled", self.clock(),
                                         f"{call.invite_cseq} CANCEL"))

    def call_failed(self, call, status: int, reason: str) -> None:
        self.writer.write(self._call_row(call, "FAILED", status, reason, f"{status} {reason}", self.clock(),
                                         f"{call.invite_cseq} INVITE"))

    def call_refused(self, call, status: int, reason: str) -> None:
        """An INVITE the server answered itself (404/480/488) without relaying it: no row unless extended."""
        if self.extended:
            self.call_failed(call, status, reason)

    # --- other requests -----------------------------------------------------------------------
    def _request_row(self, record_type: str, state: str, request: SIPRequest, source, status, text: str,
                     server: bool = True, **extra) -> dict:
        now = self.clock()
        from_v, to_v = request.headers.get("From") or "", request.headers.get("To") or ""
        row = {"record_type": record_type, "call_state": state, "date": fmt_date(now),
               "start_time": fmt_time(now), "end_time": fmt_time(now), "call_id": request.call_id,
               "caller_uri": from_v, "caller_number": number_of(from_v), "caller_ip": source[0],
               "caller_port": source[1], "callee_uri": to_v, "callee_number": number_of(to_v),
               "status_code": status, "status_text": text,
               "user_agent": request.headers.get("User-Agent") or "",
               "server_ip": self.server_ip if server else "", "server_port": self.server_port if server else "",
               "cseq": cseq_text(request)}
        row.update(extra)
        return row

    def _register_row(self, state: str, request: SIPRequest, source, aor: str, status, text: str,
                      server: bool = True, **extra) -> dict:
        """REGISTER rows name the AOR as caller and nobody as callee (as the original)."""
        row = self._request_row("REGISTER", state, request, source, status, text, server=server, **extra)
        row.update({"caller_uri": aor, "caller_number": number_of(aor), "callee_uri": "", "callee_number": ""})
        return row

    def _first_for_call_id(self, call_id: str) -> bool:
        """The original writes a REGISTER Call-ID once per process (refreshes leave no row)."""
        if self.extended:
            return True
        if call_id in self._register_call_ids:
            return False
        self._register_call_ids[call_id] = None
        if len(self._register_call_ids) > REGISTER_CALL_IDS_KEPT:
            self._register_call_ids.popitem(last=False)
        return True

    def register_success(self, request: SIPRequest, source, aor: str, contact: str, expires: int) -> None:
        if self._first_for_call_id(request.call_id or ""):
            self.writer.write(self._register_row("SUCCESS", request, source, aor, 200, "OK",
                                                 contact=contact, expires=expires))

    def register_unregistered(self, request: SIPRequest, source, aor: str, contact: str) -> None:
        if self._first_for_call_id(request.call_id or ""):
            self.writer.write(self._register_row("UNREGISTERED", request, source, aor, 200, "OK",
                                                 server=False, contact=contact))

    def register_failed(self, request: SIPRequest, source, response: SIPResponse, reason: str) -> None:
        """Failed authentication: only in extended mode, with the status actually sent."""
        if not self.extended:
            return
        to = request.to_addr().uri if request.headers.get("To") else None
        aor = to.aor() if to is not None else ""
        self.writer.write(self._register_row("FAILED", request, source, aor, response.status, response.reason,
                                             termination_reason=reason))

    def message(self, request: SIPRequest, source, status: int, reason: str, callee) -> None:
        """A MESSAGE the proxy relayed (``callee`` is its binding) or refused (``callee`` None)."""
        if callee is None and not self.extended:
            return
        if self.extended:
            state = "COMPLETED" if 200 <= status < 300 else "FAILED"
        else:
            state, status, reason = "COMPLETED", 200, "OK"
        body = request.body.decode("utf-8", "replace")[:500]
        row = self._request_row("MESSAGE", state, request, source, status, reason, message_body=body)
        row["call_id"] = f"{request.call_id}-{cseq_text(request)}"
        if state == "FAILED":
            row["termination_reason"] = f"{status} {reason}"
        self.writer.write(row)

    def options(self, request: SIPRequest, source) -> None:
        self.writer.write(self._request_row("OPTIONS", "COMPLETED", request, source, 200, "OK", server=False))

    def flush(self) -> None:
        """Rows are written when they happen; nothing is buffered."""
