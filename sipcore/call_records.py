"""Turns proxy and registrar events into CDR rows (one row per outcome).

Fixes against the original: a call to an unregistered callee is recorded (FAILED 480), failed
REGISTER authentication is recorded (REGISTER FAILED), ringing_time is filled on 180/183, an
unregister writes expires 0, a MESSAGE row carries the real final status of the delivery.
"""
from __future__ import annotations

import logging
import time

from sipcore.cdr import CDRWriter, fmt_date, fmt_ms, fmt_time
from sipcore.errors import SDPParseError, SIPParseError
from sipcore.message import SIPMessage, SIPRequest
from sipcore.sdp import SessionDescription
from sipcore.uri import NameAddr

log = logging.getLogger(__name__)


def _user(header_value: str) -> str:
    try:
        na = NameAddr.parse(header_value)
        return (na.uri.user or "") if na.uri else ""
    except SIPParseError:
        return ""


def _call_type(kinds: list[str]) -> str:
    k = [x.upper() for x in kinds if x in ("audio", "video")]
    return "+".join(dict.fromkeys(k)) or "AUDIO"


class CDREvents:
    def __init__(self, writer: CDRWriter, server_ip: str, server_port: int, clock=time.time):
        self.writer = writer
        self.server_ip = server_ip
        self.server_port = server_port
        self.clock = clock

    # --- calls --------------------------------------------------------------------------------
    def _call_row(self, call, state: str, status: int | str, text: str, reason: str, end: float) -> dict:
        setup = f"{call.answered_at - call.started:.2f}s" if call.answered_at else ""
        duration = f"{end - call.answered_at:.2f}" if call.answered_at else ""
        callee_ip, callee_port = call.callee_flow if call.callee_flow else ("", "")
        return {
            "record_type": "CALL", "call_state": state, "date": fmt_date(call.started),
            "start_time": fmt_time(call.started), "end_time": fmt_time(end), "call_id": call.call_id,
            "caller_uri": call.caller_from, "caller_number": _user(call.caller_from),
            "caller_ip": call.caller_flow[0], "caller_port": call.caller_flow[1],
            "callee_uri": call.callee_to, "callee_number": _user(call.callee_to),
            "callee_ip": callee_ip, "callee_port": callee_port, "duration": duration,
            "setup_time": setup, "status_code": status, "status_text": text,
            "termination_reason": reason, "invite_time": fmt_ms(call.started),
            "ringing_time": fmt_ms(call.ringing_at), "answer_time": fmt_ms(call.answered_at),
            "bye_time": fmt_ms(end) if state == "ENDED" else "", "call_type": _call_type(call.media_kinds),
            "codec": ", ".join(call.codecs), "user_agent": call.user_agent, "server_ip": self.server_ip,
            "server_port": self.server_port, "cseq": call.invite_cseq,
            # who really authenticated the INVITE (sipcore.admission), whatever the From says
            "extra_info": f"auth_user={call.auth_user}" if getattr(call, "auth_user", None) else "",
        }

    def call_started(self, call, request: SIPRequest) -> None:
        log.info("call %s started: %s -> %s", call.call_id, _user(call.caller_from), _user(call.callee_to))

    def call_ringing(self, call, response) -> None:
        pass

    def call_answered(self, call, response) -> None:
        if response.has_sdp():
            try:
                sd = SessionDescription.parse(response.body)
                call.codecs = sd.codec_names() or call.codecs
            except SDPParseError:
                pass

    def call_ended(self, call, reason: str, request: SIPMessage | None) -> None:
        self.writer.write(self._call_row(call, "ENDED", 200, "OK", reason, self.clock()))

    def call_cancelled(self, call, request: SIPRequest) -> None:
        self.writer.write(self._call_row(call, "CANCELLED", 487, "Request Terminated", "User Cancelled",
                                         self.clock()))

    def call_failed(self, call, status: int, reason: str) -> None:
        self.writer.write(self._call_row(call, "FAILED", status, reason, f"{status} {reason}", self.clock()))

    # --- other requests -----------------------------------------------------------------------
    def _request_row(self, record_type: str, state: str, request: SIPRequest, source, status, text,
                     **extra) -> dict:
        now = self.clock()
        from_v, to_v = request.headers.get("From") or "", request.headers.get("To") or ""
        row = {"record_type": record_type, "call_state": state, "date": fmt_date(now),
               "start_time": fmt_time(now), "end_time": fmt_time(now), "call_id": request.call_id,
               "caller_uri": from_v, "caller_number": _user(from_v), "caller_ip": source[0],
               "caller_port": source[1], "callee_uri": to_v, "callee_number": _user(to_v),
               "status_code": status, "status_text": text,
               "user_agent": request.headers.get("User-Agent") or "", "server_ip": self.server_ip,
               "server_port": self.server_port, "cseq": request.cseq[0]}
        row.update(extra)
        return row

    def register_success(self, request: SIPRequest, source, contact: str, expires: int) -> None:
        self.writer.write(self._request_row("REGISTER", "SUCCESS", request, source, 200, "OK",
                                            contact=contact, expires=expires))

    def register_unregistered(self, request: SIPRequest, source, contact: str) -> None:
        self.writer.write(self._request_row("REGISTER", "UNREGISTERED", request, source, 200, "OK",
                                            contact=contact, expires=0))

    def register_failed(self, request: SIPRequest, source, status: int, reason: str) -> None:
        self.writer.write(self._request_row("REGISTER", "FAILED", request, source, status, "Forbidden",
                                            termination_reason=reason))

    def message(self, request: SIPRequest, source, status: int, reason: str, callee) -> None:
        body = request.body.decode("utf-8", "replace")[:500]
        row = self._request_row("MESSAGE", "COMPLETED" if status < 300 else "FAILED", request, source,
                                status, reason, message_body=body)
        row["call_id"] = f"{request.call_id}-{request.cseq[0]}"
        if callee is not None:
            row["callee_ip"], row["callee_port"] = callee.source
        self.writer.write(row)

    def options(self, request: SIPRequest, source) -> None:
        self.writer.write(self._request_row("OPTIONS", "COMPLETED", request, source, 200, "OK"))

    def flush(self) -> None:
        """Rows are durable when written; nothing is buffered."""
