"""Registrar cost against the number of registered users (one core, one process, sans-IO).

    .venv/bin/python benchmarks/bench_registrar.py [--users 0,10000,50000] [--seconds 2] [--json PATH]

For each population N (one contact per user, stage 2's NAT contact policy) it reports:
Rates are per CPU-second of this process (steadier than wall time when the machine is shared).
- REGISTER/s: parse + Registrar.handle_register for refreshes of random registered users
  (and for new users when N is 0), the response serialised;
- lookup/s: Registrar.lookup of a random user (what every INVITE does);
- bytes per binding: tracemalloc growth of the registrar while it takes N new users, divided by N
  (everything the store keeps: binding, strings, indexes, expiry wheel);
- bytes left after expiry: the same figure once every binding has expired (memory returned).
What it leaves out: digest authentication (an MD5 per REGISTER), the transaction layer, sockets and
the CDR row each REGISTER writes; `harness bench --users` measures those on the real server.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sipcore.message import forget_recent_parses, parse_message  # noqa: E402
from sipcore.nat_helper import NATHelper  # noqa: E402
from sipcore.registrar import Registrar  # noqa: E402
from sipcore.stage_policy import StagePolicy  # noqa: E402


def register_bytes(i: int, cseq: int = 1, expires: int = 3600) -> bytes:
    user = f"u{i:06d}"
    ip = f"192.168.{(i >> 8) & 255}.{i & 255}"
    return ("REGISTER sip:sip.local SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK{i}x{cseq};rport\r\n"
            f"Max-Forwards: 70\r\nTo: <sip:{user}@sip.local>\r\nFrom: <sip:{user}@sip.local>;tag=f{i}\r\n"
            f"Call-ID: reg-{i}-a84b4c76e66710@{ip}\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:{user}@{ip}:5060;transport=udp;ob>\r\nExpires: {expires}\r\n"
            "User-Agent: bench-phone/1.0\r\nContent-Length: 0\r\n\r\n").encode()


def source_of(i: int) -> tuple[str, int]:
    return ("203.0.113.7", 10000 + i % 50000)


def make_registrar() -> Registrar:
    policy = StagePolicy(2, NATHelper("198.51.100.1", ["192.168.0.0/16"]))
    return Registrar(contact_policy=policy.register_contact, max_expires=3600)


def forget_caches(reg: Registrar) -> None:
    """The bounded parse and NAT caches: a constant of the process, not memory per binding."""
    forget_recent_parses()
    reg.contact_policy.__self__.nat.forget_classifications()


def populate(reg: Registrar, n: int, now: float, expires: int = 3600) -> None:
    for i in range(n):
        out = reg.handle_register(parse_message(register_bytes(i, expires=expires)), source_of(i), "udp", now)
        assert out.response.status == 200


def memory_per_binding(n: int) -> tuple[float, float]:
    """(bytes per binding while registered, bytes per binding left after they all expired).

    The parser's bounded caches (sipcore.message: up to 8192 parsed Via/From/To/Contact values
    each, emptied when full) are a constant of the process (a few MB), not memory per binding: they
    are emptied before each reading."""
    gc.collect()
    tracemalloc.start()                       # before the warm-up: evicted cache entries count as freed
    try:
        warm = make_registrar()
        populate(warm, 10000, now=1000.0, expires=600)
        warm.expire(1000.0 + 601)
        del warm
        reg = make_registrar()
        forget_caches(reg)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        populate(reg, n, now=1000.0, expires=600)
        forget_caches(reg)
        gc.collect()
        full = tracemalloc.get_traced_memory()[0]
        assert reg.count(1000.0) == n
        reg.expire(1000.0 + 601)
        forget_caches(reg)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        assert reg.count(1000.0 + 601) == 0
    finally:
        tracemalloc.stop()
    return (full - before) / max(n, 1), (after - before) / max(n, 1)


def rates(n: int, seconds: float) -> dict:
    reg = make_registrar()
    now = time.time()
    populate(reg, n, now)
    rnd = random.Random(n)
    pool = max(n, 1)
    picks = [rnd.randrange(pool) for _ in range(2000)]
    count, passes, cpu = 0, 0, 0.0
    while cpu < seconds:
        # CSeq keeps rising across passes (a prefix per pass overflowed 2**31 on a fast machine)
        msgs = [(i, register_bytes(i, cseq=2 + passes * len(picks) + k)) for k, i in enumerate(picks)]
        passes += 1
        t0 = time.process_time()
        for i, data in msgs:
            out = reg.handle_register(parse_message(data), source_of(i), "udp", now)
            out.response.to_bytes()
        cpu += time.process_time() - t0
        count += len(msgs)
    register_rate = count / cpu
    users = [f"u{rnd.randrange(pool):06d}" for _ in range(5000)]
    count, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        for u in users:
            reg.lookup(u, now)
        count += len(users)
    lookup_rate = count / (time.process_time() - t0)
    return {"users": n, "register_per_s": round(register_rate), "lookup_per_s": round(lookup_rate)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="0,10000,50000")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    out: dict = {"register_per_cpu_s": {}, "lookup_per_cpu_s": {}, "memory": []}
    for n in [int(x) for x in args.users.split(",")]:
        row = rates(n, args.seconds)
        out["register_per_cpu_s"][str(n)] = row["register_per_s"]
        out["lookup_per_cpu_s"][str(n)] = row["lookup_per_s"]
        if n:
            per, left = memory_per_binding(n)
            out["memory"].append({"users": n, "bytes_per_binding": round(per),
                                  "bytes_per_binding_after_expiry": round(left, 1)})
    out["leaves out"] = "digest auth, transactions, sockets, CDR rows (harness bench --users measures those)"
    out["load"] = os.getloadavg()
    out["python"] = platform.python_version()
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    return 0

if __name__ == "__main__":
    sys.exit(main())
