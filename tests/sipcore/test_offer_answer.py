"""The sans-IO offer/answer model: every position RFC 3261/3262/3311 allows, per flow."""
from sipcore.offer_answer import ANSWER, CALLEE, CALLER, NONE, OFFER, OfferAnswer


def roles(*steps):
    return [(s.role, s.offerer) for s in steps]


def test_offer_in_invite_answer_in_200_then_ack_carries_nothing():
    oa = OfferAnswer()
    assert roles(oa.on_request(CALLER, "INVITE", 1, True),
                 oa.on_response(CALLEE, "INVITE", 1, 180, False, False),
                 oa.on_response(CALLEE, "INVITE", 1, 200, True, True),
                 oa.on_request(CALLER, "ACK", 1, False)) == [
        (OFFER, CALLER), (NONE, None), (ANSWER, CALLER), (NONE, None)]
    assert oa.pending is None and oa.settled.offerer == CALLER


def test_late_offer_in_200_answer_in_ack():
    oa = OfferAnswer()
    assert oa.on_request(CALLER, "INVITE", 1, False).role == NONE
    assert "waiting for the offer" in oa.describe()
    assert roles(oa.on_response(CALLEE, "INVITE", 1, 200, True, True)) == [(OFFER, CALLEE)]
    assert "offer by callee in 200 to INVITE" in oa.describe()
    assert roles(oa.on_request(CALLER, "ACK", 1, True)) == [(ANSWER, CALLEE)]
    assert oa.pending is None


def test_late_offer_in_reliable_183_answer_in_prack_then_200_without_sdp():
    oa = OfferAnswer()
    oa.on_request(CALLER, "INVITE", 1, False)
    assert roles(oa.on_response(CALLEE, "INVITE", 1, 183, True, True)) == [(OFFER, CALLEE)]
    assert roles(oa.on_request(CALLER, "PRACK", 2, True)) == [(ANSWER, CALLEE)]
    assert oa.on_response(CALLEE, "PRACK", 2, 200, True, False).role == NONE
    assert oa.on_response(CALLEE, "INVITE", 1, 200, True, False).role == NONE
    assert oa.on_request(CALLER, "ACK", 1, False).role == NONE


def test_late_offer_previewed_in_unreliable_183_is_made_again_in_200():
    oa = OfferAnswer()
    oa.on_request(CALLER, "INVITE", 1, False)
    assert roles(oa.on_response(CALLEE, "INVITE", 1, 183, False, True)) == [(OFFER, CALLEE)]
    assert roles(oa.on_response(CALLEE, "INVITE", 1, 200, True, True)) == [(OFFER, CALLEE)]
    assert roles(oa.on_request(CALLER, "ACK", 1, True)) == [(ANSWER, CALLEE)]


def test_early_media_unreliable_183_previews_and_200_answers():
    oa = OfferAnswer()
    oa.on_request(CALLER, "INVITE", 1, True)
    assert roles(oa.on_response(CALLEE, "INVITE", 1, 183, False, True)) == [(ANSWER, CALLER)]
    assert oa.pending is not None            # not settled by an unreliable 1xx
    assert roles(oa.on_response(CALLEE, "INVITE", 1, 200, True, True)) == [(ANSWER, CALLER)]
    assert oa.pending is None


def test_reliable_183_answer_then_200_with_different_sdp_still_answers():
    oa = OfferAnswer()
    oa.on_request(CALLER, "INVITE", 1, True)
    assert roles(oa.on_response(CALLEE, "INVITE", 1, 183, True, True)) == [(ANSWER, CALLER)]
    assert oa.pending is None
    assert oa.on_request(CALLER, "PRACK", 2, False).role == NONE
    assert roles(oa.on_response(CALLEE, "INVITE", 1, 200, True, True)) == [(ANSWER, CALLER)]


def answered_in_reliable_183() -> OfferAnswer:
    oa = OfferAnswer()
    oa.on_request(CALLER, "INVITE", 1, True)
    oa.on_response(CALLEE, "INVITE", 1, 183, True, True)
    return oa


def test_offer_in_prack_answered_in_its_200():
    oa = answered_in_reliable_183()
    assert roles(oa.on_request(CALLER, "PRACK", 2, True)) == [(OFFER, CALLER)]
    assert roles(oa.on_response(CALLEE, "PRACK", 2, 200, True, True)) == [(ANSWER, CALLER)]
    assert oa.on_response(CALLEE, "INVITE", 1, 200, True, False).role == NONE


def test_reinvite_without_sdp_from_the_callee_offer_in_200_answer_in_ack():
    oa = OfferAnswer()
    oa.on_request(CALLER, "INVITE", 1, True)
    oa.on_response(CALLEE, "INVITE", 1, 200, True, True)
    assert oa.on_request(CALLEE, "INVITE", 1, False).role == NONE     # callee's own CSeq space
    assert roles(oa.on_response(CALLER, "INVITE", 1, 200, True, True)) == [(OFFER, CALLER)]
    assert roles(oa.on_request(CALLEE, "ACK", 1, True)) == [(ANSWER, CALLER)]


def test_update_in_early_and_confirmed_dialogs_and_a_rejected_update():
    oa = answered_in_reliable_183()
    assert roles(oa.on_request(CALLEE, "UPDATE", 1, True)) == [(OFFER, CALLEE)]
    assert roles(oa.on_response(CALLER, "UPDATE", 1, 200, True, True)) == [(ANSWER, CALLEE)]
    oa.on_response(CALLEE, "INVITE", 1, 200, True, False)
    assert roles(oa.on_request(CALLER, "UPDATE", 3, True)) == [(OFFER, CALLER)]
    assert oa.on_response(CALLEE, "UPDATE", 3, 488, True, False).role == NONE
    assert oa.pending is None


def test_ack_sdp_without_an_offer_in_the_2xx_is_not_an_answer():
    oa = OfferAnswer()
    oa.on_request(CALLER, "INVITE", 1, True)
    oa.on_response(CALLEE, "INVITE", 1, 200, True, True)
    assert oa.on_request(CALLER, "ACK", 1, True).role == NONE


def test_failed_late_offer_invite_forgets_the_expected_offer():
    oa = OfferAnswer()
    oa.on_request(CALLER, "INVITE", 1, False)
    assert oa.on_response(CALLEE, "INVITE", 1, 486, True, False).role == NONE
    assert oa.describe() == "idle"


def test_legacy_sees_only_invite_offers_and_2xx_answers():
    oa = OfferAnswer(legacy=True)
    assert oa.on_request(CALLER, "INVITE", 1, False).role == NONE
    # late offer: the 2xx SDP is taken as an answer (the relay has no session for it), ACK untouched
    assert roles(oa.on_response(CALLEE, "INVITE", 1, 200, True, True)) == [(ANSWER, CALLER)]
    assert oa.on_request(CALLER, "ACK", 1, True).role == NONE
    oa = OfferAnswer(legacy=True)
    oa.on_request(CALLER, "INVITE", 1, True)
    assert oa.on_response(CALLEE, "INVITE", 1, 183, True, True).role == NONE     # 183 body untouched
    assert oa.on_request(CALLER, "PRACK", 2, True).role == NONE
    assert roles(oa.on_response(CALLEE, "INVITE", 1, 200, True, True)) == [(ANSWER, CALLER)]
    assert oa.on_request(CALLER, "UPDATE", 3, True).role == NONE
    assert roles(oa.on_request(CALLEE, "INVITE", 1, True)) == [(OFFER, CALLEE)]  # re-INVITE with SDP
