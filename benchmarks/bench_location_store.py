"""Location store cost beside the in-memory registrar (one process, sans-IO registrar, real SQLite).

    .venv/bin/python benchmarks/bench_location_store.py [--users 10000] [--seconds 2] [--redis redis://127.0.0.1:6379/9]

For each store (memory, sqlite in a temporary directory, and redis when --redis names a server it
may flush) it registers N users, then reports REGISTER/s (parse + Registrar.handle_register +
response, refreshes of random users; wall clock of the calling thread and CPU of the whole
process, the writer thread included), lookup/s (what every INVITE does), and the time the writer
needs to drain after the REGISTER burst; then the process CPU per REGISTER when 2000 of them come
paced at 2000/s (as a server gets them: the writer thread is woken between them). JSON on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from bench_registrar import register_bytes, source_of  # noqa: E402
from sipcore.location_store import open_location_store  # noqa: E402
from sipcore.message import parse_message  # noqa: E402
from sipcore.nat_helper import NATHelper  # noqa: E402
from sipcore.registrar import Registrar  # noqa: E402
from sipcore.stage_policy import StagePolicy  # noqa: E402


def measure(spec: str, n: int, seconds: float) -> dict:
    store = open_location_store(spec)
    policy = StagePolicy(2, NATHelper("198.51.100.1", ["192.168.0.0/16"]))
    reg = Registrar(contact_policy=policy.register_contact, max_expires=3600, store=store)
    now = time.time()
    for i in range(n):
        reg.handle_register(parse_message(register_bytes(i)), source_of(i), "udp", now)
    flush = getattr(store, "flush", None)
    if flush:
        flush(120)
    rnd = random.Random(n)
    picks = [rnd.randrange(n) for _ in range(2000)]
    count, passes, wall, c0 = 0, 0, 0.0, time.process_time()
    while wall < seconds:
        passes += 1
        msgs = [(i, register_bytes(i, cseq=1 + passes)) for i in picks]     # refreshes (CSeq grows)
        w0 = time.perf_counter()
        for i, data in msgs:
            reg.handle_register(parse_message(data), source_of(i), "udp", now).response.to_bytes()
        wall += time.perf_counter() - w0
        count += len(msgs)
    d0 = time.perf_counter()
    if flush:
        flush(300)
    drain = time.perf_counter() - d0
    cpu = time.process_time() - c0
    # paced as a server sees them (2000/s in steps of 1 ms): what one REGISTER costs the process,
    # the writer thread included, when changes do not arrive in one burst
    paced = [(i, register_bytes(i, cseq=2 + passes)) for i in picks]
    p0, t = time.process_time(), time.perf_counter()
    for k in range(0, len(paced), 2):
        for i, data in paced[k:k + 2]:
            reg.handle_register(parse_message(data), source_of(i), "udp", now).response.to_bytes()
        t += 0.001
        time.sleep(max(0.0, t - time.perf_counter()))
    if flush:
        flush(300)
    paced_cpu_us = (time.process_time() - p0) * 1e6 / len(paced)
    users = [f"u{rnd.randrange(n):06d}" for _ in range(5000)]
    lk, l0 = 0, time.perf_counter()
    while time.perf_counter() - l0 < seconds:
        for u in users:
            reg.lookup(u, now)
        lk += len(users)
    lookup = lk / (time.perf_counter() - l0)
    close = getattr(store, "close", None)
    if close:
        close()
    return {"store": spec.split(":")[0], "users": n, "register_per_s_wall": round(count / wall),
            "register_per_s_cpu": round(count / cpu), "writer_drain_s": round(drain, 3),
            "cpu_us_per_register_paced_2000_per_s": round(paced_cpu_us, 1),
            "lookup_per_s": round(lookup)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--redis", default=None, help="redis://HOST:PORT/N to include (its keys ims:loc:* are replaced)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        specs = ["memory", "sqlite:" + os.path.join(tmp, "location.sqlite")] + ([args.redis] if args.redis else [])
        rows = [measure(s, args.users, args.seconds) for s in specs]
    base = rows[0]
    for r in rows:
        r["register_ratio_to_memory"] = round(r["register_per_s_wall"] / base["register_per_s_wall"], 2)
        r["lookup_ratio_to_memory"] = round(r["lookup_per_s"] / base["lookup_per_s"], 2)
    print(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
