"""Scenario validation and the verdict logic (pure functions on observation records)."""
import pytest

from harness.compare import go_no_go, judge, meets
from harness.scenario import ScenarioError, load, load_all, parse_step


def obs(audio="two-way", call=200, cdr=(("CALL", "ENDED"),), register=200, auth=("REGISTER 401",), **extra):
    return {"steps": {"register": register, "call": call}, "audio": {"direction": audio},
            "nat": {"via_to_alice": extra.get("via", [])}, "auth": {"alice": list(auth), "bob": []},
            "cdr": [{"record_type": t, "call_state": s} for t, s in cdr]}


def test_all_shipped_scenarios_load_and_cover_the_issue_list():
    names = {s.name for s in load_all()}
    assert len(names) >= 20
    for required in ("no-nat", "both-cone", "both-symmetric", "cgnat", "hairpin", "sip-alg", "callee-silent",
                     "rtp-other-port", "rtcp", "nat-rebind", "nat-timeout", "nat-keepalive", "contact-params",
                     "wrong-password", "unregistered-callee", "cancel", "busy", "hold-resume", "early-media",
                     "message", "sip-loss", "late-offer", "late-offer-symmetric", "reinvite-without-sdp",
                     "callee-hold", "prack-early-media", "update-early-dialog", "declined-video",
                     "register-contact-echo", "unknown-callee", "auth-scope"):
        assert required in names
    for s in load_all():
        assert set(s.expect) == {0, 1, 2}, f"{s.name} lacks per-stage expectations"
        assert s.description


def test_scenario_errors_are_clear(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ntopology: {caller: full-cone}\nsteps: [{register: alice}]\n")
    with pytest.raises(ScenarioError, match="unknown NAT profile 'full-cone'"):
        load(str(p))
    with pytest.raises(ScenarioError, match="unknown step 'dance'"):
        parse_step({"dance": 1}, 0, "x.yaml")
    with pytest.raises(ScenarioError, match="needs from and to"):
        parse_step({"call": {"from": "alice"}}, 0, "x.yaml")


def test_verdicts():
    assert judge("s", [obs(), obs()], [obs()]).verdict == "same"
    assert judge("s", [obs("A->B only"), obs("A->B only")], [obs()]).verdict == "improved"
    v = judge("s", [obs(), obs()], [obs("none")])
    assert v.verdict == "REGRESSED" and "audio two-way -> none" in v.reasons
    assert judge("s", [obs(), obs()], [obs(call=480, cdr=())]).verdict == "REGRESSED"
    assert judge("s", [obs(), obs("none")], [obs("A->B only")]).verdict == "noisy"
    v = judge("s", [obs(via=["a"]), obs(via=["a"])], [obs(via=["b"])])
    assert v.verdict == "same" and v.nat.startswith("changed")
    v = judge("s", [obs(via=["a"]), obs(via=["b"])], [obs(via=["c"])])
    assert v.nat == "same" and any("via" in n for n in v.noise)      # noise is reported, not counted
    assert judge("s", [obs(), obs()], [obs()], expect_cand={"audio": "A->B only"}).verdict == "REGRESSED"
    ok, _ = meets(obs(), {"audio": "two-way", "steps": {"call": 200}})
    assert ok
    assert meets(obs("none"), {"audio": ["none", "B->A only"]})[0]
    assert not meets(obs("two-way"), {"audio": ["none", "B->A only"]})[0]
    go, text = go_no_go([judge("a", [obs()], [obs("none")])])
    assert not go and "a" in text


def test_accepted_changes_are_shown_not_hidden():
    """Stage 0 -> 2 differences that MIGRATION.md lists are 'changed' (named in go_no_go), not
    'same' and not REGRESSED; a challenge no rule covers is REGRESSED."""
    challenged = ("INVITE 407", "REGISTER 401")
    v = judge("auth", [obs(), obs()], [obs(auth=challenged)])
    assert v.verdict == "changed" and v.accepted == ["invite-challenge"]
    assert any("accepted change invite-challenge" in r for r in v.reasons)
    v = judge("pw", [obs(register=401, call=None), obs(register=401, call=None)], [obs(register=403, call=None)])
    assert v.verdict == "changed" and v.accepted == ["register-403"]
    v = judge("nobody", [obs(call=480, cdr=())] * 2, [obs(call=404, cdr=())])
    assert v.verdict == "changed" and v.accepted == ["unknown-user-404"]
    # an improvement keeps its verdict but still names the accepted change
    v = judge("mixed", [obs("A->B only")] * 2, [obs(auth=challenged)])
    assert v.verdict == "improved" and v.accepted == ["invite-challenge"]
    go, text = go_no_go([judge("auth", [obs()], [obs(auth=challenged)]), judge("same", [obs()], [obs()])])
    assert go and "1 changed" in text and "invite-challenge in 1 scenario(s)" in text and "407" in text
    # challenging something no rule covers breaks phones: REGRESSED
    v = judge("bye", [obs()] * 2, [obs(auth=("BYE 407", "REGISTER 401"))])
    assert v.verdict == "REGRESSED" and any("no accepted change" in r for r in v.reasons)
    # a 401 -> 404 on register is not a listed change: reported, verdict stays 'same'
    assert judge("x", [obs(register=401)] * 2, [obs(register=404)]).accepted == []
    # the identity rule's auth_user in the CDR's extra_info is named too
    with_user = obs()
    with_user["cdr"][0]["extra_info"] = "auth_user=1001"
    no_user = obs()
    no_user["cdr"][0]["extra_info"] = ""
    assert judge("cdr", [no_user, no_user], [with_user]).accepted == ["cdr-auth-user"]
    ok, misses = meets(obs(auth=challenged), {"auth": {"alice": ["REGISTER 401"]}})
    assert not ok and "challenged" in misses[0]
