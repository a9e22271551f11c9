"""Call detail records: one CSV per day, the original 34 columns in the original order.

Layout (compatible with the original): ``<base>/<YYYY-MM-DD>/cdr_<YYYY-MM-DD>.csv`` with a header
row when the file is created; exports in ``<base>/exports/``. Columns may only ever be appended at
the end of ``COLUMNS``.

The writer takes events as plain values (strings, ints, ``(ip, port)`` tuples), never SIP objects:

* calls: ``call_started`` -> ``call_ringing`` -> ``call_answered`` -> one of ``call_ended`` /
  ``call_cancelled`` / ``call_failed`` (one row, at the terminal event); ``call_rejected`` for an
  INVITE refused before anything was forwarded (e.g. 480 callee not registered);
* ``register`` (SUCCESS / UNREGISTERED / FAILED), ``message``, ``options``: one row each.

Durability: every row is written with one ``write()`` on an ``O_APPEND`` descriptor before the call
returns, so the row is in the kernel and survives a SIGTERM, a ``kill -9`` or a crash of the
process. Power-loss durability comes from an ``fsync`` done by a background thread (``Syncer``) at
most ``fsync_interval`` seconds (1 s) after the row, never on the event loop's thread: a power cut
can lose at most the last second of rows. ``close()`` fsyncs what is left. Calls still open at
shutdown are written by ``flush_open_calls(reason)``.

Differences from the original, on purpose: every outcome is written (the original wrote a Call-ID
at most once per process, so REGISTER refreshes vanished); a call refused with 480 is written;
``ringing_time`` is filled on the first 180/183; an unregister writes ``expires`` = ``0`` (the
original left it blank); CANCELLED rows carry 487 (the original sometimes wrote 200).
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import date as Date, datetime, timedelta
from typing import Callable, Iterable

log = logging.getLogger(__name__)

COLUMNS = (
    "record_id", "record_type", "call_state", "date", "start_time", "end_time", "call_id",
    "caller_uri", "caller_number", "caller_ip", "caller_port", "callee_uri", "callee_number",
    "callee_ip", "callee_port", "duration", "setup_time", "status_code", "status_text",
    "termination_reason", "invite_time", "ringing_time", "answer_time", "bye_time", "call_type",
    "codec", "user_agent", "contact", "expires", "message_body", "server_ip", "server_port", "cseq",
    "extra_info",
)
assert len(COLUMNS) == 34

RECORD_TYPES = ("CALL", "REGISTER", "MESSAGE", "OPTIONS")
REGISTER_STATES = ("SUCCESS", "UNREGISTERED", "FAILED")
MESSAGE_BODY_MAX = 500
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TYPE_RE = re.compile(r"^[A-Z]{1,20}$")

Address = tuple[str, int]


# --- formatting (local time, as the original) ----------------------------------------------------
def fmt_date(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d")


def fmt_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else ""


def fmt_ms(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3] if ts else ""


def check_date(value: str) -> str:
    """``value`` if it is a real ``YYYY-MM-DD`` date, else ``ValueError`` (also stops path tricks)."""
    if not isinstance(value, str) or not _DATE_RE.match(value):
        raise ValueError(f"date must be YYYY-MM-DD, got {value!r}")
    try:
        Date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a calendar date: {value!r}") from None
    return value


def check_type(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    value = value.upper()
    if not _TYPE_RE.match(value):
        raise ValueError(f"record type must be a word like {'/'.join(RECORD_TYPES)}, got {value!r}")
    return value


def uri_user(header_value: str) -> str:
    """The user part of a From/To header value (``"A" <sip:1001@h>;tag=x`` -> ``1001``); '' if none."""
    if not header_value:
        return ""
    text = header_value
    lt = text.find("<")
    if lt >= 0:
        gt = text.find(">", lt)
        text = text[lt + 1:gt if gt > lt else len(text)]
    else:
        text = text.split(";", 1)[0]
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() not in ("sip", "sips", "tel"):
        return ""
    if scheme.lower() == "tel":
        return rest.split(";", 1)[0]
    if "@" not in rest:
        return ""
    return rest.split("@", 1)[0].split(":", 1)[0].split(";", 1)[0]


def call_type_of(media_kinds: Iterable[str]) -> str:
    kinds = [k.upper() for k in dict.fromkeys(k.lower() for k in media_kinds) if k in ("audio", "video")]
    return "+".join(kinds) or "AUDIO"


def _addr(addr: Address | None) -> tuple[str, int | str]:
    if not addr:
        return "", ""
    return str(addr[0]), int(addr[1])


@dataclass
class OpenCall:
    """A call between its INVITE and its terminal event (kept in memory only)."""
    call_id: str
    caller_uri: str
    callee_uri: str
    caller_addr: Address
    invite_at: float
    user_agent: str = ""
    contact: str = ""
    cseq: int = 0
    callee_addr: Address | None = None
    ringing_at: float | None = None
    answered_at: float | None = None
    media_kinds: list[str] = field(default_factory=list)
    codecs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"call_id": self.call_id, "caller": uri_user(self.caller_uri),
                "callee": uri_user(self.callee_uri), "invite_time": fmt_ms(self.invite_at),
                "ringing_time": fmt_ms(self.ringing_at), "answer_time": fmt_ms(self.answered_at)}


class CDRWriter:
    """Append-only daily CSV files plus the in-memory state of open calls."""

    def __init__(self, base_dir: str = "CDR", clock: Callable[[], float] = time.time, *,
                 server_ip: str = "", server_port: int | str = "", fsync_interval: float = 1.0):
        self.base_dir = base_dir
        self.syncer = Syncer(fsync_interval)
        self.clock = clock
        self.server_ip = server_ip
        self.server_port = server_port
        self._lock = threading.Lock()
        self._counter = 0
        self._open: dict[str, OpenCall] = {}
        self._file = _AppendFile()

    # --- files --------------------------------------------------------------------------------
    def path_for(self, date: str) -> str:
        check_date(date)
        return os.path.join(self.base_dir, date, f"cdr_{date}.csv")

    def new_record_id(self, ts: float) -> str:
        self._counter = self._counter % 999_999 + 1
        return datetime.fromtimestamp(ts).strftime("%Y%m%d%H%M%S") + f"{self._counter:06d}"

    def write(self, row: dict) -> dict:
        """Write one row (missing columns empty, unknown keys rejected) and make it durable.

        The file is the one of the day the row is written; ``date`` defaults to that day too.
        """
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown CDR columns: {sorted(unknown)}")
        full = {c: "" for c in COLUMNS}
        full.update({k: ("" if v is None else v) for k, v in row.items()})
        with self._lock:
            now = self.clock()
            full["record_id"] = full["record_id"] or self.new_record_id(now)
            full["date"] = full["date"] or fmt_date(now)
            path = self.path_for(fmt_date(now))
            buf = io.StringIO()
            out = csv.writer(buf, lineterminator="\r\n")
            fd, created = self._file.fd_for(path)
            if created:
                out.writerow(COLUMNS)
            out.writerow([full[c] for c in COLUMNS])
            data = buf.getvalue().encode("utf-8")
            written = os.write(fd, data)         # in the kernel now: survives kill -9
            while written < len(data):          # regular files write fully; be safe anyway
                written += os.write(fd, data[written:])
            self.syncer.dirty(path, created)    # fsync'ed off this thread within fsync_interval
        log.debug("CDR %s/%s call-id=%s", full["record_type"], full["call_state"], full["call_id"])
        return full

    def close(self) -> None:
        """fsync every row written so far and stop the sync thread (graceful shutdown)."""
        with self._lock:
            self._file.close()
        self.syncer.close()

    def _base_row(self, record_type: str, state: str, call_id: str, start: float, end: float,
                  caller_uri: str, callee_uri: str, caller_addr: Address | None,
                  callee_addr: Address | None, status: int, text: str, cseq: int | str,
                  user_agent: str) -> dict:
        caller_ip, caller_port = _addr(caller_addr)
        callee_ip, callee_port = _addr(callee_addr)
        return {
            "record_type": record_type, "call_state": state, "date": fmt_date(start),
            "start_time": fmt_time(start), "end_time": fmt_time(end), "call_id": call_id,
            "caller_uri": caller_uri, "caller_number": uri_user(caller_uri), "caller_ip": caller_ip,
            "caller_port": caller_port, "callee_uri": callee_uri, "callee_number": uri_user(callee_uri),
            "callee_ip": callee_ip, "callee_port": callee_port, "status_code": int(status),
            "status_text": text, "user_agent": user_agent, "server_ip": self.server_ip,
            "server_port": self.server_port, "cseq": cseq or "",
        }

    # --- calls --------------------------------------------------------------------------------
    def call_started(self, call_id: str, caller_uri: str, callee_uri: str, caller_addr: Address, *,
                     user_agent: str = "", contact: str = "", cseq: int = 0,
                     media_kinds: Iterable[str] = (), codecs: Iterable[str] = (),
                     at: float | None = None) -> bool:
        """An initial INVITE was accepted for routing. False if the call is already open."""
        with self._lock:
            if call_id in self._open:
                return False
            self._open[call_id] = OpenCall(call_id, caller_uri, callee_uri, tuple(caller_addr),
                                           self.clock() if at is None else at, user_agent=user_agent,
                                           contact=contact, cseq=cseq, media_kinds=list(media_kinds),
                                           codecs=list(codecs))
            return True

    def call_ringing(self, call_id: str, *, callee_addr: Address | None = None, at: float | None = None) -> None:
        """A 180/183 for the initial INVITE: the first one sets ringing_time."""
        call = self._open.get(call_id)
        if call is None:
            return
        if call.ringing_at is None:
            call.ringing_at = self.clock() if at is None else at
        if callee_addr and not call.callee_addr:
            call.callee_addr = tuple(callee_addr)

    def call_answered(self, call_id: str, *, callee_addr: Address | None = None,
                      media_kinds: Iterable[str] | None = None, codecs: Iterable[str] | None = None,
                      at: float | None = None) -> None:
        """A 2xx for the initial INVITE: the first one sets answer_time (and setup_time)."""
        call = self._open.get(call_id)
        if call is None:
            return
        if call.answered_at is None:
            call.answered_at = self.clock() if at is None else at
        if callee_addr:
            call.callee_addr = tuple(callee_addr)
        self.call_media(call_id, media_kinds, codecs)

    def call_media(self, call_id: str, media_kinds: Iterable[str] | None = None,
                   codecs: Iterable[str] | None = None) -> None:
        """The last SDP seen (offer, answer, re-INVITE) sets call_type and codec."""
        call = self._open.get(call_id)
        if call is None:
            return
        if media_kinds is not None:
            kinds = list(media_kinds)
            if kinds:
                call.media_kinds = kinds
        if codecs is not None:
            names = list(codecs)
            if names:
                call.codecs = names

    def call_ended(self, call_id: str, reason: str = "Normal", *, cseq: int | None = None,
                   at: float | None = None) -> dict | None:
        """BYE (or forced end): CALL/ENDED, duration from answer to now."""
        return self._close_call(call_id, "ENDED", 200, "OK", reason, cseq, at)

    def call_cancelled(self, call_id: str, *, cseq: int | None = None, at: float | None = None) -> dict | None:
        return self._close_call(call_id, "CANCELLED", 487, "Request Terminated", "User Cancelled", cseq, at)

    def call_failed(self, call_id: str, code: int, text: str, *, reason: str | None = None,
                    cseq: int | None = None, at: float | None = None) -> dict | None:
        """A final 3xx-6xx to the initial INVITE (from the callee or from the server itself)."""
        return self._close_call(call_id, "FAILED", code, text, reason or f"{code} {text}", cseq, at)

    def call_rejected(self, call_id: str, caller_uri: str, callee_uri: str, caller_addr: Address,
                      code: int, text: str, *, user_agent: str = "", cseq: int = 0,
                      at: float | None = None) -> dict | None:
        """An INVITE refused before it was routed (e.g. 480 callee not registered): CALL/FAILED."""
        self.call_started(call_id, caller_uri, callee_uri, caller_addr, user_agent=user_agent, cseq=cseq, at=at)
        return self.call_failed(call_id, code, text, at=at)

    def _close_call(self, call_id: str, state: str, status: int, text: str, reason: str,
                    cseq: int | None, at: float | None) -> dict | None:
        with self._lock:
            call = self._open.pop(call_id, None)
        if call is None:
            log.debug("CDR: no open call %s for %s", call_id, state)
            return None
        end = self.clock() if at is None else at
        row = self._base_row("CALL", state, call.call_id, call.invite_at, end, call.caller_uri,
                             call.callee_uri, call.caller_addr, call.callee_addr, status, text,
                             cseq if cseq is not None else call.cseq, call.user_agent)
        row.update({
            "duration": f"{max(0.0, end - call.answered_at):.2f}" if call.answered_at else "",
            "setup_time": f"{max(0.0, call.answered_at - call.invite_at):.2f}s" if call.answered_at else "",
            "termination_reason": reason, "invite_time": fmt_ms(call.invite_at),
            "ringing_time": fmt_ms(call.ringing_at), "answer_time": fmt_ms(call.answered_at),
            "bye_time": fmt_ms(end) if state == "ENDED" else "", "call_type": call_type_of(call.media_kinds),
            "codec": ", ".join(call.codecs), "contact": call.contact,
        })
        return self.write(row)

    def open_calls(self) -> list[dict]:
        return [c.as_dict() for c in list(self._open.values())]

    def flush_open_calls(self, reason: str = "SERVER_SHUTDOWN") -> int:
        """Write every call still open as CALL/ENDED with ``reason``; returns how many."""
        n = 0
        for call_id in list(self._open):
            if self.call_ended(call_id, reason) is not None:
                n += 1
        return n

    # --- other requests -----------------------------------------------------------------------
    def register(self, call_id: str, state: str, *, from_uri: str, to_uri: str, source: Address,
                 contact: str = "", expires: int | None = None, user_agent: str = "", cseq: int = 0,
                 status: int | None = None, text: str | None = None, reason: str = "",
                 at: float | None = None) -> dict:
        """REGISTER outcome: SUCCESS (200, expires granted), UNREGISTERED (expires 0) or FAILED."""
        state = state.upper()
        if state not in REGISTER_STATES:
            raise ValueError(f"register state must be one of {', '.join(REGISTER_STATES)}, got {state!r}")
        if state == "FAILED":
            status, text = status or 403, text or "Forbidden"
        else:
            status, text = status or 200, text or "OK"
        if state == "UNREGISTERED":
            expires = 0
        now = self.clock() if at is None else at
        row = self._base_row("REGISTER", state, call_id, now, now, from_uri, to_uri, source, None,
                             status, text, cseq, user_agent)
        row.update({"contact": contact, "expires": "" if expires is None else int(expires),
                    "termination_reason": reason})
        return self.write(row)

    def message(self, call_id: str, cseq: int, *, from_uri: str, to_uri: str, source: Address,
                body: str | bytes = "", status: int = 200, text: str = "OK",
                callee_addr: Address | None = None, user_agent: str = "", at: float | None = None) -> dict:
        """A MESSAGE with its real final status (COMPLETED for 2xx, FAILED otherwise)."""
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        now = self.clock() if at is None else at
        state = "COMPLETED" if 200 <= int(status) < 300 else "FAILED"
        row = self._base_row("MESSAGE", state, f"{call_id}-{cseq}", now, now, from_uri, to_uri, source,
                             callee_addr, status, text, cseq, user_agent)
        row["message_body"] = body[:MESSAGE_BODY_MAX]
        if state == "FAILED":
            row["termination_reason"] = f"{status} {text}"
        return self.write(row)

    def options(self, call_id: str, *, from_uri: str, to_uri: str, source: Address, user_agent: str = "",
                cseq: int = 0, status: int = 200, text: str = "OK", at: float | None = None) -> dict:
        now = self.clock() if at is None else at
        return self.write(self._base_row("OPTIONS", "COMPLETED", call_id, now, now, from_uri, to_uri,
                                         source, None, status, text, cseq, user_agent))

    # --- reading ------------------------------------------------------------------------------
    def today(self) -> str:
        return fmt_date(self.clock())

    def read_rows(self, date: str | None = None, record_type: str | None = None,
                  limit: int | None = None) -> list[dict]:
        """Rows of one day (today by default), optionally of one type; the last ``limit`` rows."""
        date = check_date(date) if date else self.today()
        record_type = check_type(record_type)
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        path = self.path_for(date)
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if record_type is None or r.get("record_type") == record_type]
        return rows[-limit:] if limit else rows

    def export(self, date: str, record_type: str | None = None, dest_dir: str | None = None) -> str:
        """Copy one day's rows (optionally one type) to ``exports/cdr_export_<date>[_<TYPE>]_<ts>.csv``."""
        record_type = check_type(record_type)
        rows = self.read_rows(date, record_type)
        dest_dir = dest_dir or os.path.join(self.base_dir, "exports")
        os.makedirs(dest_dir, exist_ok=True)
        suffix = f"_{record_type}" if record_type else ""
        stamp = datetime.fromtimestamp(self.clock()).strftime("%Y%m%d_%H%M%S")
        path = os.path.join(dest_dir, f"cdr_export_{date}{suffix}_{stamp}.csv")
        with open(path, "w", encoding="utf-8", newline="") as fh:
            out = csv.DictWriter(fh, COLUMNS, lineterminator="\r\n")
            out.writeheader()
            out.writerows({c: r.get(c, "") for c in COLUMNS} for r in rows)
        return path

    def stats(self, date: str | None = None) -> dict:
        """Counts per type/state and call figures (answered = rows with an answer_time)."""
        rows = self.read_rows(date)
        by_type: dict[str, int] = {}
        calls = answered = 0
        total_duration = 0.0
        setup_sum, setup_n = 0.0, 0
        for r in rows:
            key = f"{r.get('record_type', '')}/{r.get('call_state', '')}"
            by_type[key] = by_type.get(key, 0) + 1
            if r.get("record_type") != "CALL":
                continue
            calls += 1
            if r.get("answer_time"):
                answered += 1
                total_duration += _float(r.get("duration"))
                if r.get("setup_time"):
                    setup_sum += _float(r["setup_time"].rstrip("s"))
                    setup_n += 1
        return {
            "date": date or self.today(), "total": len(rows), "by_type": dict(sorted(by_type.items())),
            "calls": calls, "calls_answered": answered,
            "answer_ratio": round(answered / calls, 3) if calls else 0.0,
            "total_duration": round(total_duration, 2),
            "average_duration": round(total_duration / answered, 2) if answered else 0.0,
            "average_setup_time": round(setup_sum / setup_n, 2) if setup_n else 0.0,
        }

    def dates(self) -> list[str]:
        if not os.path.isdir(self.base_dir):
            return []
        out = []
        for d in os.listdir(self.base_dir):
            try:
                out.append(check_date(d))
            except ValueError:
                continue
        return sorted(out)

    def purge_before(self, before: str, keep_days: int = 7) -> list[str]:
        """Delete day folders older than ``before``; refuses a cutoff within the last ``keep_days``."""
        cutoff = Date.fromisoformat(check_date(before))
        today = Date.fromisoformat(self.today())
        if cutoff > today - timedelta(days=keep_days):
            raise ValueError(f"refusing to delete CDRs of the last {keep_days} days "
                             f"(BEFORE must be {today - timedelta(days=keep_days)} or earlier)")
        removed = [d for d in self.dates() if Date.fromisoformat(d) < cutoff]
        for d in removed:
            shutil.rmtree(os.path.join(self.base_dir, d))
            log.warning("CDR folder %s deleted", d)
        return removed


