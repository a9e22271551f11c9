"""The asyncio transports of a running server: SIP over TCP with Content-Length framing,
malformed datagrams answered 400 (with a Warning) or dropped, never a crash."""
import socket

from tests.stack import ServerProcess

OPTIONS = ("OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{t} 127.0.0.1:5099;branch=z9hG4bK{b}\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
           "Call-ID: {b}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def test_tcp_framing_and_malformed_input(tmp_path):
    with ServerProcess(0, str(tmp_path), extra_env={"ENABLE_TCP": "1"}) as srv:
        with socket.create_connection(("127.0.0.1", srv.ports.sip), timeout=5) as c:
            two = (OPTIONS.format(t="TCP", b="t1") + OPTIONS.format(t="TCP", b="t2")).encode()
            c.sendall(two[:40])                               # split across segments
            c.sendall(two[40:])
            data = b""
            while data.count(b"SIP/2.0 200 OK") < 2:
                chunk = c.recv(4096)
                assert chunk, data
                data += chunk
        with socket.create_connection(("127.0.0.1", srv.ports.sip), timeout=5) as c:
            c.sendall(OPTIONS.format(t="TCP", b="t3").replace("Content-Length: 0", "Content-Length: 99999").encode())
            assert c.recv(100) == b""                         # oversized frame: connection closed
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(3)
        bad = OPTIONS.format(t="UDP", b="u1").replace("Max-Forwards: 70", "Max-Forwards: lots")
        u.sendto(bad.encode(), ("127.0.0.1", srv.ports.sip))
        reply = u.recvfrom(4000)[0].decode()
        assert reply.startswith("SIP/2.0 400") and "Warning: 399" in reply and "Max-Forwards" in reply
        u.sendto(b"\x00\xffgarbage\r\n\r\n", ("127.0.0.1", srv.ports.sip))
        u.sendto(OPTIONS.format(t="UDP", b="u2").encode(), ("127.0.0.1", srv.ports.sip))
        assert u.recvfrom(4000)[0].startswith(b"SIP/2.0 200")  # still serving after garbage
        u.close()
    assert "Traceback" not in srv.output
