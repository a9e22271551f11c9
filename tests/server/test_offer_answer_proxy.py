"""The proxy's media hand-off follows the offer/answer positions (sipcore.offer_answer): which
backend operation each SDP gets, with the tags in the offerer's order, and what is forwarded."""
import asyncio

from sipcore.errors import MediaBackendError
from sipcore.message import parse_message
from sipcore.sdp import SessionDescription

from .proxy_fixtures import (
    ALICE,
    BOB,
    SDP_A,
    SDP_B,
    in_dialog,
    invite,
    make_proxy,
    register,
    response_to,
)


def run(coro):
    return asyncio.run(coro)


def with_body(msg, body: str):
    msg.headers.set("Content-Type", "application/sdp")
    msg.body = body.encode()
    return parse_message(msg.to_bytes())


def setup(stage=1):
    proxy, wire, _events, media, reg = make_proxy(stage=stage)
    register(reg, "1002", BOB, "192.168.2.20")
    return proxy, wire, media


def late_offer_call(proxy, wire):
    run(proxy.on_request(invite(body=""), ALICE, "udp"))
    fwd = wire.take_request("INVITE")
    assert not fwd.body
    run(proxy.on_response(response_to(fwd, 200, "OK", body=SDP_B), BOB, "udp"))
    [(ok, _)] = wire.take()
    return fwd, ok


def confirmed_call(proxy, wire):
    """INVITE with SDP, 200 with SDP, ACK: a confirmed call with one settled exchange."""
    run(proxy.on_request(invite(), ALICE, "udp"))
    fwd = wire.take_request("INVITE")
    run(proxy.on_response(response_to(fwd, 200, "OK", body=SDP_B), BOB, "udp"))
    run(proxy.on_request(in_dialog("ACK", "z9hG4bKack", cseq=1), ALICE, "udp"))
    wire.take()


def test_late_offer_in_200_and_answer_in_ack_reach_the_relay_with_the_callee_as_offerer():
    proxy, wire, media = setup()
    _, ok = late_offer_call(proxy, wire)
    assert media.calls[-1][:4] == ("offer", "call1", "ttag", "ftag")
    assert SessionDescription.parse(ok.body).media_address(0) == "198.51.100.1"
    ack = with_body(in_dialog("ACK", "z9hG4bKack", cseq=1), SDP_A)
    run(proxy.on_request(ack, ALICE, "udp"))
    [(fwd_ack, addr)] = wire.take()
    assert addr == BOB and media.calls[-1][:4] == ("answer", "call1", "ttag", "ftag")
    assert SessionDescription.parse(fwd_ack.body).media[0].port == 30002
    # the caller re-sends the ACK (a retransmitted 200 reached it): same rewrite, no new relay call
    n = len(media.calls)
    run(proxy.on_request(with_body(in_dialog("ACK", "z9hG4bKack2", cseq=1), SDP_A), ALICE, "udp"))
    [(again, _)] = wire.take()
    assert again.body == fwd_ack.body and len(media.calls) == n


def test_stage0_relays_a_late_offer_untouched_as_the_original_did():
    proxy, wire, media = setup(stage=0)

    async def no_session(*args):       # the legacy relay has no session without an INVITE offer
        raise MediaBackendError("legacy relay: answer for unknown call call1")
    media.answer = no_session
    _, ok = late_offer_call(proxy, wire)
    assert ok.body == SDP_B.encode() and not media.calls
    run(proxy.on_request(with_body(in_dialog("ACK", "z9hG4bKack", cseq=1), SDP_A), ALICE, "udp"))
    [(ack, _)] = wire.take()
    assert ack.body == SDP_A.encode()


def test_reinvite_without_sdp_from_the_callee():
    proxy, wire, media = setup()
    confirmed_call(proxy, wire)
    reinv = in_dialog("INVITE", "z9hG4bKre", from_tag="ttag", to_tag="ftag", cseq=1, from_user="1002", to_user="1001")
    run(proxy.on_request(reinv, BOB, "udp"))
    fwd_re = wire.take_request("INVITE")
    assert not fwd_re.body
    ok = parse_message(("SIP/2.0 200 OK\r\n" + "".join(f"Via: {v}\r\n" for v in fwd_re.headers.get_raw("Via"))
                        + f"From: {fwd_re.headers.get('From')}\r\nTo: {fwd_re.headers.get('To')}\r\n"
                        f"Call-ID: call1\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@192.168.1.10>\r\n"
                        f"Content-Type: application/sdp\r\nContent-Length: {len(SDP_A)}\r\n\r\n{SDP_A}").encode())
    run(proxy.on_response(ok, ALICE, "udp"))
    assert media.calls[-1][:4] == ("offer", "call1", "ftag", "ttag")      # the caller offers in its 200
    ack = with_body(in_dialog("ACK", "z9hG4bKack3", from_tag="ttag", to_tag="ftag", cseq=1,
                              from_user="1002", to_user="1001"), SDP_B)
    run(proxy.on_request(ack, BOB, "udp"))
    assert media.calls[-1][:4] == ("answer", "call1", "ftag", "ttag")


def test_an_offer_the_relay_refuses_in_dialog_gets_488_and_is_not_forwarded():
    proxy, wire, media = setup()
    confirmed_call(proxy, wire)

    async def refuse(*args):
        raise MediaBackendError("rtpproxy refused U: bad address")
    media.offer = refuse
    update = with_body(in_dialog("UPDATE", "z9hG4bKupd", cseq=3), SDP_A.replace("IP4 192.168.1.10", "IP6 2001:db8::10"))
    run(proxy.on_request(update, ALICE, "udp"))
    [(resp, addr)] = wire.take()
    assert resp.status == 488 and addr == ALICE
