"""CPU of one REGISTER through a whole server, per stage, without SIPp and the kernel's UDP path.

    .venv/bin/python benchmarks/bench_register_path.py [--stages 0,1,2] [--users 5000] [--profile N]

Each stage's real server (``assembly.build_server``: users file, CDR writer, the default SQLite
location store, proxy core, transactions) is started in this process on free loopback ports; its UDP
socket's ``sendto`` is replaced by a list, and each user's two REGISTERs (the first answered 401,
the second with MD5 digest credentials, qop=auth, as SIPp sends them) go in through the
transport's datagram entry point. Reported per stage: CPU per REGISTER of the whole process (the
location writer and CDR threads included) over all users after a warm-up of 200, and with
``--profile N`` the N functions with the most cumulative time under cProfile on stderr (cProfile
inflates everything, so read proportions). Process CPU time hardly depends on other load on the machine,
unlike ``harness bench``'s REGISTER/s; the kernel's socket work (about a quarter of a REGISTER's
CPU on loopback) and SIPp are left out, so this is not a capacity figure. JSON on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import io
import json
import os
import pstats
import re
import socket
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WARMUP = 200


def _free_port(kind: int) -> int:
    """A port the kernel has free now (SIP and relay control: UDP; MML: TCP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Wire:
    """Stands in for the UDP socket: what the server sends is kept, the last datagrams only."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr) -> None:
        self.sent.append(data)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _register(user: str, port: int, server: str, cseq: int, auth: str = "") -> bytes:
    return (f"REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{user}-{cseq};rport\r\n"
            f"From: <sip:{user}@127.0.0.1>;tag={user}\r\nTo: <sip:{user}@127.0.0.1>\r\n"
            f"Call-ID: {user}-reg@127.0.0.1\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@127.0.0.1:{port}>\r\n"
            f"{auth}Max-Forwards: 70\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n").encode()


async def _measure(stage: int, users: int, workdir: str, profile: int) -> dict:
    import assembly
    from sipcore.config import Config
    sip, mml, control = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    names = [f"u{i:06d}" for i in range(users + WARMUP)]
    with open(os.path.join(workdir, "users.json"), "w") as fh:
        json.dump({u: {"username": u, "password": "1234", "status": "ACTIVE"} for u in names}, fh)
    env = dict(os.environ, SERVER_IP="127.0.0.1", SERVER_PORT=str(sip), MML_PORT=str(mml), MML_TOKEN="bench-token-1",
               USERS_FILE=os.path.join(workdir, "users.json"), CDR_DIR=os.path.join(workdir, "CDR"),
               LOG_DIR=os.path.join(workdir, "logs"), CONFIG_FILE=os.path.join(workdir, "none.json"),
               BLACKLIST_FILE=os.path.join(workdir, "bl"), RTPPROXY_UDP_PORT=str(control),
               RTP_PORT_MIN="20000", RTP_PORT_MAX="20098",     # the relay's range: no call, nothing bound
               LOG_LEVEL="WARNING", AUTH_INVITE="0", RATE_LIMIT_FAILS="100000")
    server = assembly.build_server(stage, Config.from_env(env))
    await server.start()
    transport = server.transport
    wire, real = _Wire(), transport._udp
    transport._udp = wire
    target = f"127.0.0.1:{sip}"
    failures = 0

    async def one(i: int, user: str) -> None:
        nonlocal failures
        port = 40000 + i % 20000
        wire.sent.clear()
        transport._incoming(_register(user, port, target, 1), ("127.0.0.1", port), "udp", None, 0.0)
        await asyncio.sleep(0)
        challenge = next((d for d in wire.sent if d.startswith(b"SIP/2.0 401")), b"").decode()
        m = re.search(r'nonce="([^"]+)", algorithm=MD5', challenge)
        if m is None:
            failures += 1
            return
        uri = f"sip:{target}"
        response = _md5(f"{_md5(f'{user}:sip.local:1234')}:{m.group(1)}:00000001:0a4f113b:auth:{_md5(f'REGISTER:{uri}')}")
        auth = (f'Authorization: Digest username="{user}", realm="sip.local", nonce="{m.group(1)}", uri="{uri}", '
                f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="0a4f113b"\r\n')
        wire.sent.clear()
        transport._incoming(_register(user, port, target, 2, auth), ("127.0.0.1", port), "udp", None, 0.0)
        await asyncio.sleep(0)
        if not any(d.startswith(b"SIP/2.0 200") for d in wire.sent):
            failures += 1

    try:
        for i, user in enumerate(names[:WARMUP]):
            await one(i, user)
        profiler = cProfile.Profile() if profile else None
        c0, w0 = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        for i, user in enumerate(names[WARMUP:], WARMUP):
            await one(i, user)
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    finally:
        transport._udp = real
        await server.stop()
    row = {"stage": stage, "users": users, "failed": failures,
           "cpu_ms_per_register": round(cpu * 1000 / users, 3), "wall_ms_per_register": round(wall * 1000 / users, 3),
           "profiled": bool(profile)}
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(profile)
        print(f"--- stage {stage}, cProfile, top {profile} by cumulative time", file=sys.stderr)
        print(out.getvalue(), file=sys.stderr)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default="0,1,2")
    ap.add_argument("--users", type=int, default=5000, help="REGISTER pairs measured per stage (after 200 warm-up)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile: print the top N functions")
    args = ap.parse_args(argv)
    from sipcore import gc_policy
    gc_policy.apply()                          # as the servers run
    rows = []
    for stage in [int(s) for s in args.stages.split(",") if s]:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(asyncio.run(_measure(stage, args.users, tmp, args.profile)))
    print(json.dumps({"rows": rows, "load": os.getloadavg()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
