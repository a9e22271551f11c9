"""NAT profiles proven with real packets in network namespaces (root; CI runs as root)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from netlab import open_lab, standard
from netlab.lifecycle import LAB_DIR, claim_slot, list_namespaces, prune, release_slot, unregister_cleanup
from netlab.topology import Topology, TopologyError

pytestmark = [pytest.mark.privileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)")]
PY = sys.executable

RECEIVER = """
import socket, sys, select, time
socks = []
for port in {ports}:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("{ip}", port)); socks.append(s)
seen, deadline = [], time.time() + {wait}
while time.time() < deadline and len(seen) < {count}:
    r, _, _ = select.select(socks, [], [], 0.2)
    for s in r:
        data, addr = s.recvfrom(4000)
        seen.append((s.getsockname()[1], addr[0], addr[1], data[:300].decode(errors="replace")))
        if {echo}: s.sendto(data, addr)
for item in seen: print(repr(item))
"""

SENDER = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", {sport})); s.settimeout({timeout})
for dport in {ports}:
    for i in range({count}):
        s.sendto({payload!r}, ("{dst}", dport)); time.sleep({gap})
got = 0
try:
    while True: s.recvfrom(4000); got += 1
except OSError: pass
print("got", got)
"""


@pytest.fixture
def slot():
    s = claim_slot()
    yield s
    release_slot(s)


def receive(lab, ports, count, wait=3.0, echo=False):
    code = RECEIVER.format(ports=list(ports), ip=lab.address("server"), wait=wait, count=count, echo=echo)
    return lab.spawn("server", [PY, "-c", code])


def send(lab, host, ports, count=1, payload=b"probe", sport=5062, gap=0.0, timeout=0.5):
    code = SENDER.format(ports=list(ports), dst=lab.address("server"), count=count, payload=payload, sport=sport,
                         gap=gap, timeout=timeout)
    return lab.run(host, [PY, "-c", code], timeout=30)


def results(proc):
    out, err = proc.communicate(timeout=20)
    return [eval(line) for line in out.splitlines() if line.startswith("(")]


def _root_link_names() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _root_routes_into(subnets) -> list[str]:
    import ipaddress
    nets = [ipaddress.ip_network(s) for s in subnets]
    out = subprocess.run(["ip", "-o", "route"], capture_output=True, text=True).stdout
    hits = []
    for line in out.splitlines():
        dst = line.split()[0]
        if dst != "default" and any(ipaddress.ip_network(dst, strict=False).overlaps(n) for n in nets):
            hits.append(line)
    return hits


def test_lab_up_is_fast_and_leaves_nothing(slot):
    """Judged by what this lab owns (its link names, its subnets), so Docker tests changing the
    root namespace on another worker at the same time cannot disturb it."""
    from netlab.netns_backend import ifname
    root_links = _root_link_names()
    with open_lab(standard("cone", "cone", slot=slot)) as lab:
        assert lab.up_seconds < 1.0, f"3 hosts + 2 NATs took {lab.up_seconds:.3f}s"
        ours = [n for n in list_namespaces() if n.startswith(lab.id)]
        assert len(ours) == 5 + 3          # 5 hosts/routers + public, lan_a, lan_b switches
        # no lab route or NAT rule mentions a root-namespace interface
        for host in ("nat_a", "nat_b", "server", "alice"):
            routes = lab.run(host, ["ip", "route"]).stdout
            rules = lab.run(host, ["iptables-save"]).stdout
            for name in root_links:
                assert f"dev {name} " not in routes and f"-o {name} " not in rules
        lab_links = {ifname(seg.name) for seg in lab.topology.segments} | \
                    {("p-" + h.name)[:15] for h in lab.topology.hosts}
        subnets = [seg.subnet for seg in lab.topology.segments]
        assert not lab_links & _root_link_names()          # both veth ends live inside the lab
        assert _root_routes_into(subnets) == []             # the host has no way into the lab
        lab_id = lab.id
    assert not [n for n in list_namespaces() if n.startswith(lab_id)]
    assert not lab_links & _root_link_names()
    assert _root_routes_into(subnets) == []


def test_cone_preserves_the_source_port(slot):
    with open_lab(standard("cone", "none", slot=slot)) as lab:
        rx = receive(lab, [5060, 5070], 2)
        time.sleep(0.3)
        send(lab, "alice", [5060, 5070])
        seen = results(rx)
        assert {(ip, port) for _, ip, port, _ in seen} == {(lab.public_address("alice"), 5062)}


def test_symmetric_maps_per_destination_and_rebind_changes_it(slot):
    with open_lab(standard("symmetric", "none", slot=slot)) as lab:
        rx = receive(lab, [5060, 5070], 2)
        time.sleep(0.3)
        send(lab, "alice", [5060, 5070])
        seen = results(rx)
        ports = {p for _, _, p, _ in seen}
        assert len(seen) == 2 and len(ports) == 2 and 5062 not in ports
        rx = receive(lab, [5060], 1)
        time.sleep(0.3)
        send(lab, "alice", [5060])
        first = results(rx)[0][2]
        lab.nat_rebind("nat_a")
        rx = receive(lab, [5060], 1)
        time.sleep(0.3)
        send(lab, "alice", [5060])
        assert results(rx)[0][2] != first


