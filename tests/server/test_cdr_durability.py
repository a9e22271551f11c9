"""CDR durability: rows reach the kernel at once (kill -9 safe), fsync happens off the caller's thread."""
import os
import socket
import threading
import time

from sipcore.cdr import CDRWriter
from tests.stack import FreePorts, ServerProcess


def options(port: int, i: int, local_port: int) -> bytes:
    return (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bKk9{i};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=k{i}\r\nTo: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: kill9-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def test_rows_answered_before_kill_9_are_on_disk(tmp_path):
    """A real server writes one CDR row per OPTIONS before its 200 OK; kill -9 right after the last
    answer must not lose any of them (the row is in the kernel, the fsync comes later)."""
    srv = ServerProcess(0, str(tmp_path), extra_env={"LOG_LEVEL": "WARNING"}, ports=FreePorts())
    n = 150
    with srv, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2.0)
        local = sock.getsockname()[1]
        answered = 0
        for i in range(n):
            for _attempt in range(3):
                sock.sendto(options(srv.ports.sip, i, local), ("127.0.0.1", srv.ports.sip))
                try:
                    data = sock.recv(65535)
                except socket.timeout:
                    continue
                if data.startswith(b"SIP/2.0 200") and f"kill9-{i}\r\n".encode() in data:
                    answered += 1
                    break
        srv.proc.kill()                     # SIGKILL: no shutdown path runs
        srv.proc.wait(timeout=10)
        assert srv.proc.returncode == -9
    assert answered == n
    rows = srv.cdr_rows()
    ids = {r["call_id"] for r in rows if r["record_type"] == "OPTIONS"}
    assert {f"kill9-{i}" for i in range(n)} <= ids
    assert all(len(r) == 34 and None not in r for r in rows)     # no torn rows


def test_write_never_fsyncs_on_the_calling_thread_and_the_sync_thread_does(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync

    def spy(fd):
        calls.append((threading.current_thread().name, time.monotonic()))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    w = CDRWriter(str(tmp_path / "CDR"), fsync_interval=0.2)
    t0 = time.monotonic()
    for i in range(20):
        w.write({"record_type": "OPTIONS", "call_state": "COMPLETED", "call_id": f"o{i}"})
    assert all(name != threading.current_thread().name for name, _ in calls)
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert calls and calls[0][0] == "cdr-fsync"
    first_round = w.syncer.rounds
    for i in range(20):                   # a burst of writes costs at most one more round per interval
        w.write({"record_type": "OPTIONS", "call_state": "COMPLETED", "call_id": f"p{i}"})
    elapsed = time.monotonic() - t0
    w.close()                             # the last rows are fsync'ed on close
    assert w.syncer.rounds - first_round <= int(elapsed / 0.2) + 2
    assert calls[-1][1] >= t0


def test_a_file_removed_by_hand_is_recreated_with_its_header(tmp_path, monkeypatch):
    w = CDRWriter(str(tmp_path / "CDR"))
    monkeypatch.setattr(w._file, "RECHECK", 0.0)      # check the path on every row
    w.write({"record_type": "OPTIONS", "call_state": "COMPLETED", "call_id": "before"})
    [path] = list((tmp_path / "CDR").glob("*/cdr_*.csv"))
    path.unlink()
    w.write({"record_type": "OPTIONS", "call_state": "COMPLETED", "call_id": "after"})
    w.close()
    lines = path.read_text().splitlines()
    assert lines[0].startswith("record_id,") and len(lines) == 2 and ",after," in lines[1]
