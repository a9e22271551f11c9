"""`harness bench --users`: SIPp registers users through a real stage-2 server (digest answered);
the bench counts completed registrations only, and every one reaches the location store file."""
from __future__ import annotations

import os
import sqlite3
import time

from harness.bench import BenchServer, bench_users, register_users
from tests.stack import FreePorts


def _stored(path: str) -> set[str]:
    if not os.path.exists(path):
        return set()
    conn = sqlite3.connect(path)
    try:
        return {aor for (aor,) in conn.execute("SELECT aor FROM location")}
    finally:
        conn.close()


def test_register_users_counts_completed_registrations_and_stores_them(tmp_path):
    ports = FreePorts()
    n = 300
    with BenchServer(2, str(tmp_path), ports.sip, users=n) as srv:
        reg = register_users(srv.port, n, 300, str(tmp_path), ports.ua[0], srv.proc.pid)
        assert reg["registered"] == n and reg["failed"] == 0, reg
        assert 0 < reg["register_per_s"] <= 300 * 1.2
        assert reg["server_cpu_ms_per_register"] is not None and reg["server_cpu_ms_per_register"] > 0
        want = {f"sip:{u}@127.0.0.1" for u in bench_users(n)}
        path = os.path.join(str(tmp_path), "location.sqlite")
        deadline = time.monotonic() + 5              # written by the store's thread within ~0.1 s
        while not want <= _stored(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert want <= _stored(path)
