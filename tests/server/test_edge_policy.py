"""Edge policy of the sans-IO proxy: route tokens, in-dialog admission, destinations, identity."""
import asyncio
import os

import pytest

from sipcore.admission import Admission, parse_outbound_route
from sipcore.auth_policy import SipAuthorizer
from sipcore.digest import (
    DigestAuthenticator,
    compute_ha1,
    compute_response,
    parse_auth_params,
)
from sipcore.errors import ConfigError
from sipcore.message import parse_message
from sipcore.record_route import Flow, RouteTokens, load_secret, loose_route
from sipcore.uri import NameAddr

from .proxy_fixtures import (
    ALICE,
    BOB,
    SDP_A,
    SDP_B,
    SERVER,
    in_dialog,
    invite,
    make_proxy,
    register,
    response_to,
)

EVE = ("203.0.113.66", 5060)
SECRET = b"0123456789abcdef0123456789abcdef"


def run(coro):
    return asyncio.run(coro)


def tokens():
    return RouteTokens(SECRET, *SERVER)


# --- route tokens -----------------------------------------------------------------------------
def test_token_round_trip_names_the_dialog_and_both_flows():
    t = tokens()
    rr = t.record_route("c1", "ft", Flow("203.0.113.10", 40000), Flow("203.0.113.20", 41000, "tcp"))
    route = t.verify(NameAddr.parse(rr).uri, "c1")
    assert route.ftag == "ft"
    assert route.target_for("ft") == Flow("203.0.113.20", 41000, "tcp")     # caller -> callee
    assert route.target_for("other") == Flow("203.0.113.10", 40000)          # callee -> caller


@pytest.mark.parametrize("mutate", [
    lambda u: u.replace(";rt=", ";rt=A"),                       # payload changed
    lambda u: u[:-3] + ("AAA" if not u.endswith("AAA>") else "BBB") + ">",   # MAC changed
    lambda u: u.split(";rt=")[0] + ">",                         # no token
])
def test_forged_or_missing_token_is_rejected(mutate):
    t = tokens()
    rr = mutate(t.record_route("c1", "ft", Flow("203.0.113.10", 40000)))
    assert t.verify(NameAddr.parse(rr).uri, "c1") is None


def test_token_is_bound_to_the_call_id_the_secret_and_the_server():
    rr = tokens().record_route("c1", "ft", Flow("203.0.113.10", 40000))
    uri = NameAddr.parse(rr).uri
    assert tokens().verify(uri, "c2") is None
    assert RouteTokens(b"another-secret-of-32-bytes-length", *SERVER).verify(uri, "c1") is None
    assert RouteTokens(SECRET, SERVER[0], 5070).verify(uri, "c1") is None
    assert tokens().verify(uri, "c1") is not None      # same secret after a restart: still valid


def test_loose_route_rules():
    t = tokens()
    good = t.record_route("call1", "ftag", Flow(*ALICE))
    assert loose_route(in_dialog("BYE", "z9hG4bK1", route=None), t).status == 404
    assert loose_route(in_dialog("BYE", "z9hG4bK1", route="<sip:203.0.113.99;lr>"), t).status == 403
    assert loose_route(in_dialog("BYE", "z9hG4bK1"), t).status == 403       # ours, no token
    assert loose_route(in_dialog("BYE", "z9hG4bK1", call_id="x", route=good), t).status == 403
    assert loose_route(in_dialog("BYE", "z9hG4bK1", from_tag="a", to_tag="b", route=good), t).status == 403
    req = in_dialog("BYE", "z9hG4bK1", route=good + ", <sip:203.0.113.99;lr>")
    check = loose_route(req, t)
    assert check.status is None and check.route.ftag == "ftag"
    assert req.headers.get_all("Route") == ["<sip:203.0.113.99;lr>"]      # ours popped, the next kept


