"""Class 6: a flood of idle, unauthenticated TCP connections (ENABLE_TCP=1) must not exhaust the
server's descriptors. The server starts with the soft RLIMIT_NOFILE of a default pm2/systemd
service (1024); 1100 connections from 40 loopback addresses are opened and held, and while they
are held a UDP call (register, INVITE, RTP, BYE, CDR row) must still work; the idle connections
are closed by the server after TCP_FIRST_MESSAGE_TIMEOUT."""
from __future__ import annotations

import resource
import select
import socket
import time

import pytest

from tests.hostile.target import Target
from tests.stack import agent

FLOOD = 1100
SOURCES = 40


def _low_nofile() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


def _flood(port: int) -> list[socket.socket]:
    """FLOOD established connections (a refused or timed-out connect is retried once)."""
    socks = []
    for i in range(FLOOD):
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2.0)
            s.bind((f"127.0.0.{2 + i % SOURCES}", 0))
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            s.setblocking(False)
            socks.append(s)
            break
    assert len(socks) >= FLOOD * 0.95
    return socks


def _closed_by_peer(socks: list[socket.socket], wait: float) -> int:
    """How many of ``socks`` the server has closed (EOF or reset) within ``wait`` seconds."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    closed: set[int] = set()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and len(closed) < len(socks):
        for fd, _ in poller.poll(50):
            try:
                eof = by_fd[fd].recv(1024) == b""
            except BlockingIOError:
                continue
            except OSError:
                eof = True
            if eof:
                closed.add(fd)
                poller.unregister(fd)
    return len(closed)


@pytest.mark.parametrize("stage", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_idle_tcp_flood_leaves_udp_calls_working(stage, tmp_path):
    env = {"TCP_FIRST_MESSAGE_TIMEOUT": "3", "TCP_MAX_CONNECTIONS": "400", "TCP_MAX_PER_SOURCE": "20"}
    target = Target(stage, str(tmp_path), extra_env=env)
    target.preexec_fn = _low_nofile
    with target as srv:
        socks = _flood(srv.ports.sip)
        try:
            time.sleep(0.5)
            alice = agent("alice", "1001", srv, 0)
            bob = agent("bob", "1002", srv, 1)
            try:
                assert alice.request("register")["code"] == 200
                assert bob.request("register")["code"] == 200
                assert alice.request("call", target="1002")["code"] == 200
                time.sleep(0.5)
                assert alice.request("hangup")["code"] == 200
            finally:
                alice.close()
                bob.close()
            srv.check("TCP flood (connections held)")
            # over the caps: refused at once; the rest: closed when no valid message came in time
            closed = _closed_by_peer(socks, wait=10.0)
            assert closed == len(socks), f"{len(socks) - closed} idle connections still open"
        finally:
            for s in socks:
                s.close()
        assert srv.options(transport="tcp")[0] == 200          # TCP itself serves again
        log = srv.wait_log("no valid SIP message")
        assert "RLIMIT_NOFILE" in log and "refused" in log and "no valid SIP message" in log
        srv.check("TCP flood (after)")
    rows = [r for r in srv.cdr_rows() if r["record_type"] == "CALL"]
    assert [r["call_state"] for r in rows] == ["ENDED"]
