"""Registrations survive a restart and a stage change (SQLite), and are shared between servers
(a real redis-server started here); the NAT keepalive resumes for restored NATed bindings."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from sipcore.bindings import Binding
from sipcore.digest import compute_ha1, compute_response, parse_auth_params
from sipcore.errors import ConfigError
from sipcore.location_store import PersistentBindingStore, SQLiteBackend, open_location_store, parse_location_store
from tests.stack import FreePorts, ServerProcess, agent, free_port, received_from, sent


class OpsServer(ServerProcess):
    """A ServerProcess on a claimed FreePorts block (other checkouts run the fixed blocks at once)."""

    def __init__(self, stage, workdir, extra_env=None, ports=None):
        super().__init__(stage, workdir, extra_env=extra_env, ports=ports or FreePorts())


def binding(aor="sip:1001@sip.local", contact="sip:1001@10.0.0.5:5060", expires_at=None, nated=True):
    return Binding(aor=aor, contact=contact, original_contact=contact, source=("198.51.100.7", 40000),
                   transport="udp", expires_at=expires_at or time.time() + 600, call_id="c1", cseq=1,
                   nated=nated, nat_reasons=("private_contact",), registered_at=time.time())


def test_config_validation_names_the_key():
    assert parse_location_store("", "data/users.json") == "sqlite:data/location.sqlite"
    assert parse_location_store("memory", "x") == "memory"
    assert parse_location_store("redis://127.0.0.1:6379/2", "x") == "redis://127.0.0.1:6379/2"
    for bad in ("mysql://x", "sqlite:", "redis://", "redis://h:notaport/1", "redis://h:1/db"):
        with pytest.raises(ConfigError) as exc:
            parse_location_store(bad, "x")
        assert exc.value.key == "LOCATION_STORE"
    port = free_port()                                          # nothing listens there
    with pytest.raises(ConfigError) as exc:
        open_location_store(f"redis://127.0.0.1:{port}/0")
    assert exc.value.key == "LOCATION_STORE" and "does not answer" in exc.value.message


def test_sqlite_store_writes_through_and_restores(tmp_path):
    path = str(tmp_path / "loc.sqlite")
    store = PersistentBindingStore(SQLiteBackend(path))
    store.put("sip:1001@sip.local", [binding()])
    store.put("sip:1002@sip.local", [binding("sip:1002@sip.local", "sip:1002@10.0.0.6:5060", nated=False)])
    store.put("sip:1003@sip.local", [binding("sip:1003@sip.local", "sip:1003@10.0.0.7:5060",
                                             expires_at=time.time() + 1)])
    store.put("sip:1002@sip.local", [])                      # unregistered
    store.close()
    time.sleep(1.1)                                          # 1003 expires while "down"
    again = PersistentBindingStore(SQLiteBackend(path))
    try:
        assert again.restored == 1
        [b] = again.get("sip:1001@sip.local")
        assert b.contact == "sip:1001@10.0.0.5:5060" and b.source == ("198.51.100.7", 40000) and b.nated
        assert again.nated() == [b] and again.aors_of_user("1001") == ["sip:1001@sip.local"]
        assert again.by_contact("sip:1001@10.0.0.5:5060") is b
        assert again.get("sip:1002@sip.local") == [] and again.get("sip:1003@sip.local") == []
        import sqlite3
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        again.close()


class CountingSQLite(SQLiteBackend):
    """The real SQLite backend, remembering the batches the writer thread handed it."""

    def __init__(self, path):
        super().__init__(path)
        self.batches: list[list[str]] = []

    def write(self, ops):
        self.batches.append([aor for aor, _, _ in ops])
        super().write(ops)


def _rows(path) -> dict[str, str]:
    import sqlite3
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT aor, bindings FROM location"))
    finally:
        conn.close()


def test_sqlite_writes_a_burst_in_few_batches_and_keeps_the_last_change(tmp_path):
    path = str(tmp_path / "loc.sqlite")
    backend = CountingSQLite(path)
    store = PersistentBindingStore(backend)
    try:
        for i in range(300):                                   # a REGISTER burst: one transaction per batch
            aor = f"sip:u{i}@sip.local"
            store.put(aor, [binding(aor, f"sip:u{i}@10.0.0.5:{5000 + i}")])
        store.put("sip:u1@sip.local", [binding("sip:u1@sip.local", "sip:u1@10.0.0.9:7000")])   # refreshed
        store.put("sip:u2@sip.local", [])                      # unregistered before it was written
        deadline = time.monotonic() + 5                        # no flush: the writer gets there by itself
        while len(_rows(path)) < 299 and time.monotonic() < deadline:
            time.sleep(0.05)
        rows = _rows(path)
        assert len(rows) == 299 and "sip:u2@sip.local" not in rows
        assert "sip:u1@10.0.0.9:7000" in rows["sip:u1@sip.local"]
        assert sum(len(b) for b in backend.batches) <= 302 and len(backend.batches) <= 5, backend.batches
        store.clear()                                          # a clear, then a new REGISTER: only that one stays
        store.put("sip:new@sip.local", [binding("sip:new@sip.local", "sip:new@10.0.0.5:5060")])
        assert store.flush()
        assert list(_rows(path)) == ["sip:new@sip.local"]
    finally:
        store.close()
    again = PersistentBindingStore(SQLiteBackend(path))
    try:
        assert again.restored == 1 and again.get("sip:new@sip.local")[0].contact == "sip:new@10.0.0.5:5060"
    finally:
        again.close()


def test_sqlite_restart_and_stage_change_keep_registrations(tmp_path):
    """REGISTER on stage 0, restart as stage 2 (the cutover copy), call without a new REGISTER."""
    ports = FreePorts()
    with OpsServer(0, str(tmp_path), ports=ports) as srv:
        alice, bob = agent("alice", "1001", srv, 0), agent("bob", "1002", srv, 1)
        try:
            assert alice.request("register")["code"] == 200 and bob.request("register")["code"] == 200
        finally:
            alice.close()
    assert os.path.exists(tmp_path / "location.sqlite")            # next to USERS_FILE by default
    try:
        with OpsServer(2, str(tmp_path), ports=ports) as srv2:
            reg = srv2.mml("DSP REG")["output"]
            assert "sip:1001@sip.local" in reg and "sip:1002@sip.local" in reg
            alice = agent("alice", "1001", srv2, 0)
            try:
                call = alice.request("call", target="1002")           # alice never REGISTERed here
                assert call["code"] == 200, call
                time.sleep(1.0)
                assert alice.request("hangup")["code"] == 200
                time.sleep(0.3)
                a, b = alice.request("stats"), bob.request("stats")
                assert sent(a) > 20 and received_from(b, "1001") >= 0.8 * sent(a)
                assert sent(b) > 20 and received_from(a, "1002") >= 0.8 * sent(b)
            finally:
                alice.close()
    finally:
        bob.close()
    rows = [r for r in srv2.cdr_rows() if r["record_type"] == "CALL"]
    assert [(r["call_state"], r["callee_number"]) for r in rows] == [("ENDED", "1002")]


def _register_nated(sock: socket.socket, sip_port: int) -> int:
    """A REGISTER whose Via and Contact name a private address the packet does not come from."""
    local = sock.getsockname()
    uri = "sip:sip.local"

    def request(cseq: int, auth: str = "") -> bytes:
        return (f"REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.77.0.5:5060;branch=z9hG4bK-{cseq}-{local[1]};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:1001@sip.local>;tag=nat{local[1]}\r\nTo: <sip:1001@sip.local>\r\n"
                f"Call-ID: natreg-{local[1]}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:1001@10.77.0.5:5060>\r\n"
                f"Expires: 600\r\n{auth}Content-Length: 0\r\n\r\n").encode()
    sock.sendto(request(1), ("127.0.0.1", sip_port))
    reply = sock.recvfrom(4000)[0].decode()
    m = re.search(r"^WWW-Authenticate:\s*(.*)$", reply, re.M | re.I)
    assert m, reply
    _, params = parse_auth_params(m.group(1).strip())
    ha1 = compute_ha1("1001", params["realm"], "1234", "MD5")
    resp = compute_response("MD5", ha1, params["nonce"], "REGISTER", uri)
    auth = (f'Authorization: Digest username="1001", realm="{params["realm"]}", nonce="{params["nonce"]}", '
            f'uri="{uri}", response="{resp}", algorithm=MD5\r\n')
    sock.sendto(request(2, auth), ("127.0.0.1", sip_port))
    return int(sock.recvfrom(4000)[0].split(b" ", 2)[1])


def test_nat_keepalive_resumes_for_restored_bindings(tmp_path):
    ports = FreePorts()
    env = {"NAT_KEEPALIVE_INTERVAL": "1"}
    ua = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ua.bind(("127.0.0.1", 0))
    ua.settimeout(5)
    try:
        with OpsServer(2, str(tmp_path), extra_env=env, ports=ports) as srv:
            assert _register_nated(ua, srv.ports.sip) == 200
            assert "private_contact" in srv.mml("DSP REG")["output"]
        ua.settimeout(0.2)
        try:                                             # drop pings of the first life
            while True:
                ua.recvfrom(4000)
        except socket.timeout:
            pass
        ua.settimeout(6)
        with OpsServer(2, str(tmp_path), extra_env=env, ports=ports):
            data, _ = ua.recvfrom(4000)                  # no REGISTER since the restart
            assert data.startswith(b"OPTIONS sip:1001@") and b"Call-ID: ka-" in data   # our keepalive (User-Agent: SERVER_HEADER)
    finally:
        ua.close()


@pytest.fixture
def redis_server(tmp_path):
    binary = shutil.which("redis-server")
    assert binary, "redis-server missing (scripts/setup.sh installs Debian's redis-server)"
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/3"
    finally:
        proc.terminate()
        proc.wait(10)


def test_two_servers_share_registrations_through_redis(tmp_path, redis_server):
    env = {"LOCATION_STORE": redis_server}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with OpsServer(2, str(tmp_path / "a"), extra_env=env) as one, OpsServer(2, str(tmp_path / "b"), extra_env=env) as two:
        bob = agent("bob", "1002", one, 1)
        alice = agent("alice", "1001", two, 0)
        try:
            assert bob.request("register")["code"] == 200            # through server one
            call = alice.request("call", target="1002")                # through server two
            assert call["code"] == 200, call
            time.sleep(1.0)
            assert alice.request("hangup")["code"] == 200
            assert bob.request("wait", event="call_ended", timeout=5)
            # an unREGISTER through one reaches two as well (published change, re-read from Redis)
            assert "sip:1002@sip.local" in two.mml("DSP REG")["output"]
            assert bob.request("unregister")["code"] == 200
            time.sleep(0.5)
            carol = agent("carol", "1003", two, 2)
            try:
                assert carol.request("call", target="1002")["code"] == 480
            finally:
                carol.close()
            assert "sip:1002@sip.local" not in two.mml("DSP REG")["output"]
        finally:
            alice.close()
            bob.close()


def test_default_store_memory_per_binding_under_1kb_and_returned_after_expiry(tmp_path):
    """The SQLite location store (every server's default) keeps nothing per binding beyond the
    in-memory index once its writer has run, and gives it back when the bindings expire."""
    import gc
    import tracemalloc

    from sipcore.message import parse_message
    from sipcore.nat_helper import NATHelper
    from sipcore.registrar import Registrar
    from sipcore.stage_policy import StagePolicy
    from tests.parse_caches import drop_bounded_caches, read_accessors
    n = 2000
    store = PersistentBindingStore(SQLiteBackend(str(tmp_path / "loc.sqlite")))
    nat = NATHelper("198.51.100.1", ["192.168.0.0/16"])
    reg = Registrar(contact_policy=StagePolicy(2, nat).register_contact, store=store)
    msgs = [parse_message((
        "REGISTER sip:sip.local SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.168.{i >> 8}.{i & 255}:5060;branch=z9hG4bK{i};rport\r\nMax-Forwards: 70\r\n"
        f"To: <sip:u{i:06d}@sip.local>\r\nFrom: <sip:u{i:06d}@sip.local>;tag=f{i}\r\n"
        f"Call-ID: reg-{i}@192.168.{i >> 8}.{i & 255}\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:u{i:06d}@192.168.{i >> 8}.{i & 255}:5060;transport=udp>\r\nExpires: 300\r\n"
        "User-Agent: test-phone/1.0\r\nContent-Length: 0\r\n\r\n").encode()) for i in range(n)]
    read_accessors(msgs)
    now = time.time()
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i, m in enumerate(msgs):
            reg.handle_register(m, ("203.0.113.7", 10000 + i), "udp", now)
        del m
        assert store.flush()
        drop_bounded_caches(nat)
        gc.collect()
        full = tracemalloc.get_traced_memory()[0]
        assert reg.count(now) == n and len(_rows(str(tmp_path / "loc.sqlite"))) == n
        assert len(reg.expire(now + 301)) == n and reg.count(now + 301) == 0
        assert store.flush()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        store.close()
    assert _rows(str(tmp_path / "loc.sqlite")) == {}                  # expired rows deleted in the file too
    assert (full - before) / n <= 1024, (full - before) / n
    assert (after - before) / n < 64, (after - before) / n
