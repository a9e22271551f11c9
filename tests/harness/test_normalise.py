"""Normalisation: role names for lab addresses, stable placeholders for ports, ids and times."""
from harness.normalise import Normaliser, duration, role_names
from netlab.topology import standard

PORTS = {40000: "alice-rtp", 40001: "alice-rtcp", 42000: "bob-rtp"}


def roles_for(caller: str, callee: str, slot: int = 3) -> tuple[dict[str, str], object]:
    topo = standard(caller, callee, slot=slot)

    def public_of(host: str) -> str:          # same walk as Lab.public_address, without a lab
        h = topo.host(host)
        while "public" not in h.addresses:
            h = next(r for r in topo.routers() if h.gateway in r.addresses.values())
        return h.addresses["public"]
    hosts = [(h.name, h.role, dict(h.addresses)) for h in topo.hosts]
    return role_names(hosts, public_of), topo


def test_role_names_per_nat_profile():
    roles, topo = roles_for("cone", "none")
    assert roles[topo.host("server").addresses["public"]] == "server"
    assert roles[topo.host("alice").addresses["lan_a"]] == "alice"
    assert roles[topo.host("nat_a").addresses["public"]] == "alice-public"
    assert roles[topo.host("nat_a").addresses["lan_a"]] == "nat_a-lan_a"
    assert roles[topo.host("bob").addresses["public"]] == "bob"          # no NAT: its own address
    roles, topo = roles_for("hairpin", "hairpin")
    assert roles[topo.host("nat_a").addresses["public"]] == "alice+bob-public"
    roles, topo = roles_for("cgnat", "cone")
    assert roles[topo.host("cgn_a").addresses["public"]] == "alice-public"
    assert roles[topo.host("nat_a").addresses["cgn_a"]] == "nat_a-cgn_a"
    assert roles[topo.host("nat_b").addresses["public"]] == "bob-public"


def test_text_replaces_addresses_ports_tags_branches():
    roles, topo = roles_for("symmetric", "cone")
    pub_a = topo.host("nat_a").addresses["public"]
    server = topo.host("server").addresses["public"]
    n = Normaliser(roles, PORTS)
    assert n.text(f"sip:1001@{pub_a}:43398;transport=udp;ob") == "sip:1001@<alice-public>:<port>;transport=udp;ob"
    assert n.text(f"sip:1001@{pub_a}:5060") == "sip:1001@<alice-public>:5060"
    assert n.text(f"<sip:1001@{server}>;tag=abc123") == "<sip:1001@<server>>;tag=<tag-1>"
    assert n.text("<sip:1002@x>;tag=zzz;foo") == "<sip:1002@x>;tag=<tag-2>;foo"
    assert n.text("<sip:1001@x>;tag=abc123") == "<sip:1001@x>;tag=<tag-1>"           # stable within a run
    assert n.text(f"SIP/2.0/UDP {server}:5060;branch=z9hG4bKx1") == "SIP/2.0/UDP <server>:5060;branch=<branch-1>"
    assert n.text("c=IN IP4 192.0.2.77") == "c=IN IP4 <other>"                       # not a lab address
    assert n.text("version 10.1.2.3.4") == "version 10.1.2.3.4"                      # not an address
    assert n.address("0.0.0.0") == "0.0.0.0" and n.address(None) is None
    assert [n.port(p) for p in (5060, "40000", 40001, 42000, 31000, "", "x")] == \
        ["5060", "<alice-rtp>", "<alice-rtcp>", "<bob-rtp>", "<port>", "", "x"]


def test_cdr_rows_get_stable_placeholders():
    roles, topo = roles_for("cone", "cone")
    pub_a, pub_b = topo.host("nat_a").addresses["public"], topo.host("nat_b").addresses["public"]
    server = topo.host("server").addresses["public"]

    def row(record_id, call_id, start, dur, state):
        return {"record_id": record_id, "record_type": "CALL", "call_state": state, "date": "2026-11-25",
                "start_time": start, "end_time": "", "call_id": call_id,
                "caller_uri": f"<sip:1001@sip.local>;tag={call_id[:4]}", "caller_ip": pub_a, "caller_port": "5060",
                "callee_ip": pub_b, "callee_port": "61234", "duration": dur, "setup_time": "0.21s",
                "status_code": "200", "server_ip": server, "server_port": "5060", "codec": "PCMU"}
    run1 = Normaliser(roles, PORTS).cdr_rows([row("20261125035020000001", "aaaa@10.0.0.1", "03:50:20", "2.50", "ANSWERED"),
                                              row("20261125035022000002", "aaaa@10.0.0.1", "03:50:20", "2.50", "ENDED")])
    run2 = Normaliser(roles, PORTS).cdr_rows([row("20261126000000000017", "bbbb@10.0.0.1", "11:11:11", "2.49", "ANSWERED"),
                                              row("20261126000000000018", "bbbb@10.0.0.1", "11:11:11", "2.49", "ENDED")])
    assert run1 == run2                                   # nothing run-specific survives
    first, second = run1
    assert first["record_id"] == "<record-1>" and second["record_id"] == "<record-2>"
    assert first["call_id"] == second["call_id"] == "<call-1>"   # the link between rows survives
    assert first["caller_ip"] == "<alice-public>" and first["callee_ip"] == "<bob-public>"
    assert first["callee_port"] == "<port>" and first["caller_port"] == "5060"
    assert first["date"] == "<time>" and first["end_time"] == ""
    assert first["duration"] == "<duration>" and first["caller_uri"] == "<sip:1001@sip.local>;tag=<tag-1>"
    assert first["server_ip"] == "<server>" and first["codec"] == "PCMU"
    changed = Normaliser(roles, PORTS).cdr_rows([row("1", "c@x", "t", "0.00", "FAILED")])[0]
    assert changed["call_state"] == "FAILED" and changed["duration"] == "0"   # real differences remain


def test_duration_buckets():
    assert [duration(v) for v in ("", "0", "0.00", "0.0s", "2.5", "0.21s", "n/a")] == \
        ["", "0", "0", "0", "<duration>", "<duration>", "<duration>"]
