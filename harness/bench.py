"""`harness bench`: per-stage capacity on loopback, side by side in one invocation.

* call setup: SIPp (Debian sip-tester) as an independent UAC and UAS through each stage's server
  and through Kamailio (Debian, stacks/kamailio/bench.cfg: stateful, record-routing) as the
  reference row (INVITE/100/180/200/ACK/BYE); the highest offered rate with <1% failed calls, the
  p50/p99 setup latency SIPp measured (INVITE -> 200), the server's CPU ms per call (its process
  tree, from /proc) and the ratio to Kamailio. Repeated with 0/10k/50k users registered first
  through the server (SIPp, digest answered; REGISTER/s reported).
* media relay: concurrent bidirectional 50 pps streams through stage 0's Python relay, the
  embedded RTPProxy of stages 1/2 and rtpengine (Debian, rtpproxy-compatible control); the highest
  stream count with <0.5% loss while the 50 pps schedule is kept and the added p99 latency stays
  under 50 ms, and the relay's CPU seconds per million packets relayed. The load comes from
  rtpgen, a C program with sendmmsg/recvmmsg (benchmarks/mediagen, built by scripts/setup.sh), in
  its own process; ``--generator python`` keeps the old in-process Python generator. Steps of
  100-200 streams locate the knee (last passing and first failing step; a relay stops after two
  steps in a row that lost >= 0.5%); each round also records the load average and where packets were lost in
  the kernel (the relay's socket drop counters, the machine's UDP RcvbufErrors/NoPorts), and the
  table gives each relay's streams as a ratio to the Python relay's.

Results are printed as a table and written as JSON plus a PNG plot next to it, with the machine's
load average: figures taken while other work runs on the machine are not capacity figures.
"""
from __future__ import annotations

import asyncio
import csv
import glob
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

import click

from harness.console import Console
from harness.rtp_stream import free_udp_port
from harness.stacks import STACKS, stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Port plan, all in 10000-32766: below Linux's ephemeral range (32768-60999), where any client
# socket on the machine could already hold a port (a media round once failed to bind 52xxx), and
# clear of well-known service ports. It overlaps the test suite's ports: do not run both at once
# (the figures would be wrong anyway).
# The environment can move the plan (IMS_BENCH_SIP_BASE, IMS_BENCH_STAGE_STRIDE, IMS_BENCH_MEDIA_BASE,
# IMS_BENCH_RELAY_PORTS=MIN-MAX) when another user of the machine holds these ports.
CALL_SETUP_BASE = int(os.environ.get("IMS_BENCH_SIP_BASE", 10000))      # SIP, MML, control, UAs
STAGE_STRIDE = int(os.environ.get("IMS_BENCH_STAGE_STRIDE", 2000))      # per stack (0, 1, 2, 2-sippy, kamailio)
MEDIA_ENDPOINT_BASE = int(os.environ.get("IMS_BENCH_MEDIA_BASE", 16000))  # 4 ports per stream
RELAY_PORTS = tuple(int(x) for x in os.environ.get("IMS_BENCH_RELAY_PORTS", "23000-32766").split("-"))
MAX_MEDIA_STREAMS = 16000 // 4 if "IMS_BENCH_MEDIA_BASE" in os.environ else (RELAY_PORTS[0] - MEDIA_ENDPOINT_BASE) // 4


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "sipp": _sipp_version()}


def _sipp_version() -> str | None:
    if not shutil.which("sipp"):
        return None
    out = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout
    return next((ln.strip() for ln in out.splitlines() if "SIPp" in ln), "sipp")


def _server_rtp(base: int) -> tuple[int, int]:
    """The server's relay ports in call-setup rounds (media rounds do not run at the same time)."""
    if "IMS_BENCH_RELAY_PORTS" in os.environ:
        return RELAY_PORTS[0], RELAY_PORTS[1]
    return base + 500, base + 1998


def bench_users(n: int) -> list[str]:
    return [f"u{i:06d}" for i in range(n)]


class BenchServer:
    def __init__(self, stage: int | str, workdir: str, base: int, users: int = 0, extra_env: dict | None = None):
        self.stage, self.workdir, self.port = stage, workdir, base
        names = ["1001", "1002", *bench_users(users)]
        with open(os.path.join(workdir, "users.json"), "w") as fh:
            json.dump({u: {"username": u, "password": "1234", "status": "ACTIVE"} for u in names}, fh)
        self.env = dict(os.environ, SERVER_IP="127.0.0.1", SERVER_PORT=str(base), MML_PORT=str(base + 1),
                        MML_TOKEN="bench-token-1", USERS_FILE=os.path.join(workdir, "users.json"),
                        CDR_DIR=os.path.join(workdir, "CDR"), LOG_DIR=os.path.join(workdir, "logs"),
                        CONFIG_FILE=os.path.join(workdir, "none.json"), BLACKLIST_FILE=os.path.join(workdir, "bl"),
                        RTPPROXY_UDP_PORT=str(base + 2), RTP_PORT_MIN=str(_server_rtp(base)[0]),
                        RTP_PORT_MAX=str(_server_rtp(base)[1]), LOG_LEVEL="WARNING", AUTH_INVITE="0",
                        RATE_LIMIT_FAILS="100000", PYTHONPATH=ROOT,
                        # the stage rows on the standard loop; the 2-uvloop row overrides it
                        EVENT_LOOP="asyncio", **stack(stage).env)
        self.env.update(extra_env or {})
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, stack(self.stage).entry)], cwd=self.workdir,
                                     env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.console = Console(self.proc)     # read all along: overload warnings would fill the pipe and freeze it
        if self.console.wait_for_ready(20):
            return self
        self.__exit__()
        raise RuntimeError(f"stage {self.stage} server did not start:\n" + self.console.tail(10))

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.console.join()


