"""Stacks the project did not write, in real NAT labs: `harness compare --stage 2 --baseline
kamailio` (Debian Kamailio with stacks/kamailio/ims.cfg, media through ims-rtpproxy, acc CDRs), and
an operator's stack file pointed at a copy of a legacy code base (stacks/examples/original-ims.yaml)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from harness.stacks import ROOT

pytestmark = [pytest.mark.privileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="NAT labs need root (CI runs as root)")]
HARNESS = [sys.executable, "-m", "harness"]


def test_stage2_against_the_kamailio_reference(tmp_path):
    out = subprocess.run(HARNESS + ["compare", "--stage", "2", "--baseline", "kamailio", "--scenario", "b[ou]*",
                                    "-n", "3", "--format", "json", "--output", str(tmp_path)],
                         capture_output=True, text=True, timeout=400)
    report = json.loads(out.stdout)
    verdicts = {s["scenario"]: s for s in report["scenarios"]}
    assert set(verdicts) == {"both-cone", "both-symmetric", "busy"}, out.stderr[-2000:]
    assert report["go"] is True and out.returncode == 0, report["summary"]
    for name, s in verdicts.items():
        # the same audio and step results as the textbook stack; the differences left are the
        # documented reference differences, named
        assert s["verdict"] in ("same", "changed"), (name, s["reasons"])
        assert set(s["accepted_changes"]) <= {"contact-as-sent", "acc-without-sdp-and-body"}, s
    assert verdicts["both-cone"]["audio"] == "two-way" and verdicts["busy"]["audio"] == "no media"
    assert "contact-as-sent" in verdicts["both-symmetric"]["accepted_changes"]
    # Kamailio really ran: its acc lines became the baseline's CDR, media went through the relay
    base = json.loads((tmp_path / "busy" / "stagekamailio-run0" / "observation.json").read_text())
    kinds = [(r["record_type"], r["call_state"], r["status_code"]) for r in base["cdr"]]
    assert kinds == [("REGISTER", "SUCCESS", "200"), ("REGISTER", "SUCCESS", "200"), ("CALL", "FAILED", "486")]
    cone = json.loads((tmp_path / "both-cone" / "stagekamailio-run0" / "observation.json").read_text())
    assert cone["audio"]["a_to_b"]["received"] > 0 and cone["audio"]["b_to_a"]["received"] > 0
    assert cone["auth"]["alice"] == ["INVITE 407", "REGISTER 401"]
    assert any("received=sip:<alice-public>" in b for b in cone["nat"]["registrar"])
    assert any(s["c"] == "<server>" for s in cone["nat"]["sdp_to_bob"])
    assert "ims-rtpproxy: relaying on" in (tmp_path / "both-cone" / "stagekamailio-run0" / "relay.log").read_text()


def test_an_operator_stack_file_runs_a_copy_of_their_legacy_code_base(tmp_path):
    """The example of MIGRATION.md pointed at a stand-in installation (run.py with data/ and CDR/
    beside it, the layout of the original); the lab's users go into its data/users.json."""
    install = tmp_path / "opt-ims"
    (install / "data").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "run.py"), install / "run.py")
    for pkg in ("sipcore", "legacy", "assembly", "refactored"):
        os.symlink(os.path.join(ROOT, pkg), install / pkg)
    (install / "data" / "users.json").write_text('{"9999": {"username": "9999", "password": "x"}}')
    with open(os.path.join(ROOT, "stacks", "examples", "original-ims.yaml")) as fh:
        text = fh.read()
    assert "/opt/IMS/venv/bin/python" in text and "/opt/IMS/." in text
    text = text.replace("/opt/IMS/venv/bin/python", sys.executable).replace("/opt/IMS/.", f"{install}/.")
    stack_file = tmp_path / "prod.yaml"
    stack_file.write_text(text)
    out = subprocess.run(HARNESS + ["run", "--stack", str(stack_file), "--scenario", "both-cone", "-n", "1",
                                    "--json", "--output", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    obs = json.loads(out.stdout[out.stdout.index("{"):])["both-cone"]
    assert obs["audio"]["direction"] == "two-way" and obs["steps"]["call"] == 200
    assert [(r["record_type"], r["call_state"]) for r in obs["cdr"]] == [
        ("REGISTER", "SUCCESS"), ("REGISTER", "SUCCESS"), ("CALL", "ENDED")]
    run_dir = tmp_path / "out" / "both-cone" / "stageoriginal-ims-run0"
    assert list((run_dir / "ims" / "CDR").glob("*/cdr_*.csv"))
    assert "1001" in (run_dir / "ims" / "data" / "users.json").read_text()
    assert "9999" in (install / "data" / "users.json").read_text()      # the installation is untouched
