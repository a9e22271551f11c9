"""A real server stage under attack: started as a subprocess on free loopback ports with SIP over
UDP+TCP, the loop-stall switch on (IMS_LOOP_STALL_MS=100) and its console drained, plus the
checks every hostile test makes after each batch: the process is alive, OPTIONS is answered over
UDP, and its log holds no traceback, no loop stall and no internal error."""
from __future__ import annotations

import secrets
import socket
import time

from tests.stack import FreePorts, ServerProcess

# what must never appear in a server's log under attack
PROBLEMS = ("Traceback", "Fatal write error", "--- Logging error ---", "internal error handling message",
            "loop stall:", "; reopening", "fatal:")


class Target(ServerProcess):
    def __init__(self, stage: int, workdir: str, extra_env: dict | None = None, ports=None):
        env = {"ENABLE_TCP": "1", "IMS_LOOP_STALL_MS": "100", "DNS_RESOLVE": "0",
               "RATE_LIMIT_FAILS": "100000"}
        env.update(extra_env or {})
        super().__init__(stage, workdir, extra_env=env, ports=ports or FreePorts())
        self.deaf_periods = 0
        self.checks = 0

    # --- probes -------------------------------------------------------------------------------
    def options(self, timeout: float = 2.0, transport: str = "udp",
                source_ip: str = "127.0.0.1") -> tuple[int | None, float]:
        """(status, round-trip seconds) of an OPTIONS to the server from ``source_ip`` (a loopback
        address); status None when unanswered."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            if transport == "tcp":
                sock.connect(("127.0.0.1", self.ports.sip))
            else:
                sock.bind((source_ip, 0))
            port = sock.getsockname()[1]
            cid = secrets.token_hex(8)
            msg = (f"OPTIONS sip:127.0.0.1:{self.ports.sip} SIP/2.0\r\n"
                   f"Via: SIP/2.0/{transport.upper()} {source_ip}:{port};branch=z9hG4bK{cid};rport\r\n"
                   f"From: <sip:probe@127.0.0.1>;tag={cid[:6]}\r\nTo: <sip:127.0.0.1:{self.ports.sip}>\r\n"
                   f"Call-ID: probe-{cid}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
            t0 = time.monotonic()
            if transport == "tcp":
                sock.sendall(msg)
            else:
                sock.sendto(msg, ("127.0.0.1", self.ports.sip))
            deadline = t0 + timeout
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(65535)
                if not data:
                    break
                if cid.encode() in data and data.startswith(b"SIP/2.0 "):
                    return int(data[8:11]), time.monotonic() - t0
        except OSError:
            pass
        finally:
            sock.close()
        return None, float("inf")

    def problems(self) -> list[str]:
        text = self.log_text() + (self.console.text() if self.console is not None else self.output)
        return [line[:300] for line in text.splitlines() if any(p in line for p in PROBLEMS)][:20]

    def check(self, what: str = "") -> None:
        """After a batch: alive, OPTIONS answered (UDP), nothing bad logged."""
        self.checks += 1
        assert self.proc is not None and self.proc.poll() is None, f"server died after {what}: rc={self.proc.poll()}"
        status, _ = self.options(timeout=2.0)
        if status is None:
            status, _ = self.options(timeout=3.0)     # one loss on a loaded machine is not deafness
        if status != 200:
            self.deaf_periods += 1
        assert status == 200, f"OPTIONS not answered after {what} (stage {self.stage})"
        bad = self.problems()
        assert not bad, f"after {what}: " + "\n".join(bad)
