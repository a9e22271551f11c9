"""One free port picked at run time (the kernel says it is free for UDP and TCP), for a test that
needs a single address nobody listens on. A server's set of ports is tests.stack.FreePorts."""
from __future__ import annotations

import socket


_given: set[int] = set()          # never hand out the same port twice in one test process


def free_port() -> int:
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            if port in _given or port + 1 in _given or port - 1 in _given:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
                _given.add(port)
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair found")
