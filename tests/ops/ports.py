"""Ports for the ops tests, picked at run time: control/SIP/MML ports the kernel says are free (UDP
and TCP both), relay ranges from this suite's own block (31000-31999) split per xdist worker, so
parallel test runs of other checkouts using tests.stack.Ports' fixed blocks cannot collide."""
from __future__ import annotations

import socket

from tests.stack import worker_index


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


class OpsPorts:
    _uses = 0

    def __init__(self):
        OpsPorts._uses += 1
        self.sip, self.mml, self.rtpproxy = free_port(), free_port(), free_port()
        base = 31000 + (worker_index() % 4) * 250 + (OpsPorts._uses % 2) * 120
        self.relay_min, self.relay_max = base, base + 119
