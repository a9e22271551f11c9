"""`harness bench`: per-stage capacity on loopback, side by side in one invocation.

* call setup: SIPp (Debian sip-tester) as an independent UAC and UAS through each stage's server
  (INVITE/100/180/200/ACK/BYE); the highest offered rate with <1% failed calls, and the p50/p99
  setup latency SIPp measured (INVITE -> 200).
* media relay: concurrent bidirectional 50 pps streams through stage 0's Python relay and through
  RTPProxy (stages 1/2); the highest stream count with <0.5% loss while the 50 pps schedule is
  kept and the added p99 latency stays under 50 ms. The generator is Python too: it shares its
  process with the Python relay (as the SIP server does in production), RTPProxy runs apart.

Results are printed as a table and written as JSON plus a PNG plot next to it.
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

from harness.rtp_stream import free_udp_port
from harness.stacks import STACKS, stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Port plan, all in 10000-32766: below Linux's ephemeral range (32768-60999), where any client
# socket on the machine could already hold a port (a media round once failed to bind 52xxx), and
# clear of well-known service ports. It overlaps the test suite's ports: do not run both at once
# (the figures would be wrong anyway).
CALL_SETUP_BASE = 10000                  # + 2000 per stack (0, 1, 2, 2-sippy): SIP, MML, rtpproxy, RTP range
MEDIA_ENDPOINT_BASE = 16000              # 4 ports per stream (two RTP/RTCP endpoints)
RELAY_PORTS = (23000, 32766)             # the relay's own ports, 4 per stream
MAX_MEDIA_STREAMS = (RELAY_PORTS[0] - MEDIA_ENDPOINT_BASE) // 4


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "sipp": _sipp_version()}


def _sipp_version() -> str | None:
    if not shutil.which("sipp"):
        return None
    out = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout
    return next((l.strip() for l in out.splitlines() if "SIPp" in l), "sipp")


class BenchServer:
    def __init__(self, stage: int | str, workdir: str, base: int):
        self.stage, self.workdir, self.port = stage, workdir, base
        with open(os.path.join(workdir, "users.json"), "w") as fh:
            json.dump({u: {"username": u, "password": "1234", "status": "ACTIVE"} for u in ("1001", "1002")}, fh)
        self.env = dict(os.environ, SERVER_IP="127.0.0.1", SERVER_PORT=str(base), MML_PORT=str(base + 1),
                        MML_TOKEN="bench-token-1", USERS_FILE=os.path.join(workdir, "users.json"),
                        CDR_DIR=os.path.join(workdir, "CDR"), LOG_DIR=os.path.join(workdir, "logs"),
                        CONFIG_FILE=os.path.join(workdir, "none.json"), BLACKLIST_FILE=os.path.join(workdir, "bl"),
                        RTPPROXY_UDP_PORT=str(base + 2), RTP_PORT_MIN=str(base + 500),
                        RTP_PORT_MAX=str(base + 1998), LOG_LEVEL="WARNING", AUTH_INVITE="0",
                        RATE_LIMIT_FAILS="100000", PYTHONPATH=ROOT, **stack(stage).env)
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, stack(self.stage).entry)], cwd=self.workdir,
                                     env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("ims-migrate ") and " ready on " in line:
                return self
        raise RuntimeError(f"stage {self.stage} server did not start:\n" + "".join(lines[-10:]))

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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


def call_setup(stage: int | str, rates: list[int], seconds: float, workdir: str) -> dict:
    if not shutil.which("sipp"):
        raise click.ClickException("SIPp is not installed (apt-get install sip-tester)")
    base = CALL_SETUP_BASE + list(STACKS).index(str(stage)) * 2000
    results = []
    with BenchServer(stage, workdir, base) as srv:
        uas_port = base + 20
        _register(srv.port, "1002", uas_port)
        uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-bg", "-nostdin"],
                               cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            for rate in rates:
                total = max(1, int(rate * seconds))
                for f in glob.glob(os.path.join(workdir, "uac*_rtt.csv")):
                    os.unlink(f)
                t0 = time.monotonic()
                out = subprocess.run(["sipp", "-sn", "uac", f"127.0.0.1:{srv.port}", "-s", "1002", "-i", "127.0.0.1",
                                      "-p", str(base + 30), "-r", str(rate), "-m", str(total), "-l", str(max(50, rate * 2)),
                                      "-trace_rtt", "-rtt_freq", "1", "-timeout", str(int(seconds + 30)),
                                      "-recv_timeout", "8000", "-nostdin", "-trace_stat", "-fd", "1"],
                                     cwd=workdir, capture_output=True, text=True, timeout=seconds + 90)
                elapsed = time.monotonic() - t0
                stats = _sipp_stats(workdir)
                rtts = _sipp_rtts(workdir)
                ok, failed = stats.get("SuccessfulCall(C)", 0), stats.get("FailedCall(C)", total)
                results.append({"offered_cps": rate, "calls": total, "successful": ok, "failed": failed,
                                "failure_ratio": round(failed / max(1, ok + failed), 4),
                                "achieved_cps": round(ok / elapsed, 1) if elapsed else 0,
                                "setup_p50_ms": _pct(rtts, 50), "setup_p99_ms": _pct(rtts, 99),
                                "sipp_exit": out.returncode})
        finally:
            uas.terminate()
            subprocess.run(["pkill", "-f", f"sipp -sn uas -i 127.0.0.1 -p {uas_port}"], capture_output=True)
    passing = [r for r in results if r["failure_ratio"] < 0.01 and r["successful"] > 0]
    best = max(passing, key=lambda r: r["offered_cps"]) if passing else None
    return {"stage": stage, "runs": results, "max_cps_under_1pct_fail": best["offered_cps"] if best else 0,
            "p50_ms": best["setup_p50_ms"] if best else None, "p99_ms": best["setup_p99_ms"] if best else None}


def _sipp_stats(workdir: str) -> dict:
    files = sorted(glob.glob(os.path.join(workdir, "uac_*_.csv")), key=os.path.getmtime)
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
            pass
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


def media_round_passes(r: dict) -> bool:
    """<0.5% loss, the 50 pps schedule kept (>=95% of nominal packets/s), added p99 latency < 50 ms."""
    return (r["loss"] < 0.005 and r.get("offered_pps", 0) >= 0.95 * r.get("nominal_pps", 0)
            and r["lat_p99_ms"] is not None and r["lat_p99_ms"] < 50)


def media_capacity(kind: str, counts: list[int], seconds: float, workdir: str) -> dict:
    """Run the media rounds in a subprocess so the generator and the relay do not share an event
    loop with anything else (the Python relay itself runs in the generator's process, as it does in
    the stage-0 server)."""
    code = f"""
