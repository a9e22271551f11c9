"""Controller side of the UA agent protocol: talk to one ``python -m harness.agent`` process
(started locally, in a namespace or in a container) over its stdin/stdout JSON lines."""
from __future__ import annotations

import json
import queue
import subprocess
import threading
import time


class AgentError(RuntimeError):
    pass


class AgentProcess:
    def __init__(self, proc: subprocess.Popen, name: str = "agent"):
        self.proc = proc
        self.name = name
        self._next = 0
        self._waiters: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.events: list[dict] = []
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        if proc.stderr is not None:
            threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "event" in msg and "id" not in msg:
                self.events.append(msg)
                continue
            q = self._waiters.pop(msg.get("id"), None)
            if q is not None:
                q.put(msg)
        for q in list(self._waiters.values()):
            q.put({"ok": False, "error": "agent exited"})

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip())
            del self.stderr_lines[:-200]

    def request(self, cmd: str, timeout: float = 40.0, **args) -> dict:
        with self._lock:
            self._next += 1
            rid = self._next
            q: queue.Queue = queue.Queue()
            self._waiters[rid] = q
            try:
                self.proc.stdin.write(json.dumps({"id": rid, "cmd": cmd, **args}) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise AgentError(f"{self.name}: agent is gone ({exc}); stderr: {self.stderr_lines[-5:]}") from None
        try:
            reply = q.get(timeout=timeout)
        except queue.Empty:
            raise AgentError(f"{self.name}: no answer to {cmd} within {timeout}s") from None
        if not reply.get("ok"):
            raise AgentError(f"{self.name}: {cmd} failed: {reply.get('error')}")
        return reply

    def start(self, cmd: str, **args) -> "threading.Thread":
        """Run a command in the background (e.g. a call that rings until cancelled)."""
        box: dict = {}

        def run():
            try:
                box["reply"] = self.request(cmd, **args)
            except AgentError as exc:
                box["error"] = str(exc)
        t = threading.Thread(target=run, daemon=True)
        t.box = box  # type: ignore[attr-defined]
        t.start()
        return t

    def close(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"id": 0, "cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)


def spawn_local(python: str, name: str = "agent", env=None) -> AgentProcess:
    proc = subprocess.Popen([python, "-m", "harness.agent"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1, env=env)
    return AgentProcess(proc, name)
