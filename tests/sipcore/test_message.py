"""SIP message parsing/serialisation (RFC 3261) and the typed parse error."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sipcore.errors import SIPParseError
from sipcore.message import Headers, Via, build_response, parse_message, split_list
from sipcore.transport import error_reply
from sipcore.uri import NameAddr, SipURI

BASE = ("INVITE sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bK776;rport\r\n"
        "Max-Forwards: 70\r\nTo: Bob <sip:bob@example.com>\r\n"
        'f: "Alice, A" <sip:alice@example.com>;tag=1928\r\n'
        "i: a84b4c76e66710\r\nCSeq: 314159 INVITE\r\n"
        "m: <sip:alice@10.0.0.2:5062;transport=udp;ob>;expires=60, sip:alice@1.2.3.4\r\n"
        "X-Unknown: keep me ; exactly\r\n")


def msg(extra="", body=""):
    return (BASE + extra + f"Content-Length: {len(body.encode())}\r\n\r\n" + body).encode()


def test_compact_forms_multi_values_and_unknown_headers():
    m = parse_message(msg())
    assert m.call_id == "a84b4c76e66710" and m.from_tag == "1928" and m.cseq == (314159, "INVITE")
    assert [str(c.uri) for c in m.contacts()] == ["sip:alice@10.0.0.2:5062;transport=udp;ob", "sip:alice@1.2.3.4"]
    assert m.headers.get("x-unknown") == "keep me ; exactly"
    assert parse_message(m.to_bytes()) == m


def test_folding_and_via_list_split():
    m = parse_message(msg("Subject: first\r\n  second\r\nVia: SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKa, "
                          "SIP / 2.0 / UDP host.example;branch=z9hG4bKb;received=1.2.3.4\r\n"))
    assert m.headers.get("Subject") == "first second"
    vias = m.vias()
    assert [v.host for v in vias] == ["10.0.0.2", "2001:db8::1", "host.example"]
    assert vias[2].received == "1.2.3.4" and vias[0].rport is None and "rport" in vias[0].params


def test_content_length_recomputed_and_body_bytes():
    m = parse_message(msg(body="v=0\r\n"))
    m.body = b"\x00\x01binary"
    out = m.to_bytes()
    assert b"Content-Length: 8\r\n" in out and out.endswith(b"\x00\x01binary")


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"INVITE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", "missing"),
    (msg().replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"), "does not match"),
    (msg().replace(b"Content-Length: 0", b"Content-Length: 50"), "larger than body"),
    (msg().replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1), "version"),
    (msg().replace(b"Max-Forwards: 70", b"Max-Forwards: abc"), "Max-Forwards"),
    (b"\xff\xfe garbage", ""),
])
def test_malformed_messages_raise_the_typed_error(data, reason):
    with pytest.raises(SIPParseError) as exc:
        parse_message(data)
    assert reason in exc.value.reason


def test_bad_request_gets_400_with_warning_and_505_for_version():
    bad = msg().replace(b"Max-Forwards: 70", b"Max-Forwards: abc")
    with pytest.raises(SIPParseError) as exc:
        parse_message(bad)
    reply = error_reply(bad, exc.value, "198.51.100.1")
    assert reply.status == 400 and reply.headers.get("Warning").startswith('399 198.51.100.1 "bad Max-Forwards')
    v7 = msg().replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1)
    with pytest.raises(SIPParseError) as exc:
        parse_message(v7)
    assert exc.value.partial is None      # request line unusable: dropped with a log line


def test_oversized_message_rejected():
    with pytest.raises(SIPParseError):
        parse_message(msg(body="x" * 70000))


def test_uri_and_name_addr():
    u = SipURI.parse("sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr?subject=x")
    assert (u.scheme, u.user, u.password, u.host, u.port) == ("sips", "alice", "pw", "2001:db8::1", 5061)
    assert u.params == {"transport": "tcp", "lr": None} and str(u) == "sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr?subject=x"
    na = NameAddr.parse("sip:bob@x;tag=1")       # addr-spec: the param belongs to the header
    assert na.tag == "1" and na.uri.params == {}
    assert SipURI.parse("tel:+15551234").opaque == "+15551234"
    assert split_list('"a,b" <sip:x>, <sip:y;p=1,2>') == ['"a,b" <sip:x>', "<sip:y;p=1,2>"]


def test_build_response_copies_dialog_headers():
    m = parse_message(msg())
    r = build_response(m, 180, to_tag="t1")
    assert r.to_tag == "t1" and r.headers.get_all("Via") == m.headers.get_all("Via")
    assert r.cseq == m.cseq and r.call_id == m.call_id


def test_headers_set_add_remove():
    h = Headers([("Via", "a"), ("To", "t"), ("Via", "b")])
    h.add("Via", "c", top=True)
    assert h.get_all("via") == ["c", "a", "b"]
    assert h.remove_first("Via") == "c" and h.remove("via") == 2 and "To" in h


def _unquoted_characters(value: str):
    """(index, character) of every character outside double quotes (a backslash in quotes escapes
    the next one), then (len, None) when a quote is left open: the character-by-character
    definition the str.find-based scanners must agree with (their earlier code)."""
    in_q, i = False, 0
    while i < len(value):
        c = value[i]
        if in_q:
            if c == "\\":
                i += 1
            elif c == '"':
                in_q = False
        elif c == '"':
            in_q = True
        else:
            yield i, c
        i += 1
    if in_q:
        yield len(value), None


def _split_list_by_character(value: str) -> list[str]:
    if "," not in value:
        return [value.strip()] if value.strip() else []
    parts, start, in_angle = [], 0, False
    for i, c in _unquoted_characters(value):
        if c is None:
            raise SIPParseError("unterminated")
        if c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            if value[start:i].strip():
                parts.append(value[start:i].strip())
            start = i + 1
    if value[start:].strip():
        parts.append(value[start:].strip())
    return parts


@settings(max_examples=3000)
@given(st.text(alphabet=',"<>\\ a;=', max_size=30))
def test_split_list_agrees_with_the_character_definition(value):
    try:
        want = _split_list_by_character(value)
    except SIPParseError:
        with pytest.raises(SIPParseError):
            split_list(value)
        return
    assert split_list(value) == want


header_value = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=',"<>'),
                       min_size=1, max_size=20)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(extra=st.lists(st.tuples(st.sampled_from(["X-A", "Subject", "Accept", "Supported", "Route", "Contact"]),
                                header_value), max_size=6),
       body=st.binary(max_size=200))
def test_roundtrip_property(extra, body):
    text = BASE + "".join(f"{n}: {'<sip:' + v + '@h>' if n in ('Route', 'Contact') else v}\r\n" for n, v in extra)
    data = text.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    try:
        m = parse_message(data)
    except SIPParseError:
        return
    assert parse_message(m.to_bytes()) == m


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_the_typed_error(data):
    try:
        parse_message(data)
    except SIPParseError:
        pass


@pytest.mark.slow
@settings(max_examples=20000, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_20k(data):
    try:
        parse_message(data)
    except SIPParseError:
        pass


@settings(max_examples=300)
@given(pos=st.integers(0, 400), byte=st.integers(0, 255))
def test_mutated_valid_messages_only_raise_the_typed_error(pos, byte):
    data = bytearray(msg(body="v=0\r\n"))
    data[pos % len(data)] = byte
    try:
        parse_message(bytes(data))
    except SIPParseError:
        pass


def test_via_response_address_honours_received_and_rport():
    v = Via.parse("SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bKx;received=203.0.113.5;rport=40000")
    assert v.response_address() == ("203.0.113.5", 40000)


def _find_unquoted_by_character(text: str, ch: str) -> int:
    return next((i for i, c in _unquoted_characters(text) if c == ch), -1)


@settings(max_examples=2000)
@given(st.text(alphabet='<"\\ a>', max_size=20))
def test_find_unquoted_agrees_with_the_character_definition(text):
    from sipcore.uri import _find_unquoted
    assert _find_unquoted(text, "<") == _find_unquoted_by_character(text, "<")


@settings(max_examples=2000)
@given(st.text(max_size=12))
def test_host_check_agrees_with_the_character_definition(host):
    from sipcore.uri import split_hostport
    if ":" in host or "[" in host or not host.strip():
        return
    text = host + ":5060"
    ok = all(ch.isalnum() or ch in ".-_:" for ch in text.strip().partition(":")[0])
    try:
        split_hostport(text)
        accepted = True
    except SIPParseError:
        accepted = False
    assert accepted == ok


def test_recent_memos_stay_bounded():
    from sipcore.recent import keep
    cache: dict[int, int] = {}
    for i in range(10):
        keep(cache, i, i * i, 4)
        assert len(cache) <= 4 and cache[i] == i * i
    assert cache == {8: 64, 9: 81}          # emptied when full: the entries since the last emptying
