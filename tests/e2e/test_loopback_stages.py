"""Every entrypoint is a complete server: OPTIONS, two registrations and a call with RTP both ways
through its own media backend (stage 0 Python relay, stages 1/2 a real RTPProxy), on loopback."""
import os
import shutil
import subprocess
import time

import pytest

from tests.stack import PYTHON, ROOT, ServerProcess, agent, received_from, sent


# stage 2 with rtpengine as the relay it auto-starts (RTPPROXY_ENGINE; the default is the embedded RTPProxy)
VARIANTS = {"2-sippy": (2, {"SIGNALLING": "sippy"}), "2-rtpengine": (2, {"RTPPROXY_ENGINE": "rtpengine"})}


@pytest.fixture(params=[0, 1, 2, "2-sippy", "2-rtpengine"],
                ids=["stage0", "stage1", "stage2", "stage2-sippy", "stage2-rtpengine"])
def server(request, tmp_path):
    stage, env = VARIANTS.get(request.param, (request.param, None))
    if request.param == "2-rtpengine" and not shutil.which("rtpengine"):
        pytest.fail("rtpengine is not installed: run scripts/setup.sh (apt-get install rtpengine-daemon)")
    with ServerProcess(stage, str(tmp_path), extra_env=env) as srv:
        yield srv


def relay_engine(server) -> str | None:
    """The engine of the relay the server auto-started (its log line), None for stage 0."""
    text = server.console.text()
    if "auto-started rtpproxy" not in text:
        return None
    return "rtpengine" if "--engine rtpengine" in text else "rtpproxy"


def test_register_call_media_and_cdr(server):
    alice = agent("alice", "1001", server, 0)
    bob = agent("bob", "1002", server, 1)
    try:
        assert alice.request("options")["code"] == 200
        assert alice.request("register")["code"] == 200
        assert bob.request("register")["code"] == 200
        reg = server.mml("DSP REG")
        assert reg["retcode"] == 0 and "sip:1001@sip.local" in reg["output"] and "sip:1002@sip.local" in reg["output"]
        call = alice.request("call", target="1002")
        assert call["code"] == 200
        time.sleep(1.5)
        assert alice.request("hangup")["code"] == 200
        time.sleep(0.3)
        a, b = alice.request("stats"), bob.request("stats")
        assert sent(a) > 50 and sent(b) > 50
        # both directions arrive (loopback: allow for packets in flight at hang-up)
        assert received_from(b, "1001") >= 0.9 * sent(a)
        assert received_from(a, "1002") >= 0.9 * sent(b)
        assert alice.request("message", target="1002", text="hi")["code"] == 200
        expected = None if server.stage == 0 else server.env.get("RTPPROXY_ENGINE", "rtpproxy")
        assert relay_engine(server) == expected, server.console.text()[-2000:]
    finally:
        alice.close()
        bob.close()
    rows = server.cdr_rows()
    kinds = [(r["record_type"], r["call_state"]) for r in rows]
    assert kinds.count(("REGISTER", "SUCCESS")) == 2
    assert ("OPTIONS", "COMPLETED") in kinds and ("MESSAGE", "COMPLETED") in kinds
    [call_row] = [r for r in rows if r["record_type"] == "CALL"]
    assert call_row["call_state"] == "ENDED" and call_row["caller_number"] == "1001"
    assert call_row["callee_number"] == "1002" and float(call_row["duration"]) > 1.0
    # the original's CDR formats in every stage: no ringing_time, the whole CSeq of the BYE
    assert call_row["ringing_time"] == "" and call_row["answer_time"] and call_row["cseq"].endswith(" BYE")


