"""MML commands against a fake management context (real UserStore and CDRWriter)."""
from __future__ import annotations

import asyncio
import json
import os
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sipcore.cdr import CDRWriter
from sipcore.mml.context import ManagementContext
from sipcore.mml.executor import MMLExecutor
from sipcore.users import UserStore
from tests.mgmt.fakes import FakeContext


@pytest.fixture
def ctx(tmp_path):
    users = UserStore(str(tmp_path / "users.json"))
    users.add("1001", "1234")
    users.add("1002", "1234")
    users.add("admin", "pw", role="ADMIN")
    cdr = CDRWriter(str(tmp_path / "CDR"))
    return FakeContext(users, cdr, tmp_path)


@pytest.fixture
def run(ctx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    executor = MMLExecutor(ctx)
    return lambda line: asyncio.run(executor.execute(line))


def test_fake_satisfies_the_protocol(ctx):
    assert isinstance(ctx, ManagementContext)


def test_system_commands(run, ctx):
    r = run("DSP SYSINFO")
    assert r.retcode == 0 and "fake-relay" in r.output and "python" in r.output
    assert "active_calls" in run("DSP SRVSTAT").output
    r = run("DSP SYSCFG")
    assert r.retcode == 0 and "SIP_REALM" in r.output and "sip.local" in r.output
    assert run("DSP CFG KEY=SIP.REALM").output.count("\n") == 2        # header, rule, one row
    assert run("DSP CFG CATEGORY=RTP").retcode == 0
    assert run("DSP CFG KEY=NOPE").retcode == 5


def test_users(run, ctx):
    r = run("DSP USER")
    assert r.retcode == 0 and "admin" in r.output and "1001" in r.output and "pw" not in r.output
    r = run("DSP USER USERNAME=admin")                      # the original upper-cased this
    assert r.retcode == 0 and "admin" in r.output and "1001" not in r.output
    assert run("DSP USER USERNAME=ADMIN").retcode == 5
    r = run('ADD USR USERNAME=Bob PASSWORD=Secret NAME="Bob B" SERVICE=VIP')
    assert r.retcode == 0, r.retmsg
    assert ctx.users.authenticate("Bob", "Secret") and "password" not in ctx.users.get("Bob")
    assert ctx.users.get("Bob")["display_name"] == "Bob B"
    assert run("ADD USER USERNAME=Bob PASSWORD=x").retcode == 4                # duplicate
    assert run("ADD USER USERNAME=Carol").retcode == 4                         # PASSWORD missing
    assert "PASSWORD=" in run("ADD USER USERNAME=Carol").retmsg
    assert run("MOD USER USERNAME=Bob STATUS=suspended").retcode == 0
    assert ctx.users.get("Bob")["status"] == "SUSPENDED"
    assert run("DSP USER STATUS=ACTIVE").output.count("Bob") == 0
    assert run("MOD USER USERNAME=Bob STATUS=GONE").retcode == 4
    assert run("MOD USER USERNAME=Bob").retcode == 4
    assert run("MOD USER USERNAME=ghost PHONE=1").retcode == 5
    assert run("RMV USER USERNAME=Bob").retcode == 0 and ctx.users.get("Bob") is None
    assert run("RMV USER USERNAME=Bob").retcode == 5
    assert json.loads(run("DSP USER FORMAT=JSON").output)[0]["username"] == "1001"


def test_registrations(run, ctx):
    r = run("DSP REG")
    assert r.retcode == 0 and "sip:1001@sip.local" in r.output and "203.0.113.5:40000" in r.output
    assert "sip:1001@192.168.1.10:5060" in r.output       # the Contact as registered, beside the source
    assert "sip:1002" not in run("DSP REG URI=1001").output
    assert run("DSP REG URI=1999").retcode == 5
    assert "nated" in run("DSP REG STAT").output
    assert len(json.loads(run("DSP REG ALL FORMAT=JSON").output)) == 2
    assert run("RMV REG URI=sip:1001@sip.local").retcode == 6                  # CONFIRM=YES needed
    assert len(ctx.registrar.rows) == 2
    assert run("RMV REG URI=sip:1001@sip.local CONFIRM=YES").retcode == 0
    assert len(ctx.registrar.rows) == 1
    assert run("CLR REG CONFIRM=yes").output == "1 binding(s) removed"


def test_calls_are_really_ended(run, ctx):
    assert "abc@host" in run("DSP CALL").output
    assert "active" in run("DSP CALL STAT").output
    assert run("RMV CALL CALLID=abc@host").retcode == 6
    assert run("RMV CALL CALLID=nope CONFIRM=YES").retcode == 5
    r = run("RMV CALL CALLID=abc@host CONFIRM=YES")
    assert r.retcode == 0 and ctx.calls.byes == ["abc@host:caller", "abc@host:callee"]
    ctx.calls.active = {"x": {"call_id": "x"}, "y": {"call_id": "y"}}
    assert run("CLR CALL CONFIRM=YES").output == "2 call(s) ended" and not ctx.calls.active


def test_cdr_commands(run, ctx, tmp_path):
    ctx.cdr.write({"record_type": "OPTIONS", "call_state": "COMPLETED", "call_id": "o1", "status_code": 200})
    ctx.cdr.write({"record_type": "CALL", "call_state": "FAILED", "call_id": "c1", "status_code": 480,
                   "status_text": "Temporarily Unavailable"})
    today = date.today().isoformat()
    r = run("DSP CDR")
    assert r.retcode == 0 and "OPTIONS" in r.output and "480" in r.output
    assert "OPTIONS" not in run(f"DSP CDR DATE={today} TYPE=CALL").output
    assert len(json.loads(run("DSP CDR TODAY LIMIT=1 FORMAT=JSON").output)) == 1
    assert run("DSP CDR LIMIT=abc").retcode == 4
    assert run("DSP CDR DATE=../../etc").retcode == 4
    r = run("DSP CDR STAT")
    assert r.retcode == 0 and "CALL/FAILED" in r.output
    r = run(f"EXP CDR DATE={today} TYPE=CALL")
    assert r.retcode == 0
    path = r.output.split("exported to ", 1)[1]
    assert os.path.exists(path) and f"cdr_export_{today}_CALL_" in path
    assert run("EXP CDR").retcode == 4
    recent = (date.today() - timedelta(days=3)).isoformat()
    assert run(f"CLR CDR BEFORE={recent} CONFIRM=YES").retcode == 4
    os.makedirs(tmp_path / "CDR" / "2020-01-01")
    old = (date.today() - timedelta(days=30)).isoformat()
    assert run(f"CLR CDR BEFORE={old}").retcode == 6
    r = run(f"CLR CDR BEFORE={old} CONFIRM=YES")
    assert r.retcode == 0 and "2020-01-01" in r.output and not (tmp_path / "CDR" / "2020-01-01").exists()


def test_config_and_log(run, ctx, tmp_path):
    assert run("SET LOG LEVEL=debug").retcode == 0 and ctx.levels == ["DEBUG"]
    assert run("SET LOGLEVEL LEVEL=info").retcode == 0
    assert run("SET CFG KEY=LOG.LEVEL VALUE=WARNING").retcode == 0 and ctx.levels[-1] == "WARNING"
    assert "WARNING" in run("DSP CFG KEY=LOG.LEVEL").output
    assert run("SET LOG LEVEL=LOUD").retcode == 4
    assert run("SET CFG KEY=SERVER_PORT VALUE=1").retcode == 4
    r = run("EXP CFG")
    assert r.retcode == 0
    exported = json.loads((tmp_path / r.output.split("exported to ", 1)[1]).read_text())
    assert exported["SIP_REALM"] == "sip.local"
    assert run("DSP LOG").retcode == 5
    log_file = tmp_path / "logs" / date.today().isoformat() / "ims-sip-server.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text("".join(f"line {i}\n" for i in range(100)))
    r = run("DSP LOG LINES=3")
    assert r.retcode == 0 and r.output.splitlines() == ["line 97", "line 98", "line 99"]
    assert run("DSP LOG LINES=0").retcode == 4
    assert run("DSP LOG DATE=../../x").retcode == 4


def test_media_nat_blacklist(run, ctx, tmp_path):
    assert "fake-relay" in run("DSP MEDIA").output and "20000,20002" in run("DSP MEDIA").output
    r = run("DSP NAT")
    assert r.retcode == 0 and "sdp_fixups" in r.output and "203.0.113.5:40000" in r.output and "keepalive" in r.output
    ctx.nat = None
    assert "no NAT helper" in run("DSP NAT").output
    assert "198.51.100.66" in run("DSP BLACKLIST").output
    assert run("ADD BLACKLIST IP=198.51.100.7").output == "198.51.100.7 added"
    assert run("ADD BLACKLIST IP=198.51.100.7").output == "198.51.100.7 already listed"
    assert run("ADD BLACKLIST IP=not-an-ip").retcode == 4
    assert run("RMV BLACKLIST IP=198.51.100.7").retcode == 0
    assert run("RMV BLACKLIST IP=198.51.100.7").retcode == 5


def test_help_and_errors(run):
    r = run("HELP")
    assert r.retcode == 0 and "RMV CALL" in r.output and "DSP NAT" in r.output
    r = run("HELP RMV CALL")
    assert r.retcode == 0 and "CALLID" in r.output and "(required)" in r.output and "BYE" in r.output
    assert run("HELP DSP").retcode == 0 and "DSP REG" in run("HELP DSP").output
    assert run("HELP ADD USR").retcode == 0
    assert run("HELP DSP NOPE").retcode == 5
    assert run("HELP FOO").retcode == 4
    r = run("DSP NOPE")
    assert r.retcode == 3 and "DSP objects" in r.retmsg
    assert run("DSP").retcode == 3
    assert run("RST SYS").retcode == 3 and "not supported" in run("RST SYS").retmsg
    assert run("STP CALL").retcode == 3
    assert run("GARBAGE").retcode == 2 and "syntax error" in run("GARBAGE").retmsg
    r = run("DSP REG FOO=1")
    assert r.retcode == 4 and "FOO" in r.retmsg
    assert run("DSP REG NOPE").retcode == 4
    assert run("DSP REG FORMAT=XML").retcode == 4


def test_internal_errors_are_not_tracebacks(run, ctx):
    def boom():
        raise RuntimeError("kaput")
    ctx.registrar.bindings = boom
    r = run("DSP REG")
    assert r.retcode == 1 and "internal error" in r.retmsg and "Traceback" not in r.retmsg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["DSP", "ADD", "RMV", "MOD", "SET", "CLR", "EXP", "HELP", "STR", "dsp"]),
       st.sampled_from(["USER", "REG", "CALL", "CDR", "CFG", "LOG", "NAT", "MEDIA", "BLACKLIST", "X", ""]),
       st.text(max_size=60))
