"""CDR writer: 34 columns in the original order, one row per outcome, durable at once."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest

from sipcore.cdr import COLUMNS, CDRWriter, uri_user

ORIGINAL_COLUMNS = (
    "record_id,record_type,call_state,date,start_time,end_time,call_id,caller_uri,caller_number,caller_ip,"
    "caller_port,callee_uri,callee_number,callee_ip,callee_port,duration,setup_time,status_code,status_text,"
    "termination_reason,invite_time,ringing_time,answer_time,bye_time,call_type,codec,user_agent,contact,"
    "expires,message_body,server_ip,server_port,cseq,extra_info").split(",")

T0 = datetime(2026, 2, 16, 10, 20, 30, 250000).timestamp()
FROM = '"Alice" <sip:1001@sip.local>;tag=a1'
TO = "<sip:1002@sip.local>"


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
    return CDRWriter(str(tmp_path / "CDR"), clock, server_ip="192.0.2.10", server_port=5060)


def raw_rows(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_columns_are_the_original_34_in_order(writer, tmp_path):
    assert list(COLUMNS) == ORIGINAL_COLUMNS and len(COLUMNS) == 34
    writer.options("o1", from_uri=FROM, to_uri=TO, source=("203.0.113.9", 5070), user_agent="friendly-scanner")
    path = tmp_path / "CDR" / "2026-02-16" / "cdr_2026-02-16.csv"
    rows = raw_rows(path)
    assert rows[0] == ORIGINAL_COLUMNS
    assert len(rows) == 2 and len(rows[1]) == 34


def test_answered_call_row(writer, clock):
    writer.call_started("c1@h", FROM, TO, ("10.0.0.2", 5062), user_agent="UA/1", cseq=1,
                        media_kinds=["audio"], codecs=["PCMU", "telephone-event"])
    clock.t += 1.0
    writer.call_ringing("c1@h", callee_addr=("10.0.0.3", 5064))
    clock.t += 1.93
    writer.call_answered("c1@h", callee_addr=("10.0.0.3", 5064), media_kinds=["audio", "video"],
                         codecs=["opus", "speex", "telephone-event"])
    clock.t += 10.5
    row = writer.call_ended("c1@h", cseq=2)
    read = writer.read_rows("2026-02-16")
    assert len(read) == 1
    r = read[0]
    assert r["record_type"] == "CALL" and r["call_state"] == "ENDED"
    assert r["date"] == "2026-02-16" and r["start_time"] == "10:20:30" and r["end_time"] == "10:20:43"
    assert r["invite_time"] == "10:20:30.250" and r["ringing_time"] == "10:20:31.250"
    assert r["answer_time"] == "10:20:33.180" and r["bye_time"] == "10:20:43.680"
    assert r["duration"] == "10.50" and r["setup_time"] == "2.93s"
    assert r["caller_uri"] == FROM and r["caller_number"] == "1001" and r["callee_number"] == "1002"
    assert (r["caller_ip"], r["caller_port"], r["callee_ip"], r["callee_port"]) == ("10.0.0.2", "5062", "10.0.0.3", "5064")
    assert r["status_code"] == "200" and r["termination_reason"] == "Normal"
    assert r["call_type"] == "AUDIO+VIDEO" and r["codec"] == "opus, speex, telephone-event"
    assert r["cseq"] == "2" and r["server_ip"] == "192.0.2.10" and r["server_port"] == "5060"
    assert r["record_id"].startswith("20260216102043") and len(r["record_id"]) == 20
    assert row["record_id"] == r["record_id"]
    # a second terminal event for the same call writes nothing
    assert writer.call_ended("c1@h") is None and len(writer.read_rows("2026-02-16")) == 1


def test_one_row_per_outcome(writer, clock):
    writer.call_started("cancel", FROM, TO, ("10.0.0.2", 5062))
    writer.call_ringing("cancel")
    writer.call_cancelled("cancel")
    writer.call_started("busy", FROM, TO, ("10.0.0.2", 5062))
    writer.call_failed("busy", 486, "Busy Here")
    writer.call_rejected("nobody", FROM, "<sip:1009@sip.local>", ("10.0.0.2", 5062), 480, "Temporarily Unavailable")
    writer.register("r1", "SUCCESS", from_uri=FROM, to_uri=FROM, source=("10.0.0.2", 5062),
                    contact="<sip:1001@10.0.0.2:5062>", expires=3600, user_agent="UA/1", cseq=2)
    writer.register("r1", "SUCCESS", from_uri=FROM, to_uri=FROM, source=("10.0.0.2", 5062),
                    contact="<sip:1001@10.0.0.2:5062>", expires=3600, cseq=3)   # refresh: a row too
    writer.register("r1", "UNREGISTERED", from_uri=FROM, to_uri=FROM, source=("10.0.0.2", 5062), cseq=4)
    writer.register("r2", "FAILED", from_uri=FROM, to_uri=FROM, source=("10.0.0.2", 5062), status=403,
                    text="Forbidden", reason="wrong password")
    writer.message("m1", 7, from_uri=FROM, to_uri=TO, source=("10.0.0.2", 5062), body=b"hello\nworld",
                   callee_addr=("10.0.0.3", 5064))
    writer.message("m2", 1, from_uri=FROM, to_uri=TO, source=("10.0.0.2", 5062), body="x" * 900,
                   status=480, text="Temporarily Unavailable")
    writer.options("o1", from_uri=FROM, to_uri=TO, source=("10.0.0.2", 5062))
    rows = writer.read_rows("2026-02-16")
    got = [(r["record_type"], r["call_state"], r["status_code"]) for r in rows]
    assert got == [("CALL", "CANCELLED", "487"), ("CALL", "FAILED", "486"), ("CALL", "FAILED", "480"),
                   ("REGISTER", "SUCCESS", "200"), ("REGISTER", "SUCCESS", "200"),
                   ("REGISTER", "UNREGISTERED", "200"), ("REGISTER", "FAILED", "403"),
                   ("MESSAGE", "COMPLETED", "200"), ("MESSAGE", "FAILED", "480"), ("OPTIONS", "COMPLETED", "200")]
    assert rows[0]["termination_reason"] == "User Cancelled" and rows[0]["ringing_time"] == "10:20:30.250"
    assert rows[1]["termination_reason"] == "486 Busy Here" and rows[1]["duration"] == ""
    assert rows[2]["callee_number"] == "1009"
    assert rows[3]["expires"] == "3600" and rows[3]["contact"] == "<sip:1001@10.0.0.2:5062>"
    assert rows[5]["expires"] == "0"             # the original left this blank
    assert rows[6]["termination_reason"] == "wrong password"
    assert rows[7]["call_id"] == "m1-7" and rows[7]["message_body"] == "hello\nworld"
    assert len(rows[8]["message_body"]) == 500
    assert len({r["record_id"] for r in rows}) == len(rows)
    assert writer.read_rows("2026-02-16", "REGISTER", limit=2)[-1]["call_state"] == "FAILED"
    assert len(writer.read_rows("2026-02-16", "register")) == 4


def test_rows_are_visible_to_another_reader_immediately(writer, tmp_path):
    path = tmp_path / "CDR" / "2026-02-16" / "cdr_2026-02-16.csv"
    for i in range(3):
        writer.options(f"o{i}", from_uri=FROM, to_uri=TO, source=("10.0.0.2", 5062))
        # a separate open of the file sees every row written so far
        assert len(raw_rows(path)) == i + 2


def test_flush_open_calls_writes_them_as_ended(writer, clock):
    writer.call_started("a", FROM, TO, ("10.0.0.2", 1))
    writer.call_started("b", FROM, TO, ("10.0.0.2", 2))
    writer.call_answered("b")
    clock.t += 3
    assert len(writer.open_calls()) == 2
    assert writer.flush_open_calls("SERVER_SHUTDOWN") == 2
    rows = writer.read_rows("2026-02-16")
    assert {(r["call_id"], r["call_state"], r["termination_reason"]) for r in rows} == {
        ("a", "ENDED", "SERVER_SHUTDOWN"), ("b", "ENDED", "SERVER_SHUTDOWN")}
    assert [r["duration"] for r in rows if r["call_id"] == "b"] == ["3.00"]
    assert writer.open_calls() == [] and writer.flush_open_calls() == 0


def test_export_stats_and_purge(writer, clock, tmp_path):
    writer.call_started("c", FROM, TO, ("10.0.0.2", 1))
    clock.t += 2
    writer.call_answered("c")
    clock.t += 8
    writer.call_ended("c")
    writer.options("o", from_uri=FROM, to_uri=TO, source=("10.0.0.2", 1))
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


def test_uri_user():
    assert uri_user(FROM) == "1001"
    assert uri_user("sip:1003@h;tag=1") == "1003"
    assert uri_user("<sips:bob:pw@h:5061;transport=tls>") == "bob"
    assert uri_user("<tel:+4930123;phone-context=x>") == "+4930123"
    assert uri_user("garbage") == "" and uri_user("") == ""


WRITER_SCRIPT = r"""
import sys
from sipcore.cdr import CDRWriter
w = CDRWriter(sys.argv[1])
i = 0
while True:
    w.options(f"opt-{i}", from_uri="<sip:1001@h>;tag=x", to_uri="<sip:1002@h>", source=("10.0.0.2", 5062))
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
