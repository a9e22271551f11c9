"""SIP torture tests (RFC 4475 §3.1), written by hand from the RFC's descriptions.

Valid messages must parse (and the named fields come out right); invalid ones must raise the
typed SIPParseError — never another exception."""
import pytest

from sipcore.errors import SIPParseError
from sipcore.message import parse_message

H = ("Via: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK{b}\r\nMax-Forwards: 70\r\n"
     "From: <sip:caller@example.net>;tag=98asjd8\r\nTo: <sip:callee@example.com>\r\n"
     "Call-ID: {b}@example.net\r\nCSeq: 8 {m}\r\n")


def req(method="OPTIONS", uri="sip:callee@example.com", extra="", body="", b="t1", cl=None, start=None):
    line = start or f"{method} {uri} SIP/2.0"
    length = len(body.encode()) if cl is None else cl
    return (f"{line}\r\n" + H.format(b=b, m=method) + extra + f"Content-Length: {length}\r\n\r\n" + body).encode()


VALID = {
    # 3.1.1.1 wsinv: whitespace, folding, LWS around separators
    "wsinv": req("INVITE", extra="Subject:\r\n   lws\r\n   folded\r\nNewFangledHeader:   newfangled value\r\n continued newfangled value\r\n",
                 b="wsinv"),
    # 3.1.1.2 intmeth: unknown method made of token characters
    "intmeth": req("!interesting-Method0123456789_*+`.%indeed'~", b="intmeth").replace(
        b"CSeq: 8 !interesting", b"CSeq: 8 !interesting"),
    # 3.1.1.3 esc01: escaped characters in the user part and in a header URI
    "esc01": req("INVITE", uri="sip:sips%3Auser%40example.com@example.net", b="esc01"),
    # 3.1.1.4 escnull: %00 in a user part is legal
    "escnull": req("REGISTER", uri="sip:example.com", extra="Contact: <sip:%00@host5.example.net>\r\n", b="escnull"),
    # 3.1.1.6 lwsdisp: no LWS between display name and <
    "lwsdisp": req(extra='Route: caller<sip:caller@example.net>\r\n', b="lwsdisp"),
    # 3.1.1.7 longreq: very long values
    "longreq": req(extra="X-Long: " + "a" * 4000 + "\r\n" + "Route: " + ", ".join(f"<sip:r{i}@example.net>" for i in range(40)) + "\r\n", b="longreq"),
    # 3.1.1.9 semiuri: semicolons in the user part of a Contact
    "semiuri": req(extra="Contact: <sip:user;par=u%40example.net@example.com>\r\n", b="semiuri"),
    # 3.1.1.10 transports: unusual transports in Via
    "transports": req(extra="Via: SIP/2.0/SCTP t1.example.com;branch=z9hG4bKa, SIP/2.0/TLS t2.example.com;branch=z9hG4bKb\r\n"
                            "Via: SIP/2.0/UNKNOWN t3.example.com;branch=z9hG4bKc\r\n", b="transports"),
    # 3.1.1.12 unreason: unusual reason phrase (UTF-8)
    "unreason": ("SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое\r\n"
                 + H.format(b="unreason", m="INVITE") + "Content-Length: 0\r\n\r\n").encode(),
    # 3.1.1.13 noreason: empty reason phrase
    "noreason": ("SIP/2.0 100 \r\n" + H.format(b="noreason", m="INVITE") + "Content-Length: 0\r\n\r\n").encode(),
    # compact forms all over (3.1.1.1 also uses them)
    "compact": b"OPTIONS sip:u@h SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKc\r\nf: <sip:a@h>;tag=1\r\nt: <sip:u@h>\r\ni: c1\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n",
    # body shorter datagram extra bytes beyond Content-Length are ignored (RFC 3261 §18.3)
    "extra-body": req(body="v=0\r\n", cl=3),
}

INVALID = {
    "clerr": req("INVITE", body="v=0\r\n", cl=9999, b="clerr"),                # 3.1.2.2 Content-Length too big
    "scalar02": req(cl=-999, b="scalar02"),                                      # 3.1.2.3 negative Content-Length
    "scalarlg": req(b="scalarlg").replace(b"CSeq: 8 OPTIONS", b"CSeq: 36893488147419103232 OPTIONS"),  # 3.1.2.4
    "quotbal": req(b="quotbal").replace(b"To: <sip:callee@example.com>", b'To: "Mr. J. User <sip:j.user@example.com>'),  # 3.1.2.5
    "ltgtruri": req(start="INVITE <sip:user@example.com> SIP/2.0", method="INVITE", b="ltgtruri"),     # 3.1.2.6
    "lwsruri": req(start="INVITE sip:user@example.com; lr SIP/2.0", method="INVITE", b="lwsruri"),   # 3.1.2.7
    "lwsstart": req(start="INVITE  sip:user@example.com  SIP/2.0", method="INVITE", b="lwsstart"),   # 3.1.2.8
    "trws": req(start="OPTIONS sip:remote-target@example.net SIP/2.0 ", b="trws"),                     # 3.1.2.9
    "escruri": req(start="INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0 extra", method="INVITE", b="escruri"),
    "mismatch01": req(b="mismatch01").replace(b"CSeq: 8 OPTIONS", b"CSeq: 8 INVITE"),                 # 3.1.2.16
    "bigcode": ("SIP/2.0 4294967301 better not break the receiver\r\n" + H.format(b="bigcode", m="INVITE")
                + "Content-Length: 0\r\n\r\n").encode(),                                             # 3.1.2.19
    "badvers": req(start="OPTIONS sip:t.watson@example.org SIP/7.0", b="badvers"),                    # 3.1.2.15
    "no-call-id": req(b="nocid").replace(b"Call-ID: nocid@example.net\r\n", b""),
    "dup-call-id": req(extra="Call-ID: other@example.net\r\n", b="dup"),
    "bad-mf": req(b="mf").replace(b"Max-Forwards: 70", b"Max-Forwards: 300"),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_torture_messages_parse(name):
    msg = parse_message(VALID[name])
    assert msg.call_id and msg.cseq[0] >= 1
    again = parse_message(msg.to_bytes())
    assert again == msg


def test_valid_details():
    ws = parse_message(VALID["wsinv"])
    assert ws.headers.get("Subject") == "lws folded"
    assert ws.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert parse_message(VALID["noreason"]).reason == ""
    assert parse_message(VALID["extra-body"]).body == b"v=0"
    assert len(parse_message(VALID["longreq"]).headers.get_all("Route")) == 40
    assert [v.transport for v in parse_message(VALID["transports"]).vias()][1:] == ["SCTP", "TLS", "UNKNOWN"]
    assert parse_message(VALID["esc01"]).uri.user == "sips%3Auser%40example.com"


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_torture_messages_raise_the_typed_error(name):
    with pytest.raises(SIPParseError):
        parse_message(INVALID[name])


def test_novel_scheme_parses_and_the_proxy_answers_416():
    """3.1.2.10 novelsc: well-formed, but a scheme we do not support: 416, not a parse error."""
    import asyncio
    from tests.server.proxy_fixtures import ALICE, make_proxy
    msg = parse_message(req(start="OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0", b="novelsc"))
    assert msg.uri.scheme == "soap.beep" and not msg.uri.is_sip
    proxy, wire, *_ = make_proxy()
    asyncio.run(proxy.on_request(msg, ALICE, "udp"))
    [(resp, _)] = wire.take()
    assert resp.status == 416
