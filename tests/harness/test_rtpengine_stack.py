"""rtpengine as the relay of stage 2 in a real NAT lab: stacks/examples/stage-2-rtpengine.yaml sets
RTPPROXY_ENGINE=rtpengine, so the server's auto-start launches Debian rtpengine instead of the
embedded RTPProxy; both callers sit behind symmetric NATs, so media only flows when the relay
latches onto the NATs' public mappings."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from harness.stacks import ROOT

pytestmark = [pytest.mark.privileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="NAT labs need root (CI runs as root)")]


def test_stage2_with_rtpengine_relays_both_ways_through_symmetric_nats(tmp_path):
    assert shutil.which("rtpengine"), "rtpengine is not installed: run scripts/setup.sh"
    stack = os.path.join(ROOT, "stacks", "examples", "stage-2-rtpengine.yaml")
    out = subprocess.run([sys.executable, "-m", "harness", "run", "--stack", stack, "--scenario", "both-symmetric",
                          "-n", "1", "--json", "--output", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    obs = json.loads(out.stdout[out.stdout.index("{"):])["both-symmetric"]
    assert obs["steps"]["call"] == 200 and obs["audio"]["direction"] == "two-way"
    assert obs["audio"]["a_to_b"]["received"] > 0 and obs["audio"]["b_to_a"]["received"] > 0
    server_log = (tmp_path / "both-symmetric" / "stage2-rtpengine-run0" / "server.log").read_text()
    assert "auto-started rtpproxy" in server_log and "--engine rtpengine" in server_log
