"""The Docker backend: same topology, same NAT behaviour, same observations as netns.
Needs root and a Docker engine (CI runs scripts/docker-engine.sh first); the image is built offline."""
import inspect
import json
import os
import shutil
import subprocess
import sys
import time

import pytest


def _engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


pytestmark = [pytest.mark.docker, pytest.mark.privileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="docker labs need root (CI runs as root)"),
              pytest.mark.skipif(not _engine_answers(),
                                 reason="no Docker engine answers (start one: sudo bash scripts/docker-engine.sh)"),
              pytest.mark.xdist_group("docker")]

from harness.compare import diff  # noqa: E402
from harness.runner import run_scenario  # noqa: E402
from harness.scenario import load  # noqa: E402
from netlab import open_lab, standard  # noqa: E402
from netlab.docker_backend import LABEL, prune_docker  # noqa: E402
from netlab.lifecycle import claim_slot, release_slot, unregister_cleanup  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UA_PORT = 5062
SERVER_PORTS = (5060, 5070)

# The server records the source of one datagram per port; alice sends one datagram to each port
# from one socket. Only lab addresses are used (the server's address on the public segment).
RECEIVER = """
import json, select, socket, sys
addr, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
socks = {}
for p in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, p))
    socks[s] = p
print("ready", flush=True)
seen = {}
for _ in range(150):          # up to 30 s: a docker exec on a loaded machine takes seconds
    r, _, _ = select.select(list(socks), [], [], 0.2)
    for s in r:
        data, src = s.recvfrom(100)
        seen[socks[s]] = list(src)
    if len(seen) == len(ports):
        break
print(json.dumps(seen), flush=True)
"""
SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
for _ in range(3):            # a datagram may be lost; one socket keeps its mapping per destination
    for p in sys.argv[3:]:
        s.sendto(b"probe", (sys.argv[2], int(p)))
    time.sleep(0.3)
"""


@pytest.fixture
def slot():
    s = claim_slot()
    yield s
    release_slot(s)


def probe(lab) -> dict[int, tuple[str, int]]:
    """Where the server sees alice's datagrams to each of SERVER_PORTS: {server port: (ip, port)}."""
    server = lab.address("server")
    rx = lab.spawn("server", [sys.executable, "-c", RECEIVER, server, *map(str, SERVER_PORTS)])
    try:
        assert rx.stdout.readline().strip() == "ready", rx.stderr.read()
        sent = lab.run("alice", [sys.executable, "-c", SENDER, str(UA_PORT), server, *map(str, SERVER_PORTS)],
                       timeout=15)
        assert sent.returncode == 0, sent.stderr
        out, err = rx.communicate(timeout=40)
    finally:
        if rx.poll() is None:
            rx.kill()
    seen = json.loads(out.strip().splitlines()[-1])
    return {int(p): (ip, port) for p, (ip, port) in seen.items()}


def normalise(lab, seen: dict[int, tuple[str, int]]) -> dict:
    """Backend-independent facts: what a NAT classification would record."""
    sources = set(seen.values())
    return {"received": sorted(seen) == sorted(SERVER_PORTS),
            "source_is_public_address": {ip for ip, _ in sources} == {lab.public_address("alice")},
            "port_preserved": {port for _, port in sources} == {UA_PORT},
            "one_mapping_for_all_destinations": len(sources) == 1}


EXPECTED = {
    "none": {"received": True, "source_is_public_address": True, "port_preserved": True,
             "one_mapping_for_all_destinations": True},
    "cone": {"received": True, "source_is_public_address": True, "port_preserved": True,
             "one_mapping_for_all_destinations": True},
    "symmetric": {"received": True, "source_is_public_address": True, "port_preserved": False,
                  "one_mapping_for_all_destinations": False},
}


@pytest.mark.parametrize("profile", ["none", "cone", "symmetric"])
def test_docker_lab_nat_profile_seen_from_the_server(profile, slot):
    with open_lab(standard(profile, "none", slot=slot), "docker") as lab:
        seen = probe(lab)
        facts = normalise(lab, seen)
        assert facts == EXPECTED[profile], seen
        if profile != "none":
            assert lab.public_address("alice") != lab.address("alice")
            assert "dport=5060" in lab.conntrack("nat_a")


