"""The MML HTTP API and CLI against a real running server (grammar and executor unit tests are in
test_mml_grammar.py / test_mml_executor.py)."""
import json
import urllib.error
import urllib.request

import pytest

from sipcore.mml.cli import main as mml_cli
from tests.stack import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(0, str(tmp_path_factory.mktemp("mml"))) as srv:
        yield srv


def post(srv, path, payload, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{srv.ports.mml}{path}", data=json.dumps(payload).encode(),
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def test_every_endpoint_needs_auth(server):
    for path in ("/api/execute", "/api/health", "/api/logout"):
        status, body, _ = post(server, path, {"command": "DSP USER"})
        assert status == 401, path
    status, _, _ = post(server, "/api/execute", {"command": "DSP USER"}, {"Authorization": "Bearer wrong"})
    assert status == 401


def test_login_as_admin_then_execute(server):
    status, _, _ = post(server, "/api/login", {"username": "1001", "password": "1234"})
    assert status == 401                                   # not ADMIN/OPERATOR
    assert server.mml("ADD USER USERNAME=ops PASSWORD=secret ROLE=OPERATOR")["retcode"] == 0
    status, _, headers = post(server, "/api/login", {"username": "ops", "password": "secret"})
    assert status == 200
    cookie = headers["Set-Cookie"].split(";")[0]
    status, body, _ = post(server, "/api/execute", {"command": "DSP USER USERNAME=ops"}, {"Cookie": cookie})
    assert status == 200 and body["retcode"] == 0 and "ops" in body["output"]


def test_commands(server):
    assert "RMV CALL" in server.mml("HELP")["output"]
    assert server.mml("DSP SYSINFO")["retcode"] == 0
    assert server.mml("RMV REG URI=sip:1001@sip.local")["retcode"] != 0          # needs CONFIRM=YES
    assert server.mml("SET LOG LEVEL=DEBUG")["retcode"] == 0
    assert server.mml("ADD BLACKLIST IP=192.0.2.7")["retcode"] == 0
    assert "192.0.2.7" in server.mml("DSP BLACKLIST")["output"]
    assert server.mml("RMV BLACKLIST IP=192.0.2.7")["retcode"] == 0
    assert server.mml("DSP NAT")["output"].startswith("stage 0")
    assert server.mml("CLR CDR BEFORE=2999-01-01 CONFIRM=YES")["retcode"] != 0   # last 7 days protected
    assert server.mml("FOO BAR")["retcode"] == 2


def test_cli_client(server, capsys):
    rc = mml_cli(["--url", f"http://127.0.0.1:{server.ports.mml}", "--token", server.token, "DSP", "USER"])
    assert rc == 0 and "1001" in capsys.readouterr().out
    rc = mml_cli(["--url", f"http://127.0.0.1:{server.ports.mml}", "--token", "bad", "DSP USER"])
    assert rc == 1
