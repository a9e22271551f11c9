"""Logging: console + dated file, each line naming the real module, function and line.

Format: ``YYYY-MM-DD HH:MM:SS.mmm [LEVEL   ] [module:func:line] message`` where ``module`` is the
logger name (``logging.getLogger(__name__)``, e.g. ``sipcore.proxy_core``) - the original printed its
own wrapper (``[logger.py:info:237]``) on every line. The file is
``<log_dir>/<YYYY-MM-DD>/ims-sip-server.log`` (the original's layout) and follows the date.
The level applies to every handler and can be changed at run time with ``set_level``.
On the console, records below WARNING go to stdout and WARNING and above to stderr, so pm2's
out log holds the INFO trail and its error log only what needs attention.

In the server (``background=True``) the event loop never writes a log line itself: it puts the
record on a bounded queue per handler (console, file), and that handler's own thread formats and
writes it. A console nobody reads (a full pipe), a stalled disk or a slow journald then delays
that log, not SIP and not the other log; when a queue is full the record is dropped and counted,
and the count is logged once that writer has caught up.

Every message is written on one line: control characters in it (CR, LF, NUL, ESC, Unicode line
separators...) are escaped (a newline as backslash-n, ESC as backslash-x1b), so a value from the
wire or an MML command cannot forge log lines. Tracebacks of exceptions keep their lines.
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import sys
import threading
import time
from typing import Callable

from sipcore import compiled
from sipcore.errors import ConfigError
from sipcore.textsafe import ERRORS as TEXT_ERRORS, printable

FORMAT = "%(asctime)s.%(msecs)03d [%(levelname)-8s] [%(where)s] %(message)s"
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
    """The message part escaped with ``escape_controls`` (exception tracebacks unchanged), and
    ``where``: ``module:function:line`` of the call that logged. A module of the compiled build
    (sipcore.compiled) has no Python frames, so logging finds some other frame below it (often
    asyncio's ``Handle._run``); its lines name the module alone instead of a wrong place."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        if record.name in compiled.MODULES and compiled.ACTIVE \
                and not record.pathname.endswith(record.name.replace(".", os.sep) + ".py"):
            record.where = record.name
        else:
            record.where = f"{record.name}:{record.funcName}:{record.lineno}"
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


QUEUE_SIZE = 10000
STOP_WAIT = 2.0          # seconds a writer gets at exit to write what is queued
_writers: list["_Writer"] = []


class _Writer:
    """One handler's bounded queue and the thread that writes from it; counts what it dropped
    and says so in its own log once it has caught up."""

    def __init__(self, handler: logging.Handler):
        self.handler = handler
        self.queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"log-writer-{type(handler).__name__}")
        self._thread.start()

    def put(self, record: logging.LogRecord) -> None:
        if record.levelno < self.handler.level or not self.handler.filter(record):
            return
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            record = self.queue.get()
            if record is None:
                return
            self.handler.handle(record)
            if self.dropped:
                dropped, self.dropped = self.dropped, 0
                self.handler.handle(logging.makeLogRecord({
                    "name": __name__, "levelno": logging.WARNING, "levelname": "WARNING", "funcName": "_run",
                    "lineno": 0, "msg": f"{dropped} log records dropped: this log's writer fell behind"}))

    def stop(self) -> None:
        """Let the thread write what is queued (at most STOP_WAIT seconds: a blocked console
        must not keep the process from exiting), then close the handler."""
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(STOP_WAIT)
        if not self._thread.is_alive():
            self.handler.close()


class _BackgroundHandler(logging.Handler):
    """Takes what must be taken from a record now (its arguments may change later) and hands it
    to each writer's queue; never blocks and never raises in the thread that logs. One writer
    per handler, so a blocked console does not hold up the log file."""

    def __init__(self, writers: list[_Writer]):
        super().__init__()
        self.writers = writers

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record = logging.makeLogRecord(record.__dict__)
            record.msg, record.args = record.getMessage(), None
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
        except Exception:   # noqa: BLE001 - logging must never raise
            self.handleError(record)
            return
        for writer in self.writers:
            writer.put(record)


def _stop_writers() -> None:
    """End the writer threads (at exit and before a reconfiguration)."""
    while _writers:
        _writers.pop().stop()


def setup_logging(level: str = "INFO", log_dir: str | None = "logs", *, console: bool = True,
                  clock: Callable[[], float] = time.time, background: bool = False) -> list[logging.Handler]:
    """(Re)install our console and file handlers on the root logger; returns them.

    With ``background`` each is written by its own thread fed through a bounded queue (the server);
    without, by the thread that logs (tools and tests). Handlers installed by others (pytest's
    capture, for instance) are left alone; calling this again replaces only the handlers a
    previous call installed.
    """
    name = normalise_level(level)
    root = logging.getLogger()
    with _state_lock:
        _stop_writers()
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
        attached: list[logging.Handler] = installed
        if background and installed:
            writers = [_Writer(handler) for handler in installed]
            _writers.extend(writers)
            attached = [_BackgroundHandler(writers)]
        for handler in attached:
            setattr(handler, _OURS, True)
            root.addHandler(handler)
    set_level(name)
    return installed


atexit.register(_stop_writers)


def set_level(level: str) -> str:
    """Change the level at run time (root logger); returns the normalised name."""
    name = normalise_level(level)
    logging.getLogger().setLevel(name)
    logging.getLogger(__name__).info("log level set to %s", name)
    return name


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().level)
