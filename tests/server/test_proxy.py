"""Call routing through the proxy: the message flows of RFC 3261 §16 with media hooks."""
import asyncio

import pytest

from sipcore.nat_helper import NATHelper
from sipcore.sdp import SessionDescription

from .proxy_fixtures import (ALICE, BOB, SDP_B, SERVER, in_dialog, invite, make_proxy, register,
                             response_to)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def setup():
    proxy, wire, events, media, reg = make_proxy(stage=1)
    register(reg, "1002", BOB, "192.168.2.20")
    return proxy, wire, events, media, reg


def start_call(proxy, wire):
    run(proxy.on_request(invite(), ALICE, "udp"))
    sent = wire.take()
    trying = [m for m, a in sent if getattr(m, "status", None) == 100]
    fwd = [(m, a) for m, a in sent if getattr(m, "method", None) == "INVITE"]
    return trying, fwd


def test_invite_is_relayed_to_the_binding_flow_with_via_rr_and_relay_sdp(setup):
    proxy, wire, events, media, _ = setup
    trying, fwd = start_call(proxy, wire)
    assert len(trying) == 1
    [(msg, addr)] = fwd
    assert addr == BOB
    assert str(msg.uri) == "sip:1002@203.0.113.20:41000"       # stage 1: Contact rewritten to source
    assert msg.vias()[0].host == SERVER[0] and msg.vias()[0].branch.startswith("z9hG4bK")
    rr = msg.headers.get("Record-Route")
    assert rr.startswith(f"<sip:{SERVER[0]}:{SERVER[1]};lr;rt=")    # with the route token
    assert msg.headers.get("Max-Forwards") == "69"
    assert SessionDescription.parse(msg.body).media[0].port == 30000
    assert media.calls[0][:4] == ("offer", "call1", "ftag", None)
    assert events.names() == ["call_started"]


def test_full_call_with_answer_and_bye(setup):
    proxy, wire, events, media, _ = setup
    _, [(fwd, _)] = start_call(proxy, wire)
    run(proxy.on_response(response_to(fwd, 180, "Ringing"), BOB, "udp"))
    [(ringing, addr)] = wire.take()
    assert ringing.status == 180 and addr == ALICE and len(ringing.vias()) == 1
    run(proxy.on_response(response_to(fwd, 200, "OK", body=SDP_B), BOB, "udp"))
    [(ok, addr)] = wire.take()
    assert ok.status == 200 and addr == ALICE
    assert SessionDescription.parse(ok.body).media[0].port == 30002
    assert media.calls[-1][:4] == ("answer", "call1", "ftag", "ttag")
    # ACK and BYE from the caller go to the callee's flow
    run(proxy.on_request(in_dialog("ACK", "z9hG4bKack", cseq=1), ALICE, "udp"))
    [(ack, addr)] = wire.take()
    assert ack.method == "ACK" and addr == BOB and not ack.headers.get("Route")
    # the BYE carries the route set the caller learnt from the 200 (our token included)
    run(proxy.on_request(in_dialog("BYE", "z9hG4bKbye", route=ok.headers.get("Record-Route")), ALICE, "udp"))
    [(bye, addr)] = wire.take()
    assert bye.method == "BYE" and addr == BOB and not bye.headers.get("Route")
    assert ("delete", "call1") in media.calls
    assert events.names() == ["call_started", "call_ringing", "call_answered", "call_ended"]


def test_proxy_retransmits_a_lost_invite_until_the_callee_answers(setup):
    """Timer A on the second leg: once the proxy sent 100 Trying the caller stops retransmitting,
    so the proxy must resend the INVITE itself until the callee answers."""
    proxy, wire, *_ = setup

    async def scenario():
        await proxy.on_request(invite(), ALICE, "udp")
        first = wire.take_request("INVITE")
        await asyncio.sleep(0.6)                        # T1 = 0.5 s
        again = [m for m, a in wire.take() if getattr(m, "method", None) == "INVITE"]
        assert len(again) == 1 and again[0].vias()[0].branch == first.vias()[0].branch
        await proxy.on_response(response_to(first, 180, "Ringing"), BOB, "udp")
        wire.take()
        await asyncio.sleep(1.2)
        assert not [m for m, a in wire.take() if getattr(m, "method", None) == "INVITE"]
        await proxy.on_request(invite(), ALICE, "udp")   # caller retransmission: answered from the tx
        [(msg, addr)] = wire.take()
        assert msg.status == 180 and addr == ALICE
    run(scenario())


