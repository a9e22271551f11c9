"""Class 7: a stranger cannot tell existing extensions from others, and the server does not name
its stage. Real servers, real digest exchanges (harness UA), and SIPVicious svwar itself."""
from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import pytest

from harness.ua import UAConfig, UserAgent
from sipcore.message import SIPResponse, parse_message
from tests.hostile.target import Target
from tests.stack import FreePorts

VOLATILE = {"Via", "From", "To", "Call-ID", "CSeq", "Content-Length", "WWW-Authenticate", "Proxy-Authenticate"}


def _last_response(ua: UserAgent) -> SIPResponse:
    for entry in reversed(ua.transcript):
        head, _, raw = entry.partition("\n")
        if " RX " in head:
            msg = parse_message(raw.encode("utf-8", "surrogateescape"))
            assert isinstance(msg, SIPResponse)
            return msg
    raise AssertionError("no response received")


def _shape(resp: SIPResponse) -> tuple:
    """What a scanner can compare: status, reason, header names and the non-volatile values."""
    names = tuple(sorted(n for n, _ in resp.headers.items()))
    values = tuple(sorted((n, v) for n, v in resp.headers.items() if n not in VOLATILE))
    return resp.status, resp.reason, names, values


async def _answer(srv: Target, user: str, password: str, method: str, port: int) -> SIPResponse:
    ua = UserAgent(UAConfig(user=user, password=password, server=("127.0.0.1", srv.ports.sip),
                            sip_port=port, rtp_port=port + 1, timer_b=4.0), emit=lambda e: None)
    await ua.start()
    try:
        if method == "REGISTER":
            await ua.register()
        else:
            await ua.message("1002", "hello")
        return _last_response(ua)
    finally:
        await ua.close()


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_unknown_user_and_wrong_password_get_one_answer(stage, tmp_path):
    with Target(stage, str(tmp_path)) as srv:
        ports = FreePorts()
        shapes = {}
        # stage 0 keeps the original's INVITE/MESSAGE challenge rule (legacy fidelity): REGISTER only
        for method in ("REGISTER",) if stage == 0 else ("REGISTER", "MESSAGE"):
            for who, user, password, port in (("unknown", "9999", "1234", ports.ua[0]),
                                              ("wrong-password", "1001", "wrong", ports.ua[1])):
                resp = asyncio.run(_answer(srv, user, password, method, port))
                assert resp.status in (401, 403, 407), (method, who, resp.status)
                shapes[(method, who)] = _shape(resp)
            assert shapes[(method, "unknown")] == shapes[(method, "wrong-password")], method
            server = resp.headers.get("Server") or ""
            assert not re.search(r"legacy|refactored|sippy|/\d-", server), server   # no stage
        srv.check("digest failures")


def test_server_header_text_is_configurable(tmp_path):
    with Target(2, str(tmp_path), extra_env={"SERVER_HEADER": "Acme SBC"}) as srv:
        resp = asyncio.run(_answer(srv, "9999", "x", "REGISTER", FreePorts().ua[0]))
        assert resp.headers.get("Server") == "Acme SBC"


def _svwar(srv: Target, method: str, local_port: int, force: bool) -> subprocess.Popen:
    cmd = ["svwar", "-e990-1010", "-m", method, "-P", str(local_port), "-b", "127.0.0.1",
           "-t", "0.02", "--maximumtime", "4", f"udp://127.0.0.1:{srv.ports.sip}"]
    if force:
        cmd.insert(1, "--force")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _found(proc: subprocess.Popen) -> tuple[set[str], str]:
    out, err = proc.communicate(timeout=120)
    return set(re.findall(r"^\|\s*(\d+)\s*\|", out, re.M)), out + err


@pytest.mark.skipif(shutil.which("svwar") is None, reason="SIPVicious not installed (apt-get install sipvicious)")
def test_svwar_cannot_tell_existing_extensions(tmp_path):
    """svwar (REGISTER, INVITE, OPTIONS; INVITE also without --force) against stage 2: whatever it
    reports, it is all scanned extensions or none -- never the existing 1001-1003 apart; svmap's
    fingerprint names neither stage nor version."""
    scanned = {str(n) for n in range(990, 1011)}
    existing = {"1001", "1002", "1003"}
    with Target(2, str(tmp_path)) as srv:
        ports = FreePorts()
        # a fresh local port per run: the 407s of an INVITE scan are retransmitted (svwar never ACKs)
        local_ports = iter(ports.ua + ports.rtp_ua)
        runs = [("REGISTER", True), ("INVITE", False), ("INVITE", True), ("OPTIONS", True)]
        scans = [(method, force, _svwar(srv, method, next(local_ports), force)) for method, force in runs]
        for method, force, proc in scans:                  # the four scans run at the same time
            found, text = _found(proc)
            assert found in (set(), scanned), f"svwar -m {method} force={force} separated {sorted(found)}:\n{text[-1500:]}"
            assert not (found and found <= existing)
        srv.check("svwar scans")
        # svmap fingerprints the server by its User-Agent/Server text: no stage, no version
        out = subprocess.run(["svmap", "-P", str(next(local_ports)), "-b", "127.0.0.1", "-p", str(srv.ports.sip),
                              "127.0.0.1"], capture_output=True, text=True, timeout=60)
        row = [line for line in out.stdout.splitlines() if f"127.0.0.1:{srv.ports.sip}" in line]
        assert row and "ims-migrate" in row[0], out.stdout + out.stderr
        assert not re.search(r"legacy|refactored|sippy|ims-migrate/\d", row[0]), row[0]
