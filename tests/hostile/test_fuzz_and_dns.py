"""Hostile traffic against every stage from inside a lab network namespace (tests/hostile/attacks.py):
the hypothesis datagram fuzzer over UDP and TCP (a few thousand messages by default, >= 100,000 in
the ``slow`` run) and the black-hole resolver case (OPTIONS latency < 50 ms while messages naming
hosts arrive and the namespace's DNS server never answers)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from netlab import open_lab
from netlab.topology import Topology
from tests.stack import PYTHON, ROOT

pytestmark = [pytest.mark.privileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)")]

BLACKHOLE_DNS = ("import socket, sys\n"
                 "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                 "s.bind(('0.0.0.0', 53))\n"
                 "print('ready', flush=True)\n"
                 "while True:\n"
                 "    data, addr = s.recvfrom(4096)\n"
                 "    print('query', len(data), flush=True)\n")


def _attack(what: str, stage: int, workdir: str, args: list[str], timeout: float) -> tuple[dict, int]:
    """Run tests.hostile.attacks in host 'sip' of a fresh lab whose resolver is a black hole.
    Returns (figures, DNS queries the black hole swallowed)."""
    topo = Topology.from_dict({"name": "hostile", "segments": {"lab": "10.213.0.0/24"},
                               "hosts": {"sip": {"addresses": {"lab": "10.213.0.2"}},
                                         "dns": {"addresses": {"lab": "10.213.0.53"}}}})
    with open_lab(topo) as lab:
        etc = f"/etc/netns/{lab.ns('sip')}"
        os.makedirs(etc, exist_ok=True)
        try:
            with open(os.path.join(etc, "resolv.conf"), "w") as fh:
                fh.write("nameserver 10.213.0.53\noptions timeout:5 attempts:3\n")
            hole = lab.spawn("dns", [PYTHON, "-u", "-c", BLACKHOLE_DNS])
            assert hole.stdout.readline().strip() == "ready"
            proc = lab.spawn("sip", [PYTHON, "-m", "tests.hostile.attacks", what, "--stage", str(stage),
                                     "--workdir", workdir, *args], cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=ROOT), stderr=subprocess.STDOUT)
            out, _ = proc.communicate(timeout=timeout)
            lab._kill_process(hole)
            queries = sum(1 for line in hole.stdout if line.startswith("query"))
        finally:
            shutil.rmtree(etc, ignore_errors=True)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"attack driver failed:\n{out[-4000:]}"
    return json.loads(lines[-1][7:]), queries


def _fuzz(stage: int, tmp_path, batches: int, batch_size: int, timeout: float) -> dict:
    figures, _ = _attack("fuzz", stage, str(tmp_path), ["--batches", str(batches), "--batch-size", str(batch_size)],
                         timeout)
    print(f"FIGURES fuzz stage {stage}: {json.dumps(figures)}")
    assert figures["error"] is None, figures["error"]
    assert figures["batches"] >= batches and figures["messages"] >= batches * batch_size * 0.95
    assert figures["deaf_periods"] == 0 and figures["tracebacks"] == 0 and figures["loop_stalls"] == 0
    assert figures["problems"] == [] and figures["alive_at_end"] and figures["exit_code"] == 0
    assert figures["tcp"] > 0 and figures["dropped_lines"] > 0
    return figures


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_datagram_fuzzer(stage, tmp_path):
    _fuzz(stage, tmp_path, batches=28, batch_size=25, timeout=300)    # 700 a stage + the explicit corpus


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_datagram_fuzzer_long(stage, tmp_path):
    """>= 100,000 messages over the three stages (34,000 each)."""
    _fuzz(stage, tmp_path, batches=850, batch_size=40, timeout=3600)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_blackhole_resolver_does_not_stall_the_loop(stage, tmp_path):
    figures, queries = _attack("dns", stage, str(tmp_path), ["--seconds", "3"], timeout=120)
    print(f"FIGURES dns stage {stage}: {json.dumps(figures)} black-hole queries {queries}")
    assert queries > 0                      # the server really asked the (black-hole) resolver
    # Nothing held the server's loop for 50 ms (its own detector, IMS_LOOP_STALL_MS=50, run-queue
    # wait of this shared machine not counted). Seen from outside: OPTIONS answered in < 50 ms
    # (p95) -- on a loaded machine, no slower than its own no-attack baseline plus 25 ms -- and
    # never a second (a synchronous lookup of a black-holed name stalls every message for 15 s).
    assert figures["probes"] > 30 and figures["loop_stalls"] == 0, figures
    assert figures["p95_rtt_ms"] < max(50, figures["baseline_p95_ms"] + 25), figures
    assert figures["max_rtt_ms"] < 1000, figures
    assert figures["tracebacks"] == 0 and figures["loop_stalls"] == 0 and figures["exit_code"] == 0
    assert figures["name_drops"] > 0