import asyncio, json, sys
sys.path.insert(0, {ROOT!r})
from harness.bench import MEDIA_ENDPOINT_BASE, _media_round, _backend
async def main():
    backend, cleanup = await _backend({kind!r}, {workdir!r})
    out = []
    try:
        for n in {counts!r}:
            out.append(await _media_round(backend, n, {seconds!r}, MEDIA_ENDPOINT_BASE))
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
    return {"relay": kind, "rounds": rounds, "max_streams_under_half_pct_loss": best["streams"] if best else 0,
            "lat_p50_ms": best["lat_p50_ms"] if best else None, "lat_p99_ms": best["lat_p99_ms"] if best else None}


async def _backend(kind: str, workdir: str):
    if kind == "legacy-relay":
        from legacy.rtp_relay import LegacyRelay
        b = LegacyRelay("127.0.0.1", "127.0.0.1", *RELAY_PORTS)
        await b.start()
        return b, b.stop
    from refactored.rtpproxy_launcher import LocalRTPProxy
    from refactored.rtpproxy_client import RTPProxyPool
    from refactored.rtpproxy_media import RTPProxyBackend
    control = f"udp:127.0.0.1:{free_udp_port()}"
    local = LocalRTPProxy("127.0.0.1", control, *RELAY_PORTS, workdir=workdir)
    local.start()
    pool = RTPProxyPool([(control, 1)])
    for _ in range(50):
        await asyncio.sleep(0.2)
        if await pool.probe(pool.nodes[0]):
            break
    b = RTPProxyBackend(pool, "127.0.0.1", launcher=local)
    return b, b.stop


