"""SIGNALLING=sippy: INVITE dialogs on the Sippy B2BUA behind sipcore's transport, driven by
independent peers (SIPp from Debian's sip-tester, the harness UA agents with real RTP).

The general call/480/486/RMV CALL/SIGTERM flows run for this engine in test_loopback_stages.py
(fixture id ``stage2-sippy``); here: the SIPp peers (stock UAS with its ``transport=UDP`` Contact,
CANCEL, 486), a re-INVITE hold with RTP counted both ways, and the bridge's pure helpers."""
import re
import shutil
import subprocess
import time

import pytest

from harness.bench import _register
from refactored.sippy_bridge import normalise_transport_params
from sipcore.message import parse_message
from tests.stack import ServerProcess, agent, received_from, sent

needs_sipp = pytest.mark.skipif(not shutil.which("sipp"), reason="SIPp not installed (sip-tester)")

INVITE = """
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=UDP>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
"""

ACK = """
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
"""


def _scenario(name: str, *steps: str) -> str:
    return f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="{name}">\n' + "\n".join(steps) + "\n</scenario>\n"


def _send(text: str, retrans: bool = False) -> str:
    attrs = ' retrans="500"' if retrans else ""
    return f"<send{attrs}><![CDATA[{text}]]></send>"


def _reply(status: str, cseq: str = "[last_CSeq:]") -> str:
    return _send(f"""
      SIP/2.0 {status}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      {cseq}
      Contact: <sip:[local_ip]:[local_port];transport=UDP>
      Content-Length: 0
""")


UAC_BUSY = _scenario("uac-busy", _send(INVITE, True), '<recv response="100" optional="true"/>',
                     '<recv response="486"/>', _send(ACK))
UAS_BUSY = _scenario("uas-busy", '<recv request="INVITE"/>', _reply("486 Busy Here"), '<recv request="ACK"/>')
UAC_CANCEL = _scenario("uac-cancel", _send(INVITE, True), '<recv response="100" optional="true"/>',
                       '<recv response="180"/>', _send("""
      CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 CANCEL
      Max-Forwards: 70
      Content-Length: 0
"""), '<recv response="200"/>', '<recv response="487"/>', _send(ACK))
UAS_CANCEL = _scenario(
    "uas-cancel",
    '<recv request="INVITE"><action><ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="1"/>'
    '</action></recv>',
    _reply("180 Ringing"), '<recv request="CANCEL"/>', _reply("200 OK").replace(";tag=[pid]SIPpTag01[call_number]", ""),
    _reply("487 Request Terminated", cseq="CSeq: [$1] INVITE"), '<recv request="ACK"/>')


