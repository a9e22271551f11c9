"""The registrar's in-memory binding index: O(1) paths, expiry wheel, memory per binding."""
import gc
import tracemalloc

from sipcore.bindings import MemoryBindingStore
from sipcore.message import parse_message
from sipcore.nat_helper import NATHelper
from sipcore.registrar import Registrar
from sipcore.stage_policy import StagePolicy
from tests.parse_caches import drop_bounded_caches, read_accessors


def register(i, *, cseq=1, expires=3600, domain="sip.local", contact_host=None, call_id=None):
    user = f"u{i:06d}"
    ip = contact_host or f"192.168.{(i >> 8) & 255}.{i & 255}"
    return parse_message((
        "REGISTER sip:sip.local SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK{i}x{cseq};rport\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:{user}@{domain}>\r\nFrom: <sip:{user}@{domain}>;tag=f{i}\r\n"
        f"Call-ID: {call_id or f'reg-{i}@{ip}'}\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{ip}:5060;transport=udp>\r\nExpires: {expires}\r\n"
        "User-Agent: test-phone/1.0\r\nContent-Length: 0\r\n\r\n").encode())


def stage2_registrar():
    policy = StagePolicy(2, NATHelper("198.51.100.1", ["192.168.0.0/16"]))
    return Registrar(contact_policy=policy.register_contact)


def src(i):
    return ("203.0.113.7", 10000 + i)


class NoWalk(MemoryBindingStore):
    """A store that fails the test if anything walks every binding."""
    walking_allowed = True

    def bindings(self):
        assert self.walking_allowed, "registrar walked every binding"
        return super().bindings()


def test_register_lookup_and_expiry_never_walk_all_bindings():
    store = NoWalk()
    reg = Registrar(store=store)
    for i in range(3000):
        assert reg.handle_register(register(i, expires=600 + i % 300), src(i), "udp", 1000.0).response.status == 200
    store.walking_allowed = False
    assert [b.source for b in reg.lookup("u000042", 1001.0)] == [src(42)]
    assert reg.lookup("sip:u000043@sip.local", 1001.0)[0].source == src(43)
    assert reg.lookup("sip:u000044@198.51.100.1", 1001.0)[0].source == src(44)   # another of our names
    assert reg.handle_register(register(7, cseq=2), src(7), "udp", 1002.0).refreshed
    assert reg.find_contact("sip:u000009@192.168.0.9:5060;transport=udp", 1003.0).source == src(9)
    assert reg.count(1003.0) == 3000
    gone = reg.expire(1000.0 + 650)    # expiries 600..899, 10 users each: 600..650 are due
    assert len(gone) == 51 * 10 - 1     # but u000007 was refreshed to 3600 s
    assert reg.count(1000.0 + 650) == 3000 - 509
    assert reg.remove_aor("u000100") == 1 and reg.lookup("u000100", 1651.0) == []


def test_refresh_moves_expiry_and_unregister_removes_from_every_index():
    reg = stage2_registrar()
    reg.handle_register(register(1, expires=60), src(1), "udp", 0.0)
    reg.handle_register(register(1, expires=120, cseq=2), src(1), "udp", 50.0)
    assert reg.expire(61.0) == []                      # the old expiry is no longer due
    [b] = reg.lookup("u000001", 100.0)
    assert b.nated and reg.nated_bindings(100.0) == [b]
    assert reg.find_contact(b.contact, 100.0) is b and reg.find_contact(b.original_contact, 100.0) is b
    out = reg.handle_register(register(1, expires=0, cseq=3), src(1), "udp", 101.0)
    assert out.removed == [b]
    assert reg.lookup("u000001", 101.0) == [] and reg.nated_bindings(101.0) == []
    assert reg.find_contact(b.contact, 101.0) is None and reg.count(101.0) == 0
    assert reg.expire(1000.0) == []


def test_contact_change_on_refresh_reindexes_the_new_contact():
    reg = Registrar()
    reg.handle_register(register(5, contact_host="10.1.1.1", call_id="c5"), ("203.0.113.9", 4000), "udp", 0.0)
    reg.handle_register(register(5, contact_host="10.1.1.1", call_id="c5", cseq=2), ("203.0.113.9", 4001), "udp", 1.0)
    [b] = reg.lookup("u000005", 2.0)
    assert b.source == ("203.0.113.9", 4001)
    assert reg.find_contact("sip:u000005@10.1.1.1:5060;transport=udp", 2.0) is b


def test_same_user_in_two_domains_and_remove_by_user():
    reg = Registrar()
    reg.handle_register(register(3), src(3), "udp", 0.0)
    reg.handle_register(register(3, domain="other.example", contact_host="10.9.9.9", call_id="x"), src(4), "udp", 1.0)
    assert [b.source for b in reg.lookup("u000003", 2.0)] == [src(4), src(3)]     # newest first
    assert [b.source for b in reg.lookup("sip:u000003@sip.local", 2.0)] == [src(3)]
    assert reg.remove_aor("u000003") == 2 and reg.count(3.0) == 0


def test_frequent_refreshes_do_not_grow_the_wheel():
    reg = Registrar()
    reg.handle_register(register(1), src(1), "udp", 0.0)
    for k in range(2500):
        reg.handle_register(register(1, cseq=2 + k), src(1), "udp", float(k % 60))
    assert reg.store._filed <= 2 * len(reg.store) + 1024
    assert reg.count(60.0) == 1


def test_memory_per_binding_under_1kb_and_returned_after_expiry():
    n = 2000
    reg = stage2_registrar()
    msgs = [register(i, expires=300) for i in range(n)]
    read_accessors(msgs)
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i, m in enumerate(msgs):
            reg.handle_register(m, src(i), "udp", 1000.0)
        del m
        drop_bounded_caches(reg.contact_policy.__self__.nat)
        gc.collect()
        full = tracemalloc.get_traced_memory()[0]
        assert reg.count(1000.0) == n
        assert reg.expire(1301.0) and reg.count(1301.0) == 0
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_binding = (full - before) / n
    assert per_binding <= 1024, per_binding
    assert (after - before) / n < 64, (after - before) / n
