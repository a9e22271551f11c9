"""RFC 3261 §17 state machines driven by a fake clock: retransmission schedules, timeouts,
absorption of retransmissions, ACK generation."""
from sipcore.message import build_response, parse_message
from sipcore.transaction import (ClientTransaction, PassUp, Send, ServerTransaction, Terminated, Timeout,
                                 server_key)


def req(method="INVITE", branch="z9hG4bKt1"):
    return parse_message((f"{method} sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch={branch}\r\n"
                          f"From: <sip:a@h>;tag=f\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n"
                          "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode())


def sends(actions):
    return [a.message for a in actions if isinstance(a, Send)]


def drive(tx, until):
    """Fire timers up to ``until``; return the times at which something was sent."""
    times = []
    while (d := tx.next_deadline()) is not None and d <= until:
        acts = tx.on_timer(d)
        if sends(acts):
            times.append(round(d, 3))
        if any(isinstance(a, (Timeout, Terminated)) for a in acts):
            times.append(("end", round(d, 3), [type(a).__name__ for a in acts if not isinstance(a, Send)]))
            break
    return times


def test_invite_client_timer_a_doubles_and_timer_b_times_out():
    tx = ClientTransaction(req())
    assert len(sends(tx.start(0.0))) == 1
    times = drive(tx, 100)
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert times[-1] == ("end", 32.0, ["Timeout", "Terminated"])


def test_non_invite_client_timer_e_caps_at_t2():
    tx = ClientTransaction(req("OPTIONS"))
    tx.start(0.0)
    times = drive(tx, 100)
    gaps = [b - a for a, b in zip(times, times[1:]) if not isinstance(b, tuple)]
    assert times[:4] == [0.5, 1.5, 3.5, 7.5] and max(gaps) == 4.0
    assert times[-1][0] == "end" and times[-1][1] == 32.0


def test_provisional_stops_invite_retransmission_and_non2xx_is_acked():
    r = req()
    tx = ClientTransaction(r)
    tx.start(0)
    assert isinstance(tx.on_response(build_response(r, 180, to_tag="x"), 0.2)[0], PassUp)
    assert tx.state == "proceeding" and drive(tx, 10) == []
    busy = build_response(r, 486, to_tag="x")
    acts = tx.on_response(busy, 1.0)
    [ack] = sends(acts)
    assert ack.method == "ACK" and ack.top_via().branch == "z9hG4bKt1" and ack.to_tag == "x"
    assert sends(tx.on_response(busy, 2.0))[0].method == "ACK"     # retransmitted final re-ACKed
    assert drive(tx, 40)[-1][0] == "end"                           # Timer D


def test_reliable_transport_has_no_retransmissions():
    tx = ClientTransaction(req("BYE"), reliable=True)
    tx.start(0)
    assert drive(tx, 100) == [("end", 32.0, ["Timeout", "Terminated"])]


def test_invite_server_sends_trying_absorbs_retransmissions_and_retransmits_final_until_ack():
    r = req()
    tx = ServerTransaction(r)
    assert isinstance(tx.start(0)[0], PassUp)
    [trying] = sends(tx.on_timer(0.2))
    assert trying.status == 100
    assert sends(tx.on_request(r, 0.3))[0].status == 100            # retransmission absorbed
    tx.respond(build_response(r, 486, to_tag="t"), 1.0)
    times = drive(tx, 3.2)
    assert times == [1.5, 2.5]                                       # Timer G: 0.5, 1.0 ...
    ack = req("ACK")
    assert tx.on_request(ack, 3.3) == [] and tx.state == "confirmed"
    assert drive(tx, 10)[-1][0] == "end"                            # Timer I


def test_invite_server_timer_h_without_ack():
    r = req()
    tx = ServerTransaction(r, auto_trying_after=None)
    tx.start(0)
    tx.respond(build_response(r, 404, to_tag="t"), 0)
    assert drive(tx, 40)[-1] == ("end", 32.0, ["Timeout", "Terminated"])


def test_non_invite_server_answers_retransmissions_then_timer_j():
    r = req("MESSAGE")
    tx = ServerTransaction(r)
    tx.start(0)
    tx.respond(build_response(r, 200, to_tag="t"), 0.1)
    assert sends(tx.on_request(r, 1.0))[0].status == 200
    assert drive(tx, 40)[-1][0] == "end"


def test_server_key_matches_ack_and_cancel_to_their_invite_by_branch_and_sent_by():
    inv = req()
    assert server_key(req("ACK")) == server_key(inv)
    cancel = req("CANCEL")
    assert server_key(cancel) != server_key(inv) and server_key(cancel, "INVITE") == server_key(inv)
    assert server_key(req("INVITE", branch="z9hG4bKother")) != server_key(inv)
    other_host = parse_message(inv.to_bytes().replace(b"10.0.0.1:5060", b"10.0.0.9:5060"))
    assert server_key(other_host) != server_key(inv)            # same branch, another sent-by
    no_branch = parse_message(inv.to_bytes().replace(b";branch=z9hG4bKt1", b""))
    assert server_key(no_branch)[0] == "rfc2543-c-1"


def test_ringing_invite_client_has_no_timer_b_and_2xx_retransmissions_pass_until_timer_m():
    r = req()
    tx = ClientTransaction(r)
    tx.start(0)
    tx.on_response(build_response(r, 180, to_tag="x"), 0.1)
    assert drive(tx, 100) == [] and tx.state == "proceeding"        # ringing: Timer C is the proxy's
    ok = build_response(r, 200, to_tag="x")
    assert [type(a) for a in tx.on_response(ok, 101)] == [PassUp] and tx.state == "accepted"
    assert [type(a) for a in tx.on_response(ok, 102)] == [PassUp]   # retransmitted 2xx still passes
    assert tx.on_response(build_response(r, 486, to_tag="y"), 102) == []
    assert drive(tx, 200) == [("end", 133.0, ["Terminated"])]       # Timer M = 64*T1


def test_invite_server_accepted_absorbs_retransmitted_invite_and_sends_2xx_retransmissions():
    r = req()
    tx = ServerTransaction(r, auto_trying_after=None)
    tx.start(0)
    ok = build_response(r, 200, to_tag="t")
    assert sends(tx.respond(ok, 1.0)) == [ok] and tx.state == "accepted"
    assert tx.on_request(r, 1.5) == []                              # RFC 6026: absorbed, not re-answered
    assert sends(tx.respond(ok, 2.0)) == [ok]                       # the TU's 2xx retransmission
    assert tx.respond(build_response(r, 500, to_tag="t"), 2.5) == []
    assert drive(tx, 100) == [("end", 33.0, ["Terminated"])]        # Timer L = 64*T1


def test_cancel_copies_the_invite_hop_fields():
    r = req()
    r.headers.add("Route", "<sip:proxy.example;lr>")
    cancel = ClientTransaction(r).build_cancel()
    assert cancel.method == "CANCEL" and str(cancel.uri) == str(r.uri)
    assert cancel.headers.get_raw("Via") == r.headers.get_raw("Via")[:1]
    for name in ("From", "To", "Call-ID", "Route", "Max-Forwards"):
        assert cancel.headers.get(name) == r.headers.get(name), name
    assert cancel.cseq == (1, "CANCEL")