def _sipp(args: list[str], cwd, timeout: float = 40) -> subprocess.CompletedProcess:
    return subprocess.run(["sipp", *args, "-nostdin", "-timeout", "20"], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture
def sippy_server(tmp_path):
    with ServerProcess(2, str(tmp_path), extra_env={"AUTH_INVITE": "0", "SIGNALLING": "sippy"}) as srv:
        yield srv


def _uas(srv, tmp_path, scenario: str | None, calls: int):
    """A SIPp UAS registered as 1002 through sipcore's registrar (background; ends after ``calls``)."""
    port = srv.ports.ua[2]
    _register(srv.ports.sip, "1002", port)
    args = ["-sn", "uas"] if scenario is None else ["-sf", str(tmp_path / "uas.xml")]
    if scenario is not None:
        (tmp_path / "uas.xml").write_text(scenario)
    proc = subprocess.Popen(["sipp", *args, "-i", "127.0.0.1", "-p", str(port), "-m", str(calls), "-nostdin",
                             "-trace_msg", "-message_file", str(tmp_path / "uas-messages.log")],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return proc


def _uac(srv, tmp_path, scenario: str | None, calls: int) -> subprocess.CompletedProcess:
    args = ["-sn", "uac"] if scenario is None else ["-sf", str(tmp_path / "uac.xml")]
    if scenario is not None:
        (tmp_path / "uac.xml").write_text(scenario)
    return _sipp([*args, f"127.0.0.1:{srv.ports.sip}", "-s", "1002", "-i", "127.0.0.1", "-p", str(srv.ports.ua[1]),
                  "-m", str(calls), "-r", "5", "-trace_msg", "-message_file", str(tmp_path / "uac-messages.log")],
                 tmp_path)


def _finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return -9


def _call_rows(srv) -> list[dict]:
    return [r for r in srv.cdr_rows() if r["record_type"] == "CALL"]


def _uac_call_ids(tmp_path) -> set[str]:
    text = (tmp_path / "uac-messages.log").read_text(errors="replace")
    return set(re.findall(r"^Call-ID: (\S+)", text, re.MULTILINE))


@needs_sipp
@pytest.mark.sipp
def test_sipp_calls_with_upper_case_transport_contact(sippy_server, tmp_path):
    """SIPp's stock UAS answers with Contact ...;transport=UDP; Sippy's BYE to it must still go out."""
    srv = sippy_server
    uas = _uas(srv, tmp_path, None, 5)
    out = _uac(srv, tmp_path, None, 5)
    assert _finish(uas) == 0 and out.returncode == 0, out.stdout[-1500:]
    uas_log = (tmp_path / "uas-messages.log").read_text(errors="replace")
    assert "transport=UDP>" in uas_log                 # the upper-case Contact went to Sippy...
    assert uas_log.count("BYE sip:") >= 5             # ...and Sippy's BYEs came back through it
    info = srv.mml("DSP SYSINFO")["output"]
    assert re.search(r"signalling engine\s+Sippy B2BUA 2\.\d", info), info
    assert srv.stop() == 0                             # SIGTERM: the reactor thread stops, exit 0
    assert "Sippy reactor stopped" in srv.output and "unsupported transport" not in srv.output
    rows = _call_rows(srv)
    assert len(rows) == 5 and all(r["call_state"] == "ENDED" and r["status_code"] == "200" for r in rows)
    assert {r["call_id"] for r in rows} == _uac_call_ids(tmp_path)      # keyed by the caller's Call-ID
    assert all(r["callee_number"] == "1002" and r["callee_port"] == str(srv.ports.ua[2]) for r in rows)


@needs_sipp
@pytest.mark.sipp
def test_sipp_busy_callee_486(sippy_server, tmp_path):
    srv = sippy_server
    uas = _uas(srv, tmp_path, UAS_BUSY, 2)
    out = _uac(srv, tmp_path, UAC_BUSY, 2)
    assert _finish(uas) == 0 and out.returncode == 0, out.stdout[-1500:]
    rows = _call_rows(srv)
    assert [(r["call_state"], r["status_code"], r["status_text"]) for r in rows] == [("FAILED", "486", "Busy Here")] * 2
    assert {r["call_id"] for r in rows} == _uac_call_ids(tmp_path)


@needs_sipp
@pytest.mark.sipp
def test_sipp_cancel_while_ringing(sippy_server, tmp_path):
    srv = sippy_server
    uas = _uas(srv, tmp_path, UAS_CANCEL, 2)
    out = _uac(srv, tmp_path, UAC_CANCEL, 2)
    assert _finish(uas) == 0 and out.returncode == 0, out.stdout[-1500:]
    assert (tmp_path / "uas-messages.log").read_text(errors="replace").count("CANCEL sip:") >= 2
    rows = _call_rows(srv)
    # the original's CANCELLED rows: no status, no ringing_time (CDR_EXTENDED=1 fills ringing_time)
    assert [(r["call_state"], r["status_code"]) for r in rows] == [("CANCELLED", "")] * 2
    assert all(not r["ringing_time"] and not r["answer_time"] and r["cseq"].endswith(" CANCEL") for r in rows)


def test_reinvite_hold_resume_with_rtp_both_ways(sippy_server):
    srv = sippy_server
    alice = agent("alice", "1001", srv, 0)
    bob = agent("bob", "1002", srv, 1)
    try:
        assert alice.request("register")["code"] == 200 and bob.request("register")["code"] == 200
        assert alice.request("call", target="1002")["code"] == 200
        time.sleep(1.0)
        assert alice.request("hold")["code"] == 200
        time.sleep(0.5)
        assert alice.request("resume")["code"] == 200
        time.sleep(1.0)
        a, b = alice.request("stats"), bob.request("stats")
        obs = bob.request("observations")
        assert alice.request("hangup")["code"] == 200
    finally:
        alice.close()
        bob.close()
    assert sent(a) > 50 and sent(b) > 50
    assert received_from(b, "1001") >= 0.7 * sent(a) and received_from(a, "1002") >= 0.7 * sent(b)
    directions = [s.get("direction") for s in obs["sdp_received"]]
    assert "sendonly" in directions or "inactive" in directions, directions      # the hold reached bob
    [row] = _call_rows(srv)
    assert row["call_state"] == "ENDED" and float(row["duration"]) > 2.0


def test_transport_parameters_are_lower_cased_for_sippy():
    msg = parse_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1\r\n"
                        b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
                        b"Contact: <sip:10.0.0.2:5060;transport=UDP;ob>\r\n"
                        b"Record-Route: <sip:p1;lr;transport=TCP>, <sip:p2;lr>\r\nContent-Length: 0\r\n\r\n")
    normalise_transport_params(msg)
    assert msg.headers.get("Contact") == "<sip:10.0.0.2:5060;transport=udp;ob>"
    assert msg.headers.get_all("Record-Route") == ["<sip:p1;lr;transport=tcp>", "<sip:p2;lr>"]