def test_any_command_gives_a_result(ctx, verb, obj, rest):
    executor = MMLExecutor(ctx)
    # never CONFIRM=YES with a random suffix destroying state matters little: the fake is in memory
    result = asyncio.run(executor.execute(f"{verb} {obj} {rest}"))
    assert isinstance(result.retcode, int) and isinstance(result.retmsg, str) and isinstance(result.output, str)
    assert "Traceback" not in result.retmsg


def test_user_changes_are_written_off_the_event_loop(ctx, tmp_path, monkeypatch):
    """ADD/MOD/RMV USER write users.json (fsync + rename) in a worker thread; meanwhile a lookup
    from the loop is served from memory at once instead of waiting for the write."""
    import threading
    import time
    monkeypatch.chdir(tmp_path)
    loop_thread = threading.get_ident()
    writers: list[int] = []
    lookups: list[float] = []
    real_save = ctx.users._save

    def slow_save(users):
        writers.append(threading.get_ident())
        time.sleep(0.3)                    # a slow disk
        real_save(users)
    monkeypatch.setattr(ctx.users, "_save", slow_save)
    executor = MMLExecutor(ctx)

    async def scenario():
        async def lookup_while_writing():
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            assert ctx.users.get("1001")["username"] == "1001"
            lookups.append(time.monotonic() - t0)
        results = await asyncio.gather(executor.execute("ADD USER USERNAME=Dave PASSWORD=pw"),
                                       lookup_while_writing())
        assert results[0].retcode == 0
        assert (await executor.execute("MOD USER USERNAME=Dave NAME=David")).retcode == 0
        assert (await executor.execute("RMV USER USERNAME=Dave")).retcode == 0
    asyncio.run(scenario())
    assert len(writers) == 3 and loop_thread not in writers
    assert lookups and lookups[0] < 0.1
    assert ctx.users.get("Dave") is None and ctx.users.get("1002") is not None
