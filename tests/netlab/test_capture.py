"""Captures hold everything up to the lab's end: the last datagram before teardown is in the pcap.

Cause of the BYE missing from NAT captures in many harness runs: tcpdump without
``--immediate-mode`` gets packets from libpcap's TPACKET_V3 ring only when a block fills or its
1 s timeout expires, so whatever crossed the interface in the last second before the lab killed
tcpdump (the BYE and its 200) was never read. The captures now run in immediate mode and the lab
stops them gracefully (SIGINT) before killing the rest.
"""
import os
import sys

import pytest

from netlab import open_lab, standard
from netlab.lifecycle import claim_slot, release_slot

pytestmark = [pytest.mark.privileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)")]

SEND = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for i in range(10): s.sendto(b'BYE-%d' % i if i < 9 else b'LAST-BYE', ({dst!r}, 5060))\n")


@pytest.mark.parametrize("explicit_stop", [False, True], ids=["lab-teardown", "capture-stop"])
def test_last_packet_before_teardown_is_captured(tmp_path, explicit_stop):
    for attempt in range(3):
        slot = claim_slot()
        path = tmp_path / f"nat_a-{attempt}.pcap"
        try:
            with open_lab(standard("cone", "none", slot=slot)) as lab:
                cap = lab.capture("nat_a", lab.iface("nat_a", "public"), str(path))
                out = lab.run("alice", [sys.executable, "-c", SEND.format(dst=lab.address("server"))], timeout=20)
                assert out.returncode == 0, out.stderr
                if explicit_stop:
                    cap.stop()
                # no pause: the lab goes down right after the last packet, as at the end of a call
        finally:
            release_slot(slot)
        data = path.read_bytes()
        assert data.count(b"BYE-") == 9 and b"LAST-BYE" in data, f"attempt {attempt}: {data.count(b'BYE-')} of 9"
