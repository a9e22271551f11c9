"""MML HTTP API (real sockets on 127.0.0.1) and the ims-mml client against it."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from sipcore.cdr import CDRWriter
from sipcore.mml import cli, http_api
from sipcore.mml.http_api import MMLHttpServer
from sipcore.users import UserStore
from tests.mgmt.fakes import FakeContext

TOKEN = "test-token-123"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def api(tmp_path):
    users = UserStore(str(tmp_path / "users.json"))
    users.add("admin", "adminpw", role="ADMIN")
    users.add("oper", "operpw", role="OPERATOR")
    users.add("plain", "plainpw")                     # role USER: no MML access
    users.add("gone", "gonepw", role="ADMIN")
    users.modify("gone", status="INACTIVE")
    ctx = FakeContext(users, CDRWriter(str(tmp_path / "CDR")), tmp_path, token=TOKEN)
    loop = asyncio.new_event_loop()
    server = MMLHttpServer(ctx, token=TOKEN)
    ready = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start("127.0.0.1", 0))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    server.url = f"http://127.0.0.1:{server.port}"
    server.ctx_ = ctx
    yield server
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def call(url, method="GET", payload=None, headers=None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in (headers or {}):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), exc.headers


def raw_http(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize("method, path", [("GET", "/api/health"), ("POST", "/api/execute"),
                                          ("POST", "/api/logout"), ("GET", "/"), ("GET", "/api/nothing"),
                                          ("GET", "/api/execute"), ("OPTIONS", "/api/execute")])
def test_401_without_auth(api, method, path):
    status, body, headers = call(api.url + path, method, {"command": "DSP REG"} if method == "POST" else None)
    assert status == 401 and "authentication" in body["error"]
    assert "Access-Control-Allow-Origin" not in headers


def test_wrong_token_and_cookie_are_refused(api):
    assert call(api.url + "/api/health", headers={"Authorization": "Bearer nope"})[0] == 401
    assert call(api.url + "/api/health", headers={"Cookie": "session_id=forged"})[0] == 401


def test_bearer_token(api):
    status, body, _ = call(api.url + "/api/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body["status"] == "ok" and body["stage"] == 2
    status, body, _ = call(api.url + "/api/execute", "POST", {"command": "DSP REG"},
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body["retcode"] == 0 and "sip:1001@sip.local" in body["output"]
    assert set(body) == {"retcode", "retmsg", "output", "timestamp"}


@pytest.mark.parametrize("user, password, ok", [("admin", "adminpw", True), ("oper", "operpw", True),
                                                ("plain", "plainpw", False), ("gone", "gonepw", False),
                                                ("admin", "wrong", False), ("ghost", "x", False),
                                                ("admin", None, False)])
def test_login_roles(api, user, password, ok):
    status, body, headers = call(api.url + "/api/login", "POST", {"username": user, "password": password})
    assert (status == 200) is ok
    if ok:
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        sid = cookie.split(";")[0]
        status, body, _ = call(api.url + "/api/execute", "POST", {"command": "DSP CALL"}, headers={"Cookie": sid})
        assert status == 200 and "abc@host" in body["output"]
        assert call(api.url + "/api/logout", "POST", {}, headers={"Cookie": sid})[0] == 200
        assert call(api.url + "/api/health", headers={"Cookie": sid})[0] == 401


def test_token_login_gives_a_session(api):
    status, _, headers = call(api.url + "/api/login", "POST", {}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    sid = headers["Set-Cookie"].split(";")[0]
    assert call(api.url + "/api/health", headers={"Cookie": sid})[0] == 200


def test_failed_logins_are_throttled(api):
    for _ in range(http_api.LOGIN_FAIL_LIMIT):
        assert call(api.url + "/api/login", "POST", {"username": "admin", "password": "bad"})[0] == 401
    assert call(api.url + "/api/login", "POST", {"username": "admin", "password": "adminpw"})[0] == 429


def test_bad_requests(api):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert call(api.url + "/api/execute", "POST", {"cmd": "DSP REG"}, headers=auth)[0] == 400
    assert call(api.url + "/api/execute", "POST", raw=b"not json", headers=auth)[0] == 400
    assert call(api.url + "/api/execute", "POST", raw=b"[1]", headers=auth)[0] == 400
    status, body, _ = call(api.url + "/api/execute", "POST", {"command": "FOO"}, headers=auth)
    assert status == 200 and body["retcode"] == 2
    assert call(api.url + "/api/nothing", headers=auth)[0] == 404
    assert call(api.url + "/api/execute", headers=auth)[0] == 405
    assert call(api.url + "/api/execute", "POST", raw=b"x" * (http_api.MAX_BODY + 1), headers=auth)[0] == 413


def test_oversized_head_and_garbage(api):
    reply = raw_http(api.port, b"GET /api/health HTTP/1.1\r\nX: " + b"a" * (http_api.MAX_HEADER_BYTES + 10) + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431")
    assert raw_http(api.port, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400")
    reply = raw_http(api.port, b"POST /api/execute HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 501")


def test_slow_client_is_cut_off(api, monkeypatch):
    monkeypatch.setattr(http_api, "HEADER_TIMEOUT", 0.3)
    reply = raw_http(api.port, b"GET /api/health HTTP/1.1\r\n", timeout=5)
    assert reply.startswith(b"HTTP/1.1 408")


# --- ims-mml client -----------------------------------------------------------------------------
def test_cli_with_token(api, capsys):
    assert cli.main(["--url", api.url, "--token", TOKEN, "DSP", "REG"]) == 0
    out = capsys.readouterr().out
    assert "sip:1001@sip.local" in out and "RETCODE = 0" in out


def test_cli_with_user_and_failing_command(api, capsys, monkeypatch):
    monkeypatch.delenv("MML_TOKEN", raising=False)
    assert cli.main(["--url", api.url, "--user", "admin", "--password", "adminpw", "DSP NOPE"]) == 1
    assert "RETCODE = 3" in capsys.readouterr().out
    assert cli.main(["--url", api.url, "--user", "admin", "--password", "bad", "DSP REG"]) == 2
    assert cli.main(["--url", api.url, "DSP REG"]) == 1             # no credentials: 401 -> non-zero
    assert "authentication" in capsys.readouterr().out


def test_cli_json_output(api, capsys):
    assert cli.main(["--url", api.url, "--token", TOKEN, "--json", "RMV CALL CALLID=abc@host CONFIRM=YES"]) == 0
    assert json.loads(capsys.readouterr().out)["retcode"] == 0
    assert api.ctx_.calls.byes == ["abc@host:caller", "abc@host:callee"]


def test_cli_unreachable(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # bound, not listening: connection refused
        assert cli.main(["--url", f"http://127.0.0.1:{port}", "--token", TOKEN, "DSP REG"]) == 3
    assert "cannot reach" in capsys.readouterr().err


def test_cli_process_reads_commands_from_stdin(api):
    env = dict(os.environ, PYTHONPATH=ROOT, MML_TOKEN=TOKEN)
    proc = subprocess.run([sys.executable, "-m", "sipcore.mml.cli", "--url", api.url],
                          input="DSP REG STAT\n# comment\nHELP RMV REG\nQUIT\nDSP CALL\n", text=True,
                          capture_output=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("RETCODE = 0") == 2 and "bindings" in proc.stdout and "CONFIRM" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "sipcore.mml.cli", "--url", api.url, "DSP FOO"],
                          text=True, capture_output=True, env=env, timeout=30)
    assert proc.returncode == 1 and "RETCODE = 3" in proc.stdout