KAMAILIO_CFG = os.path.join(ROOT, "stacks", "kamailio", "bench.cfg")
UVLOOP_ROW = "2-uvloop"
PURE_ROW = "2-pure"         # stage 2 on the pure-Python sipcore modules (IMS_COMPILED=0)
VARIANT_ROWS = {UVLOOP_ROW: {"EVENT_LOOP": "uvloop"}, PURE_ROW: {"IMS_COMPILED": "0"}}


class KamailioServer:
    """The reference row: Kamailio (Debian) with stacks/kamailio/bench.cfg, stateful and
    record-routing, in-memory registrar, same SIPp traffic."""

    def __init__(self, workdir: str, base: int, children: int = 4):
        self.workdir, self.port, self.children = workdir, base, children
        self.proc = None

    def __enter__(self):
        binary = shutil.which("kamailio")
        if not binary:
            raise click.ClickException("kamailio is not installed (apt-get install kamailio)")
        self.log = open(os.path.join(self.workdir, "kamailio.log"), "wb")
        self.proc = subprocess.Popen([binary, "-f", KAMAILIO_CFG, "-DD", "-E", "-l", f"udp:127.0.0.1:{self.port}",
                                      "-n", str(self.children), "-m", "256", "-M", "16", "-Y", self.workdir],
                                     cwd=self.workdir, stdout=self.log, stderr=self.log, start_new_session=True)
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.settimeout(0.3)
        try:
            for i in range(60):
                if self.proc.poll() is not None:
                    break
                probe.sendto((f"OPTIONS sip:probe@127.0.0.1:{self.port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:"
                              f"{probe.getsockname()[1] if i else 0};branch=z9hG4bKprobe{i}\r\nFrom: <sip:b@127.0.0.1>;tag=p\r\n"
                              f"To: <sip:probe@127.0.0.1>\r\nCall-ID: probe{i}\r\nCSeq: 1 OPTIONS\r\n"
                              "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", self.port))
                try:
                    probe.recv(4096)
                    return self
                except OSError:
                    continue
        finally:
            probe.close()
        self.__exit__()
        raise RuntimeError("kamailio did not start: see " + os.path.join(self.workdir, "kamailio.log"))

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants (Kamailio forks its workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += _proc_cpu(p)
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(children.get(p, ()))
    return total


def _own_cpu(pid: int) -> float:
    try:
        return _proc_cpu(pid)
    except (OSError, IndexError, ValueError):
        return 0.0


def register_users(port: int, users: int, rate: int, workdir: str, local_port: int, pid: int | None = None) -> dict:
    """REGISTER ``users`` users through the server with SIPp (digest answered), offered at ``rate``/s.

    ``register_per_s`` is registrations completed (200 OK, after the 401 round trip where there is
    one) per second of SIPp's own run time; refused (503 from the overload control), timed-out and
    otherwise failed registrations are counted apart and never in the rate. A failed registration
    is aborted without the BYE SIPp sends by default (load of its own, answered 404). With
    ``pid``, the server's CPU per completed registration (its process tree, from /proc)."""
    csv_path = os.path.join(workdir, "users.csv")
    with open(csv_path, "w") as fh:
        fh.write("SEQUENTIAL\n")
        fh.writelines(f"{u};[authentication username={u} password=1234];\n" for u in bench_users(users))
    cpu0 = _tree_cpu(pid) if pid else 0.0
    t0 = time.monotonic()
    out = subprocess.run(["sipp", f"127.0.0.1:{port}", "-sf", os.path.join(ROOT, "benchmarks", "sipp", "register_users.xml"),
                          "-inf", csv_path, "-i", "127.0.0.1", "-p", str(local_port), "-r", str(rate), "-m", str(users),
                          "-l", str(max(100, rate)), "-timeout", str(int(users / max(rate, 1)) + 60), "-nostdin",
                          "-default_behaviors", "all,-bye",
                          "-trace_stat", "-fd", "1", "-stf", "reg_.csv"],
                         cwd=workdir, capture_output=True, text=True, timeout=users / max(rate, 1) + 120)
    wall = time.monotonic() - t0
    cpu = _tree_cpu(pid) - cpu0 if pid else None
    stats = _sipp_stats(workdir, "reg_.csv", keep_text=True)
    elapsed = _sipp_seconds(stats.get("ElapsedTime(C)")) or wall
    ok, failed = stats.get("SuccessfulCall(C)", 0), stats.get("FailedCall(C)", users)
    return {"users": users, "offered_register_per_s": rate, "registered": ok, "failed": failed,
            "failed_unexpected_reply": stats.get("FailedUnexpectedMessage(C)"),     # 503 (overload) and the like
            "failed_timeout": stats.get("FailedMaxUDPRetrans(C)"),
            "retransmissions": stats.get("Retransmissions(C)"),
            "register_ms_mean": round(_sipp_seconds(stats.get("CallLength(C)")) * 1000, 2)
            if _sipp_seconds(stats.get("CallLength(C)")) is not None else None,
            "sipp_seconds": round(elapsed, 2), "wall_seconds": round(wall, 2), "sipp_exit": out.returncode,
            "server_cpu_ms_per_register": round(cpu * 1000 / ok, 3) if cpu is not None and ok else None,
            "load": os.getloadavg(),
            "register_per_s": round(ok / elapsed, 1) if elapsed else 0}


def _register_cell(reg: dict) -> str | None:
    """The table's REGISTER/s cell: the rate, the failures beside it, the server CPU per REGISTER."""
    if not reg:
        return None
    text = f"{reg.get('register_per_s')}"
    if reg.get("failed"):
        text += f" ({reg['failed']} failed)"
    if reg.get("server_cpu_ms_per_register") is not None:
        text += f", {reg['server_cpu_ms_per_register']} ms CPU"
    return text


def _sipp_seconds(value) -> float | None:
    """SIPp's duration text ``HH:MM:SS:micro`` (or ``HH:MM:SS``) in seconds."""
    if not isinstance(value, str):
        return None
    parts = value.strip().split(":")
    try:
        h, m, sec = int(parts[0]), int(parts[1]), int(parts[2])
        frac = int(parts[3]) / 10 ** len(parts[3]) if len(parts) > 3 else 0.0
    except (ValueError, IndexError):
        return None
    return h * 3600 + m * 60 + sec + frac


def _register(port: int, user: str, local_port: int) -> None:
    from harness.agent_control import spawn_local
    a = spawn_local(sys.executable, "bench-reg")
    try:
        a.request("config", user=user, password="1234", server=["127.0.0.1", port], sip_port=local_port,
                  rtp_port=free_udp_port())
        code = a.request("register", expires=3600)["code"]
        if code != 200:
            raise RuntimeError(f"registration for the SIPp UAS failed: {code}")
    finally:
        a.close()


def call_setup(stage: int | str, rates: list[int], seconds: float, workdir: str, users: int = 0,
               register_rate: int = 2000) -> dict:
    """SIPp call setup rounds against one stage (0/1/2) or ``"kamailio"``, with ``users`` users
    registered first; server CPU per call from /proc."""
    if not shutil.which("sipp"):
        raise click.ClickException("SIPp is not installed (apt-get install sip-tester)")
    extra = {"kamailio": len(STACKS), UVLOOP_ROW: len(STACKS) + 1, PURE_ROW: len(STACKS) + 2}
    slot = extra[stage] if stage in extra else list(STACKS).index(str(stage))
    base = CALL_SETUP_BASE + slot * STAGE_STRIDE
    results = []
    if stage == "kamailio":
        server = KamailioServer(workdir, base)
    elif stage in VARIANT_ROWS:                  # stage 2 on uvloop, or on pure-Python sipcore
        server = BenchServer("2", workdir, base, users, extra_env=VARIANT_ROWS[stage])
    else:
        server = BenchServer(stage, workdir, base, users)
    registration = None
    with server as srv:
        uas_port = base + 20
        if users:
            registration = register_users(srv.port, users, register_rate, workdir, base + 40, srv.proc.pid)
        _register(srv.port, "1002", uas_port)
        uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-bg", "-nostdin"],
                               cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            for rate in rates:
                total = max(1, int(rate * seconds))
                for f in glob.glob(os.path.join(workdir, "uac*_rtt.csv")):
                    os.unlink(f)
                cpu0, own0 = _tree_cpu(srv.proc.pid), _own_cpu(srv.proc.pid)
                t0 = time.monotonic()
                out = subprocess.run(["sipp", "-sn", "uac", f"127.0.0.1:{srv.port}", "-s", "1002", "-i", "127.0.0.1",
                                      "-p", str(base + 30), "-r", str(rate), "-m", str(total), "-l", str(max(50, rate * 2)),
                                      "-trace_rtt", "-rtt_freq", "1", "-timeout", str(int(seconds + 30)),
                                      "-recv_timeout", "8000", "-nostdin", "-trace_stat", "-fd", "1"],
                                     cwd=workdir, capture_output=True, text=True, timeout=seconds + 90)
                elapsed = time.monotonic() - t0
                cpu = _tree_cpu(srv.proc.pid) - cpu0
                own = _own_cpu(srv.proc.pid) - own0       # the server process alone (Python; Kamailio's main)
                stats = _sipp_stats(workdir)
                rtts = _sipp_rtts(workdir)
                ok, failed = stats.get("SuccessfulCall(C)", 0), stats.get("FailedCall(C)", total)
                results.append({"offered_cps": rate, "calls": total, "successful": ok, "failed": failed,
                                "failure_ratio": round(failed / max(1, ok + failed), 4),
                                "achieved_cps": round(ok / elapsed, 1) if elapsed else 0,
                                "setup_p50_ms": _pct(rtts, 50), "setup_p99_ms": _pct(rtts, 99),
                                "server_cpu_ms_per_call": round(cpu * 1000 / ok, 3) if ok else None,
                                # the tree split: the server process itself, and its children (the
                                # auto-started RTPProxy of stages 1/2; Kamailio's forked workers)
                                "server_process_cpu_ms_per_call": round(own * 1000 / ok, 3) if ok else None,
                                "children_cpu_ms_per_call": round((cpu - own) * 1000 / ok, 3) if ok else None,
                                "load": os.getloadavg(), "sipp_exit": out.returncode})
        finally:
            uas.terminate()
            subprocess.run(["pkill", "-f", f"sipp -sn uas -i 127.0.0.1 -p {uas_port}"], capture_output=True)
    passing = [r for r in results if r["failure_ratio"] < 0.01 and r["successful"] > 0]
    best = max(passing, key=lambda r: r["offered_cps"]) if passing else None
    return {"stage": stage, "users": users, "registration": registration, "runs": results,
            "max_cps_under_1pct_fail": best["offered_cps"] if best else 0,
            "p50_ms": best["setup_p50_ms"] if best else None, "p99_ms": best["setup_p99_ms"] if best else None,
            "server_cpu_ms_per_call": best["server_cpu_ms_per_call"] if best else None,
            "server_process_cpu_ms_per_call": best["server_process_cpu_ms_per_call"] if best else None,
            "children_cpu_ms_per_call": best["children_cpu_ms_per_call"] if best else None}


def _sipp_stats(workdir: str, pattern: str = "uac_*_.csv", keep_text: bool = False) -> dict:
    """The last row of SIPp's -trace_stat file: counters as int (``keep_text``: the rest as text)."""
    files = sorted(glob.glob(os.path.join(workdir, pattern)), key=os.path.getmtime)
    if not files:
        return {}
    with open(files[-1], newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    if len(rows) < 2:
        return {}
    head, last = rows[0], rows[-1]
    out = {}
    for k, v in zip(head, last):
        try:
            out[k] = int(v)
        except ValueError:
            if keep_text:
                out[k] = v
    for f in files:
        os.unlink(f)
    return out


def _sipp_rtts(workdir: str) -> list[float]:
    vals = []
    for f in glob.glob(os.path.join(workdir, "uac*_rtt.csv")):
        with open(f) as fh:
            for line in fh:
                parts = line.strip().split(";")
                if len(parts) >= 3 and parts[1].replace(".", "", 1).isdigit():
                    try:
                        vals.append(float(parts[1]))   # date_ms;response_time_ms;rtd_no
                    except ValueError:
                        pass
    return vals


def _pct(vals: list[float], p: int):
    if not vals:
        return None
    vals = sorted(vals)
    return round(vals[min(len(vals) - 1, int(len(vals) * p / 100))], 2)


# --- media relay capacity -----------------------------------------------------------------------
async def _media_round(backend, streams: int, seconds: float, base_port: int) -> dict:
    from sipcore.sdp import SessionDescription
    loop = asyncio.get_running_loop()
    socks = []          # per stream: (sock_a, sock_b, relay_for_a, relay_for_b)
    for i in range(streams):
        pa, pb = base_port + 4 * i, base_port + 4 * i + 2
        sdp = SessionDescription.parse(f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                                       f"m=audio {pa} RTP/AVP 0\r\n".encode())
        offer = await backend.offer(f"bench{i}", "fa", None, sdp, ("127.0.0.1", 5060))
        ans_sdp = SessionDescription.parse(sdp.to_bytes().replace(f" {pa} ".encode(), f" {pb} ".encode()))
        answer = await backend.answer(f"bench{i}", "fa", "tb", ans_sdp, ("127.0.0.1", 5060))
        sa = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sa.bind(("127.0.0.1", pa))
        sb.bind(("127.0.0.1", pb))
        sa.setblocking(False)
        sb.setblocking(False)
        socks.append((sa, sb, (answer.media_address(0), answer.media[0].port),
                      (offer.media_address(0), offer.media[0].port)))
    sent = received = 0
    latencies: list[float] = []

    def drain(sock):
        nonlocal received
        while True:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                return
            received += 1
            if len(data) >= 24:
                latencies.append(time.perf_counter() - struct.unpack("!d", data[16:24])[0])

    for s in socks:
        loop.add_reader(s[0].fileno(), drain, s[0])
        loop.add_reader(s[1].fileno(), drain, s[1])
    ticks = int(seconds * 50)
    start = time.perf_counter()
    for t in range(ticks):
        for i, (sa, sb, to_b, to_a) in enumerate(socks):
            hdr = bytes([0x80, 0]) + (t & 0xFFFF).to_bytes(2, "big") + (t * 160).to_bytes(4, "big") + i.to_bytes(4, "big")
            pkt = hdr + b"\0\0\0\0" + struct.pack("!d", time.perf_counter()) + b"\xff" * 148
            for sock, dst in ((sa, to_b), (sb, to_a)):
                try:
                    sock.sendto(pkt, dst)
                    sent += 1
                except (BlockingIOError, OSError):
                    sent += 1
        next_t = start + (t + 1) / 50
        await asyncio.sleep(max(0, next_t - time.perf_counter()))
    await asyncio.sleep(0.5)
    for s in socks:
        loop.remove_reader(s[0].fileno())
        loop.remove_reader(s[1].fileno())
        s[0].close()
        s[1].close()
    for i in range(streams):
        await backend.delete(f"bench{i}", "fa", "tb")
    elapsed = time.perf_counter() - start - 0.5
    lat = [x * 1000 for x in latencies if x > 0]
    return {"streams": streams, "sent": sent, "received": received, "seconds": round(elapsed, 2),
            "offered_pps": round(sent / elapsed) if elapsed > 0 else 0, "nominal_pps": streams * 100,
            "loss": round(1 - received / sent, 4) if sent else 0, "lat_p50_ms": _pct(lat, 50), "lat_p99_ms": _pct(lat, 99)}


RTPGEN = os.path.join(ROOT, "benchmarks", "mediagen", "rtpgen")
RTPGEN_SOCKET_PAIRS = 64     # generator endpoints per side; streams share them round-robin


def rtpgen_binary() -> str | None:
    """The C load generator built by scripts/setup.sh (gcc), or None."""
    return RTPGEN if os.access(RTPGEN, os.X_OK) else None


UDP_COUNTERS = ("InErrors", "RcvbufErrors", "SndbufErrors", "NoPorts")


def udp_counters() -> dict:
    """The kernel's UDP error counters (/proc/net/snmp), machine-wide for this network namespace:
    other programs' traffic on the machine counts too."""
    with open("/proc/net/snmp") as fh:
        head, values = [ln.split()[1:] for ln in fh if ln.startswith("Udp:")][:2]
    table = dict(zip(head, (int(v) for v in values)))
    return {k: table.get(k, 0) for k in UDP_COUNTERS}


def socket_drops(port_min: int, port_max: int) -> int:
    """Datagrams the kernel dropped at the receive buffers of the UDP sockets bound to these local
    ports (the ``drops`` column of /proc/net/udp, counted since each socket was opened)."""
    drops = 0
    with open("/proc/net/udp") as fh:
        next(fh)
        for ln in fh:
            f = ln.split()
            if port_min <= int(f[1].rsplit(":", 1)[1], 16) <= port_max:
                drops += int(f[-1])
    return drops


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _media_round_c(backend, streams: int, seconds: float, base_port: int, relay_cpu, workdir: str) -> dict:
    """One round with the C generator (rtpgen): the relay's CPU is measured apart from the load."""
    from sipcore.sdp import SessionDescription
    pairs = min(streams, RTPGEN_SOCKET_PAIRS)
    lines = []
    for i in range(streams):
        pa, pb = base_port + 4 * (i % pairs), base_port + 4 * (i % pairs) + 2
        sdp = SessionDescription.parse(f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                                       f"m=audio {pa} RTP/AVP 0\r\n".encode())
        offer = await backend.offer(f"bench{i}", "fa", None, sdp, ("127.0.0.1", 5060))
        ans_sdp = SessionDescription.parse(sdp.to_bytes().replace(f" {pa} ".encode(), f" {pb} ".encode()))
        answer = await backend.answer(f"bench{i}", "fa", "tb", ans_sdp, ("127.0.0.1", 5060))
        # A sends to the relay port it was given in the answer, B to the one in the offer
        lines.append(f"{pa} {pb} {answer.media_address(0)} {answer.media[0].port} "
                     f"{offer.media_address(0)} {offer.media[0].port}\n")
    spec = os.path.join(workdir, f"rtpgen-{streams}.spec")
    with open(spec, "w") as fh:
        fh.writelines(lines)
    load = os.getloadavg()[0]
    kernel0, cpu0 = udp_counters(), relay_cpu()
    proc = await asyncio.create_subprocess_exec(RTPGEN, spec, str(seconds), "50", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + 60)
    cpu = relay_cpu() - cpu0
    kernel1 = udp_counters()
    relay_drops = socket_drops(*RELAY_PORTS)         # the relay's sockets, before the deletes close them
    for i in range(streams):
        await backend.delete(f"bench{i}", "fa", "tb")
    if proc.returncode != 0:
        raise RuntimeError(f"rtpgen failed: {err.decode(errors='replace')[-400:]}")
    r = json.loads(out.decode().strip().splitlines()[-1])
    r["generator"] = "rtpgen (C, sendmmsg/recvmmsg)"
    r["relay_cpu_s"] = round(cpu, 3)
    r["relay_cpu_s_per_mpkt"] = round(cpu / (r["received"] / 1e6), 2) if r["received"] else None
    r["load_avg_1m"] = round(load, 2)
    # where packets were lost: the relay's receive buffers (its sockets' drop counters), anywhere on
    # the machine (RcvbufErrors: the relay's, the generator's or another program's), or sent to a
    # closed port (NoPorts: e.g. packets still in the relay when the generator exited)
    r["kernel_udp"] = {k: kernel1[k] - kernel0[k] for k in UDP_COUNTERS}
    r["kernel_udp"]["relay_socket_drops"] = relay_drops
    return r


STOP_AFTER_SATURATED_STEPS = 2     # a relay's rounds end after this many saturated steps in a row


def media_round_saturated(r: dict) -> bool:
    """The relay fell behind for good: >= 0.5% of the packets lost (still queued when the generator
    stopped, or dropped) or the 50 pps schedule not kept. A round that only missed the p99 bound
    can be a moment of other load on the machine, so it does not end a relay's series."""
    return r["loss"] >= 0.005 or r.get("offered_pps", 0) < 0.95 * r.get("nominal_pps", 0)


def media_round_passes(r: dict) -> bool:
    """<0.5% loss, the 50 pps schedule kept (>=95% of nominal packets/s), added p99 latency < 50 ms."""
    return (r["loss"] < 0.005 and r.get("offered_pps", 0) >= 0.95 * r.get("nominal_pps", 0)
            and r["lat_p99_ms"] is not None and r["lat_p99_ms"] < 50)


def media_capacity(kind: str, counts: list[int], seconds: float, workdir: str, generator: str = "c") -> dict:
    """Run the media rounds in a subprocess so the generator and the relay do not share an event
    loop with anything else (the Python relay itself runs in the generator's process, as it does in
    the stage-0 server)."""
    code = f"""
import asyncio, json, sys
sys.path.insert(0, {ROOT!r})
from harness.bench import MEDIA_ENDPOINT_BASE, _media_round, _media_round_c, _backend, media_round_saturated
async def main():
    backend, cleanup, relay_cpu = await _backend({kind!r}, {workdir!r})
    out = []
    try:
        failed = 0
        for n in {counts!r}:
            if {generator!r} == "c":
                out.append(await _media_round_c(backend, n, {seconds!r}, MEDIA_ENDPOINT_BASE, relay_cpu, {workdir!r}))
            else:
                out.append(await _media_round(backend, n, {seconds!r}, MEDIA_ENDPOINT_BASE))
            failed = failed + 1 if media_round_saturated(out[-1]) else 0
            if failed == {STOP_AFTER_SATURATED_STEPS}:   # past the knee: more streams only cost time
                break
    finally:
        await cleanup()
    print(json.dumps(out))
asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise click.ClickException(f"media bench ({kind}) failed: {proc.stderr[-800:]}")
    rounds = json.loads(proc.stdout.strip().splitlines()[-1])
    ok = [r for r in rounds if media_round_passes(r)]
    best = max(ok, key=lambda r: r["streams"]) if ok else None
    above = [r["streams"] for r in rounds if not media_round_passes(r) and (not best or r["streams"] > best["streams"])]
    cpu = [r["relay_cpu_s_per_mpkt"] for r in rounds if r.get("relay_cpu_s_per_mpkt")]
    return {"relay": kind, "generator": generator, "rounds": rounds,
            "max_streams_under_half_pct_loss": best["streams"] if best else 0,
            "first_failing_streams": min(above) if above else None,     # the knee lies between the two
            "lat_p50_ms": best["lat_p50_ms"] if best else None, "lat_p99_ms": best["lat_p99_ms"] if best else None,
            "relay_cpu_s_per_mpkt": best.get("relay_cpu_s_per_mpkt") if best else None,
            # CPU per packet over every round (it hardly depends on the load below saturation)
            "relay_cpu_s_per_mpkt_median": _median(cpu),
            "relay_socket_drops": best["kernel_udp"]["relay_socket_drops"] if best and "kernel_udp" in best else None,
            # whether the generator kept up: in the first failing round, how many 1 ms send slots it ran
            # more than a packet interval late (0: it kept its schedule)
            "generator_late_slots_first_failing": next((r.get("late_slots") for r in rounds
                                                        if above and r["streams"] == min(above)), None),
            # what the load itself costs on the same cores (rtpgen sleeps between its slots, so its CPU
            # is its sends and receives: the kernel's work for every packet to and from the relay)
            "generator_cpu_s_per_mpkt_median": _median([round(r["generator_cpu_s"] / (r["received"] / 1e6), 2)
                                                        for r in rounds if r.get("generator_cpu_s") and r.get("received")]),
            "load_avg_1m": [r.get("load_avg_1m") for r in rounds]}


def _median(values: list[float]) -> float | None:
    return round(sorted(values)[len(values) // 2], 2) if values else None


async def _backend(kind: str, workdir: str):
    """(MediaBackend, cleanup coroutine, relay CPU-seconds function) for one relay kind."""
    if kind == "legacy-relay":
        from legacy.rtp_relay import LegacyRelay
        b = LegacyRelay("127.0.0.1", "127.0.0.1", *RELAY_PORTS)
        await b.start()
        return b, b.stop, time.process_time          # the relay runs in this process
    from refactored.rtpproxy_client import RTPProxyPool
    from refactored.rtpproxy_launcher import LocalRTPProxy
    from refactored.rtpproxy_media import RTPProxyBackend
    control = f"udp:127.0.0.1:{free_udp_port()}"
    engine = "rtpengine" if kind == "rtpengine" else "rtpproxy"
    local = LocalRTPProxy("127.0.0.1", control, *RELAY_PORTS, workdir=workdir, engine=engine)
    local.start()
    pool = RTPProxyPool([(control, 1)])
    for _ in range(50):
        await asyncio.sleep(0.2)
        if await pool.probe(pool.nodes[0]):
            break
    b = RTPProxyBackend(pool, "127.0.0.1", launcher=local)
    return b, b.stop, lambda: _proc_cpu(local.relay_pid())


def _split(c: dict) -> str:
    """'1.20 + 0.40': the server process's and its children's CPU ms per call (relay, workers)."""
    own, kids = c.get("server_process_cpu_ms_per_call"), c.get("children_cpu_ms_per_call")
    return "-" if own is None or kids is None else f"{own:.2f} + {kids:.2f}"


def plot(data: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    calls = data.get("call_setup", [])
    if calls:
        labels = [f"{c['stage'] if c['stage'] == 'kamailio' else 'stage ' + str(c['stage'])}\n{c.get('users', 0) // 1000}k users"
                  for c in calls]
        colours = {"kamailio": "#a72", "0": "#999", "1": "#4a7", "2": "#27a", "2-sippy": "#72a", UVLOOP_ROW: "#2aa",
                   PURE_ROW: "#8ac"}
        ax1.bar(range(len(calls)), [c["max_cps_under_1pct_fail"] for c in calls],
                color=[colours.get(str(c["stage"]), "#555") for c in calls])
        ax1.set_xticks(range(len(calls)), labels, fontsize=6, rotation=90)
        ax1.set_title("call setups/s (<1% failed)")
    media = data.get("media", [])
    if media:
        ax2.bar([m["relay"] for m in media], [m["max_streams_under_half_pct_loss"] for m in media],
                color=["#999", "#27a", "#a72", "#7a2"][:len(media)])
        ax2.set_title("concurrent 50 pps streams (<0.5% loss, p99 < 50 ms)")
    fig.suptitle(f"ims-migrate capacity — {data['machine']['cpu']} ({data['machine']['cores']} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _reference_and_variant_rows(kamailio: bool, uvloop_row: bool, pure_row: bool) -> tuple[list, list]:
    """The Kamailio row (before the stages) and the stage 2 variants (after them) that can run here."""
    rows: list[int | str] = ["kamailio"] if kamailio and shutil.which("kamailio") else []
    if kamailio and not rows:
        click.echo("kamailio not installed (apt-get install kamailio): reference row skipped", err=True)
    extra_rows: list[int | str] = []
    if uvloop_row:
        try:
            import uvloop  # noqa: F401
            extra_rows.append(UVLOOP_ROW)
        except ImportError:
            click.echo("uvloop not installed (pip install uvloop): its row is skipped", err=True)
    if pure_row:
        from sipcore import compiled
        if compiled.ACTIVE:
            extra_rows.append(PURE_ROW)
        else:
            click.echo(f"sipcore is {compiled.STATUS}: every row is pure Python, no {PURE_ROW} row", err=True)
    return rows, extra_rows


@click.command()
@click.option("--stages", default="0,1,2", show_default=True,
              help="stacks to measure: 0, 1, 2 and 2-sippy (stage 2 with SIGNALLING=sippy)")
@click.option("--rates", default="200,400,600,800,1000,1200", show_default=True, help="offered calls/s for SIPp")
@click.option("--kamailio-rates", default="1000,2000,3000,4000,5000", show_default=True,
              help="offered calls/s for the Kamailio row (it is SIPp-bound well above the stages)")
@click.option("--seconds", type=float, default=5.0, show_default=True, help="per call-rate step")
@click.option("--streams", default="200,300,400,500,600,700,800,1000,1200,1400,1600,1800,2000",
              show_default=True, help="concurrent media streams per step (a relay stops after "
              f"{STOP_AFTER_SATURATED_STEPS} steps in a row with >= 0.5% loss)")
@click.option("--media-seconds", type=float, default=4.0, show_default=True)
@click.option("--kamailio/--no-kamailio", default=True, show_default=True,
              help="add the Kamailio reference row (stacks/kamailio/bench.cfg) to the call setup rounds")
@click.option("--uvloop/--no-uvloop", "uvloop_row", default=True, show_default=True,
              help="add a stage 2 row with EVENT_LOOP=uvloop (when uvloop is installed)")
@click.option("--pure/--no-pure", "pure_row", default=True, show_default=True,
              help="add a stage 2 row on the pure-Python sipcore modules (IMS_COMPILED=0), beside the compiled build")
@click.option("--users", "users_axis", default="0,10000,50000", show_default=True,
              help="registered users before the call rounds (each value is a row per stage)")
@click.option("--register-rate", type=int, default=2000, show_default=True, help="offered REGISTER/s for --users")
@click.option("--relays", default="legacy-relay,rtpproxy,rtpengine", show_default=True,
              help="media relays to measure (rtpengine only when installed)")
@click.option("--generator", type=click.Choice(["c", "python"]), default="c", show_default=True,
              help="media load generator: the C rtpgen (built by setup.sh) or the Python one")
@click.option("--skip-calls", is_flag=True)
@click.option("--skip-media", is_flag=True)
@click.option("--output", default="benchmarks/results", show_default=True)
def bench(stages, rates, kamailio_rates, seconds, streams, media_seconds, kamailio, uvloop_row, pure_row, users_axis,
          register_rate, relays, generator,
          skip_calls, skip_media, output) -> None:
    """Capacity per stage, side by side: SIPp call setup rate and media relay streams."""
    from tabulate import tabulate
    os.makedirs(output, exist_ok=True)
    data = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_at_start": os.getloadavg(),
            "call_setup": [], "media": []}
    try:
        stage_list = [stack(s.strip()).name for s in stages.split(",")]
        for name in stage_list:
            if not stack(name).ims_env:
                raise ValueError(f"{name}: only our stages run here (the Kamailio row is --kamailio)")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--stages") from None
    with tempfile.TemporaryDirectory(prefix="ims-bench-") as tmp:
        if not skip_calls:
            rows, extra_rows = _reference_and_variant_rows(kamailio, uvloop_row, pure_row)
            for users in [int(u) for u in users_axis.split(",") if u != ""]:
                for st in rows + stage_list + extra_rows:
                    wd = os.path.join(tmp, f"calls-{st}-{users}")
                    os.makedirs(wd)
                    click.echo(f"call setup, {'stage ' if st != 'kamailio' else ''}{st}, {users} users ...", err=True)
                    steps = kamailio_rates if st == "kamailio" else rates
                    data["call_setup"].append(call_setup(st, [int(r) for r in steps.split(",")], seconds, wd,
                                                         users=users, register_rate=register_rate))
        if not skip_media:
            counts = [int(n) for n in streams.split(",")]
            limit = (RELAY_PORTS[1] - RELAY_PORTS[0]) // 4 if generator == "c" else MAX_MEDIA_STREAMS
            if max(counts) > limit:
                raise click.BadParameter(f"at most {limit} streams fit the bench's port plan", param_hint="--streams")
            if generator == "c" and not rtpgen_binary():
                raise click.ClickException(f"{RTPGEN} is not built: run scripts/setup.sh (needs gcc)")
            for kind in [k for k in relays.split(",") if k]:
                if kind == "rtpengine" and not shutil.which("rtpengine"):
                    click.echo("rtpengine not installed (apt-get install rtpengine-daemon): skipped", err=True)
                    continue
                click.echo(f"media relay, {kind} ({generator} generator) ...", err=True)
                data["media"].append(media_capacity(kind, counts, media_seconds, tmp, generator))
    rows = []
    for c in data["call_setup"]:
        ref = next((k for k in data["call_setup"] if k["stage"] == "kamailio" and k["users"] == c["users"]), None)
        reg = c.get("registration") or {}
        rows.append([c["stage"] if c["stage"] == "kamailio" else f"stage {c['stage']}", c["users"],
                     _register_cell(reg), c["max_cps_under_1pct_fail"], c["p50_ms"], c["p99_ms"],
                     c["server_cpu_ms_per_call"], _split(c),
                     f"{c['max_cps_under_1pct_fail'] / ref['max_cps_under_1pct_fail']:.2f}x"
                     if ref and ref["max_cps_under_1pct_fail"] else "-"])
    if rows:
        click.echo(tabulate(rows, headers=["call setup", "users", "REGISTER/s", "calls/s (<1% fail)", "p50 ms",
                                           "p99 ms", "server CPU ms/call", "process + children", "vs kamailio"]))
    python_relay = next((m for m in data["media"] if m["relay"] == "legacy-relay"), None)
    mrows = []
    for m in data["media"]:
        n, base = m["max_streams_under_half_pct_loss"], (python_relay or {}).get("max_streams_under_half_pct_loss")
        loads = [x for x in m.get("load_avg_1m", []) if x is not None]
        mrows.append([m["relay"], n, m.get("first_failing_streams") or "-", m["lat_p50_ms"], m["lat_p99_ms"],
                      m.get("relay_cpu_s_per_mpkt"), m.get("relay_cpu_s_per_mpkt_median"),
                      m.get("generator_cpu_s_per_mpkt_median"), m.get("relay_socket_drops"),
                      m.get("generator_late_slots_first_failing"), f"{n / base:.2f}x" if base else "-",
                      f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"])
    if mrows:
        click.echo(tabulate(mrows, headers=["media relay", "streams (<0.5% loss)", "first failing", "added p50 ms",
                                            "p99 ms", "relay CPU s/Mpkt", "(median)", "generator CPU s/Mpkt (median)",
                                            "relay sock drops",
                                            "gen late slots (first failing)", "vs Python relay", "load 1m"]))
    click.echo(f"machine: {data['machine']}")
    with open(os.path.join(output, "bench.json"), "w") as fh:
        json.dump(data, fh, indent=2)
    plot(data, os.path.join(output, "bench.png"))
    click.echo(f"wrote {output}/bench.json and {output}/bench.png", err=True)

