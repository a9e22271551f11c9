"""EVENT_LOOP=uvloop runs the real server on uvloop; the standard loop stays the default."""
import socket

import pytest

from tests.stack import FreePorts, ServerProcess


def options(port: int, local: int, i: int) -> bytes:
    return (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKev{i}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=e{i}\r\nTo: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: evloop-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_server_answers_on_the_chosen_event_loop(tmp_path, loop):
    srv = ServerProcess(0, str(tmp_path), extra_env={"EVENT_LOOP": loop}, ports=FreePorts())
    with srv, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2.0)
        answered = 0
        for i in range(5):
            sock.sendto(options(srv.ports.sip, sock.getsockname()[1], i), ("127.0.0.1", srv.ports.sip))
            try:
                answered += sock.recv(65535).startswith(b"SIP/2.0 200")
            except socket.timeout:
                pass
        assert answered >= 4
    logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*.log"))
    assert f"event loop: {loop} (EVENT_LOOP={loop})" in logs
