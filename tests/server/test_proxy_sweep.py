"""Housekeeping of the proxy core with a controlled clock: what lingered is forgotten, Timer C
fires, and only what is due is looked at."""
import asyncio
import time

from sipcore.proxy_core import TIMER_C, TX_LINGER
from sipcore.proxy_driver import ProxyDriver
from sipcore.registrar import Registrar
from sipcore.stage_policy import StagePolicy
from tests.server.proxy_fixtures import (ALICE, BOB, SERVER, EventLog, RelayAt, Wire, in_dialog, invite,
                                         register, response_to)


def make(clock):
    wire, media = Wire(), RelayAt()
    policy = StagePolicy(1, None)
    reg = Registrar(contact_policy=policy.register_contact)
    proxy = ProxyDriver(host=SERVER[0], port=SERVER[1], policy=policy, registrar=reg, media=media,
                        events=EventLog(), send=wire, user_exists=lambda u: u in ("1001", "1002"), clock=clock)
    register(reg, "1002", BOB, "192.168.2.20")
    return proxy, wire


def sweep(proxy):
    asyncio.run(proxy._drive(proxy.core.sweep()))


def test_finished_calls_and_transactions_are_forgotten_after_lingering():
    now = [time.time()]
    proxy, wire = make(lambda: now[0])

    async def call(i):
        await proxy.on_request(invite(branch=f"z9hG4bKi{i}", call_id=f"c{i}"), ALICE, "udp")
        fwd = wire.take_request("INVITE")
        await proxy.on_response(response_to(fwd, 200, "OK"), BOB, "udp")
        await proxy.on_request(in_dialog("ACK", f"z9hG4bKa{i}", cseq=1, call_id=f"c{i}"), ALICE, "udp")
        await proxy.on_request(in_dialog("BYE", f"z9hG4bKb{i}", call_id=f"c{i}"), ALICE, "udp")
        await proxy.on_response(response_to(wire.take_request("BYE"), 200, "OK"), BOB, "udp")

    async def calls():
        for i in range(20):
            await call(i)
        proxy.close()
    asyncio.run(calls())
    core = proxy.core
    assert len(core.calls) == 20 and core.server_txs
    now[0] += 5
    sweep(proxy)
    assert len(core.calls) == 20                     # nothing lingered long enough yet
    for _ in range(30):                              # the driver's once-a-second sweeps, 60 s
        now[0] += 2
        sweep(proxy)
    assert core.calls == {} and core.server_txs == {} and core.branches == {}
    assert len(core._tx_due) == 0 and len(core._calls_due) == 0 and core._invites == {}


def test_timer_c_cancels_a_branch_that_only_rings():
    now = [time.time()]
    proxy, wire = make(lambda: now[0])

    async def ring():
        await proxy.on_request(invite(), ALICE, "udp")
        await proxy.on_response(response_to(wire.take_request("INVITE"), 180, "Ringing"), BOB, "udp")
        wire.take()
        proxy.close()
    asyncio.run(ring())
    now[0] += TIMER_C - 1
    sweep(proxy)
    assert [m for m, _ in wire.take() if getattr(m, "method", None) == "CANCEL"] == []
    now[0] += 2
    sweep(proxy)
    sent = wire.take()
    assert [a for m, a in sent if getattr(m, "method", None) == "CANCEL"] == [BOB]
    assert [m.status for m, a in sent if a == ALICE and hasattr(m, "status")] == [408]
    assert proxy.core._invites == {}                 # answered finally: no longer walked


def test_sweep_looks_only_at_what_is_due():
    now = [time.time()]
    proxy, wire = make(lambda: now[0])

    async def options_burst():
        for i in range(200):
            await proxy.on_request(in_dialog("OPTIONS", f"z9hG4bKo{i}", call_id=f"o{i}", route=None,
                                             to_user="1002"), ALICE, "udp")
        proxy.close()
    asyncio.run(options_burst())
    core = proxy.core

    class NoWalk(dict):
        def _walk(self, *a):
            raise AssertionError("sweep walked every transaction")
        items = values = keys = __iter__ = _walk

    core.server_txs = NoWalk(core.server_txs)
    core.calls = NoWalk(core.calls)
    now[0] += 1
    sweep(proxy)
    assert len(dict.items(core.server_txs)) == 200          # nothing due yet
    now[0] += TX_LINGER + 5
    sweep(proxy)
    assert len(dict.items(core.server_txs)) == 0            # all 200 forgotten, none walked