def test_unregistered_callee_busy_and_rmv_call(server):
    alice = agent("alice", "1001", server, 0)
    bob = agent("bob", "1002", server, 1, answer_mode="busy")
    try:
        alice.request("register")
        assert alice.request("call", target="1002")["code"] == 480     # known user, not registered
        bob.request("register")
        assert alice.request("call", target="1002")["code"] == 486
        bob.request("set", answer_mode="auto")
        assert alice.request("call", target="1002")["code"] == 200
        calls = server.mml("DSP CALL FORMAT=JSON")
        import json
        [active] = json.loads(calls["output"])
        res = server.mml(f"RMV CALL CALLID={active['call_id']} CONFIRM=YES")
        assert res["retcode"] == 0, res
        ended = bob.request("wait", event="call_ended", timeout=5)
        assert ended["by"] == "remote"
        # the caller got a BYE too: its agent answered it
        time.sleep(0.5)
        obs = alice.request("observations")
        assert "BYE" in obs["requests_received"]
    finally:
        alice.close()
        bob.close()
    states = [(r["record_type"], r["call_state"], r["status_code"], r["termination_reason"]) for r in server.cdr_rows()
              if r["record_type"] == "CALL"]
    # a call the server refused itself leaves no row (as the original; CDR_EXTENDED=1 adds one)
    assert not any(s[2] == "480" for s in states)
    assert any(s[1] == "FAILED" and s[2] == "486" for s in states)
    assert any(s[1] == "ENDED" and s[3] == "FORCED_TERMINATION_BY_MML" for s in states)


def test_wrong_password_is_refused(server):
    """Stage 0 answers a wrong password with a fresh 401 as the original, stages 1/2 with 403; no
    CDR row by default (the original wrote none)."""
    alice = agent("alice", "1001", server, 0, password="wrong")
    try:
        assert alice.request("register")["code"] == (401 if server.stage == 0 else 403)
    finally:
        alice.close()
    assert server.cdr_rows() == []


def test_extended_cdr_records_failures(tmp_path):
    with ServerProcess(1, str(tmp_path), extra_env={"CDR_EXTENDED": "1"}) as server:
        alice = agent("alice", "1001", server, 0, password="wrong")
        try:
            assert alice.request("register")["code"] == 403
        finally:
            alice.close()
        rows = server.cdr_rows()
    assert [(r["record_type"], r["call_state"], r["status_code"], r["status_text"]) for r in rows] == [
        ("REGISTER", "FAILED", "403", "Forbidden")]


def test_sigterm_is_graceful(server):
    assert server.stop() == 0
    assert "stopped (stage" in server.output


def test_cutover_copy_gives_stage_2(tmp_path):
    """`cp run_sippy.py run.py` then `python run.py` runs stage 2 (the stage is in the file)."""
    shutil.copy(os.path.join(ROOT, "run_sippy.py"), tmp_path / "run.py")
    out = subprocess.run([PYTHON, str(tmp_path / "run.py"), "--check-config"], capture_output=True, text=True,
                         env=dict(os.environ, SERVER_IP="127.0.0.1", CONFIG_FILE="/nonexistent"), timeout=30)
    assert out.returncode == 0, out.stderr
    assert "stage 2 (sippy)" in out.stdout


def test_bad_config_names_the_key(tmp_path):
    out = subprocess.run([PYTHON, os.path.join(ROOT, "run.py")], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, SERVER_IP="127.0.0.1", SERVER_PORT="99999", CONFIG_FILE="/nonexistent"))
    assert out.returncode == 2
    assert "SERVER_PORT" in out.stderr and "Traceback" not in out.stderr


def test_sippy_signalling_without_the_package_names_the_install_command(tmp_path):
    """The sippy package is missing (hidden from this interpreter alone, as if never installed):
    refused with the command."""
    hide_sippy = ("import runpy, sys; sys.modules['sippy'] = None; sys.argv = sys.argv[1:]; "
                  "runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([PYTHON, "-c", hide_sippy, os.path.join(ROOT, "run_sippy.py")], capture_output=True, text=True,
                         timeout=30, env=dict(os.environ, SERVER_IP="127.0.0.1", SIGNALLING="sippy",
                                              CONFIG_FILE="/nonexistent"))
    assert out.returncode == 2
    assert "SIGNALLING" in out.stderr and "pip install sippy" in out.stderr and "Traceback" not in out.stderr


def test_sippy_signalling_only_for_stage_2(tmp_path):
    out = subprocess.run([PYTHON, os.path.join(ROOT, "run_refactored.py")], capture_output=True, text=True,
                         timeout=30, env=dict(os.environ, SERVER_IP="127.0.0.1", SIGNALLING="sippy",
                                              CONFIG_FILE="/nonexistent"))
    assert out.returncode == 2 and "only for stage 2" in out.stderr
