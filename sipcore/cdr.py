"""Call detail records: one CSV per day, the original 34 columns in the original order.

Layout (compatible with the original): ``<base>/<YYYY-MM-DD>/cdr_<YYYY-MM-DD>.csv`` with a header
row when the file is created; exports in ``<base>/exports/``. Columns may only ever be appended at
the end of ``COLUMNS``.

Row content (which rows, which values) is decided in one place, ``sipcore.call_records``; this
module only appends finished rows and reads them back (MML ``DSP/EXP/CLR CDR``).

Durability: every row is written with one ``write()`` on an ``O_APPEND`` descriptor before the call
returns, so the row is in the kernel and survives a SIGTERM, a ``kill -9`` or a crash of the
process. Power-loss durability comes from an ``fsync`` done by a background thread (``Syncer``) at
most ``fsync_interval`` seconds (1 s) after the row, never on the event loop's thread: a power cut
can lose at most the last second of rows. ``close()`` fsyncs what is left.
"""
from __future__ import annotations

import csv
import functools
import logging
import math
import os
import re
import shutil
import threading
import time
from datetime import date as Date, datetime, timedelta
from typing import Any, Callable

from sipcore.textsafe import ERRORS as TEXT_ERRORS

log = logging.getLogger(__name__)
_ROOT = logging.getLogger()    # per-message DEBUG lines: its level read as an attribute, not a Logger call

COLUMNS = (
    "record_id", "record_type", "call_state", "date", "start_time", "end_time", "call_id",
    "caller_uri", "caller_number", "caller_ip", "caller_port", "callee_uri", "callee_number",
    "callee_ip", "callee_port", "duration", "setup_time", "status_code", "status_text",
    "termination_reason", "invite_time", "ringing_time", "answer_time", "bye_time", "call_type",
    "codec", "user_agent", "contact", "expires", "message_body", "server_ip", "server_port", "cseq",
    "extra_info",
)
assert len(COLUMNS) == 34
COLUMN_SET = frozenset(COLUMNS)

RECORD_TYPES = ("CALL", "REGISTER", "MESSAGE", "OPTIONS")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TYPE_RE = re.compile(r"^[A-Z]{1,20}$")


# --- formatting (local time, as the original) ----------------------------------------------------
@functools.lru_cache(maxsize=256)
def _local_second(second: int) -> tuple[str, str, str]:
    """(YYYY-MM-DD, HH:MM:SS, YYYYmmddHHMMSS) of one second, local time: rows of one second share it."""
    dt = datetime.fromtimestamp(second)
    return dt.strftime("%Y-%m-%d"), dt.strftime("%H:%M:%S"), dt.strftime("%Y%m%d%H%M%S")


def _split(ts: float) -> tuple[int, int]:
    """(second, microsecond) rounded as datetime.fromtimestamp rounds (half even)."""
    second = math.floor(ts)
    micro = round((ts - second) * 1e6)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    return second, micro


def fmt_date(ts: float) -> str:
    return _local_second(_split(ts)[0])[0]


def fmt_time(ts: float | None) -> str:
    return _local_second(_split(ts)[0])[1] if ts else ""


def fmt_ms(ts: float | None) -> str:
    if not ts:
        return ""
    second, micro = _split(ts)
    return f"{_local_second(second)[1]}.{micro // 1000:03d}"


_CSV_SPECIAL = (",", '"', "\r", "\n")


def csv_line(values: list[Any]) -> str:
    """One CSV row as ``csv.writer(lineterminator="\\r\\n")`` writes it (excel dialect, minimal
    quoting: a field holding a comma, a quote, CR or LF is quoted, quotes doubled; a lone empty
    field is quoted), without the csv module's per-character scan of every field."""
    fields: list[str] = []
    for value in values:
        text = value if isinstance(value, str) else ("" if value is None else str(value))
        for ch in _CSV_SPECIAL:
            if ch in text:
                text = '"' + text.replace('"', '""') + '"'
                break
        fields.append(text)
    if len(fields) == 1 and fields[0] == "":
        return '""\r\n'
    return ",".join(fields) + "\r\n"


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


class CDRWriter:
    """Append-only daily CSV files: writing rows, reading them back, export, stats, purge."""

    def __init__(self, base_dir: str = "CDR", clock: Callable[[], float] = time.time, *,
                 fsync_interval: float = 1.0):
        self.base_dir = base_dir
        self.syncer = Syncer(fsync_interval)
        self.clock = clock
        self._lock = threading.Lock()
        self._counter = 0
        self._file = _AppendFile()
        self._day_path = ("", "")        # (date, its file's path): the day's path checked once

    # --- files --------------------------------------------------------------------------------
    def path_for(self, date: str) -> str:
        check_date(date)
        return os.path.join(self.base_dir, date, f"cdr_{date}.csv")

    def _path_of_day(self, date: str) -> str:
        day, path = self._day_path
        if day != date:
            path = self.path_for(date)
            self._day_path = (date, path)
        return path

    def new_record_id(self, ts: float) -> str:
        self._counter = self._counter % 999_999 + 1
        return _local_second(_split(ts)[0])[2] + f"{self._counter:06d}"

    def write(self, row: dict) -> dict:
        """Write one row (missing columns empty, unknown keys rejected) and make it durable.

        The file is the one of the day the row is written; ``date`` defaults to that day too.
        """
        if not COLUMN_SET.issuperset(row):
            raise ValueError(f"unknown CDR columns: {sorted(row.keys() - COLUMN_SET)}")
        full: dict[str, Any] = dict.fromkeys(COLUMNS, "")     # values: text or numbers
        for k, v in row.items():
            full[k] = "" if v is None else v
        with self._lock:
            now = self.clock()
            full["record_id"] = full["record_id"] or self.new_record_id(now)
            today = fmt_date(now)
            full["date"] = full["date"] or today
            path = self._path_of_day(today)
            fd, created = self._file.fd_for(path)
            text = csv_line([full[c] for c in COLUMNS])
            if created:
                text = csv_line(list(COLUMNS)) + text
            data = text.encode("utf-8", TEXT_ERRORS)   # undecodable bytes as \xNN
            written = os.write(fd, data)         # in the kernel now: survives kill -9
            while written < len(data):          # regular files write fully; be safe anyway
                written += os.write(fd, data[written:])
            self.syncer.dirty(path, created)    # fsync'ed off this thread within fsync_interval
        if _ROOT.level <= logging.DEBUG:
            log.debug("CDR %s/%s call-id=%s", full["record_type"], full["call_state"], full["call_id"])
        return full

    def close(self) -> None:
        """fsync every row written so far and stop the sync thread (graceful shutdown)."""
        with self._lock:
            self._file.close()
        self.syncer.close()

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
        self._fsync_thread: threading.Thread | None = None
        self.rounds = 0

    def dirty(self, path: str, created: bool = False) -> None:
        if not created and path in self._paths:
            return      # already due for the next round (set membership: no lock needed to skip)
        with self._lock:
            idle = not self._paths and not self._dirs
            self._paths.add(path)
            if created:
                self._dirs.add(os.path.dirname(path) or ".")
                self._dirs.add(os.path.dirname(os.path.dirname(path)) or ".")
            if self._fsync_thread is None and not self._closed:
                self._fsync_thread = threading.Thread(target=self._run, name="cdr-fsync", daemon=True)
                self._fsync_thread.start()
            if idle:
                self._wake.notify()     # only a thread waiting for work needs waking

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
            thread = self._fsync_thread
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