def plot(data: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    calls = data.get("call_setup", [])
    if calls:
        ax1.bar([f"stage {c['stage']}" for c in calls], [c["max_cps_under_1pct_fail"] for c in calls],
                color=["#999", "#4a7", "#27a"][:len(calls)])
        ax1.set_title("call setups/s (<1% failed)")
    media = data.get("media", [])
    if media:
        ax2.bar([m["relay"] for m in media], [m["max_streams_under_half_pct_loss"] for m in media], color=["#999", "#27a"])
        ax2.set_title("concurrent 50 pps streams (<0.5% loss, p99 < 50 ms)")
    fig.suptitle(f"ims-migrate capacity — {data['machine']['cpu']} ({data['machine']['cores']} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


@click.command()
@click.option("--stages", default="0,1,2", show_default=True,
              help="stacks to measure: 0, 1, 2 and 2-sippy (stage 2 with SIGNALLING=sippy)")
@click.option("--rates", default="100,200,300,400,500,600", show_default=True, help="offered calls/s for SIPp")
@click.option("--seconds", type=float, default=5.0, show_default=True, help="per call-rate step")
@click.option("--streams", default="200,400,600,800,1200,1600", show_default=True, help="concurrent media streams per step")
@click.option("--media-seconds", type=float, default=4.0, show_default=True)
@click.option("--skip-calls", is_flag=True)
@click.option("--skip-media", is_flag=True)
@click.option("--output", default="benchmarks/results", show_default=True)
def bench(stages, rates, seconds, streams, media_seconds, skip_calls, skip_media, output) -> None:
    """Capacity per stage, side by side: SIPp call setup rate and media relay streams."""
    from tabulate import tabulate
    os.makedirs(output, exist_ok=True)
    data = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "call_setup": [], "media": []}
    try:
        stage_list = [stack(s.strip()).name for s in stages.split(",")]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--stages") from None
    with tempfile.TemporaryDirectory(prefix="ims-bench-") as tmp:
        if not skip_calls:
            for st in stage_list:
                wd = os.path.join(tmp, f"calls{st}")
                os.makedirs(wd)
                click.echo(f"call setup, stage {st} ...", err=True)
                data["call_setup"].append(call_setup(st, [int(r) for r in rates.split(",")], seconds, wd))
        if not skip_media:
            counts = [int(n) for n in streams.split(",")]
            if max(counts) > MAX_MEDIA_STREAMS:
                raise click.BadParameter(f"at most {MAX_MEDIA_STREAMS} streams fit the bench's port plan",
                                         param_hint="--streams")
            for kind in ("legacy-relay", "rtpproxy"):
                click.echo(f"media relay, {kind} ...", err=True)
                data["media"].append(media_capacity(kind, counts, media_seconds, tmp))
    rows = [[f"stage {c['stage']}", c["max_cps_under_1pct_fail"], c["p50_ms"], c["p99_ms"]] for c in data["call_setup"]]
    if rows:
        base = data["call_setup"][0]["max_cps_under_1pct_fail"] or 1
        for r in rows:
            r.append(f"{r[1] / base:.2f}x")
        click.echo(tabulate(rows, headers=["call setup", "calls/s (<1% fail)", "p50 ms", "p99 ms", "vs first"]))
    mrows = [[m["relay"], m["max_streams_under_half_pct_loss"], m["lat_p50_ms"], m["lat_p99_ms"]] for m in data["media"]]
    if mrows:
        base = mrows[0][1] or 1
        for r in mrows:
            r.append(f"{r[1] / base:.2f}x")
        click.echo(tabulate(mrows, headers=["media relay", "streams (<0.5% loss)", "added p50 ms", "p99 ms", "vs first"]))
    click.echo(f"machine: {data['machine']}")
    with open(os.path.join(output, "bench.json"), "w") as fh:
        json.dump(data, fh, indent=2)
    plot(data, os.path.join(output, "bench.png"))
    click.echo(f"wrote {output}/bench.json and {output}/bench.png", err=True)

