"""The Docker backend: same topology, same NAT behaviour, same harness observations as netns.
Needs a Docker engine (scripts/setup.sh starts one) and root; the lab image is built offline."""
import os
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.privileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="labs need root (CI runs as root)"),
              pytest.mark.skipif(not shutil.which("docker") or subprocess.run(["docker", "info"], capture_output=True).returncode != 0,
                                 reason="no Docker engine answers (bash scripts/docker-engine.sh starts one)"),
              pytest.mark.xdist_group("docker")]

from harness.compare import diff  # noqa: E402
from harness.runner import run_scenario  # noqa: E402
from harness.scenario import load  # noqa: E402
from netlab import open_lab, standard  # noqa: E402
from netlab.docker_backend import LABEL, prune_docker  # noqa: E402
from netlab.lifecycle import claim_slot, release_slot  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def slot():
    s = claim_slot()
    yield s
    release_slot(s)


def mapped_ports(lab, dports):
    srv = lab.address("server")
    code = ("import socket,select;ss=[];\n"
            f"for p in {dports}:\n s=socket.socket(2,2);s.bind(('{srv}',p));ss.append(s)\n"
            "out=set()\nfor _ in range(20):\n r,_,_=select.select(ss,[],[],0.2)\n"
            " for s in r: out.add(s.recvfrom(100)[1])\n if len(out)>=len(ss): break\nprint(sorted(out))")
    rx = lab.spawn("server", [sys.executable, "-c", code])
    time.sleep(0.5)
    lab.run("alice", [sys.executable, "-c", "import socket;s=socket.socket(2,2);s.bind(('0.0.0.0',5062))\n"
                                             f"for p in {dports}: s.sendto(b'x',('{srv}',p))"])
    return eval(rx.communicate(timeout=15)[0].strip() or "[]")


def test_docker_cone_and_symmetric_mappings(slot):
    with open_lab(standard("cone", "none", slot=slot), "docker") as lab:
        seen = mapped_ports(lab, [5060, 5070])
        assert {p for _, p in seen} == {5062} and seen[0][0] == lab.public_address("alice")
    with open_lab(standard("symmetric", "none", slot=slot), "docker") as lab:
        seen = mapped_ports(lab, [5060, 5070])
        assert len({p for _, p in seen}) == 2 and 5062 not in {p for _, p in seen}


def test_docker_labs_leave_nothing_behind(slot):
    import docker
    client = docker.from_env()
    with open_lab(standard("cone", "cone", slot=slot), "docker") as lab:
        assert client.containers.list(filters={"label": f"{LABEL}={lab.id}"})
        lab_id = lab.id
    assert not client.containers.list(all=True, filters={"label": f"{LABEL}={lab_id}"})
    assert not client.networks.list(filters={"label": f"{LABEL}={lab_id}"})
    prune_docker()
    assert not client.containers.list(all=True, filters={"label": LABEL})


@pytest.mark.parametrize("name", ["both-cone", "nat-rebind"])
def test_same_scenario_same_observations_on_both_backends(name, tmp_path):
    sc = load(os.path.join(ROOT, "scenarios", f"{name}.yaml"))
    netns = run_scenario(sc, 2, backend="netns", evidence_root=str(tmp_path / "netns"))
    dock = run_scenario(sc, 2, backend="docker", evidence_root=str(tmp_path / "docker"))
    assert not netns.error and not dock.error, (netns.error, dock.error)
    assert diff(netns.observation, dock.observation) == {}
