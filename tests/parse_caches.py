"""For tests that measure memory per binding: what the parser keeps that is not per binding.

A parsed message keeps what its accessors read in a memo on its headers, and recent Via/From/To/
Contact parses are shared in bounded dicts (sipcore.message); the NAT helper keeps recent address
classifications (bounded). Tests that hold their messages read them first, and empty the bounded
caches before measuring."""
from sipcore import message, nat_helper


def read_accessors(msgs) -> None:
    """Fill each message's memo now (the test holds the messages: their memo is not the registrar's)."""
    for m in msgs:
        m.call_id, m.cseq, m.from_tag, m.to_tag, m.top_via(), m.vias(), m.content_type


def drop_bounded_caches(nat: nat_helper.NATHelper | None = None) -> None:
    """Empty the shared parse caches (checking they stayed bounded) and ``nat``'s classifications."""
    assert len(message._RECENT_NAME_ADDRS) <= message.RECENT_SIZE and len(message._RECENT_VIAS) <= message.RECENT_SIZE
    message.forget_recent_parses()
    if nat is not None:
        assert len(nat._classified) <= nat_helper.CLASSIFIED_KEPT
        nat.forget_classifications()
