"""CDR rows from a stack that accounts per SIP transaction (cdr.format ``transactions``, e.g.
Kamailio's acc module into flat files), folded into the rows the comparison reads (the CDR_FIELDS
of harness.observation, with the values our stages write, sipcore/call_records.py).

One input line is one transaction, its columns named by the stack definition (cdr.columns); the
needed ones are harness.stacks.TRANSACTION_COLUMNS, optional ones are ``dst_ip`` (where the request
was relayed), ``contact``, ``expires``, ``cseq``, ``auth_user`` and ``event_time``/``time``. Lines
are ordered by ``event_time`` (or ``time``) and the CSeq number. Every row keeps the transaction's
``call_id`` (the run-call correlation of harness.observation uses it). The fold:

* REGISTER 2xx: a REGISTER row per Call-ID, the first one only (as the original server),
  ``SUCCESS`` or ``UNREGISTERED`` when it asked for expires 0; the AOR user is the caller;
* INVITE relayed to a callee (``dst_ip`` set; a call the server refused itself has no row, as in
  our stages): a 2xx answer and a 2xx BYE make one ``CALL``/``ENDED`` row at the BYE (status 200 OK,
  termination ``Normal``, cseq of the BYE); 487 to the first INVITE makes ``CANCELLED``; another
  final answer makes ``FAILED`` with that status; an answered call without BYE has no row (yet);
* MESSAGE relayed: ``COMPLETED`` with 200 OK (as the original: the row is about the relay, not
  the answer);
* OPTIONS answered by the server: ``OPTIONS``/``COMPLETED``.

What such accounting does not know stays blank: ``codec``, ``call_type``, ``message_body``,
``ringing_time``. The accepted differences this leaves
are listed in MIGRATION.md ("Kamailio as the baseline").
"""
from __future__ import annotations

import csv
import glob
import logging

log = logging.getLogger(__name__)


def _rows(pattern: str, delimiter: str, columns: tuple[str, ...]) -> list[dict]:
    out = []
    for path in sorted(glob.glob(pattern)):
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            for i, values in enumerate(csv.reader(fh, delimiter=delimiter)):
                if not values:
                    continue
                if len(values) != len(columns):
                    log.warning("%s:%d: %d columns, the stack definition names %d; line skipped",
                                path, i + 1, len(values), len(columns))
                    continue
                out.append({k: v.strip() for k, v in zip(columns, values)})
    out.sort(key=_when)
    return out


def _when(t: dict) -> tuple[float, int]:
    """Event order: ``event_time`` (sub-second), else ``time``, then the CSeq number."""
    for key in ("event_time", "time"):
        try:
            return float(t.get(key) or ""), _cseq_number(t.get("cseq", ""))
        except ValueError:
            continue
    return 0.0, _cseq_number(t.get("cseq", ""))


def _cseq_number(cseq: str) -> int:
    head = cseq.split(" ", 1)[0]
    return int(head) if head.isdigit() else 0


def _ok(code: str) -> bool:
    return code.startswith("2")


def _row(record_type: str, state: str, t: dict, **values) -> dict:
    row = {"record_type": record_type, "call_state": state, "call_id": t.get("callid", ""),
           "caller_number": t.get("from_user", ""),
           "callee_number": t.get("to_user", ""), "caller_ip": t.get("src_ip", ""), "callee_ip": "",
           "status_code": "200", "status_text": "OK", "termination_reason": "", "call_type": "", "codec": "",
           "contact": "", "expires": "", "message_body": "", "cseq": t.get("cseq", ""),
           "extra_info": f"auth_user={t['auth_user']}" if t.get("auth_user") else "", "ringing_time": ""}
    row.update(values)
    return row


def _relayed(t: dict) -> bool:
    """Relayed to a callee (``dst_ip``), or, without that column, answered 2xx."""
    return bool(t["dst_ip"]) if "dst_ip" in t else _ok(t["code"])


def fold(transactions: list[dict]) -> list[dict]:
    """CDR rows in the order our stages write them: at the event that closes each record."""
    rows: list[dict] = []
    registered: set[str] = set()
    calls: dict[str, dict] = {}         # Call-ID -> {"first": initial INVITE, "answered": its 2xx}
    for t in transactions:
        method = t.get("method", "").upper()
        if method == "REGISTER" and _ok(t["code"]) and t["callid"] not in registered:
            registered.add(t["callid"])
            unregister = t.get("expires", "") == "0"
            rows.append(_row("REGISTER", "UNREGISTERED" if unregister else "SUCCESS", t,
                             caller_number=t.get("to_user", ""), callee_number="", contact=t.get("contact", ""),
                             expires="" if unregister else t.get("expires", ""), extra_info=""))
        elif method == "INVITE" and _relayed(t):
            call = calls.setdefault(t["callid"], {"first": t, "answered": None})
            if _ok(t["code"]):
                call["answered"] = call["answered"] or t
            elif call["first"] is t:
                rows.append(_failed_row(t))
        elif method == "BYE" and _ok(t["code"]):
            call = calls.get(t["callid"])
            if call and call["answered"] is not None and not call.get("ended"):
                call["ended"] = True
                answered = call["answered"]
                rows.append(_row("CALL", "ENDED", answered, termination_reason="Normal", cseq=t.get("cseq", ""),
                                 callee_ip=answered.get("dst_ip", "")))
        elif method == "MESSAGE" and _relayed(t):
            rows.append(_row("MESSAGE", "COMPLETED", t, extra_info=""))
        elif method == "OPTIONS":
            rows.append(_row("OPTIONS", "COMPLETED", t, extra_info=""))
    return rows


def _failed_row(t: dict) -> dict:
    base = {"callee_ip": t.get("dst_ip", "")}
    if t["code"] == "487":
        return _row("CALL", "CANCELLED", t, status_code="", status_text="", termination_reason="User Cancelled",
                    cseq=f"{_cseq_number(t.get('cseq', ''))} CANCEL", **base)
    return _row("CALL", "FAILED", t, status_code=t["code"], status_text=t["reason"],
                termination_reason=f"{t['code']} {t['reason']}", **base)


def read_transactions(pattern: str, delimiter: str, columns: tuple[str, ...]) -> list[dict]:
    return fold(_rows(pattern, delimiter, columns))
