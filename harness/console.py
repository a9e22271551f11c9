"""The console of a server started as a child with its stdout on a pipe: read without pause by a
thread, so the child never blocks on a full pipe.

A pipe holds 64 KiB. A server whose console nobody reads blocks in ``write()`` as soon as it has
logged that much, and with it the event loop that logged, and every child sharing the pipe (the
RTPProxy it started): SIP goes silent while the process looks alive. Test servers logging at INFO
reached that within one test module; a bench server logging warnings under overload, within
seconds."""
from __future__ import annotations

import subprocess
import threading
import time

READY_PREFIX = "ims-migrate "
READY_MARK = " ready on "


def is_ready_line(line: str) -> bool:
    """The line every stage prints once its listeners are open."""
    return line.startswith(READY_PREFIX) and READY_MARK in line


class Console:
    """Reads ``proc.stdout`` (text mode) to its end in a daemon thread; keeps every line."""

    def __init__(self, proc: subprocess.Popen):
        if proc.stdout is None:
            raise ValueError("the process was started without stdout=PIPE")
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True,
                                        name=f"console-{proc.pid}")
        self._thread.start()

    def _read(self, stream) -> None:
        try:
            for line in stream:
                with self._cond:
                    self._lines.append(line)
                    self._cond.notify_all()
        except (OSError, ValueError):       # the pipe was closed under us
            pass
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def wait_for_ready(self, timeout: float) -> bool:
        """True once the ready line was printed; False at end of output or after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                if any(is_ready_line(line) for line in self._lines[seen:]):
                    return True
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    return False
                self._cond.wait(left)

    def join(self, timeout: float = 5.0) -> None:
        """After the process ended: wait for the rest of its output."""
        self._thread.join(timeout)

    def text(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def tail(self, n: int = 10) -> str:
        with self._cond:
            return "".join(self._lines[-n:])
