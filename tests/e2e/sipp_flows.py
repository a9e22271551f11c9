"""Run a SIPp caller/callee pair (tests/sipp/<flow>_uac.xml / _uas.xml) through a server stage and
count RTP both ways through its relay with the test's own RTP endpoints.

Each side's endpoint is a UDP socket whose port goes into every SDP that side's SIPp sends
(``-set mport``). When the side's last offer/answer exchange is done, its scenario logs the media
port it learned from the last SDP it received (``<log message="media PORT">``, written and flushed
at once to the SIPp log file the test names, ``-trace_logs -log_file``); the endpoint then sends
marked RTP there and counts what reaches it from the other side, separately for packets coming
from a relay port and packets coming from anywhere else (an SDP the server did not rewrite makes
the UAs talk directly, which on loopback would otherwise look like working audio).
"""
from __future__ import annotations

import glob
import os
import re
import select
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from harness.rtp_stream import build_rtp, parse_marked, ssrc_for

SIPP_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sipp")
PACKETS = 50             # per direction, 20 ms apart
FILE_WAIT = 20.0


class Endpoint:
    def __init__(self, name: str, relay: tuple[int, int]):
        self.name = name
        self.relay = relay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sent = 0
        self.via_relay = 0
        self.direct = 0
        self.target: int | None = None
        self.thread: threading.Thread | None = None

    def start(self, mfile: str, both_learned: threading.Barrier) -> None:
        self.thread = threading.Thread(target=self._run, args=(mfile, both_learned), daemon=True)
        self.thread.start()

    def _drain(self, until: float) -> None:
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return
            data, src = self.sock.recvfrom(2048)
            marked = parse_marked(data)
            if marked is None or marked[0] == self.name:
                continue
            if self.relay[0] <= src[1] <= self.relay[1]:
                self.via_relay += 1
            else:
                self.direct += 1

    @staticmethod
    def _learned(mfile: str) -> int | None:
        try:
            with open(mfile) as fh:
                lines = [line.split() for line in fh if line.startswith("media ")]
        except FileNotFoundError:
            return None
        return int(lines[-1][-1]) if lines else None

    def _run(self, mfile: str, both_learned: threading.Barrier) -> None:
        deadline = time.monotonic() + FILE_WAIT
        while self._learned(mfile) is None and time.monotonic() < deadline:
            self._drain(time.monotonic() + 0.02)
        self.target = self._learned(mfile)
        if self.target is None:
            return
        # both sides start together, once the last SDP of the flow reached both: by then the server
        # has handed every offer and answer to the relay (a slow server must not eat the count)
        try:
            both_learned.wait()
        except threading.BrokenBarrierError:
            return
        ssrc = ssrc_for(self.name, "oa")
        for seq in range(PACKETS):
            self.sock.sendto(build_rtp(self.name, 1, seq, ssrc, seq * 160), ("127.0.0.1", self.target))
            self.sent += 1
            self._drain(time.monotonic() + 0.02)
        self._drain(time.monotonic() + 0.5)

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)
        self.sock.close()


@dataclass
class FlowResult:
    flow: str
    uac_rc: int | None = None
    uas_rc: int | None = None
    a_to_b: int = 0            # packets the caller sent that reached the callee through the relay
    b_to_a: int = 0
    direct: int = 0            # packets that reached a side without the relay
    sent: tuple[int, int] = (0, 0)
    targets: tuple = ()
    logs: dict = field(default_factory=dict)


