"""`ims-rtpproxy`: start RTPProxy with rtpproxy-style options.

    ims-rtpproxy -l 203.0.113.5 -s udp:127.0.0.1:7722 -m 20000 -M 29999 [-F] [-d INFO]
                 [--engine rtpproxy|rtpengine] [--modules acct_csv,catch_dtmf]

A real ``rtpproxy`` binary on PATH is exec'ed with the same arguments; otherwise the real sippy
RTPProxy embedded in the PyPI package ``rtp-io`` runs in this process until SIGTERM/SIGINT.
The embedded one runs without rtp-io's default modules (per-session accounting CSV with per-packet
RTP analysis, DTMF catcher, DTLS gateway, ICE-lite), which cost CPU on every packet and made it
log "accounting queue is full" under load; ``--modules`` brings back the ones you need. It also
keeps freed heap instead of returning it to the kernel at once (see ``keep_freed_heap``).
``--engine rtpengine`` execs Sipwise rtpengine (Debian ``rtpengine-daemon``) on the same
rtpproxy-compatible UDP control protocol, forwarding in user space.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from refactored.rtpproxy_client import HOW_TO_START, RTPProxyPool, RTPProxyUnavailable, parse_spec

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ims-rtpproxy", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-l", dest="listen", required=True, help="address RTP is relayed on (IPv4)")
    ap.add_argument("-s", dest="control", default="udp:127.0.0.1:7722",
                    help="control socket: udp:HOST:PORT, udp6:[HOST]:PORT, unix:/path, tcp:HOST:PORT")
    ap.add_argument("-m", dest="port_min", type=int, default=20000, help="lowest RTP port")
    ap.add_argument("-M", dest="port_max", type=int, default=29999, help="highest RTP port")
    ap.add_argument("-F", dest="insecure", action="store_true", help="accepted (rtpproxy compatibility)")
    ap.add_argument("-f", dest="foreground", action="store_true", help="accepted: always foreground")
    ap.add_argument("-d", dest="debug", default="WARN", help="rtpproxy log level (DBUG, INFO, WARN, ERR)")
    ap.add_argument("--engine", choices=("rtpproxy", "rtpengine"), default="rtpproxy",
                    help="relay program: rtpproxy (binary on PATH, else embedded rtp-io) or rtpengine")
    ap.add_argument("--modules", default="",
                    help="embedded rtpproxy modules to load, comma separated (default: none)")
    return ap


RTPENGINE_LEVELS = {"DBUG": "7", "INFO": "6", "WARN": "4", "ERR": "3", "CRIT": "2"}


def rtpengine_argv(a) -> list[str]:
    """rtpengine with the rtpproxy-compatible UDP control socket, user-space forwarding (no kernel
    module table), in the foreground, logging to stderr. ``--config-file=none``: Debian's
    /etc/rtpengine/rtpengine.conf would add fixed NG, CLI and HTTP listeners (127.0.0.1:2223-2225),
    so a second rtpengine on the machine (another server, a parallel test) failed to start.
    ``--delete-delay=0``: a ``D`` command ends the session at once, as in rtpproxy (rtpengine's
    default keeps relaying a deleted call for 30 s)."""
    kind, addr = parse_spec(a.control)
    if kind != "udp":
        raise ValueError("--engine rtpengine needs a udp:HOST:PORT control socket")
    return ["--config-file=none", "-f", "-E", "--table=-1", "--delete-delay=0", f"--interface={a.listen}",
            f"--listen-udp={addr[0]}:{addr[1]}", f"--port-min={a.port_min}", f"--port-max={a.port_max}",
            f"--log-level={RTPENGINE_LEVELS.get(a.debug.upper(), '4')}"]


def rtpproxy_args(a) -> list[str]:
    return ["-F", "-l", a.listen, "-s", a.control, "-m", str(a.port_min), "-M", str(a.port_max), "-d", a.debug]


CONTROL_RCVBUF = 4 << 20


def deepen_control_socket(control: str, size: int = CONTROL_RCVBUF) -> int:
    """Give the embedded RTPProxy's UDP control socket (in this process) a receive buffer of
    ``size`` bytes: rtpproxy leaves it at the kernel default (208 KB, ~270 commands), and when its
    command thread is starved for a moment (two cores shared with SIP and the load) commands
    beyond that were dropped: 51 in one 8 s round at 1000 calls/s, each costing a call a
    retransmission. SO_RCVBUFFORCE (root) passes net.core.rmem_max, else SO_RCVBUF up to it.
    Returns the size the kernel reports (0 when no such socket is found: unix/tcp control)."""
    import socket as socket_mod
    kind, addr = parse_spec(control)
    if kind not in ("udp", "udp6"):
        return 0
    family = socket_mod.AF_INET6 if kind == "udp6" else socket_mod.AF_INET
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket_mod.socket(fileno=int(name))
        except (OSError, ValueError):
            continue
        try:
            if sock.family != family or sock.type != socket_mod.SOCK_DGRAM:
                continue
            bound = sock.getsockname()
            if bound[1] != addr[1] or bound[0] not in (addr[0], "0.0.0.0", "::"):
                continue
            for option in (getattr(socket_mod, "SO_RCVBUFFORCE", 33), socket_mod.SO_RCVBUF):
                try:
                    sock.setsockopt(socket_mod.SOL_SOCKET, option, size)
                    break
                except OSError:
                    continue
            return sock.getsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_RCVBUF)
        finally:
            sock.detach()          # the descriptor stays rtpproxy's
    return 0


# glibc mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD = -1, -2
HEAP_TRIM_THRESHOLD = 64 << 20
HEAP_TOP_PAD = 16 << 20


def keep_freed_heap() -> bool:
    """RTPProxy allocates every received packet zeroed (an 8 KB buffer) in its RTP thread and frees
    it in its sender thread. With glibc's default 128 KB trim threshold the heap top is handed back
    to the kernel and taken again many times a second: page faults and page clearing in the packet
    path (about a tenth of the relay's CPU per packet at 40k packets/s). Raising the trim threshold
    and the top pad keeps up to 64 MB of freed heap for reuse. False when the C library is not glibc."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)) and bool(mallopt(M_TOP_PAD, HEAP_TOP_PAD))


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if not 1024 <= a.port_min < a.port_max <= 65535:
        print("error: need 1024 <= -m < -M <= 65535", file=sys.stderr)
        return 2
    try:
        parse_spec(a.control)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.engine == "rtpengine":
        engine = shutil.which("rtpengine")
        if not engine:
            print("error: rtpengine is not installed: apt-get install rtpengine-daemon", file=sys.stderr)
            return 3
        try:
            argv_engine = rtpengine_argv(a)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        os.execv(engine, [engine, *argv_engine])
    binary = shutil.which("rtpproxy")
    if binary:
        os.execv(binary, [binary, "-f", *rtpproxy_args(a)])
    try:
        import rtp.io
    except ImportError:
        print("error: no rtpproxy binary on PATH and the rtp-io package is missing: pip install rtp-io",
              file=sys.stderr)
        return 3
    keep_freed_heap()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        modules = [m for m in a.modules.split(",") if m]
        proxy = rtp.io.rtpproxy(modules=modules, extra_args=tuple(rtpproxy_args(a)))
    except Exception as exc:   # noqa: BLE001 - the extension raises plain exceptions
        print(f"error: rtpproxy did not start: {exc}", file=sys.stderr)
        return 3
    deepened = deepen_control_socket(a.control)
    print(f"ims-rtpproxy: relaying on {a.listen} ports {a.port_min}-{a.port_max}, control {a.control}"
          + (f" (receive buffer {deepened // 1024} KB)" if deepened else ""), flush=True)
    while not stop.wait(0.5):
        pass
    del proxy
    return 0


class LocalRTPProxy:
    """A launcher subprocess we own (RTPPROXY_AUTO_START)."""

    def __init__(self, listen_ip: str, control: str, port_min: int, port_max: int, workdir: str = ".",
                 engine: str = "rtpproxy"):
        self.cmd = [sys.executable, "-m", "refactored.rtpproxy_launcher", "-l", listen_ip, "-s", control,
                    "-m", str(port_min), "-M", str(port_max), "--engine", engine]
        self.control = control
        self.workdir = workdir           # rtpproxy writes its accounting CSV in its cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        os.makedirs(self.workdir, exist_ok=True)
        self.log_path = os.path.join(os.path.abspath(self.workdir), "rtpproxy.log")
        with open(self.log_path, "ab") as log_file:      # a pipe nobody reads would block rtpproxy
            self.proc = subprocess.Popen(self.cmd, stdout=log_file, stderr=log_file, env=env,
                                         cwd=self.workdir, start_new_session=True)
        log.info("auto-started rtpproxy: %s (pid %d)", " ".join(self.cmd[2:]), self.proc.pid)

    def relay_pid(self) -> int:
        """The relay's process (the launcher execs the relay or embeds it: the same pid)."""
        if self.proc is None:
            raise RuntimeError("relay not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class AutoStartPool(RTPProxyPool):
    """A pool that starts a local rtpproxy when the configured local node does not answer."""

    def __init__(self, nodes, config):
        super().__init__(nodes)
        self.config = config
        self.local: LocalRTPProxy | None = None

    async def start(self) -> None:
        import asyncio
        saved = [(n.client.timeout, n.client.retries) for n in self.nodes]
        for n in self.nodes:                  # a quick look first: is a relay already running?
            n.client.timeout, n.client.retries = 0.3, 0
        try:
            # quiet: a relay that is not running yet is what auto start is for, not a node going down
            if any(await asyncio.gather(*(self.probe(n, announce=False) for n in self.nodes))):
                return
            spec = self.nodes[0].spec
            kind, addr = parse_spec(spec)
            local = kind == "unix" or (kind in ("udp", "udp6", "tcp") and addr[0] in ("127.0.0.1", "::1", "localhost"))
            if len(self.nodes) != 1 or not local:
                specs = ", ".join(n.spec for n in self.nodes)
                raise RTPProxyUnavailable(f"no rtpproxy answers at {specs}; {HOW_TO_START}")
        finally:
            for n, (timeout, retries) in zip(self.nodes, saved):
                n.client.timeout, n.client.retries = timeout, retries
        listen = self.config.bind_ip if self.config.bind_ip not in ("0.0.0.0", "") else self.config.server_ip
        engine = getattr(self.config, "rtpproxy_engine", "rtpproxy")     # sipcore.config checked it
        self.local = LocalRTPProxy(listen, self.nodes[0].spec, self.config.rtp_port_min, self.config.rtp_port_max,
                                   workdir=self.config.log_dir, engine=engine)
        self.local.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            if not self.local.alive():
                with open(self.local.log_path, encoding="utf-8", errors="replace") as fh:
                    err = fh.read()[-300:]
                raise RTPProxyUnavailable(f"auto-started rtpproxy exited: {err.strip()}")
            if await self.probe(self.nodes[0]):
                return
        self.local.stop()
        raise RTPProxyUnavailable("auto-started rtpproxy did not answer within 10 s")

    def close(self) -> None:
        super().close()
        if self.local is not None:
            self.local.stop()
            self.local = None

    async def aclose(self) -> None:
        """close() for a running loop: waiting for the auto-started process happens in a thread."""
        import asyncio
        super().close()
        local, self.local = self.local, None
        if local is not None:
            await asyncio.to_thread(local.stop)


if __name__ == "__main__":
    sys.exit(main())
