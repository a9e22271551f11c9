"""The hostile-peer scenarios: forge steps need the peer host, attacks are known, a forged request
that gets through is a failed step (so `harness compare` says REGRESSED), and the peer reports
relayed forgeries from its victim socket (checked against a deliberately open relay)."""
import json
import socket
import threading

import pytest

from harness import hostile
from harness.compare import judge, step_ok
from harness.scenario import ScenarioError, load, load_all
from netlab.topology import standard


def test_edge_scenarios_exist_for_every_stage():
    edge = [sc for sc in load_all() if "edge" in sc.tags]
    assert len(edge) >= 3
    for sc in edge:
        assert sc.hostile and any(s.kind == "forge" for s in sc.steps)
        assert all(sc.expect[stage]["steps"]["forge"] == "blocked" for stage in (0, 1, 2))


def test_forge_needs_the_hostile_host_and_a_known_attack(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\ntopology: {caller: cone, callee: cone}\nsteps:\n  - forge: {attack: dialog}\n")
    with pytest.raises(ScenarioError, match="hostile: true"):
        load(str(path))
    path.write_text("name: x\ntopology: {caller: cone, callee: cone, hostile: true}\nsteps:\n  - forge: nuke\n")
    with pytest.raises(ScenarioError, match="attack must be one of"):
        load(str(path))
    assert any(h.name == "eve" and "public" in h.addresses for h in standard(hostile=True).hosts)


def test_a_relayed_forgery_is_a_regression():
    base = {"steps": {"call": 200, "forge": "blocked", "hangup": 200}, "audio": {"direction": "two-way"}}
    cand = {"steps": {"call": 200, "forge": "relayed 3", "hangup": 408}, "audio": {"direction": "two-way"}}
    assert step_ok("blocked") and not step_ok("relayed 3")
    assert judge("edge-forged-dialog", [base, base], [cand]).verdict == "REGRESSED"


def test_the_peer_counts_what_an_open_relay_forwards_to_its_victim():
    """Against a toy open relay (forwards every request to the Route/R-URI host:port), the stranger
    attack must report relayed datagrams; a server that answers 403 to all must report none."""
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind(("127.0.0.1", 0))
    relay.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, src = relay.recvfrom(65535)
            except TimeoutError:
                continue
            if data.startswith(b"OPTIONS sip:127.0.0.1"):
                call_id = next(ln for ln in data.split(b"\r\n") if ln.startswith(b"Call-ID"))
                relay.sendto(b"SIP/2.0 200 OK\r\n" + call_id + b"\r\n\r\n", src)
                continue
            uri = data.split(b" ", 2)[1].decode(errors="replace")
            host, _, port = uri.split("@")[-1].split(";")[0].rpartition(":")
            if port.isdigit():
                relay.sendto(data, (host, int(port)))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        out = hostile.attack({"attack": "stranger", "server": ["127.0.0.1", relay.getsockname()[1]],
                              "bind": "127.0.0.1", "advertise": "127.0.0.1"})
    finally:
        stop.set()
        t.join(2)
        relay.close()
    assert out["relayed"] >= 4 and out["alive"]
    assert json.loads(json.dumps(out))["sent"] == 6