def sipp(args: list[str], cwd: str) -> subprocess.Popen:
    """A SIPp UA of a flow. An unexpected message does not abort its call (-abortunexp): on a
    loaded machine the server's Timer A retransmits an INVITE the callee SIPp answered late, and a
    retransmission after the scenario moved on is not a failure of the flow."""
    return subprocess.Popen(["sipp", *args, "-nostdin", "-trace_err", "-trace_msg",
                             "-default_behaviors", "all,-abortunexp"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def register(server_port: int, user: str, local_port: int, cwd: str, domain: str = "127.0.0.1") -> subprocess.CompletedProcess:
    return subprocess.run(["sipp", f"127.0.0.1:{server_port}", "-sf", os.path.join(SIPP_DIR, "register.xml"),
                           "-s", user, "-au", user, "-ap", "1234", "-set", "domain", domain, "-i", "127.0.0.1", "-p", str(local_port),
                           "-m", "1", "-timeout", "10", "-nostdin", "-trace_err",
                           # no retransmission: a late second 200 would reach the callee's SIPp, which
                           # takes over this port next and would abort on the stray response
                           "-nr"],
                          cwd=cwd, capture_output=True, text=True, timeout=30, check=False)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Wait for a SIPp run (killed after ``timeout``): its exit status and the tail of its output."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out[-1500:]


def _media_vars(xml: str, endpoint: Endpoint, mfile: str) -> list[str]:
    """-set for the global variables the scenario declares (SIPp refuses undeclared ones);
    mport2 is a second media port nobody listens on (an SDP a later one replaces, a video stream).
    The scenario's log actions (the learned media port) go to ``mfile``."""
    with open(xml) as fh:
        declared = re.search(r'<Global variables="([^"]*)"', fh.read())
    names = declared.group(1).split(",") if declared else []
    values = {"mport": endpoint.port, "mport2": endpoint.port + 1 if endpoint.port < 65535 else endpoint.port - 1}
    return [arg for name in names for arg in ("-set", name, str(values[name]))] + ["-trace_logs", "-log_file", mfile]


def run_flow(flow: str, server_port: int, relay: tuple[int, int], user: str, ports: tuple[int, int],
             workdir: str, media: bool = True) -> FlowResult:
    """ports: UAS SIP, UAC SIP. SIPp's own media sockets (unused: the test's endpoints are in
    the SDP) are left to SIPp, which tries 100 port pairs from 6000 up. The callee user is registered
    from the UAS port in any case; a flow without a ``_uas.xml`` has no callee process."""
    os.makedirs(workdir, exist_ok=True)
    res = FlowResult(flow)
    a, b = Endpoint("caller", relay), Endpoint("callee", relay)
    afile, bfile = os.path.join(workdir, "a.port"), os.path.join(workdir, "b.port")
    uas = None
    try:
        reg = register(server_port, user, ports[0], workdir)
        if reg.returncode != 0:
            res.logs["register"] = reg.stdout[-1500:]
            return res
        uas_xml = os.path.join(SIPP_DIR, f"{flow}_uas.xml")
        if os.path.exists(uas_xml):
            uas = sipp(["-sf", uas_xml, "-i", "127.0.0.1", "-p", str(ports[0]), "-m", "1",
                        "-timeout", "40", *_media_vars(uas_xml, b, bfile)], workdir)
            time.sleep(0.2)
        uac_xml = os.path.join(SIPP_DIR, f"{flow}_uac.xml")
        uac = sipp([f"127.0.0.1:{server_port}", "-sf", uac_xml, "-s", user, "-i", "127.0.0.1", "-p", str(ports[1]),
                    "-m", "1", "-timeout", "40", *_media_vars(uac_xml, a, afile)], workdir)
        if media:
            both_learned = threading.Barrier(2, timeout=FILE_WAIT)
            a.start(afile, both_learned)
            b.start(bfile, both_learned)
        res.uac_rc, res.logs["uac"] = _finish(uac, 60)
        if uas is not None:
            res.uas_rc, res.logs["uas"] = _finish(uas, 30)
    finally:
        if uas is not None and uas.poll() is None:
            uas.kill()
            uas.wait(5)
        a.join(10)
        b.join(10)
    for path in sorted(glob.glob(os.path.join(workdir, "*_errors.log"))):
        with open(path, errors="replace") as fh:
            res.logs[os.path.basename(path)] = fh.read()[:1500]
    res.a_to_b, res.b_to_a = b.via_relay, a.via_relay
    res.direct = a.direct + b.direct
    res.sent = (a.sent, b.sent)
    res.targets = (a.target, b.target)
    return res
