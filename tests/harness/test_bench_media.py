"""The media bench's loss accounting on real sockets: a UDP socket whose receive buffer overflows
shows its drops in socket_drops (the relay sockets' column of /proc/net/udp) and in the kernel's
RcvbufErrors (udp_counters); a round that lost >= 0.5% ends a relay's series, a p99-only miss
does not."""
import socket
import time

from harness.bench import media_round_passes, media_round_saturated, socket_drops, udp_counters
from tests.stack import free_port


def test_receive_buffer_overflow_is_counted_per_socket_and_machine_wide():
    port = free_port()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)       # a few datagrams fit
    rx.bind(("127.0.0.1", port))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert socket_drops(port, port) == 0
        before = udp_counters()
        for _ in range(200):                                       # nobody reads rx
            tx.sendto(b"\x80" * 172, ("127.0.0.1", port))
        time.sleep(0.1)
        drops = socket_drops(port, port)
        after = udp_counters()
        assert 150 <= drops < 200
        assert after["RcvbufErrors"] - before["RcvbufErrors"] >= drops      # other traffic only adds
    finally:
        rx.close()
        tx.close()


def test_only_lossy_rounds_end_a_relay_series():
    ok = {"loss": 0.0, "offered_pps": 40000, "nominal_pps": 40000, "lat_p99_ms": 8.0}
    slow = dict(ok, lat_p99_ms=120.0)
    lossy = dict(ok, loss=0.02)
    behind = dict(ok, offered_pps=30000)
    assert media_round_passes(ok) and not media_round_saturated(ok)
    assert not media_round_passes(slow) and not media_round_saturated(slow)
    assert not media_round_passes(lossy) and media_round_saturated(lossy)
    assert not media_round_passes(behind) and media_round_saturated(behind)
