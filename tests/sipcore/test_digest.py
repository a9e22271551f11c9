"""Digest authentication (RFC 7616/8760): both algorithms, stale nonces, no replay."""
from sipcore.digest import DigestAuthenticator, compute_ha1, compute_response, parse_auth_params

REALM = "sip.local"


def creds(auth, challenge, *, alg="MD5", password="1234", nc="00000001", uri="sip:sip.local", method="REGISTER"):
    _, p = parse_auth_params(challenge)
    ha1 = compute_ha1("1001", REALM, password, alg)
    resp = compute_response(alg, ha1, p["nonce"], method, uri, "auth", nc, "abc")
    return (f'Digest username="1001", realm="{REALM}", nonce="{p["nonce"]}", uri="{uri}", response="{resp}", '
            f'algorithm={alg}, qop=auth, nc={nc}, cnonce="abc"')


def lookup(user, realm, alg):
    return compute_ha1(user, realm, "1234", alg) if user == "1001" else None


def test_challenge_offers_sha256_first_then_md5():
    auth = DigestAuthenticator(REALM)
    ch = auth.challenge(1000.0)
    assert "algorithm=SHA-256" in ch[0] and "algorithm=MD5" in ch[1] and 'qop="auth"' in ch[0]


def test_both_algorithms_verify():
    auth = DigestAuthenticator(REALM)
    for i, alg in enumerate(("SHA-256", "MD5")):
        ch = auth.challenge(1000.0)[i]
        assert auth.verify("REGISTER", "sip:sip.local", creds(auth, ch, alg=alg), lookup, 1001.0).ok


def test_replayed_credentials_are_refused():
    auth = DigestAuthenticator(REALM)
    value = creds(auth, auth.challenge(1000.0)[1])
    assert auth.verify("REGISTER", "sip:sip.local", value, lookup, 1001.0).ok
    again = auth.verify("REGISTER", "sip:sip.local", value, lookup, 1002.0)
    assert not again.ok and "replay" in again.reason
    ch = auth.challenge(1000.0)[1]
    assert auth.verify("REGISTER", "sip:sip.local", creds(auth, ch, nc="00000001"), lookup, 1003.0).ok
    # same nonce, higher nc: allowed (RFC 7616 nonce reuse)
    assert auth.verify("REGISTER", "sip:sip.local", creds(auth, ch, nc="00000002"), lookup, 1004.0).ok


def test_expired_nonce_is_stale_not_wrong():
    auth = DigestAuthenticator(REALM, nonce_ttl=30)
    value = creds(auth, auth.challenge(1000.0)[1])
    res = auth.verify("REGISTER", "sip:sip.local", value, lookup, 1031.0)
    assert not res.ok and res.stale
    assert "stale=true" in auth.challenge(1031.0, stale=True)[0]


def test_wrong_password_forged_nonce_wrong_uri():
    auth = DigestAuthenticator(REALM)
    ch = auth.challenge(1000.0)[1]
    assert auth.verify("REGISTER", "sip:sip.local", creds(auth, ch, password="x"), lookup, 1001).reason == "wrong password"
    forged = creds(auth, ch).replace(parse_auth_params(ch)[1]["nonce"][:6], "000000")
    assert not auth.verify("REGISTER", "sip:sip.local", forged, lookup, 1001).ok
    assert "Request-URI" in auth.verify("REGISTER", "sip:other", creds(auth, ch), lookup, 1001).reason
    other = DigestAuthenticator(REALM)      # a nonce from another server secret
    assert not other.verify("REGISTER", "sip:sip.local", creds(auth, ch), lookup, 1001).ok


def test_parse_auth_params_handles_quoted_commas():
    scheme, p = parse_auth_params('Digest username="a,b", realm="r", nc=00000001, qop=auth')
    assert scheme == "digest" and p["username"] == "a,b" and p["nc"] == "00000001"


def test_uri_equivalence_rfc3261_19_1_4():
    from sipcore.uri import SipURI, equivalent

    def eq(a, b):
        return equivalent(SipURI.parse(a), SipURI.parse(b))
    # the RFC's own equal pairs
    assert eq("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp")
    assert eq("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5")
    assert eq("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5")
    assert eq("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
              "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com")
    # ... and the unequal ones
    assert not eq("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP")
    assert not eq("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060")
    assert not eq("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp")
    assert not eq("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;newparam=6")
    assert not eq("sip:carol@chicago.com?Subject=next%20meeting", "sip:carol@chicago.com")


