"""Logging: one line per SIP event with the real module name, console + dated file.

Format: ``YYYY-MM-DD HH:MM:SS.mmm [LEVEL   ] [module:func:line] message``; the file is
``<log_dir>/<YYYY-MM-DD>/ims-sip-server.log`` and follows the date.
"""
from __future__ import annotations

import logging
import os
import sys
import time

FORMAT = "%(asctime)s.%(msecs)03d [%(levelname)-8s] [%(module)s:%(funcName)s:%(lineno)d] %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"


class DatedFileHandler(logging.Handler):
    """Writes to <dir>/<date>/ims-sip-server.log, switching folder at midnight."""

    def __init__(self, log_dir: str):
        super().__init__()
        self.log_dir = log_dir
        self._date = None
        self._stream = None

    def _open(self):
        date = time.strftime("%Y-%m-%d")
        if date != self._date:
            if self._stream:
                self._stream.close()
            folder = os.path.join(self.log_dir, date)
            os.makedirs(folder, exist_ok=True)
            self._stream = open(os.path.join(folder, "ims-sip-server.log"), "a", encoding="utf-8")
            self._date = date
        return self._stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self._open()
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:   # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def close(self) -> None:
        if self._stream:
            self._stream.close()
        super().close()


def setup_logging(level: str = "INFO", log_dir: str | None = "logs") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter(FORMAT, DATEFMT)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if log_dir:
        fh = DatedFileHandler(log_dir)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    set_level(level)


def set_level(level: str) -> None:
    level = level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"unknown log level {level!r}")
    logging.getLogger().setLevel(level)
