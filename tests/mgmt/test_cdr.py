"""CDR: the one live path (sipcore.call_records.CDREvents fed by the proxy's Call objects and
real SIP messages) writing the original's 34 columns and value formats through CDRWriter, which
makes every row durable at once."""
from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
from hypothesis import given, settings, strategies as st

from sipcore.call_records import CDREvents, number_of, seconds
from sipcore.cdr import COLUMNS, CDRWriter, csv_line
from sipcore.message import parse_message
from sipcore.call import Call
from sipcore.registrar import Binding

ORIGINAL_COLUMNS = (
    "record_id,record_type,call_state,date,start_time,end_time,call_id,caller_uri,caller_number,caller_ip,"
    "caller_port,callee_uri,callee_number,callee_ip,callee_port,duration,setup_time,status_code,status_text,"
    "termination_reason,invite_time,ringing_time,answer_time,bye_time,call_type,codec,user_agent,contact,"
    "expires,message_body,server_ip,server_port,cseq,extra_info").split(",")

T0 = datetime(2026, 2, 16, 10, 20, 30, 250000).timestamp()
FROM = '"Alice" <sip:1001@sip.local>;tag=a1'
TO = "<sip:1002@sip.local>"
ALICE, BOB = ("10.0.0.2", 5062), ("10.0.0.3", 5064)


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def writer(tmp_path, clock):
    return CDRWriter(str(tmp_path / "CDR"), clock)


def events_for(writer, clock, extended=False):
    return CDREvents(writer, server_ip="192.0.2.10", server_port=5060, clock=clock, extended=extended)


@pytest.fixture
def events(writer, clock):
    return events_for(writer, clock)


