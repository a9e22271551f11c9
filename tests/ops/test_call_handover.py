"""Calls in progress across a server restart, with RTPProxy as its own process (pm2's ims-rtpproxy):
a re-INVITE moving the caller's media to a new port still goes through the relay (the RTPProxy
session the restart kept is updated), and a handed-over call that never gets its BYE is ended by
the server (BYE to both parties, CDR row with the documented reason) when its relay session is gone
or its time after the restart is up."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from sipcore.call_handover import FILE_NAME
from tests.ops.test_location_store import OpsServer
from tests.stack import ROOT, FreePorts, agent


@pytest.fixture
def relay(tmp_path):
    """RTPProxy as its own process on loopback, as pm2's ims-rtpproxy app runs it."""
    ports = FreePorts()
    log = open(tmp_path / "rtpproxy.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "refactored.rtpproxy_launcher", "-l", "127.0.0.1",
                             "-s", f"udp:127.0.0.1:{ports.rtpproxy}", "-m", str(ports.relay_min),
                             "-M", str(ports.relay_max)], cwd=str(tmp_path), stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        deadline = time.monotonic() + 15
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            while True:
                assert time.monotonic() < deadline and proc.poll() is None, open(tmp_path / "rtpproxy.log").read()
                s.sendto(b"probe V", ("127.0.0.1", ports.rtpproxy))
                try:
                    if s.recv(100).startswith(b"probe "):
                        break
                except socket.timeout:
                    pass
        yield ports
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def relay_command(ports: FreePorts, text: str) -> str:
    """One control command; a fresh cookie each time (RTPProxy answers a repeated cookie from its
    reply cache)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(f"t{time.monotonic_ns()} {text}".encode(), ("127.0.0.1", ports.rtpproxy))
        return s.recv(200).decode().split(" ", 1)[1].strip()


def server(tmp_path, ports, **env):
    s = OpsServer(1, str(tmp_path), ports=ports,
                     extra_env={"RTPPROXY_AUTO_START": "0", "RTPPROXY_UDP_HOST": "127.0.0.1", **env})
    return s


def totals(stats: dict, sender: str) -> tuple[int, int, dict]:
    """(sent, received from ``sender``, sources of those packets) over the agent's streams."""
    sent = recv = 0
    sources: dict = {}
    for s in stats["rtp"].values():
        sent += s["sent"]
        got = s["received"].get(sender, {})
        recv += got.get("packets", 0)
        for src, n in (got.get("sources") or {}).items():
            sources[src] = sources.get(src, 0) + n
    return sent, recv, sources


def relayed(sources: dict, ports: FreePorts) -> bool:
    return bool(sources) and all(ports.relay_min <= int(src.rsplit(":", 1)[1]) <= ports.relay_max
                                 for src in sources)


def call_rows(srv) -> list[str]:
    return [f"{r['call_state']}/{r['termination_reason']}" for r in srv.cdr_rows() if r["record_type"] == "CALL"]


def start_call(srv):
    alice, bob = agent("alice", "1001", srv, 0), agent("bob", "1002", srv, 1)
    assert alice.request("register")["code"] == 200 and bob.request("register")["code"] == 200
    call = alice.request("call", target="1002")
    assert call["code"] == 200, call
    time.sleep(1.0)
    return alice, bob, call["call_id"]


