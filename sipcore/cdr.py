"""Call detail records: CSV per day, the original 34 columns in the original order.

``CDR/<YYYY-MM-DD>/cdr_<YYYY-MM-DD>.csv``; a header row when the file is created; each row is
flushed and fsync'ed when written, so a SIGTERM or kill loses nothing already written. Columns may
only ever be appended at the end.
"""
from __future__ import annotations

import csv
import io
import itertools
import os
import threading
import time
from datetime import datetime

COLUMNS = (
    "record_id", "record_type", "call_state", "date", "start_time", "end_time", "call_id",
    "caller_uri", "caller_number", "caller_ip", "caller_port", "callee_uri", "callee_number",
    "callee_ip", "callee_port", "duration", "setup_time", "status_code", "status_text",
    "termination_reason", "invite_time", "ringing_time", "answer_time", "bye_time", "call_type",
    "codec", "user_agent", "contact", "expires", "message_body", "server_ip", "server_port", "cseq",
    "extra_info",
)
assert len(COLUMNS) == 34


def fmt_date(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d")


def fmt_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else ""


def fmt_ms(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3] if ts else ""


class CDRWriter:
    def __init__(self, base_dir: str = "CDR", clock=time.time):
        self.base_dir = base_dir
        self.clock = clock
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    def path_for(self, date: str) -> str:
        return os.path.join(self.base_dir, date, f"cdr_{date}.csv")

    def new_record_id(self, ts: float) -> str:
        return datetime.fromtimestamp(ts).strftime("%Y%m%d%H%M%S") + f"{next(self._counter) % 1_000_000:06d}"

    def write(self, row: dict) -> dict:
        """Write one row (missing columns empty, unknown keys rejected) and make it durable."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown CDR columns: {sorted(unknown)}")
        now = self.clock()
        full = {c: "" for c in COLUMNS}
        full.update({k: ("" if v is None else v) for k, v in row.items()})
        full["record_id"] = full["record_id"] or self.new_record_id(now)
        full["date"] = full["date"] or fmt_date(now)
        path = self.path_for(full["date"])
        buf = io.StringIO()
        writer = csv.writer(buf)
        with self._lock:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            new = not os.path.exists(path) or os.path.getsize(path) == 0
            if new:
                writer.writerow(COLUMNS)
            writer.writerow([full[c] for c in COLUMNS])
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, buf.getvalue().encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        return full

    # --- reading ------------------------------------------------------------------------------
    def read_rows(self, date: str | None = None, record_type: str | None = None,
                  limit: int | None = None) -> list[dict]:
        date = date or fmt_date(self.clock())
        path = self.path_for(date)
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if record_type is None or r.get("record_type") == record_type]
        return rows[-limit:] if limit else rows

    def export(self, date: str, record_type: str | None = None, dest_dir: str | None = None) -> str:
        rows = self.read_rows(date, record_type)
        dest_dir = dest_dir or os.path.join(self.base_dir, "exports")
        os.makedirs(dest_dir, exist_ok=True)
        suffix = f"_{record_type}" if record_type else ""
        stamp = datetime.fromtimestamp(self.clock()).strftime("%Y%m%d_%H%M%S")
        path = os.path.join(dest_dir, f"cdr_export_{date}{suffix}_{stamp}.csv")
        with open(path, "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, COLUMNS)
            w.writeheader()
            w.writerows({c: r.get(c, "") for c in COLUMNS} for r in rows)
        return path

    def stats(self, date: str | None = None) -> dict:
        rows = self.read_rows(date)
        out: dict = {"total": len(rows), "by_type": {}, "calls_answered": 0, "total_duration": 0.0}
        for r in rows:
            key = f"{r['record_type']}/{r['call_state']}"
            out["by_type"][key] = out["by_type"].get(key, 0) + 1
            if r["record_type"] == "CALL" and r["answer_time"]:
                out["calls_answered"] += 1
                try:
                    out["total_duration"] += float(r["duration"] or 0)
                except ValueError:
                    pass
        out["total_duration"] = round(out["total_duration"], 2)
        return out

    def dates(self) -> list[str]:
        if not os.path.isdir(self.base_dir):
            return []
        return sorted(d for d in os.listdir(self.base_dir) if len(d) == 10 and d[4] == "-")
