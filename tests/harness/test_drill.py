"""`harness drill`: cutover 1->2 and rollback with pm2-style restarts in a NAT lab keep the call in
progress (a re-INVITE moving the caller's media after the restart still goes through the relay,
RTP both ways, BYE relayed, its CDR row a normal end) and take a new call without a new REGISTER;
0->1 loses the call in progress (the Python relay dies with the process) and says so with exit
status 1; a call set up on 2-sippy is reported lost with the reason, behind symmetric NATs."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.privileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="NAT labs need root (CI runs as root)")]
HARNESS = [sys.executable, "-m", "harness"]


def drill(tmp_path, a, b, *extra):
    out = subprocess.run(HARNESS + ["drill", "--from", str(a), "--to", str(b), "--json", "--output",
                                    str(tmp_path / f"drill{a}{b}"), *extra], capture_output=True, text=True, timeout=300)
    return out, json.loads(out.stdout) if out.stdout.strip().startswith("[") else None


def test_drill_1_to_2_and_back_loses_nothing(tmp_path):
    out, phases = drill(tmp_path, 1, 2)
    assert out.returncode == 0, out.stdout + out.stderr
    assert [p["name"] for p in phases] == ["cutover", "rollback"]
    for p in phases:
        assert p["lost"] == 0 and 0 < p["outage_seconds"] < 10, p
        ongoing, incoming = p["calls"]
        assert ongoing["kept"] and incoming["kept"], p
        got, sent = map(int, ongoing["details"]["after_restart_alice_to_bob"].split(" of "))
        assert sent > 50 and got >= 0.5 * sent
        assert ongoing["details"]["bye"] == 200 and ongoing["details"]["cdr"] == ["ENDED/Normal"]
        assert ongoing["details"]["reinvite"] == 200
        assert ongoing["details"]["reinvite_answer_media"].startswith(("203.0.113.", "198.51.100."))   # the relay
    assert not os.path.exists(tmp_path / "drill12" / "install" / "CDR" / ".calls-in-progress.json")


def test_drill_0_to_1_reports_the_lost_call(tmp_path):
    out, phases = drill(tmp_path, 0, 1)
    assert out.returncode == 1, out.stdout + out.stderr
    cutover = phases[0]
    assert cutover["lost"] >= 1
    ongoing, incoming = cutover["calls"]
    assert not ongoing["kept"] and any("audio" in r for r in ongoing["reasons"])
    assert incoming["kept"]                                   # registrations survived the restart


def test_drill_2_sippy_behind_symmetric_nats_reports_the_sippy_call_lost(tmp_path):
    out, phases = drill(tmp_path, 2, "2-sippy", "--nat", "symmetric")
    assert out.returncode == 1, out.stdout + out.stderr
    cutover, rollback = phases
    assert (cutover["from_stack"], cutover["to_stack"]) == (2, "2-sippy") and cutover["lost"] == 0, cutover
    ongoing, incoming = cutover["calls"]           # a sipcore call handed over to the Sippy process
    assert ongoing["details"]["reinvite"] == 200 and ongoing["details"]["cdr"] == ["ENDED/Normal"]
    ongoing, incoming = rollback["calls"]
    assert not ongoing["kept"] and "Sippy B2BUA" in ongoing["reasons"][0], ongoing
    assert ongoing["details"]["cdr"] == ["ENDED/SERVER_SHUTDOWN"]
    assert incoming["kept"], rollback
    log = open(tmp_path / "drill22-sippy" / "server-2.log").read()
    assert "signalling: Sippy B2BUA" in log                    # the 2-sippy process really ran Sippy


def test_drill_refuses_stacks_it_cannot_swap(tmp_path):
    """Only the project's own entrypoints can be copied over run.py: a reference stack is refused
    with the reason (exit status 2), before any lab is built."""
    out = subprocess.run(HARNESS + ["drill", "--from", "kamailio", "--to", "2", "--output", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--from" in out.stderr and "project's own entrypoints" in out.stderr, out.stderr
    assert not os.path.exists(tmp_path / "d")