def test_cancel_before_answer(setup):
    proxy, wire, events, media, _ = setup
    _, [(fwd, _)] = start_call(proxy, wire)
    run(proxy.on_response(response_to(fwd, 180, "Ringing"), BOB, "udp"))
    wire.take()
    cancel = invite()
    cancel = cancel.copy()
    cancel.method = "CANCEL"
    cancel.headers.set("CSeq", "1 CANCEL")
    cancel.body = b""
    run(proxy.on_request(cancel, ALICE, "udp"))
    sent = wire.take()
    assert [(getattr(m, "status", None) or m.method, a) for m, a in sent] == [(200, ALICE), ("CANCEL", BOB)]
    assert sent[1][0].vias()[0].branch == fwd.vias()[0].branch
    run(proxy.on_response(response_to(fwd, 487, "Request Terminated"), BOB, "udp"))
    sent = wire.take()
    kinds = [(getattr(m, "status", None) or m.method, a) for m, a in sent]
    assert ("ACK", BOB) in [(k, a) for k, a in kinds if k == "ACK"]
    assert any(k == 487 and a == ALICE for k, a in kinds)
    assert events.names()[-1] == "call_cancelled"
    assert ("delete", "call1") in media.calls


def test_busy_is_relayed_and_acked_hop_by_hop(setup):
    proxy, wire, events, *_ = setup
    _, [(fwd, _)] = start_call(proxy, wire)
    run(proxy.on_response(response_to(fwd, 486, "Busy Here"), BOB, "udp"))
    sent = wire.take()
    assert {(getattr(m, "status", None) or m.method) for m, _ in sent} == {"ACK", 486}
    assert events.events[-1][0] == "call_failed" and events.events[-1][1][1] == 486
    # the caller's ACK for the 486 is absorbed
    ack = in_dialog("ACK", "z9hG4bKinv1", cseq=1)
    run(proxy.on_request(ack, ALICE, "udp"))
    assert wire.take() == []


def test_unregistered_callee_gets_480_and_unknown_user_404(setup):
    proxy, wire, events, *_ = setup
    run(proxy.on_request(invite(to_user="1001", call_id="c2", branch="z9hG4bKx2"), ALICE, "udp"))
    [(resp, addr)] = wire.take()
    assert resp.status == 480 and addr == ALICE
    run(proxy.on_request(invite(to_user="9999", call_id="c3", branch="z9hG4bKx3"), ALICE, "udp"))
    [(resp, _)] = wire.take()
    assert resp.status == 404
    assert [e[1][1] for e in events.events if e[0] == "call_refused"] == [480, 404]


def test_max_forwards_zero_gets_483(setup):
    proxy, wire, *_ = setup
    run(proxy.on_request(invite(max_forwards=0), ALICE, "udp"))
    [(resp, _)] = wire.take()
    assert resp.status == 483


def test_unknown_method_gets_405_with_allow(setup):
    proxy, wire, *_ = setup
    msg = in_dialog("PUBLISH", "z9hG4bKp")
    msg.headers.remove("To")
    msg.headers.add("To", "<sip:1002@sip.local>")
    run(proxy.on_request(msg, ALICE, "udp"))
    [(resp, _)] = wire.take()
    assert resp.status == 405 and "INVITE" in resp.headers.get("Allow")


def test_stage2_force_rport_and_nat_fixed_sdp_reaches_the_backend():
    proxy, wire, events, media, reg = make_proxy(stage=2, nat=NATHelper(SERVER[0], []))
    register(reg, "1002", BOB, "192.168.2.20")
    run(proxy.on_request(invite(), ALICE, "udp"))
    fwd = wire.take_request("INVITE")
    client_via = fwd.vias()[1]
    assert client_via.received == ALICE[0] and client_via.rport == ALICE[1]
    assert media.calls[0][4] == ALICE[0]         # relay's initial target fixed to the NAT address
    assert f"{ALICE[0]}:{ALICE[1]}" in fwd.headers.get("Contact")


def test_stage0_relay_target_is_signalling_source():
    proxy, wire, events, media, reg = make_proxy(stage=0)
    register(reg, "1002", BOB, "192.168.2.20")
    run(proxy.on_request(invite(), ALICE, "udp"))
    assert media.calls[0][4] == ALICE[0]
    fwd = wire.take_request("INVITE")
    assert fwd.vias()[1].received is None        # legacy never wrote received/rport


