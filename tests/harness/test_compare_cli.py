"""`harness compare --stage 2` end to end: table, JSON, exit status; and a deliberate regression."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.privileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="NAT labs need root (CI runs as root)")]
HARNESS = [sys.executable, "-m", "harness"]
HERE = os.path.dirname(os.path.abspath(__file__))


def test_compare_stage2_go(tmp_path):
    out = subprocess.run(HARNESS + ["compare", "--stage", "2", "--scenario", "nat-[kr]e*", "-n", "4",
                                    "--output", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "scenario" in out.stdout and "verdict" in out.stdout and "GO: nothing regressed" in out.stdout
    assert "nat-keepalive" in out.stdout and "improved" in out.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["go"] is True
    verdicts = {s["scenario"]: s["verdict"] for s in report["scenarios"]}
    assert verdicts == {"nat-keepalive": "improved", "nat-rebind": "improved"}
    assert (tmp_path / "report.xml").read_text().startswith("<?xml")
    assert list((tmp_path / "nat-rebind" / "stage2-run10").glob("nat_a-public.pcap"))
    assert (tmp_path / "nat-rebind" / "stage0-run0" / "server.log").stat().st_size > 0
    html = (tmp_path / "report.html").read_text()          # rendered and checked in test_html_report.py
    assert "nat-keepalive" in html and html.count('<svg class="ladder"') == 6    # 2 scenarios x 3 runs


def test_injected_regression_is_caught(tmp_path):
    out = subprocess.run(HARNESS + ["compare", "--stage", "2", "--scenario", "both-cone", "-n", "3", "--format", "json",
                                    "--candidate-entry", os.path.join(HERE, "broken_stage.py"),
                                    "--output", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["go"] is False and "both-cone" in report["summary"]
    [s] = report["scenarios"]
    assert s["verdict"] == "REGRESSED" and any("audio" in r for r in s["reasons"])


def test_compare_sippy_signalling_against_stage2(tmp_path):
    """Stage 2 on the Sippy B2BUA as its own candidate, against sipcore's stage 2 (hairpin NAT and a
    re-INVITE hold): B2BUA tags/Call-IDs do not count as differences, nothing regresses."""
    out = subprocess.run(HARNESS + ["compare", "--stage", "2-sippy", "--baseline", "2", "--scenario", "h*", "-n", "3",
                                    "--format", "json", "--output", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    verdicts = {s["scenario"]: s["verdict"] for s in report["scenarios"]}
    assert set(verdicts) == {"hairpin", "hold-resume"} and set(verdicts.values()) <= {"same", "improved"}, verdicts
    assert all(s["audio"] == "two-way" for s in report["scenarios"])
    log = (tmp_path / "hold-resume" / "stage2-sippy-run10" / "server.log").read_text()
    assert "-> Sippy B2BUA" in log