def test_digest_uri_equivalent_forms_and_sipp_default_are_accepted_replay_still_refused():
    from sipcore.uri import SipURI

    def local(u: SipURI) -> bool:
        return u.host in ("sip.local", "198.51.100.1") and u.port in (None, 5060)
    auth = DigestAuthenticator(REALM)
    ch = auth.challenge(1000.0)[1]
    # an equivalent form (host case, escaped user, param order)
    value = creds(auth, ch, uri="sip:%31001@SIP.local;transport=udp;lr")
    assert auth.verify("REGISTER", "sip:1001@sip.local;lr;transport=UDP", value, lookup, 1001).ok
    # SIPp's default: uri=sip:HOST:PORT of the server whatever the Request-URI names
    sipp = creds(auth, ch, uri="sip:198.51.100.1:5060", nc="00000002")
    assert auth.verify("REGISTER", "sip:sip.local", sipp, lookup, 1002, is_local=local).ok
    assert not auth.verify("REGISTER", "sip:sip.local", sipp, lookup, 1003, is_local=local).ok   # replay
    other_host = creds(auth, ch, uri="sip:203.0.113.9:5060", nc="00000003")
    assert "Request-URI" in auth.verify("REGISTER", "sip:sip.local", other_host, lookup, 1004, is_local=local).reason
    no_local = creds(auth, ch, uri="sip:198.51.100.1:5060", nc="00000004")
    assert not auth.verify("REGISTER", "sip:sip.local", no_local, lookup, 1005).ok
    wrong_realm = creds(auth, ch, uri="sip:198.51.100.1:5060", nc="00000005").replace(f'realm="{REALM}"', 'realm="x"')
    assert auth.verify("REGISTER", "sip:sip.local", wrong_realm, lookup, 1006, is_local=local).reason == "wrong realm"


def test_parse_auth_params_one_pass_agrees_with_the_general_parser():
    """The regex pass taken for usual credentials gives what the character-by-character parser
    gives, on usual shapes and on random text near them (the general parser then decides)."""
    import random

    from sipcore.digest import _parse_params_slowly
    rnd = random.Random(7)
    names = ["username", "realm", "nonce", "uri", "response", "algorithm", "qop", "nc", "cnonce", "X-Y", "a_b"]
    values = ["u000001", "sip.local", "18c1.ab.cd", "sip:127.0.0.1:5060", "", "auth", "a,b", "x y", 'q\\"t', "=", "0001"]
    seps = [", ", ",", " , ", ",\t", " ", "", ",,", " \\"]
    for _ in range(20000):
        parts = []
        for _ in range(rnd.randrange(0, 6)):
            name, value = rnd.choice(names), rnd.choice(values)
            quoted = rnd.random() < 0.5
            parts.append(f'{name}="{value}"' if quoted else f"{name}={value}")
            parts.append(rnd.choice(seps))
        rest = "".join(parts)
        if rnd.random() < 0.2 and rest:                      # damage it somewhere
            i = rnd.randrange(len(rest))
            rest = rest[:i] + rnd.choice(' "\\,=\t') + rest[i + 1:]
        scheme, params = parse_auth_params("Digest " + rest)
        assert scheme == "digest" and params == _parse_params_slowly(("Digest " + rest).strip()[7:]), rest
    _, p = parse_auth_params('Digest username="1001", realm="sip.local", nonce="n", uri="sip:a", '
                             'response="r", algorithm=MD5, qop=auth, nc=00000001, cnonce="c"')
    assert p == {"username": "1001", "realm": "sip.local", "nonce": "n", "uri": "sip:a", "response": "r",
                 "algorithm": "MD5", "qop": "auth", "nc": "00000001", "cnonce": "c"}


def test_nonce_memory_is_bounded_and_forgetting_never_lets_a_replay_through():
    auth = DigestAuthenticator(REALM, max_tracked=50)
    used = []
    for i in range(200):                               # 200 live nonces, 50 remembered at most
        value = creds(auth, auth.challenge(1000.0 + i * 0.01)[1])
        assert auth.verify("REGISTER", "sip:sip.local", value, lookup, 1001.0 + i * 0.01).ok
        used.append(value)
        assert len(auth._nc) <= 50
    oldest = auth.verify("REGISTER", "sip:sip.local", used[0], lookup, 1010.0)     # forgotten: stale, not ok
    assert not oldest.ok and oldest.stale
    latest = auth.verify("REGISTER", "sip:sip.local", used[-1], lookup, 1010.0)    # remembered: a replay
    assert not latest.ok and "replay" in latest.reason
    fresh = creds(auth, auth.challenge(1010.0)[1])       # the UA's retry with a new nonce works
    assert auth.verify("REGISTER", "sip:sip.local", fresh, lookup, 1010.5).ok


def test_expired_nonces_are_forgotten_as_new_ones_come():
    auth = DigestAuthenticator(REALM, nonce_ttl=30)
    for i in range(100):
        assert auth.verify("REGISTER", "sip:sip.local", creds(auth, auth.challenge(1000.0)[1]), lookup, 1001.0).ok
    assert len(auth._nc) == 100
    value = creds(auth, auth.challenge(1040.0)[1])
    assert auth.verify("REGISTER", "sip:sip.local", value, lookup, 1041.0).ok
    assert len(auth._nc) == 1                            # the 100 expired ones are gone
    stale = auth.verify("REGISTER", "sip:sip.local", creds(auth, auth.challenge(1000.0)[1]), lookup, 1042.0)
    assert not stale.ok and stale.stale
