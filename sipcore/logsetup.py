"""Logging: console + dated file, each line naming the real module, function and line.

Format: ``YYYY-MM-DD HH:MM:SS.mmm [LEVEL   ] [module:func:line] message`` where ``module`` is the
logger name (``logging.getLogger(__name__)``, e.g. ``sipcore.proxy_core``) - the original printed its
own wrapper (``[logger.py:info:237]``) on every line. The file is
``<log_dir>/<YYYY-MM-DD>/ims-sip-server.log`` (the original's layout) and follows the date.
The level applies to every handler and can be changed at run time with ``set_level``.
On the console, records below WARNING go to stdout and WARNING and above to stderr, so pm2's
out log holds the INFO trail and its error log only what needs attention.

Every message is written on one line: control characters in it (CR, LF, NUL, ESC, Unicode line
separators...) are escaped (a newline as backslash-n, ESC as backslash-x1b), so a value from the
wire or an MML command cannot forge log lines. Tracebacks of exceptions keep their lines.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Callable

from sipcore.errors import ConfigError
from sipcore.textsafe import ERRORS as TEXT_ERRORS, printable

FORMAT = "%(asctime)s.%(msecs)03d [%(levelname)-8s] [%(name)s:%(funcName)s:%(lineno)d] %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"
LOG_FILE_NAME = "ims-sip-server.log"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_OURS = "_ims_migrate_handler"
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f, 0x85)}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_controls(text: str) -> str:
    """``text`` on one line: control and line-separator characters written as escapes."""
    return text.translate(_ESCAPES)


class OneLineFormatter(logging.Formatter):
    """The message part escaped with ``escape_controls`` (exception tracebacks unchanged)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def log_file_path(log_dir: str, day: str | None = None) -> str:
    return os.path.join(log_dir, day or time.strftime("%Y-%m-%d"), LOG_FILE_NAME)


class DatedFileHandler(logging.Handler):
    """Appends to ``<dir>/<date>/ims-sip-server.log``, switching folder when the date changes."""

    def __init__(self, log_dir: str, clock: Callable[[], float] = time.time):
        super().__init__()
        self.log_dir = log_dir
        self.clock = clock
        self._day: str | None = None
        self._stream = None
        self.path: str | None = None

    def _stream_for_now(self):
        day = time.strftime("%Y-%m-%d", time.localtime(self.clock()))
        if day != self._day or self._stream is None:
            if self._stream is not None:
                self._stream.close()
            self.path = log_file_path(self.log_dir, day)
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._stream = open(self.path, "a", encoding="utf-8", errors=TEXT_ERRORS)
            self._day = day
        return self._stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            self.acquire()
            try:
                stream = self._stream_for_now()
                stream.write(text + "\n")
                stream.flush()
            finally:
                self.release()
        except Exception:   # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def close(self) -> None:
        self.acquire()
        try:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        finally:
            self.release()
        super().close()


_state_lock = threading.Lock()


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


class _TextSafeStreamHandler(logging.StreamHandler):
    """A console handler that writes undecodable header bytes as \\xNN (sys.stdout is strict)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def console_handlers() -> list[logging.Handler]:
    """stdout for DEBUG/INFO, stderr for WARNING and above."""
    out = _TextSafeStreamHandler(sys.stdout)
    out.addFilter(_BelowWarning())
    err = _TextSafeStreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    return [out, err]


def describe_exception(exc: BaseException) -> str:
    """One line for a log: type, message and where it was raised (no multi-line traceback)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}" if tb is not None else ""
    return f"{type(exc).__name__}: {str(exc)[:200]}{where}"


def normalise_level(level: str) -> str:
    if not isinstance(level, str):
        raise ConfigError("LOG_LEVEL", f"must be one of {', '.join(LEVELS)}")
    name = level.strip().upper()
    name = "WARNING" if name == "WARN" else name
    if name not in LEVELS:
        raise ConfigError("LOG_LEVEL", f"must be one of {', '.join(LEVELS)}, got {level!r}")
    return name


def setup_logging(level: str = "INFO", log_dir: str | None = "logs", *, console: bool = True,
                  clock: Callable[[], float] = time.time) -> list[logging.Handler]:
    """(Re)install our console and file handlers on the root logger; returns them.

    Handlers installed by others (pytest's capture, for instance) are left alone; calling this
    again replaces only the handlers a previous call installed.
    """
    name = normalise_level(level)
    root = logging.getLogger()
    with _state_lock:
        for handler in list(root.handlers):
            if getattr(handler, _OURS, False):
                root.removeHandler(handler)
                handler.close()
        fmt = OneLineFormatter(FORMAT, DATEFMT)
        installed: list[logging.Handler] = []
        if console:
            installed.extend(console_handlers())
        if log_dir:
            installed.append(DatedFileHandler(log_dir, clock))
        for handler in installed:
            handler.setFormatter(fmt)
            setattr(handler, _OURS, True)
            root.addHandler(handler)
    set_level(name)
    return installed


def set_level(level: str) -> str:
    """Change the level at run time (root logger); returns the normalised name."""
    name = normalise_level(level)
    logging.getLogger().setLevel(name)
    logging.getLogger(__name__).info("log level set to %s", name)
    return name


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().level)