def test_secret_file_is_created_once_and_reused(tmp_path):
    path = str(tmp_path / "d" / "rr_secret.key")
    first = load_secret(None, path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600" and len(first) == 64
    assert load_secret(None, path) == first
    assert load_secret("an-operator-secret-value", path) == b"an-operator-secret-value"
    with pytest.raises(ConfigError) as err:
        load_secret("short", path)
    assert err.value.key == "RR_SECRET"


# --- forged in-dialog requests through the proxy ----------------------------------------------
FORGED = [
    ("BYE", "", None),
    ("MESSAGE", "", None),
    ("INVITE", SDP_A, None),
    ("OPTIONS", "", None),
    ("INFO", "", "<sip:198.51.100.1:5060;lr>, <sip:203.0.113.99:5060;lr>"),
]


@pytest.mark.parametrize("method,body,route", FORGED)
def test_forged_in_dialog_request_is_refused_nothing_sent_no_media(method, body, route):
    proxy, wire, events, media, reg = make_proxy(stage=1)
    register(reg, "1002", BOB, "192.168.2.20")
    req = in_dialog(method, "z9hG4bKforged", call_id="made-up", to_tag="madeup", route=route, body=body)
    run(proxy.on_request(req, EVE, "udp"))
    sent = wire.take()
    assert [(m.status, a) for m, a in sent] in ([(403, EVE)], [(404, EVE)])
    assert media.calls == [] and events.names() == []


def test_forged_bye_with_the_real_dialog_ids_does_not_end_the_call():
    proxy, wire, _events, media, reg = make_proxy(stage=1)
    register(reg, "1002", BOB, "192.168.2.20")
    run(proxy.on_request(invite(), ALICE, "udp"))
    fwd = wire.take_request("INVITE")
    run(proxy.on_response(response_to(fwd, 200, "OK", body=SDP_B), BOB, "udp"))
    ok = next(m for m, _ in wire.take() if getattr(m, "status", 0) == 200)
    for route in (None, f"<sip:{SERVER[0]}:{SERVER[1]};lr>", ok.headers.get("Record-Route") + "x"):
        run(proxy.on_request(in_dialog("BYE", "z9hG4bKeve", route=route), EVE, "udp"))
        [(resp, addr)] = wire.take()
        assert resp.status in (403, 404) and addr == EVE
    assert proxy.calls["call1"].state == "confirmed" and ("delete", "call1") not in media.calls


def test_in_dialog_routing_survives_a_restart_through_the_token():
    """A new proxy (no calls in memory) with the same secret routes BYE both ways by the token."""
    def adm(host, port):
        return Admission(tokens=RouteTokens(SECRET, host, port), local_domains=(host, "sip.local"),
                                           realm="sip.local", user_exists=lambda u: True)
    proxy, wire, _, _, reg = make_proxy(stage=1)
    proxy.admission = adm(*SERVER)
    register(reg, "1002", BOB, "192.168.2.20")
    run(proxy.on_request(invite(), ALICE, "udp"))
    fwd = wire.take_request("INVITE")
    callee_route = fwd.headers.get("Record-Route")
    run(proxy.on_response(response_to(fwd, 200, "OK", body=SDP_B), BOB, "udp"))
    ok = next(m for m, _ in wire.take() if getattr(m, "status", 0) == 200)
    caller_route = ok.headers.get("Record-Route")
    assert caller_route != callee_route         # the caller's copy also names the callee's flow

    restarted, wire2, _, _, _ = make_proxy(stage=1)
    restarted.admission = adm(*SERVER)
    run(restarted.on_request(in_dialog("BYE", "z9hG4bKb1", route=caller_route), ALICE, "udp"))
    [(bye, addr)] = wire2.take()
    assert bye.method == "BYE" and addr == BOB
    callee_bye = in_dialog("BYE", "z9hG4bKb2", from_tag="ttag", to_tag="ftag", route=callee_route)
    run(restarted.on_request(callee_bye, BOB, "udp"))
    [(bye, addr)] = wire2.take()
    assert bye.method == "BYE" and addr == ALICE


# --- initial requests: destinations -----------------------------------------------------------
def test_initial_request_to_a_foreign_domain_is_refused_without_outbound_route():
    proxy, wire, _events, media, reg = make_proxy(stage=1)
    register(reg, "1002", BOB, "192.168.2.20")
    req = invite()
    req.uri.host = "203.0.113.99"
    run(proxy.on_request(req, ALICE, "udp"))
    [(resp, addr)] = wire.take()
    assert resp.status == 403 and addr == ALICE and media.calls == []


def test_outbound_route_parsing():
    assert parse_outbound_route("sip:198.51.100.7:5080;transport=tcp") == Flow("198.51.100.7", 5080, "tcp")
    assert parse_outbound_route("") is None
    for bad in ("sip:trunk.example.com", "sip:user@198.51.100.7", "sip:198.51.100.7;transport=sctp"):
        with pytest.raises(ValueError):
            parse_outbound_route(bad)


# --- caller identity ---------------------------------------------------------------------------
PASSWORDS = {"1001": "pw1001", "1002": "pw1002", "1003": "pw1003"}


def identity_proxy(identity=True, foreign="challenge", outbound=None):
    proxy, wire, events, media, reg = make_proxy(stage=1)
    digest = DigestAuthenticator(realm="sip.local", algorithms=("MD5",))
    def lookup(u, realm, alg="MD5"):
        return compute_ha1(u, realm, PASSWORDS[u], alg) if u in PASSWORDS else None
    authz = SipAuthorizer(digest, lookup, lambda u: u in PASSWORDS)
    proxy.admission = Admission(tokens=RouteTokens(SECRET, *SERVER), local_domains=(SERVER[0], "sip.local"),
                                realm="sip.local", user_exists=lambda u: u in PASSWORDS, authorizer=authz,
                                identity=identity, foreign=foreign,
                                outbound=parse_outbound_route(outbound))
    register(reg, "1002", BOB, "192.168.2.20")
    return proxy, wire, events, media


def with_credentials(req, challenge_resp, user):
    _, p = parse_auth_params(challenge_resp.headers.get("Proxy-Authenticate"))
    uri = str(req.uri)
    ha1 = compute_ha1(user, p["realm"], PASSWORDS[user])
    resp = compute_response("MD5", ha1, p["nonce"], req.method, uri)
    req.headers.add("Proxy-Authorization", f'Digest username="{user}", realm="{p["realm"]}", '
                                           f'nonce="{p["nonce"]}", uri="{uri}", response="{resp}", algorithm=MD5')
    req.headers.add("Proxy-Authorization", 'Digest username="x", realm="upstream.example", nonce="n", uri="u", response="r"')
    return req


def authenticated_invite(proxy, wire, user, from_user="1001", branch="z9hG4bKi2", from_host="sip.local"):
    first = invite(branch=branch + "c")
    first.headers.set("From", f"<sip:{from_user}@{from_host}>;tag=ftag")
    run(proxy.on_request(first, ALICE, "udp"))
    [(challenge, _)] = wire.take()
    assert challenge.status == 407
    second = invite(branch=branch)
    second.headers.set("From", f"<sip:{from_user}@{from_host}>;tag=ftag")
    run(proxy.on_request(with_credentials(second, challenge, user), ALICE, "udp"))
    return wire.take()


def test_spoofed_from_is_refused_and_own_identity_passes_without_our_credentials():
    proxy, wire, events, media = identity_proxy()
    [(resp, _)] = authenticated_invite(proxy, wire, "1003", from_user="1001")
    assert resp.status == 403 and media.calls == [] and "call_started" not in events.names()
    sent = authenticated_invite(proxy, wire, "1001", from_user="1001", branch="z9hG4bKi3")
    fwd = next(m for m, _ in sent if getattr(m, "method", "") == "INVITE")
    assert proxy.calls["call1"].auth_user == "1001"
    # our realm's credentials are consumed here, another realm's pass on
    assert fwd.headers.get_raw("Proxy-Authorization") == [
        'Digest username="x", realm="upstream.example", nonce="n", uri="u", response="r"']


def test_identity_off_lets_the_spoof_through_but_records_who_authenticated():
    proxy, wire, _, _ = identity_proxy(identity=False)
    sent = authenticated_invite(proxy, wire, "1003", from_user="1001")
    assert any(getattr(m, "method", "") == "INVITE" for m, _ in sent)
    assert proxy.calls["call1"].auth_user == "1003"


@pytest.mark.parametrize("policy,expected", [("reject", 403), ("challenge", 407), ("allow", 100)])
def test_foreign_domain_caller_policy(policy, expected):
    proxy, wire, _, _ = identity_proxy(foreign=policy)
    req = invite()
    req.headers.set("From", "<sip:someone@foreign.example>;tag=ftag")
    run(proxy.on_request(req, EVE, "udp"))
    assert wire.take()[0][0].status == expected


def test_unknown_user_in_our_domain_gets_the_challenge_of_a_known_one():
    """Refused all the same (its credentials can never verify), but a 403 here and a 407 for an
    existing user would let SIPVicious svwar list the extensions (issue 10, class 7)."""
    answers = []
    for user in ("9999", "1001"):
        proxy, wire, _, _ = identity_proxy()
        req = invite()
        req.headers.set("From", f"<sip:{user}@sip.local>;tag=ftag")
        run(proxy.on_request(req, EVE, "udp"))
        resp = wire.take()[0][0]
        answers.append((resp.status, resp.reason, sorted(n for n, _ in resp.headers.items())))
    assert answers[0] == answers[1] and answers[0][0] == 407


def test_outbound_route_is_for_authenticated_local_users_only():
    proxy, wire, _, _ = identity_proxy(outbound="sip:198.51.100.7:5080")
    req = invite()
    req.uri.host = "far.example"
    req.headers.set("From", "<sip:someone@foreign.example>;tag=ftag")
    run(proxy.on_request(req, EVE, "udp"))
    assert wire.take()[0][0].status == 407
    first = invite(branch="z9hG4bKo1")
    first.uri.host = "far.example"
    run(proxy.on_request(first, ALICE, "udp"))
    [(challenge, _)] = wire.take()
    second = invite(branch="z9hG4bKo2")
    second.uri.host = "far.example"
    run(proxy.on_request(with_credentials(second, challenge, "1001"), ALICE, "udp"))
    fwd = [(m, a) for m, a in wire.take() if getattr(m, "method", "") == "INVITE"]
    assert fwd[0][1] == ("198.51.100.7", 5080) and str(fwd[0][0].uri) == "sip:1002@far.example"


def test_strip_credentials_keeps_other_realms():
    adm = Admission(tokens=tokens(), local_domains=("sip.local",), realm="sip.local", user_exists=lambda u: False)
    req = parse_message(b"INVITE sip:a@sip.local SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n"
                        b"From: <sip:a@sip.local>;tag=1\r\nTo: <sip:b@sip.local>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
                        b'Proxy-Authorization: Digest username="a", realm="sip.local", nonce="n"\r\n'
                        b'Proxy-Authorization: Digest username="a", realm=other, nonce="n"\r\nContent-Length: 0\r\n\r\n')
    assert adm.strip_credentials(req) == 1
    assert req.headers.get_raw("Proxy-Authorization") == ['Digest username="a", realm=other, nonce="n"']
