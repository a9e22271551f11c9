"""Registrar rules (RFC 3261 §10.3) on the sans-IO Registrar."""
from sipcore.message import parse_message
from sipcore.nat_helper import NATHelper
from sipcore.registrar import Registrar
from sipcore.stage_policy import StagePolicy

SRC = ("203.0.113.10", 40000)


def register(contact="<sip:1001@192.168.1.10:5062;transport=udp;ob>", expires=None, call_id="reg1",
             cseq=1, extra=""):
    lines = [
        "REGISTER sip:sip.local SIP/2.0",
        "Via: SIP/2.0/UDP 192.168.1.10:5062;branch=z9hG4bKr1;rport",
        "Max-Forwards: 70",
        "From: <sip:1001@sip.local>;tag=a1",
        "To: <sip:1001@sip.local>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if extra:
        lines.append(extra)
    return parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())


def test_register_stores_binding_with_source_and_transport():
    reg = Registrar()
    out = reg.handle_register(register(), SRC, "udp", now=1000)
    assert out.response.status == 200
    [b] = reg.lookup("1001", 1000)
    assert b.source == SRC and b.transport == "udp"
    assert b.original_contact == "sip:1001@192.168.1.10:5062;transport=udp;ob"
    assert out.response.headers.get("Contact").endswith(";expires=3600")


def test_several_contacts_per_aor_and_expiry():
    reg = Registrar()
    reg.handle_register(register(expires=120), SRC, "udp", now=1000)
    reg.handle_register(register(contact="<sip:1001@192.168.1.11:5070>", call_id="reg2", expires=600),
                        ("203.0.113.11", 5070), "udp", now=1001)
    assert len(reg.lookup("sip:1001@sip.local", 1002)) == 2
    assert len(reg.lookup("1001", 1125)) == 1        # the 120 s one expired


def test_interval_too_brief_gets_423_with_min_expires():
    reg = Registrar(min_expires=60)
    out = reg.handle_register(register(expires=10), SRC, "udp", now=0)
    assert out.response.status == 423
    assert out.response.headers.get("Min-Expires") == "60"


def test_expires_capped_at_max():
    reg = Registrar(max_expires=300)
    out = reg.handle_register(register(expires=7200), SRC, "udp", now=0)
    assert out.expires == 300


def test_wildcard_unregister_requires_expires_zero():
    reg = Registrar()
    reg.handle_register(register(), SRC, "udp", now=0)
    bad = reg.handle_register(register(contact="*", expires=60, cseq=2), SRC, "udp", now=1)
    assert bad.response.status == 400
    ok = reg.handle_register(register(contact="*", expires=0, cseq=3), SRC, "udp", now=2)
    assert ok.response.status == 200 and ok.unregistered
    assert reg.lookup("1001", 3) == []


def test_expires_zero_removes_one_contact():
    reg = Registrar()
    reg.handle_register(register(), SRC, "udp", now=0)
    out = reg.handle_register(register(expires=0, cseq=2), SRC, "udp", now=1)
    assert out.unregistered and out.removed
    assert reg.lookup("1001", 2) == []


def test_query_without_contact_lists_bindings():
    reg = Registrar()
    reg.handle_register(register(), SRC, "udp", now=0)
    out = reg.handle_register(register(contact=None, cseq=2), SRC, "udp", now=1)
    assert out.response.status == 200
    assert len(out.response.headers.get_all("Contact")) == 1


def test_legacy_policy_rewrites_contact_to_source():
    reg = Registrar(contact_policy=StagePolicy(0).register_contact)
    reg.handle_register(register(), SRC, "udp", now=0)
    [b] = reg.lookup("1001", 1)
    assert b.contact.startswith("sip:1001@203.0.113.10:40000")


def test_stage2_keeps_uri_params_when_fixing_contact():
    policy = StagePolicy(2, NATHelper("198.51.100.1", ["192.168.0.0/16"]))
    reg = Registrar(contact_policy=policy.register_contact)
    reg.handle_register(register(), SRC, "udp", now=0)
    [b] = reg.lookup("1001", 1)
    assert b.contact == "sip:1001@203.0.113.10:40000;transport=udp;ob"
    assert b.nated and "private_contact" in b.nat_reasons


def test_stage2_leaves_public_contact_alone():
    policy = StagePolicy(2, NATHelper("198.51.100.1", []))
    reg = Registrar(contact_policy=policy.register_contact)
    msg = register(contact="<sip:1001@203.0.113.10:40000>")
    msg.headers.set("Via", "SIP/2.0/UDP 203.0.113.10:40000;branch=z9hG4bKx")
    reg.handle_register(msg, SRC, "udp", now=0)
    [b] = reg.lookup("1001", 1)
    assert not b.nated and b.contact == "sip:1001@203.0.113.10:40000"


def test_200_lists_each_contact_as_registered_with_expires_and_the_received_source_beside_it():
    """RFC 3261 §10.3 step 8 behind NAT (stage 2 policy rewrites the stored Contact): the UA finds
    its own binding in the 200; routing still uses the NAT source (Kamailio's received)."""
    policy = StagePolicy(2, NATHelper("198.51.100.1", ["192.168.0.0/16"]))
    reg = Registrar(contact_policy=policy.register_contact)
    two = "<sip:1001@192.168.1.10:5062;transport=udp;ob>;q=0.7, <sip:1001@192.168.1.10:5064>;q=0.3;expires=300"
    out = reg.handle_register(register(contact=two, expires=600), SRC, "udp", now=0)
    assert out.response.headers.get_all("Contact") == [
        "<sip:1001@192.168.1.10:5062;transport=udp;ob>;expires=600", "<sip:1001@192.168.1.10:5064>;expires=300"]
    bindings = reg.lookup("1001", 1)
    assert {b.source for b in bindings} == {SRC}
    assert all(b.target()[1] == SRC for b in bindings)
    assert {b.contact for b in bindings} == {"sip:1001@203.0.113.10:40000;transport=udp;ob",
                                            "sip:1001@203.0.113.10:40000"}
    # Contact: * with Expires: 0 still removes them all, and the 200 lists none
    out = reg.handle_register(register(contact="*", expires=0, cseq=2), SRC, "udp", now=2)
    assert out.response.status == 200 and not out.response.headers.get_all("Contact")
    assert reg.lookup("1001", 3) == []


def test_stage0_keeps_the_legacy_echo_of_the_rewritten_contact():
    reg = Registrar(contact_policy=StagePolicy(0).register_contact, echo_registered_contact=False)
    out = reg.handle_register(register(), SRC, "udp", now=0)
    assert out.response.headers.get("Contact") == "<sip:1001@203.0.113.10:40000;transport=udp;ob>;expires=3600"