class _AppendFile:
    """The ``O_APPEND`` descriptor of the current day's file, kept open between rows (an open,
    fstat, mkdir and close per row cost more than the row). At most once a second it checks that
    the path still names the open file, so a file moved or deleted by hand is recreated."""

    RECHECK = 1.0

    def __init__(self) -> None:
        self.path: str | None = None
        self.fd = -1
        self.ino = -1
        self.checked = 0.0

    def fd_for(self, path: str) -> tuple[int, bool]:
        """(descriptor, whether the file is new and needs the header row)."""
        if self.fd >= 0 and path == self.path:
            now = time.monotonic()
            if now - self.checked < self.RECHECK:
                return self.fd, False
            self.checked = now
            try:
                if os.stat(path).st_ino == self.ino:
                    return self.fd, False
            except OSError:
                pass
        self.close()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        st = os.fstat(fd)
        self.path, self.fd, self.ino, self.checked = path, fd, st.st_ino, time.monotonic()
        return fd, st.st_size == 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.path, self.fd, self.ino = None, -1, -1


class Syncer:
    """fsyncs files written to, from its own thread, at most ``interval`` seconds after a write.

    ``dirty(path)`` only records the path (no system call), so the writing thread, the event loop,
    never waits for the disk. A new file also gets its directory fsync'ed (the directory entry is
    what makes the file findable after a power cut).
    """

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._paths: set[str] = set()
        self._dirs: set[str] = set()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def dirty(self, path: str, created: bool = False) -> None:
        with self._lock:
            self._paths.add(path)
            if created:
                self._dirs.add(os.path.dirname(path) or ".")
                self._dirs.add(os.path.dirname(os.path.dirname(path)) or ".")
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="cdr-fsync", daemon=True)
                self._thread.start()
            self._wake.notify()

    def sync_now(self) -> None:
        with self._lock:
            paths, dirs = self._paths, self._dirs
            self._paths, self._dirs = set(), set()
        for p in sorted(paths) + sorted(dirs):
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError as exc:      # purged or moved since: nothing left to make durable
                log.debug("CDR fsync skipped for %s: %s", p, exc)
                continue
            try:
                os.fsync(fd)
            except OSError as exc:
                log.warning("CDR fsync failed for %s: %s", p, exc)
            finally:
                os.close(fd)
        self.rounds += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        self.sync_now()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._paths and not self._dirs and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
            self.sync_now()
            deadline = time.monotonic() + self.interval    # at most one round per interval
            with self._lock:
                while not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)


def _float(value) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0
