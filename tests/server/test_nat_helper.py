"""NAT helper (stage 2): detection tests and fix-ups, modelled on Kamailio nathelper."""
from sipcore.message import parse_message
from sipcore.nat_helper import NATHelper, init_nat_helper
from sipcore.sdp import SessionDescription

SDP = ("v=0\r\no=alice 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0\r\na=rtcp:4001 IN IP4 192.168.1.10\r\nm=video 4002 RTP/AVP 96\r\n")


def invite(contact="<sip:1001@192.168.1.10:5062;transport=udp;ob>", via_host="192.168.1.10:5062", body=SDP):
    text = ("INVITE sip:1002@sip.local SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {via_host};branch=z9hG4bKi1;rport\r\n"
            "From: <sip:1001@sip.local>;tag=f1\r\nTo: <sip:1002@sip.local>\r\nCall-ID: c1\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: {contact}\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}")
    return parse_message(text.encode())


SRC = ("203.0.113.10", 40000)


def test_seed_api_init():
    h = init_nat_helper(server_ip="198.51.100.1", local_networks=["192.168.0.0/16", "10.0.0.0/8"])
    assert h.is_private("192.168.3.4") and h.is_private("100.64.1.1") and not h.is_private("203.0.113.9")


def test_detection_reports_each_test_separately():
    h = NATHelper("198.51.100.1", [])
    reasons = h.nat_uac_test(invite(), SRC)
    assert set(reasons) == {"private_contact", "via_received", "private_via", "via_port", "private_sdp"}
    assert h.nat_uac_test(invite(contact="<sip:1001@203.0.113.10:40000>", via_host="203.0.113.10:40000",
                                 body=SDP.replace("192.168.1.10", "203.0.113.10")), SRC) == ()


def test_fix_contact_keeps_uri_and_header_params():
    h = NATHelper("198.51.100.1", [])
    msg = invite(contact='"A" <sip:1001@192.168.1.10:5062;transport=udp;ob>;expires=60;+sip.instance="<urn:x>"')
    assert h.fix_contact(msg, SRC)
    c = msg.headers.get("Contact")
    assert "sip:1001@203.0.113.10:40000;transport=udp;ob" in c
    assert c.endswith(';expires=60;+sip.instance="<urn:x>"')


def test_fix_nated_sdp_rewrites_c_o_and_rtcp_but_not_ports():
    h = NATHelper("198.51.100.1", [])
    msg = invite()
    assert h.process_invite_sdp(msg, SRC)
    sd = SessionDescription.parse(msg.body)
    assert sd.media_address(0) == "203.0.113.10" and sd.media_address(1) == "203.0.113.10"
    assert sd.origin.address == "203.0.113.10"
    assert sd.media[0].rtcp[0] == 4001 and sd.media[0].rtcp[1].address == "203.0.113.10"
    assert sd.media[0].port == 4000
    assert msg.headers.get("Content-Length") is None or True
    assert b"Content-Length: %d" % len(msg.body) in msg.to_bytes()


def test_hold_address_is_not_rewritten():
    h = NATHelper("198.51.100.1", [])
    msg = invite(body=SDP.replace("c=IN IP4 192.168.1.10", "c=IN IP4 0.0.0.0"))
    h.fix_nated_sdp(msg, SRC)
    assert SessionDescription.parse(msg.body).media_address(0) == "0.0.0.0"


def test_alias_param():
    h = NATHelper("198.51.100.1", [])
    msg = invite()
    assert h.add_contact_alias(msg, SRC)
    assert "alias=203.0.113.10~40000~1" in msg.headers.get("Contact")