def request(method, cseq=1, call_id="c1@h", frm=FROM, to=TO, body=b"", extra=""):
    text = (f"{method} sip:1002@sip.local SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bK{method}{cseq}\r\n"
            f"From: {frm}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"User-Agent: UA/1\r\n{extra}Content-Length: {len(body)}\r\n\r\n")
    return parse_message(text.encode() + body)


def register_request(cseq=2, call_id="r1", expires=3600):
    return request("REGISTER", cseq, call_id, frm="<sip:1001@sip.local>;tag=r", to="<sip:1001@sip.local>",
                   extra=f"Contact: <sip:1001@10.0.0.2:5062>\r\nExpires: {expires}\r\n")


def call(clock, call_id="c1@h", answered_after=None, rang_after=None) -> Call:
    c = Call(call_id=call_id, caller_tag="a1", caller_flow=ALICE, caller_transport="udp", caller_from=FROM,
             callee_to=TO, caller_contact="<sip:1001@10.0.0.2:5062>", started=clock.t, invite_cseq=1,
             user_agent="UA/1", media_kinds=["audio"], codecs=["PCMU", "PCMA", "telephone-event"])
    c.callee_flow = BOB
    if rang_after is not None:
        c.ringing_at = clock.t + rang_after
    if answered_after is not None:
        c.answered_at = clock.t + answered_after
    return c


def raw_rows(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_columns_are_the_original_34_in_order(events, tmp_path):
    assert list(COLUMNS) == ORIGINAL_COLUMNS and len(COLUMNS) == 34
    events.options(request("OPTIONS", frm="<sip:scan@x>;tag=1", to="<sip:sip.local>"), ("203.0.113.9", 5070))
    path = tmp_path / "CDR" / "2026-02-16" / "cdr_2026-02-16.csv"
    rows = raw_rows(path)
    assert rows[0] == ORIGINAL_COLUMNS
    assert len(rows) == 2 and len(rows[1]) == 34


def test_answered_call_row_has_the_original_formats(events, writer, clock):
    c = call(clock, answered_after=2.93, rang_after=1.0)
    clock.t += 2.93 + 10.5
    events.call_ended(c, "Normal", request("BYE", 2))
    [r] = writer.read_rows("2026-02-16")
    assert r["record_type"] == "CALL" and r["call_state"] == "ENDED"
    assert r["date"] == "2026-02-16" and r["start_time"] == "10:20:30" and r["end_time"] == "10:20:43"
    assert r["invite_time"] == "10:20:30.250" and r["answer_time"] == "10:20:33.180"
    assert r["bye_time"] == "10:20:43.680"
    assert r["ringing_time"] == ""                  # the original never filled it
    assert r["duration"] == "10.5" and r["setup_time"] == "2.93s"
    assert r["caller_uri"] == FROM and r["caller_number"] == "1001" and r["callee_number"] == "1002"
    assert (r["caller_ip"], r["caller_port"], r["callee_ip"], r["callee_port"]) == ("10.0.0.2", "5062", "10.0.0.3", "5064")
    assert (r["status_code"], r["status_text"], r["termination_reason"]) == ("200", "OK", "Normal")
    assert r["call_type"] == "AUDIO" and r["codec"] == "PCMU, PCMA, telephone-event"
    assert r["cseq"] == "2 BYE" and r["server_ip"] == "192.0.2.10" and r["server_port"] == "5060"
    assert r["record_id"].startswith("20260216102043") and len(r["record_id"]) == 20


def test_cancelled_failed_and_refused_calls(events, writer, clock):
    events.call_cancelled(call(clock, "cancel", rang_after=0.5), request("INVITE"))
    events.call_failed(call(clock, "busy"), 486, "Busy Here")
    events.call_refused(call(clock, "nobody"), 480, "Temporarily Unavailable")   # no row by default
    rows = writer.read_rows("2026-02-16")
    assert [(r["call_id"], r["call_state"], r["status_code"], r["status_text"], r["termination_reason"], r["cseq"])
            for r in rows] == [("cancel", "CANCELLED", "", "", "User Cancelled", "1 CANCEL"),
                               ("busy", "FAILED", "486", "Busy Here", "486 Busy Here", "1 INVITE")]
    assert rows[0]["ringing_time"] == "" and rows[1]["duration"] == "" and rows[1]["setup_time"] == ""


def test_register_rows_as_the_original(events, writer, clock):
    events.register_success(register_request(2), ALICE, "sip:1001@sip.local", "sip:1001@10.0.0.2:5062", 3600)
    events.register_success(register_request(4), ALICE, "sip:1001@sip.local", "sip:1001@10.0.0.2:5062", 3600)
    events.register_unregistered(register_request(6), ALICE, "sip:1001@sip.local", "sip:1001@10.0.0.2:5062")
    events.register_unregistered(register_request(2, "u1", 0), ALICE, "sip:1001@sip.local", "sip:1001@10.0.0.2:5062")
    denial = parse_message(b"SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\n"
                           b"To: <sip:a@h>\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")
    events.register_failed(register_request(2, "bad"), ALICE, denial, "wrong password")
    rows = writer.read_rows("2026-02-16")
    # one row per Call-ID (the refresh and the unregister on r1 leave none), no FAILED row
    assert [(r["call_id"], r["call_state"]) for r in rows] == [("r1", "SUCCESS"), ("u1", "UNREGISTERED")]
    ok, unreg = rows
    assert (ok["caller_uri"], ok["caller_number"], ok["callee_uri"], ok["callee_number"]) == (
        "sip:1001@sip.local", "1001", "", "")
    assert (ok["contact"], ok["expires"], ok["cseq"], ok["server_ip"], ok["server_port"]) == (
        "sip:1001@10.0.0.2:5062", "3600", "2 REGISTER", "192.0.2.10", "5060")
    assert (unreg["expires"], unreg["server_ip"], unreg["server_port"], unreg["status_code"]) == ("", "", "", "200")


def test_message_and_options_rows(events, writer, clock):
    binding = Binding(aor="sip:1002@sip.local", contact="sip:1002@10.0.0.3:5064", original_contact="",
                      source=BOB, transport="udp", expires_at=clock.t + 60, call_id="r", cseq=1)
    events.message(request("MESSAGE", 7, "m1", body=b"hello\nworld"), ALICE, 200, "OK", binding)
    events.message(request("MESSAGE", 1, "m2", body=b"x" * 900), ALICE, 404, "Not Found", binding)
    events.message(request("MESSAGE", 1, "m3"), ALICE, 480, "Temporarily Unavailable", None)   # refused: no row
    events.options(request("OPTIONS", to="<sip:sip.local>"), ALICE)
    rows = writer.read_rows("2026-02-16")
    assert [(r["call_id"], r["call_state"], r["status_code"]) for r in rows] == [
        ("m1-7 MESSAGE", "COMPLETED", "200"), ("m2-1 MESSAGE", "COMPLETED", "200"), ("c1@h", "COMPLETED", "200")]
    assert rows[0]["message_body"] == "hello\nworld" and len(rows[1]["message_body"]) == 500
    assert rows[0]["cseq"] == "7 MESSAGE" and rows[0]["callee_ip"] == "" and rows[0]["server_ip"] == "192.0.2.10"
    assert rows[2]["record_type"] == "OPTIONS" and rows[2]["callee_number"] == "sip.local"
    assert rows[2]["server_ip"] == "" and rows[2]["server_port"] == "" and rows[2]["cseq"] == "1 OPTIONS"


def test_extended_rows_keep_the_formats(writer, clock):
    """CDR_EXTENDED=1: the rows the original never wrote, same columns and formats, real statuses."""
    events = events_for(writer, clock, extended=True)
    events.register_success(register_request(2), ALICE, "sip:1001@sip.local", "c", 3600)
    events.register_success(register_request(4), ALICE, "sip:1001@sip.local", "c", 3600)    # refresh
    for status, reason in ((401, "Unauthorized"), (403, "Forbidden")):
        denial = parse_message(f"SIP/2.0 {status} {reason}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n"
                               f"From: <sip:a@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\n"
                               f"Content-Length: 0\r\n\r\n".encode())
        events.register_failed(register_request(2, f"bad{status}"), ALICE, denial, "wrong password")
    events.call_refused(call(clock, "nobody", rang_after=0.2), 480, "Temporarily Unavailable")
    events.message(request("MESSAGE", 1, "m3"), ALICE, 480, "Temporarily Unavailable", None)
    rows = writer.read_rows("2026-02-16")
    assert [(r["record_type"], r["call_state"], r["status_code"], r["status_text"]) for r in rows] == [
        ("REGISTER", "SUCCESS", "200", "OK"), ("REGISTER", "SUCCESS", "200", "OK"),
        ("REGISTER", "FAILED", "401", "Unauthorized"), ("REGISTER", "FAILED", "403", "Forbidden"),
        ("CALL", "FAILED", "480", "Temporarily Unavailable"), ("MESSAGE", "FAILED", "480", "Temporarily Unavailable")]
    assert rows[2]["caller_uri"] == "sip:1001@sip.local" and rows[2]["cseq"] == "2 REGISTER"
    assert rows[4]["ringing_time"] == "10:20:30.450" and rows[4]["cseq"] == "1 INVITE"
    assert rows[5]["call_id"] == "m3-1 MESSAGE" and rows[5]["termination_reason"] == "480 Temporarily Unavailable"


def test_value_helpers():
    assert number_of(FROM) == "1001" and number_of("sip:1003@h;tag=1") == "1003"
    assert number_of("<sip:sip.local>") == "sip.local"       # the original's rule: up to @ ; or >
    assert number_of("<tel:+4930123>") == "" and number_of("") == ""
    assert [seconds(x) for x in (1.3, 1.299, 12.0, 0.0, 0.004, 3.14159)] == ["1.3", "1.3", "12.0", "", "", "3.14"]


def test_rows_are_visible_to_another_reader_immediately(events, tmp_path):
    path = tmp_path / "CDR" / "2026-02-16" / "cdr_2026-02-16.csv"
    for i in range(3):
        events.options(request("OPTIONS", call_id=f"o{i}"), ALICE)
        # a separate open of the file sees every row written so far
        assert len(raw_rows(path)) == i + 2


def test_call_ended_without_a_bye(events, writer, clock):
    """Shutdown or MML RMV CALL: no BYE request, the row keeps the INVITE's CSeq."""
    c = call(clock, answered_after=0)
    clock.t += 3
    events.call_ended(c, "SERVER_SHUTDOWN", None)
    [r] = writer.read_rows("2026-02-16")
    assert (r["call_state"], r["termination_reason"], r["duration"], r["cseq"]) == (
        "ENDED", "SERVER_SHUTDOWN", "3.0", "1 INVITE")


def test_export_stats_and_purge(events, writer, clock, tmp_path):
    c = call(clock, "c", answered_after=2)
    clock.t += 10
    events.call_ended(c, "Normal", request("BYE", 2, "c"))
    events.options(request("OPTIONS", call_id="o"), ALICE)
    path = writer.export("2026-02-16", "CALL")
    assert os.path.basename(path) == "cdr_export_2026-02-16_CALL_20260216_102040.csv"
    assert os.path.dirname(path) == str(tmp_path / "CDR" / "exports")
    exported = raw_rows(path)
    assert exported[0] == ORIGINAL_COLUMNS and len(exported) == 2
    assert os.path.basename(writer.export("2026-02-16")).startswith("cdr_export_2026-02-16_2026")
    st = writer.stats("2026-02-16")
    assert st["total"] == 2 and st["calls"] == 1 and st["calls_answered"] == 1
    assert st["total_duration"] == 8.0 and st["average_setup_time"] == 2.0
    assert st["by_type"] == {"CALL/ENDED": 1, "OPTIONS/COMPLETED": 1}
    os.makedirs(tmp_path / "CDR" / "2026-01-01")
    with pytest.raises(ValueError, match="last 7 days"):
        writer.purge_before("2026-02-12")
    assert writer.purge_before("2026-02-09") == ["2026-01-01"]
    assert writer.dates() == ["2026-02-16"]


@pytest.mark.parametrize("bad", ["../etc", "2026-13-01", "2026-02-30", "20260216", "2026-02-16/x"])
def test_bad_dates_are_refused(writer, bad):
    with pytest.raises(ValueError):
        writer.read_rows(bad)
    with pytest.raises(ValueError):
        writer.export(bad)


def test_write_rejects_unknown_columns(writer):
    with pytest.raises(ValueError, match="unknown CDR columns"):
        writer.write({"record_type": "CALL", "billsec": 3})


WRITER_SCRIPT = r"""
import sys
from sipcore.call_records import CDREvents
from sipcore.cdr import CDRWriter
from sipcore.message import parse_message
events = CDREvents(CDRWriter(sys.argv[1]), "192.0.2.10", 5060)
i = 0
while True:
    events.options(parse_message((
        "OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bKo\r\n"
        "From: <sip:1001@h>;tag=x\r\nTo: <sip:h>\r\nCall-ID: opt-%d\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n" % i).encode()), ("10.0.0.2", 5062))
    i += 1
    print(i, flush=True)
"""


def test_kill_9_loses_nothing_already_written(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(tmp_path / "CDR")], cwd=root,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=root))
    reported = 0
    try:
        deadline = time.monotonic() + 20
        while reported < 50 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            reported = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    assert reported >= 50
    files = list((tmp_path / "CDR").glob("*/cdr_*.csv"))
    rows = [r for f in files for r in raw_rows(f)]
    data = [r for r in rows if r != ORIGINAL_COLUMNS]
    assert len(data) >= reported            # every row reported as written is on disk
    assert all(len(r) == 34 for r in data)  # and no row is torn
    ids = [r[6] for r in data]
    assert ids[:reported] == [f"opt-{i}" for i in range(reported)]


@settings(max_examples=3000)
@given(st.lists(st.one_of(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
                          st.text(alphabet=',"\r\n a\u00e9', max_size=8), st.integers(), st.floats(allow_nan=False),
                          st.none()), min_size=1, max_size=6))
def test_csv_line_is_what_the_csv_module_writes(values):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(values)
    assert csv_line(values) == buf.getvalue()