SIP = ("REGISTER sip:sip.local SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK1\r\nFrom: <sip:1001@sip.local>;tag=1\r\n"
       "To: <sip:1001@sip.local>\r\nCall-ID: 1@{ip}\r\nCSeq: 1 REGISTER\r\nContact: <sip:1001@{ip}:5060>\r\n"
       "Content-Length: 0\r\n\r\n")


def test_sip_alg_rewrites_contact_and_via(slot):
    with open_lab(standard("sip-alg", "none", slot=slot)) as lab:
        rx = receive(lab, [5060], 1)
        time.sleep(0.3)
        ip = lab.address("alice")
        send(lab, "alice", [5060], payload=SIP.format(ip=ip).encode(), sport=5060)
        [(_, src, _, text)] = results(rx)
        public = lab.public_address("alice")
        assert f"Contact: <sip:1001@{public}:5060>" in text and f"Via: SIP/2.0/UDP {public}:5060" in text
        assert ip not in text.split("Call-ID")[0]


def test_cone_without_alg_leaves_sip_alone(slot):
    with open_lab(standard("cone", "none", slot=slot)) as lab:
        rx = receive(lab, [5060], 1)
        time.sleep(0.3)
        ip = lab.address("alice")
        send(lab, "alice", [5060], payload=SIP.format(ip=ip).encode(), sport=5060)
        [(_, _, _, text)] = results(rx)
        assert f"Contact: <sip:1001@{ip}:5060>" in text


def test_cgnat_has_two_nat_hops(slot):
    with open_lab(standard("cgnat", "none", slot=slot)) as lab:
        topo = lab.topology
        home_wan = topo.host("nat_a").addresses["cgn_a"]
        assert home_wan.startswith("100.")
        rx = receive(lab, [5060], 1)
        time.sleep(0.3)
        send(lab, "alice", [5060])
        [(_, src, _, _)] = results(rx)
        assert src == lab.public_address("alice") == topo.host("cgn_a").addresses["public"]
        assert "100." in lab.conntrack("nat_a") and "10." in lab.conntrack("nat_a")


def test_hairpin_two_uas_behind_one_nat_reach_each_other_through_the_server(slot):
    with open_lab(standard("hairpin", "hairpin", slot=slot)) as lab:
        assert lab.first_router("alice") == lab.first_router("bob") == "nat_a"
        relay = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("{ip}", 6000)); s.settimeout(5)
peers = []
while len(peers) < 2:
    d, a = s.recvfrom(100)
    if a not in peers: peers.append(a)
s.sendto(b"to-first", peers[0]); s.sendto(b"to-second", peers[1])
print(peers)
""".format(ip=lab.address("server"))
        rp = lab.spawn("server", [PY, "-c", relay])
        time.sleep(0.3)
        client = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", {p})); s.settimeout(5)
s.sendto(b"hi", ("{dst}", 6000)); print(s.recvfrom(100)[0])
"""
        a = lab.spawn("alice", [PY, "-c", client.format(p=7000, dst=lab.address("server"))])
        time.sleep(0.2)
        b = lab.spawn("bob", [PY, "-c", client.format(p=7000, dst=lab.address("server"))])
        assert a.communicate(timeout=10)[0].strip() == "b'to-first'"
        assert b.communicate(timeout=10)[0].strip() == "b'to-second'"
        rp.communicate(timeout=10)


def test_udp_mapping_timeout(slot):
    with open_lab(standard("cone", "none", slot=slot, udp_timeout=2)) as lab:
        late_reply = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("{ip}", 5060)); s.settimeout(5)
d, a = s.recvfrom(100); s.sendto(b"early", a); time.sleep(3.5); s.sendto(b"late", a)
""".format(ip=lab.address("server"))
        srv = lab.spawn("server", [PY, "-c", late_reply])
        time.sleep(0.3)
        out = lab.run("alice", [PY, "-c", """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 5062)); s.settimeout(5)