def test_reinvite_with_a_new_media_port_after_a_restart_goes_through_the_relay(tmp_path, relay):
    ports = relay
    with server(tmp_path, ports) as srv:
        alice, bob, call_id = start_call(srv)
    try:
        saved = json.load(open(tmp_path / "CDR" / FILE_NAME))
        assert [c["call_id"] for c in saved] == [call_id] and call_rows(srv) == []     # handed over, no row yet
        tags = f"{saved[0]['caller_tag']};1 {saved[0]['callee_tag']};1"
        assert relay_command(ports, f"Q {call_id} {tags}").split()[0].isdigit()       # the relay kept it
        with server(tmp_path, ports) as srv2:
            # the caller, then the callee, re-INVITE with their media moved to a new port
            for mover, mover_user, other, other_user, new_port in ((alice, "1001", bob, "1002", ports.spare_rtp[0]),
                                                                   (bob, "1002", alice, "1001", ports.spare_rtp[1])):
                m0, o0 = totals(mover.request("stats"), other_user), totals(other.request("stats"), mover_user)
                assert mover.request("reinvite", rtp_port=new_port)["code"] == 200
                time.sleep(1.5)
                m1, o1 = totals(mover.request("stats"), other_user), totals(other.request("stats"), mover_user)
                sdp = mover.request("observations")["sdp_received"][-1]
                assert sdp["where"] == "reinvite-sendrecv" and ports.relay_min <= sdp["m_port"] <= ports.relay_max, sdp
                [mstream] = mover.request("stats")["rtp"].values()
                assert mstream["local_port"] == new_port
                [ostream] = other.request("stats")["rtp"].values()
                assert ports.relay_min <= ostream["remote"][1] <= ports.relay_max, ostream   # still to the relay
                # RTP both ways after the re-INVITE (the mover now on new_port), every packet from the relay
                there, back = o1[1] - o0[1], m1[1] - m0[1]
                assert m1[0] - m0[0] > 40 and there >= 0.7 * (m1[0] - m0[0]), (mover_user, m0, m1, o0, o1)
                assert o1[0] - o0[0] > 40 and back >= 0.7 * (o1[0] - o0[0]), (mover_user, m0, m1, o0, o1)
                assert relayed(m1[2], ports) and relayed(o1[2], ports), (m1[2], o1[2])
            assert alice.request("hangup")["code"] == 200
            time.sleep(0.3)
            assert relay_command(ports, f"Q {call_id} {tags}") == "E50"          # relay session deleted
        assert call_rows(srv2) == ["ENDED/Normal"]
        assert not os.path.exists(tmp_path / "CDR" / FILE_NAME)
    finally:
        alice.close()
        bob.close()


def test_handed_over_call_without_bye_ends_on_relay_timeout_and_time_limit(tmp_path, relay):
    """Relay session gone (RTPProxy dropped it) -> RELAY_TIMEOUT; time limit -> HANDOVER_TIMEOUT;
    both parties get the server's BYE, the call's row is written once."""
    ports = relay
    env = {"HANDOVER_CHECK_INTERVAL": "1", "HANDOVER_CALL_MAX_SECONDS": "4"}
    with server(tmp_path, ports, **env) as srv:
        alice, bob, first = start_call(srv)
        try:
            alice.request("set", rtp_port=ports.spare_rtp[0])
            bob.request("set", rtp_port=ports.spare_rtp[1])
            second = bob.request("call", target="1001")
            assert second["code"] == 200
            time.sleep(0.5)
        except BaseException:
            alice.close()
            bob.close()
            raise
    try:
        saved = {c["call_id"]: c for c in json.load(open(tmp_path / "CDR" / FILE_NAME))}
        assert set(saved) == {first, second["call_id"]}
        c = saved[first]
        # the relay drops the first call's session while the server is down (as its TTL would)
        assert relay_command(ports, f"D {first} {c['caller_tag']} {c['callee_tag']}") == "0"
        t0 = time.monotonic()
        with server(tmp_path, ports, **env) as srv2:
            ended = [alice.request("wait", event="call_ended", timeout=8), bob.request("wait", event="call_ended", timeout=8)]
            ended += [alice.request("wait", event="call_ended", timeout=8), bob.request("wait", event="call_ended", timeout=8)]
            elapsed = time.monotonic() - t0
            time.sleep(0.5)
            rows = {r["call_id"]: f"{r['call_state']}/{r['termination_reason']}"
                    for r in srv2.cdr_rows() if r["record_type"] == "CALL"}
        assert {e["call_id"] for e in ended} == {first, second["call_id"]}, ended
        assert rows == {first: "ENDED/RELAY_TIMEOUT", second["call_id"]: "ENDED/HANDOVER_TIMEOUT"}, rows
        assert elapsed < 15
        c2 = saved[second["call_id"]]
        assert relay_command(ports, f"Q {second['call_id']} {c2['caller_tag']};1 {c2['callee_tag']};1") == "E50"
        assert len([r for r in srv2.cdr_rows() if r["record_type"] == "CALL"]) == 2
    finally:
        alice.close()
        bob.close()