def _cancel_for(inv):
    cancel = inv.copy()
    cancel.method = "CANCEL"
    cancel.headers.set("CSeq", "1 CANCEL")
    cancel.headers.remove("Content-Type")
    cancel.body = b""
    return cancel


def _kinds(sent):
    return [(getattr(m, "status", None) or m.method, a) for m, a in sent]


def test_busy_to_the_caller_is_retransmitted_until_acked(setup):
    """Timer G: the caller stopped retransmitting after 100 Trying, so a lost 486 must be resent
    by the proxy's server transaction until the caller's ACK arrives."""
    proxy, wire, *_ = setup

    async def scenario():
        await proxy.on_request(invite(), ALICE, "udp")
        fwd = wire.take_request("INVITE")
        await proxy.on_response(response_to(fwd, 486, "Busy Here"), BOB, "udp")
        wire.take()
        await asyncio.sleep(0.6)                       # T1
        assert _kinds(wire.take()) == [(486, ALICE)]
        await proxy.on_request(in_dialog("ACK", "z9hG4bKinv1", cseq=1), ALICE, "udp")
        await asyncio.sleep(1.1)                       # the next Timer G (1 s) would have fired
        assert wire.take() == []
    run(scenario())


def test_cancel_waits_for_a_provisional_and_counts_as_487_meanwhile(setup):
    """RFC 3261 §9.1: no CANCEL on a branch that has not answered; the caller gets 487 at once,
    the callee gets its CANCEL when its 180 finally arrives."""
    proxy, wire, events, *_ = setup

    async def scenario():
        inv = invite()
        await proxy.on_request(inv, ALICE, "udp")
        fwd = wire.take_request("INVITE")
        await proxy.on_request(_cancel_for(inv), ALICE, "udp")
        assert sorted(_kinds(wire.take()), key=str) == [(200, ALICE), (487, ALICE)]
        assert events.names()[-1] == "call_cancelled"
        await asyncio.sleep(0.6)                       # the INVITE is no longer retransmitted
        assert _kinds(wire.take()) == [(487, ALICE)]   # (the 487 is, until the caller ACKs)
        await proxy.on_response(response_to(fwd, 180, "Ringing"), BOB, "udp")
        sent = wire.take()
        assert _kinds(sent) == [("CANCEL", BOB)] and sent[0][0].vias()[0].branch == fwd.vias()[0].branch
    run(scenario())


def test_lost_cancel_is_retransmitted_until_answered(setup):
    proxy, wire, *_ = setup

    async def scenario():
        inv = invite()
        await proxy.on_request(inv, ALICE, "udp")
        fwd = wire.take_request("INVITE")
        await proxy.on_response(response_to(fwd, 180, "Ringing"), BOB, "udp")
        wire.take()
        await proxy.on_request(_cancel_for(inv), ALICE, "udp")
        [cancel] = [m for m, _ in wire.take() if getattr(m, "method", None) == "CANCEL"]   # exactly one
        await asyncio.sleep(0.6)
        assert _kinds(wire.take()) == [("CANCEL", BOB)]   # Timer E
        ok = response_to(cancel, 200, "OK")
        await proxy.on_response(ok, BOB, "udp")
        await asyncio.sleep(1.1)
        assert wire.take() == []
    run(scenario())


def test_after_2xx_invite_retransmissions_are_absorbed_and_2xx_retransmissions_relayed(setup):
    """RFC 6026 'Accepted' on both sides of the proxy."""
    proxy, wire, *_ = setup

    async def scenario():
        inv = invite()
        await proxy.on_request(inv, ALICE, "udp")
        fwd = wire.take_request("INVITE")
        ok = response_to(fwd, 200, "OK", body=SDP_B)
        await proxy.on_response(ok, BOB, "udp")
        assert _kinds(wire.take()) == [(200, ALICE)]
        await proxy.on_request(invite(), ALICE, "udp")     # late INVITE retransmission
        assert wire.take() == []
        await proxy.on_response(response_to(fwd, 200, "OK", body=SDP_B), BOB, "udp")
        assert _kinds(wire.take()) == [(200, ALICE)]
    run(scenario())
