"""Start a real server stage as a subprocess on loopback, with ports unique per xdist worker."""
from __future__ import annotations

import fcntl
import glob
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request

from harness.console import Console
from sipcore.stages import ENTRYPOINTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


def worker_index() -> int:
    w = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(w[2:]) if w.startswith("gw") and w[2:].isdigit() else 0


def _free(port: int) -> bool:
    """Nobody holds ``port`` on UDP or TCP (checked by binding it for a moment)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


_given: set[int] = set()          # free_port never hands out the same port twice in one process


def free_port() -> int:
    """One port the kernel hands out that is free for UDP and TCP: an address nobody listens on,
    or the port of a helper process (redis-server). A server's set of ports is FreePorts."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not {port - 1, port, port + 1} & _given and _free(port):
            _given.add(port)
            return port
    raise RuntimeError("no free port found")


LOCK_DIR = "/tmp/ims-test-ports"


def _claim(name: str):
    """An exclusive lock on ``LOCK_DIR/name.lock`` (the open file; closing it releases), or None
    when another live object of any process on this machine holds it."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    fh = open(os.path.join(LOCK_DIR, f"{name}.lock"), "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


class Ports:
    """A block of 1000 ports per use: sip, mml, rtpproxy control, RTP ranges (10000-29999).
    All below 32768, outside Linux's ephemeral range (32768-60999), so no client socket of another
    test can hold one of them by chance (a server once failed to bind 36000 that way)."""

    def __init__(self):
        # Other checkouts on this machine run the same suite at the same time, so a fixed block
        # per worker collides with theirs: take a random free block of this worker's residue
        # class (workers of one run never share a block), checked by binding its fixed ports.
        # The block is also claimed with a lock file for as long as this object lives: two servers
        # of one worker at once (a module-scoped server and a test's own) once drew the same block
        # and their relays fought over its RTP ports (488).
        rng = random.Random()
        base = 10000
        for _ in range(60):
            base = 10000 + (worker_index() % 4 + 4 * rng.randrange(5)) * 1000
            lock = _claim(f"block-{base}")
            if lock is None:
                continue
            if all(_free(base + off) for off in (0, 1, 2, 10, 20, 30, 100, 400)):
                self._lock = lock
                break
            lock.close()
        self.sip, self.mml, self.rtpproxy = base, base + 1, base + 2
        self.ua = [base + 10, base + 20, base + 30]
        self.rtp_ua = [base + 100, base + 120, base + 140]
        self.relay_min, self.relay_max = base + 400, base + 999


class FreePorts(Ports):
    """Like Ports, for servers that may run beside many others (hostile tests, several per test):
    a block of ``BLOCK`` ports in 30000-32639, below Linux's ephemeral range (32768-60999) so no
    client socket can take one by chance, claimed with a lock file for as long as this object
    lives and checked free when claimed. It holds SIP, MML and relay control (+0..2), three UA SIP
    ports (+10..12), three UA RTP ports whose RTCP neighbour (+1) is in the block too (+20, +22,
    +24), two spare ones (+26, +28), and a media relay range of 50 ports (+30..+79). (It used to take ports the kernel handed
    out as free: those were in the ephemeral range, and an RTP port's +1 was never checked - a UA
    that could not bind its RTCP port answered no INVITE, and the call ended 408.)"""

    BLOCK = 80
    LOW, HIGH = 30000, 32640

    def __init__(self):
        starts = list(range(self.LOW, self.HIGH - self.BLOCK + 1, self.BLOCK))
        random.shuffle(starts)
        for start in starts:
            lock = _claim(f"free-{start}")
            if lock is None:
                continue
            offsets = (0, 1, 2, 10, 11, 12, *range(20, 30), 30, 31)
            if not all(_free(start + off) for off in offsets):
                lock.close()
                continue
            self._lock = lock                   # released when this object (or the process) goes
            self.sip, self.mml, self.rtpproxy = start, start + 1, start + 2
            self.ua = [start + 10, start + 11, start + 12]
            self.rtp_ua = [start + 20, start + 22, start + 24]
            self.spare_rtp = [start + 26, start + 28]       # a UA moving its media (re-INVITE)
            self.relay_min, self.relay_max = start + 30, start + self.BLOCK - 1
            return
        raise RuntimeError(f"every test port block in {self.LOW}-{self.HIGH} is in use")


class ServerProcess:
    def __init__(self, stage: int, workdir: str, entry: str | None = None, extra_env: dict | None = None,
                 ports: Ports | None = None):
        self.stage = stage
        self.workdir = workdir
        self.token = "test-token"
        users = {u: {"username": u, "password": "1234", "status": "ACTIVE"} for u in ("1001", "1002", "1003")}
        with open(os.path.join(workdir, "users.json"), "w") as fh:
            json.dump(users, fh)
        self.extra_env = extra_env
        self._set_ports(ports or Ports())
        self.entry = entry or os.path.join(ROOT, ENTRYPOINTS[stage])
        self.proc: subprocess.Popen | None = None
        self.console: Console | None = None
        self.output = ""
        self.preexec_fn = None          # e.g. a lower RLIMIT_NOFILE for the server process

    def _set_ports(self, ports: Ports) -> None:
        self.ports = ports
        workdir, extra_env = self.workdir, self.extra_env
        self.env = dict(os.environ, SERVER_IP="127.0.0.1", SERVER_PORT=str(self.ports.sip),
                        MML_PORT=str(self.ports.mml), MML_TOKEN=self.token,
                        USERS_FILE=os.path.join(workdir, "users.json"), CDR_DIR=os.path.join(workdir, "CDR"),
                        LOG_DIR=os.path.join(workdir, "logs"), BLACKLIST_FILE=os.path.join(workdir, "bl.txt"),
                        CONFIG_FILE=os.path.join(workdir, "none.json"), RTP_PORT_MIN=str(self.ports.relay_min),
                        RTP_PORT_MAX=str(self.ports.relay_max), RTPPROXY_UDP_PORT=str(self.ports.rtpproxy),
                        LOG_LEVEL="INFO")
        self.env.update(extra_env or {})

    def __enter__(self) -> "ServerProcess":
        """Start the server; when another test run took one of its ports between the port check
        and the bind (the machine may be shared), start it again on another block (3 tries)."""
        for attempt in range(3):
            try:
                return self._start()
            except RuntimeError as exc:
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
                self.output = ""
                self._set_ports(type(self.ports)())
        raise AssertionError("unreachable")

    def _start(self) -> "ServerProcess":
        self.proc = subprocess.Popen([PYTHON, self.entry], cwd=self.workdir, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=self.preexec_fn)
        self.console = Console(self.proc)       # drained all along: a full pipe would freeze the server
        if self.console.wait_for_ready(20):
            return self
        self.stop()
        raise RuntimeError("server did not start:\n" + self.output)

    def log_text(self) -> str:
        parts = []
        for path in sorted(glob.glob(os.path.join(self.workdir, "logs", "**", "*.log"), recursive=True)):
            with open(path, encoding="utf-8", errors="replace") as fh:
                parts.append(fh.read())
        return "".join(parts)

    def wait_log(self, needle: str, timeout: float = 5.0) -> str:
        """The log text once it holds ``needle`` (AssertionError after ``timeout`` s). The server's
        log lines are written by a thread of their own (sipcore.logsetup), so a line for something
        the server already did can reach the file a moment after its SIP answer."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if needle in text:
                return text
            if time.monotonic() >= deadline:
                raise AssertionError(f"{needle!r} not in the server's log after {timeout} s:\n{text[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc is None:
            return -1
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            if self.console is None:       # nobody drained it: read it now
                out, _ = self.proc.communicate(timeout=15)
                self.output += out or ""
            else:
                self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.console is not None:
            self.console.join()
            self.output += self.console.text()
            self.console = None
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        self.stop()

    def mml(self, command: str) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports.mml}/api/execute",
                                     data=json.dumps({"command": command}).encode(),
                                     headers={"Authorization": f"Bearer {self.token}"})
        return json.loads(urllib.request.urlopen(req, timeout=10).read())

    def cdr_rows(self) -> list[dict]:
        import csv
        import glob
        rows = []
        for path in sorted(glob.glob(os.path.join(self.workdir, "CDR", "*", "cdr_*.csv"))):
            with open(path, newline="") as fh:
                rows.extend(csv.DictReader(fh))
        return rows


def agent(name: str, user: str, server: ServerProcess, index: int, **cfg):
    from harness.agent_control import spawn_local
    a = spawn_local(PYTHON, name)
    a.request("config", user=user, password=cfg.pop("password", "1234"), server=["127.0.0.1", server.ports.sip],
              sip_port=server.ports.ua[index], rtp_port=server.ports.rtp_ua[index], **cfg)
    return a


def received_from(stats: dict, sender: str) -> int:
    return sum(s["received"].get(sender, {}).get("packets", 0) for s in stats["rtp"].values())


def sent(stats: dict) -> int:
    return sum(s["sent"] for s in stats["rtp"].values())