def test_hand_over_file_round_trip_and_ending_rules(tmp_path):
    """Sans-IO: what is saved comes back as a confirmed dialog with its relay session; a second
    restart keeps the first hand-over time; an unusable entry is skipped; the ending rules."""
    from sipcore.call import Call
    from sipcore.call_handover import HANDOVER_TIMEOUT, RELAY_TIMEOUT, ending_reason, load, save
    call = Call(call_id="c1", caller_tag="a", caller_flow=("198.51.100.7", 4000), caller_transport="tcp",
                caller_from="<sip:1001@sip.local>;tag=a", callee_to="<sip:1002@sip.local>",
                caller_contact="<sip:1001@10.0.0.5>", started=100.0, callee_tag="b",
                callee_flow=("198.51.100.8", 5000), callee_contact="<sip:1002@10.0.0.6>", caller_cseq=3,
                callee_cseq=7, answered_at=101.0)
    path = str(tmp_path / "h.json")
    assert save(path, [call], now=200.0) == 1
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text[:-1] + ', {"call_id": "broken"}, "junk"]')
    [(cid, h)] = load(path).items()
    assert cid == "c1" and not os.path.exists(path)
    again = h.revive()
    assert again.state.value == "confirmed" and again.media and again.caller_transport == "tcp"
    assert again.callee_flow == ("198.51.100.8", 5000) and (again.caller_cseq, again.callee_cseq) == (3, 7)
    assert again.handed_over_at == 200.0
    save(path, [again], now=900.0)                      # handed over a second time
    assert load(path)["c1"].handed_over_at == 200.0
    assert ending_reason(again, 250.0, 3600, True) is None
    assert ending_reason(again, 250.0, 3600, None) is None          # relay cannot tell: time limit only
    assert ending_reason(again, 250.0, 3600, False) == RELAY_TIMEOUT
    assert ending_reason(again, 3800.0, 3600, True) == HANDOVER_TIMEOUT
    assert ending_reason(call, 3800.0, 3600, False) is None          # not a handed-over call


def test_handover_settings_are_read_and_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                       # no ims.env here
    from sipcore.config import Config
    from sipcore.errors import ConfigError
    base = {"SERVER_IP": "127.0.0.1", "CONFIG_FILE": str(tmp_path / "none.json")}
    c = Config.from_env(base)
    assert (c.handover_call_max_seconds, c.handover_check_interval) == (7200.0, 15.0)
    c = Config.from_env({**base, "HANDOVER_CALL_MAX_SECONDS": "600", "HANDOVER_CHECK_INTERVAL": "5"})
    assert (c.handover_call_max_seconds, c.handover_check_interval) == (600.0, 5.0)
    for key in ("HANDOVER_CALL_MAX_SECONDS", "HANDOVER_CHECK_INTERVAL"):
        with pytest.raises(ConfigError) as exc:
            Config.from_env({**base, key: "soon"})
        assert exc.value.key == key


def test_after_a_crash_the_bye_still_ends_the_relay_session(tmp_path, relay):
    """kill -9: nothing handed over, but the callee's BYE (tags in the other order) is relayed by
    its route token and deletes the session the relay kept; no row can be written for it."""
    ports = relay
    srv = server(tmp_path, ports)
    with srv:
        alice, bob, call_id = start_call(srv)
        try:
            [session] = json.loads(srv.mml("DSP MEDIA FORMAT=JSON")["output"])["sessions"]
            tags = f"{session['from_tag']};1 {session['to_tag']};1"
            srv.proc.kill()
            srv.proc.wait(10)
            assert not os.path.exists(tmp_path / "CDR" / FILE_NAME)
            assert relay_command(ports, f"Q {call_id} {tags}").split()[0].isdigit()     # audio goes on
            with server(tmp_path, ports) as srv2:
                assert bob.request("hangup")["code"] == 200
                assert alice.request("wait", event="call_ended", timeout=5)["call_id"] == call_id
                time.sleep(0.3)
                assert relay_command(ports, f"Q {call_id} {tags}") == "E50"
            assert call_rows(srv2) == []
        finally:
            alice.close()
            bob.close()