@pytest.mark.parametrize("profile", ["cone", "symmetric"])
def test_same_probe_same_observations_on_netns_and_docker(profile, slot):
    observed = {}
    for backend in ("netns", "docker"):
        with open_lab(standard(profile, "none", slot=slot), backend) as lab:
            observed[backend] = normalise(lab, probe(lab))
    assert observed["netns"] == observed["docker"] == EXPECTED[profile]


def test_lab_containers_route_only_inside_the_lab(slot):
    """The host is no router in the lab: no container has a route off the lab's subnets, UAs
    reach the public segment through their router container."""
    with open_lab(standard("cone", "none", slot=slot), "docker") as lab:
        outside = "192.0.2.1"          # TEST-NET-1, not a lab subnet: only a route lookup, nothing is sent
        for host in ("server", "nat_a"):            # no gateway in the topology: no default route
            res = lab.run(host, ["ip", "route", "get", outside])
            assert res.returncode != 0 and "unreachable" in res.stderr.lower(), (host, res.stdout)
        router = lab.address("nat_a", "lan_a")
        for dest in (outside, lab.address("server")):   # alice: everything via her router container
            assert f"via {router} " in lab.run("alice", ["ip", "route", "get", dest]).stdout


def test_docker_labs_leave_nothing_behind(slot):
    import docker
    client = docker.from_env()
    with open_lab(standard("cone", "symmetric", slot=slot), "docker") as lab:
        lab_id = lab.id
        assert client.containers.list(filters={"label": f"{LABEL}={lab_id}"})
        assert client.networks.list(filters={"label": f"{LABEL}={lab_id}"})
    assert not client.containers.list(all=True, filters={"label": f"{LABEL}={lab_id}"})
    assert not client.networks.list(filters={"label": f"{LABEL}={lab_id}"})
    assert lab_id not in subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    lab.down()                                     # idempotent
    # a lab abandoned without down(): prune removes it, and only labelled objects
    abandoned = open_lab(standard("cone", "none", slot=slot), "docker").up()
    if abandoned._cleanup_key is not None:
        unregister_cleanup(abandoned._cleanup_key)
    others = {c.id for c in client.containers.list(all=True) if LABEL not in c.labels}
    try:
        # one lab's objects when prune_docker takes a lab id: a global prune would also remove the
        # labs of parallel runs
        one_lab = "lab_id" in inspect.signature(prune_docker).parameters
        removed = prune_docker(abandoned.id) if one_lab else prune_docker()
        assert any(name.startswith(abandoned.id) for name in removed), removed
        label = f"{LABEL}={abandoned.id}"
        assert not client.containers.list(all=True, filters={"label": label})
        assert not client.networks.list(filters={"label": label})
        assert others <= {c.id for c in client.containers.list(all=True)}
    finally:
        abandoned.down()


def test_lab_image_is_cached_by_input_hash():
    from netlab.image import VENV_PYTHON, ensure_image, image_tag
    first = ensure_image()
    t0 = time.monotonic()
    again = ensure_image()
    assert again == first == image_tag()
    assert time.monotonic() - t0 < 10
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", first, VENV_PYTHON, "-c",
                          "import sys, sipcore, harness, netlab, rtp.io; print(sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "(3, 11)", out.stderr


@pytest.mark.parametrize("name", ["both-cone", "nat-rebind"])
def test_same_scenario_same_observations_on_both_backends(name, tmp_path):
    sc = load(os.path.join(ROOT, "scenarios", f"{name}.yaml"))
    netns = run_scenario(sc, 2, backend="netns", evidence_root=str(tmp_path / "netns"))
    dock = run_scenario(sc, 2, backend="docker", evidence_root=str(tmp_path / "docker"))
    assert not netns.error and not dock.error, (netns.error, dock.error)
    assert diff(netns.observation, dock.observation) == {}
