"""Log format names the real module/function/line; dated file; level changeable at run time."""
from __future__ import annotations

import logging
import re
from datetime import datetime

import pytest

from sipcore.errors import ConfigError
from sipcore.logsetup import current_level, set_level, setup_logging

LINE_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} \[(?P<level>[A-Z]+) *\] "
                     r"\[(?P<where>[^\]]+)\] (?P<msg>.*)$")


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def emit_here(logger):
    logger.info("hello %s", "world")
    return emit_here.__code__.co_firstlineno + 1


def test_format_file_and_level(tmp_path, restore_root):
    clock_value = datetime(2026, 2, 16, 23, 59, 59).timestamp()
    handlers = setup_logging("INFO", str(tmp_path), console=False, clock=lambda: clock_value)
    logger = logging.getLogger("sipcore.proxy")
    line_no = emit_here(logger)
    logger.debug("not shown at INFO")
    path = tmp_path / "2026-02-16" / "ims-sip-server.log"
    lines = [ln for ln in path.read_text().splitlines() if "hello" in ln or "not shown" in ln]
    assert len(lines) == 1
    m = LINE_RE.match(lines[0])
    assert m and m["level"] == "INFO" and m["msg"] == "hello world"
    assert m["where"] == f"sipcore.proxy:emit_here:{line_no}"       # the caller, not a wrapper
    assert lines[0][24:35] == "[INFO    ] "
    set_level("debug")
    assert current_level() == "DEBUG"
    logger.debug("now shown")
    assert "now shown" in path.read_text()
    # the date changes: the next line goes to the next day's folder
    clock_value += 2
    logger.warning("after midnight")
    assert "after midnight" in (tmp_path / "2026-02-17" / "ims-sip-server.log").read_text()
    assert len(handlers) == 1


def test_setup_twice_does_not_duplicate(tmp_path, restore_root):
    setup_logging("INFO", str(tmp_path), console=False)
    setup_logging("INFO", str(tmp_path), console=False)
    logging.getLogger("x.y").warning("once")
    text = "".join(p.read_text() for p in tmp_path.glob("*/ims-sip-server.log"))
    assert text.count("once") == 1


@pytest.mark.parametrize("bad", ["LOUD", "", "5"])
def test_bad_level(bad):
    with pytest.raises(ConfigError) as exc:
        set_level(bad)
    assert exc.value.key == "LOG_LEVEL"


def test_console_info_to_stdout_warnings_to_stderr(tmp_path):
    """pm2 keeps stdout and stderr in separate logs: INFO must not land in the error log."""
    import subprocess
    import sys
    code = ("import logging; from sipcore.logsetup import setup_logging; setup_logging('INFO', None); "
            "l = logging.getLogger('x'); l.info('info-line'); l.warning('warn-line'); l.error('err-line')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "info-line" in out.stdout and "warn-line" not in out.stdout and "err-line" not in out.stdout
    assert "warn-line" in out.stderr and "err-line" in out.stderr and "info-line" not in out.stderr


def test_background_logging_never_blocks_and_counts_what_it_dropped(restore_root, monkeypatch):
    """A writer stuck in write() (a console nobody reads): the thread that logs goes on at once,
    what exceeds the queue is dropped, and the writer reports the count once it is unblocked."""
    import threading
    import time

    from sipcore import logsetup
    monkeypatch.setattr(logsetup, "QUEUE_SIZE", 50)
    released = threading.Event()
    written: list[str] = []

    class Stuck(logging.Handler):
        def emit(self, record):
            released.wait(10)
            written.append(record.getMessage())

    monkeypatch.setattr(logsetup, "console_handlers", lambda: [Stuck()])
    setup_logging("INFO", None, background=True)
    log = logging.getLogger("sipcore.test")
    t0 = time.monotonic()
    for i in range(500):
        log.info("line %d %s", i, "x" * 100)
    assert time.monotonic() - t0 < 0.5            # never waited for the stuck writer
    released.set()
    logsetup._stop_writers()
    assert written[0] == "log level set to INFO" and "line 0 " + "x" * 100 in written
    [note] = [w for w in written if "log records dropped" in w]
    lines = [w for w in written if w.startswith("line ")]
    assert 40 <= len(lines) < 500 and int(note.split()[0]) == 500 - len(lines)


def test_a_compiled_module_is_named_without_a_wrong_place(tmp_path, restore_root, monkeypatch):
    """Lines from a module of the compiled build (no Python frames) name the module only: logging
    would otherwise report the first interpreted frame below it (asyncio's Handle._run:80)."""
    from sipcore import compiled
    monkeypatch.setattr(compiled, "ACTIVE", True)
    setup_logging("INFO", str(tmp_path), console=False)
    emit_here(logging.getLogger("sipcore.proxy_core"))      # a compiled module's name, logged from here
    line_no = emit_here(logging.getLogger("sipcore.proxy"))     # not compiled: its real place
    text = "".join(p.read_text() for p in tmp_path.rglob("*.log"))
    wheres = [LINE_RE.match(ln)["where"] for ln in text.splitlines() if "hello" in ln]
    assert wheres == ["sipcore.proxy_core", f"sipcore.proxy:emit_here:{line_no}"]