s.sendto(b"x", ("%s", 5060)); print(s.recvfrom(100)[0])
try: print(s.recvfrom(100)[0])
except OSError: print("timeout")
""" % lab.address("server")], timeout=20).stdout.split()
        srv.communicate(timeout=10)
        assert out == ["b'early'", "timeout"]


def test_sip_loss_drops_about_the_configured_share(slot):
    with open_lab(standard("cone", "none", slot=slot, loss=0.3)) as lab:
        rx = receive(lab, [5060, 5070], 400, wait=4)
        time.sleep(0.3)
        send(lab, "alice", [5060, 5070], count=200, gap=0.001)
        seen = results(rx)
        sip = sum(1 for p, *_ in seen if p == 5060)
        other = sum(1 for p, *_ in seen if p == 5070)
        assert other == 200                      # only SIP (port 5060) is affected
        assert 100 <= sip <= 180, sip            # ~140 expected with p=0.3


def test_topology_validation_errors():
    with pytest.raises(TopologyError, match="overlap"):
        Topology.from_dict({"segments": {"a": "10.0.0.0/24", "b": "10.0.0.0/25"}, "hosts": {"h": {"addresses": {"a": "10.0.0.2"}}}})
    with pytest.raises(TopologyError, match="unknown segment"):
        Topology.from_dict({"segments": {"a": "10.0.0.0/24"}, "hosts": {"h": {"addresses": {"x": "10.0.0.2"}}}})
    with pytest.raises(TopologyError, match="outside"):
        Topology.from_dict({"segments": {"a": "10.0.0.0/24"}, "hosts": {"h": {"addresses": {"a": "10.0.1.2"}}}})
    with pytest.raises(TopologyError, match="unknown NAT profile"):
        standard("full-cone")


BUILDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from netlab import open_lab, standard
    lab = open_lab(standard("cgnat", "symmetric", slot={slot}))
    print(lab.id, flush=True)
    import netlab.netns_backend as nb
    real = nb._ip
    def slow(*a, **k):
        real(*a, **k); print("step", flush=True); time.sleep(0.3)
    nb._ip = slow
    with lab:
        print("up", flush=True); time.sleep(30)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_setup_leaves_nothing(slot, sig):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([PY, "-c", BUILDER.format(root=root, slot=slot)], stdout=subprocess.PIPE, text=True)
    lab_id = proc.stdout.readline().strip()
    assert proc.stdout.readline().strip() == "step"     # first namespaces exist, setup still running
    assert [n for n in list_namespaces() if n.startswith(lab_id)]
    proc.send_signal(sig)
    proc.wait(20)
    assert not [n for n in list_namespaces() if n.startswith(lab_id)]


def test_sigkilled_lab_is_removed_by_the_next_lab_up(slot):
    """SIGKILL (or a machine restart) runs no cleanup; the owner record lets the next lab brought
    up anywhere on the machine remove what the dead process left."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([PY, "-c", BUILDER.format(root=root, slot=slot).replace("time.sleep(0.3)", "")],
                            stdout=subprocess.PIPE, text=True)
    lab_id = proc.stdout.readline().strip()
    for _ in range(20):
        if proc.stdout.readline().strip() == "up":
            break
    else:
        pytest.fail("the builder never brought its lab up")
    proc.kill()
    assert proc.wait(10) == -signal.SIGKILL
    other = claim_slot()
    try:
        with open_lab(standard("none", "none", slot=other)):
            assert not [n for n in list_namespaces() if n.startswith(lab_id)]
            assert not os.path.exists(os.path.join(LAB_DIR, lab_id))
    finally:
        release_slot(other)


def test_prune_of_one_lab_leaves_a_running_lab_alone(slot):
    abandoned = open_lab(standard("none", "none", slot=slot)).up()
    unregister_cleanup(abandoned._cleanup_key)      # left behind by a process that is still alive
    other = claim_slot()
    try:
        assert [n for n in list_namespaces() if n.startswith(abandoned.id)]
        with open_lab(standard("none", "none", slot=other)) as bystander:
            mine = [n for n in list_namespaces() if n.startswith(bystander.id)]
            prune(abandoned.id)
            assert not [n for n in list_namespaces() if n.startswith(abandoned.id)]
            assert [n for n in list_namespaces() if n.startswith(bystander.id)] == mine
    finally:
        prune(abandoned.id)
        release_slot(other)


@pytest.mark.skipif(not os.path.exists("/usr/bin/setpriv"), reason="needs setpriv (util-linux) to drop root")
def test_without_root_a_clear_message_not_a_traceback():
    env = dict(os.environ, HOME="/tmp", PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PY, "-m", "harness",
                          "lab", "up", "--standard", "cone,cone"], capture_output=True, text=True, timeout=60,
                         env=env, cwd="/tmp")
    assert out.returncode == 2
    assert "need root" in out.stderr and "sudo" in out.stderr and "Traceback" not in out.stderr


def test_parallel_labs_are_isolated():
    """Two labs at once (as two xdist workers would run them): different slots, no overlapping
    subnets, and one lab's hosts cannot reach the other lab's server at all."""
    import ipaddress
    s1, s2 = claim_slot(), claim_slot()
    try:
        with open_lab(standard("cone", "cone", slot=s1)) as a, open_lab(standard("cone", "cone", slot=s2)) as b:
            nets_a = [ipaddress.ip_network(s.subnet) for s in a.topology.segments]
            nets_b = [ipaddress.ip_network(s.subnet) for s in b.topology.segments]
            assert not any(x.overlaps(y) for x in nets_a for y in nets_b)
            rx = receive(b, [5060], 1, wait=1.5)
            time.sleep(0.3)
            code = ("import socket;s=socket.socket(2,2)\n"
                    f"try: s.sendto(b'x',('{b.address('server')}',5060)); print('sent')\n"
                    "except OSError as e: print('unreachable', e.errno)")
            a.run("alice", [PY, "-c", code])
            assert results(rx) == []
    finally:
        release_slot(s1)
        release_slot(s2)
