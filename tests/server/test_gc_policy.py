"""The garbage-collection policy (sipcore.gc_policy) rests on one fact: a call through the proxy
leaves no reference cycles, so long-lived call objects need never be scanned by the collector.
Calls here go through the proxy driver on a real event loop (media answers awaited as futures, as
from RTPProxy, and the tasks the server makes for them), CDR rows to files; then the collector
must find no more unreachable objects after 600 calls than after 100. A real server logs its
periodic full collection."""
import asyncio
import gc
import importlib.util
import os
import time

from sipcore import gc_policy
from sipcore.call_records import CDREvents
from sipcore.cdr import CDRWriter
from sipcore.message import parse_message
from sipcore.nat_helper import init_nat_helper
from sipcore.proxy_driver import ProxyDriver
from sipcore.registrar import Registrar
from sipcore.stage_policy import StagePolicy
from tests.stack import ServerProcess

_spec = importlib.util.spec_from_file_location(
    "bench_proxy", os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "bench_proxy.py"))
flows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flows)       # the benchmark's message builders (INVITE/180/200/ACK/BYE/200)


class FutureMedia:
    """Answers like a relay: each operation completes on a later loop turn, through a future."""

    async def _later(self, value):
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_result, value)
        return await fut

    async def offer(self, call_id, from_tag, to_tag, sdp, source):
        return await self._later(sdp)

    async def answer(self, call_id, from_tag, to_tag, sdp, source):
        return await self._later(sdp)

    async def delete(self, call_id, from_tag=None, to_tag=None):
        await self._later(None)


async def _calls(first: int, n: int, proxy: ProxyDriver, wire) -> None:
    tasks = set()

    def feed(begin, msg, source):
        rest = begin(msg, source, "udp")
        if rest is not None:
            task = asyncio.get_running_loop().create_task(rest)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def settle():
        while tasks:
            await asyncio.sleep(0)

    for i in range(first, first + n):
        feed(proxy.begin_request, parse_message(flows._request("INVITE", i, f"z9hG4bKi{i}", 1, flows.SDP)), flows.ALICE)
        await settle()
        invite = wire.last_request
        feed(proxy.begin_response, parse_message(flows._response(invite, 180, "Ringing")), flows.BOB)
        feed(proxy.begin_response, parse_message(flows._response(invite, 200, "OK", flows.SDP)), flows.BOB)
        await settle()
        feed(proxy.begin_request, parse_message(flows._request("ACK", i, f"z9hG4bKa{i}", 1, to_tag="b")), flows.ALICE)
        feed(proxy.begin_request, parse_message(flows._request("BYE", i, f"z9hG4bKb{i}", 2, to_tag="b")), flows.ALICE)
        await settle()
        feed(proxy.begin_response, parse_message(flows._response(wire.last_request, 200, "OK")), flows.BOB)
        await settle()


def test_calls_leave_no_reference_cycles(tmp_path):
    async def run() -> list[int]:
        wire = flows.Wire()
        writer = CDRWriter(str(tmp_path))
        policy = StagePolicy(2, init_nat_helper(server_ip=flows.SERVER[0], local_networks=[]))
        registrar = Registrar(contact_policy=policy.register_contact)
        registrar.handle_register(parse_message((
            "REGISTER sip:sip.local SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.20:41000;branch=z9hG4bKr\r\n"
            "From: <sip:1002@sip.local>;tag=r\r\nTo: <sip:1002@sip.local>\r\nCall-ID: reg\r\nCSeq: 1 REGISTER\r\n"
            "Contact: <sip:1002@203.0.113.20:41000>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n").encode()),
            flows.BOB, "udp", time.time())
        proxy = ProxyDriver(host=flows.SERVER[0], port=flows.SERVER[1], policy=policy, registrar=registrar,
                            media=FutureMedia(), events=CDREvents(writer, flows.SERVER[0], flows.SERVER[1]),
                            send=wire)
        found = []
        done = 0
        for n in (100, 500):
            await _calls(done, n, proxy, wire)
            done += n
            found.append(gc.collect())
        assert proxy.stats["calls"] == 600
        assert len(writer.read_rows(record_type="CALL")) == 600
        proxy.close()
        writer.close()
        return found

    gc.collect()
    gc.disable()
    try:
        after_100, after_600 = asyncio.run(run())
    finally:
        gc.enable()
    # what a collection finds after 500 more calls is not more than after the first 100: no cycles per call
    assert after_600 <= max(20, after_100), (after_100, after_600)


def test_server_thresholds_collect_young_objects_only():
    saved = gc.get_threshold()
    try:
        gc_policy.apply()
        young, middle, old = gc.get_threshold()
        assert young == gc_policy.YOUNG_THRESHOLD and middle >= 10 ** 9 and old >= 10 ** 9
    finally:
        gc.set_threshold(*saved)


def test_server_logs_its_full_collections(tmp_path):
    with ServerProcess(2, str(tmp_path), extra_env={"GC_FULL_INTERVAL": "1", "LOG_LEVEL": "INFO"}) as srv:
        deadline = time.monotonic() + 10
        while "gc: full collection freed" not in srv.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "gc: full collection freed" in srv.log_text()
