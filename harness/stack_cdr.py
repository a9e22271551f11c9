"""CDR rows from a stack that accounts per SIP transaction (cdr.format ``transactions``, e.g.
Kamailio's acc module into flat files), folded into the rows the comparison reads (the CDR_FIELDS
of harness.observation, with the values our stages write, sipcore/call_records.py).

One input line is one transaction, its columns named by the stack definition (cdr.columns); the
needed ones are harness.stacks.TRANSACTION_COLUMNS, optional ones are ``dst_ip`` (where the request
was relayed), ``contact``, ``expires``, ``cseq`` and ``auth_user``. The fold:

* REGISTER 2xx: a REGISTER row per Call-ID, the first one only (as the original server),
  ``SUCCESS`` or ``UNREGISTERED`` when it asked for expires 0; the AOR user is the caller;
* INVITE: per Call-ID, a 2xx answer and a 2xx BYE make one ``CALL``/``ENDED`` row (status 200 OK,
  termination ``Normal``, cseq of the BYE); 487 makes ``CANCELLED``; another final answer of the
  first INVITE makes ``FAILED`` with that status; an answered call without BYE has no row (yet);
* MESSAGE: ``COMPLETED`` with 200 OK per relayed MESSAGE (as the original: the row is about the
  relay, not the answer), Call-ID + CSeq;
* OPTIONS answered by the server: ``OPTIONS``/``COMPLETED``.

What such accounting does not know stays blank: ``codec``, ``message_body``, ``ringing_time``
(``call_type`` is AUDIO, as our stages write without video). The accepted differences this leaves
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
    out.sort(key=lambda r: (r.get("time", ""), _cseq_number(r.get("cseq", ""))))
    return out


def _cseq_number(cseq: str) -> int:
    head = cseq.split(" ", 1)[0]
    return int(head) if head.isdigit() else 0


def _ok(code: str) -> bool:
    return code.startswith("2")


def _row(record_type: str, state: str, t: dict, **values) -> dict:
    row = {"record_type": record_type, "call_state": state, "caller_number": t.get("from_user", ""),
           "callee_number": t.get("to_user", ""), "caller_ip": t.get("src_ip", ""), "callee_ip": "",
           "status_code": "200", "status_text": "OK", "termination_reason": "", "call_type": "", "codec": "",
           "contact": "", "expires": "", "message_body": "", "cseq": t.get("cseq", ""),
           "extra_info": f"auth_user={t['auth_user']}" if t.get("auth_user") else "", "ringing_time": ""}
    row.update(values)
    return row


def fold(transactions: list[dict]) -> list[dict]:
    rows: list[dict] = []
    registered: set[str] = set()
    calls: dict[str, list[dict]] = {}
    for t in transactions:
        method = t.get("method", "").upper()
        if method == "REGISTER" and _ok(t["code"]) and t["callid"] not in registered:
            registered.add(t["callid"])
            unregister = t.get("expires", "") == "0"
            rows.append(_row("REGISTER", "UNREGISTERED" if unregister else "SUCCESS", t,
                             caller_number=t.get("to_user", ""), callee_number="", contact=t.get("contact", ""),
                             expires="" if unregister else t.get("expires", ""), extra_info=""))
        elif method in ("INVITE", "BYE"):
            if method == "INVITE" and t["callid"] not in calls:
                rows.append({"_call": t["callid"]})          # the call's place in time order
            calls.setdefault(t["callid"], []).append(t)
        elif method == "MESSAGE":
            rows.append(_row("MESSAGE", "COMPLETED", t, extra_info=""))
        elif method == "OPTIONS":
            rows.append(_row("OPTIONS", "COMPLETED", t, extra_info=""))
    out = []
    for r in rows:
        if "_call" not in r:
            out.append(r)
            continue
        call = _call_row(calls[r["_call"]])
        if call is not None:
            out.append(call)
    return out


def _call_row(ts: list[dict]) -> dict | None:
    invites = [t for t in ts if t["method"].upper() == "INVITE"]
    first = invites[0]
    answered = next((t for t in invites if _ok(t["code"])), None)
    base = {"callee_ip": first.get("dst_ip", ""), "call_type": "AUDIO"}
    if answered is not None:
        bye = next((t for t in ts if t["method"].upper() == "BYE" and _ok(t["code"])), None)
        if bye is None:
            return None
        return _row("CALL", "ENDED", answered, termination_reason="Normal", cseq=bye.get("cseq", ""),
                    **{**base, "callee_ip": answered.get("dst_ip", "")})
    final = invites[-1]
    number = _cseq_number(final.get("cseq", ""))
    if final["code"] == "487":
        return _row("CALL", "CANCELLED", final, status_code="", status_text="", termination_reason="User Cancelled",
                    cseq=f"{number} CANCEL", **base)
    return _row("CALL", "FAILED", final, status_code=final["code"], status_text=final["reason"],
                termination_reason=f"{final['code']} {final['reason']}", **base)


def read_transactions(pattern: str, delimiter: str, columns: tuple[str, ...]) -> list[dict]:
    return fold(_rows(pattern, delimiter, columns))
