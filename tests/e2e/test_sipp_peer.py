"""SIPp (Debian sip-tester) as an independent UA: a SIPp UAS registered through our registrar
and a SIPp UAC placing INVITE/ACK/BYE calls through each stage's server."""
import shutil
import subprocess
import time

import pytest

from harness.bench import _register
from tests.stack import ServerProcess

pytestmark = [pytest.mark.sipp, pytest.mark.skipif(not shutil.which("sipp"), reason="SIPp not installed (sip-tester)")]


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_sipp_calls_through_each_stage(stage, tmp_path):
    with ServerProcess(stage, str(tmp_path), extra_env={"AUTH_INVITE": "0"}) as srv:
        uas_port = srv.ports.ua[2]
        _register(srv.ports.sip, "1002", uas_port)
        assert "1002" in srv.mml("DSP REG")["output"]
        uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-nostdin", "-bg"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            out = subprocess.run(["sipp", "-sn", "uac", f"127.0.0.1:{srv.ports.sip}", "-s", "1002", "-i", "127.0.0.1",
                                  "-p", str(srv.ports.ua[1]), "-m", "5", "-r", "5", "-timeout", "30", "-nostdin"],
                                 cwd=tmp_path, capture_output=True, text=True, timeout=60)
        finally:
            subprocess.run(["pkill", "-f", f"sipp -sn uas -i 127.0.0.1 -p {uas_port}"])
            uas.wait(10)
        assert out.returncode == 0, out.stdout[-2000:]
    calls = [r for r in srv.cdr_rows() if r["record_type"] == "CALL"]
    assert len(calls) == 5 and all(r["call_state"] == "ENDED" for r in calls)
