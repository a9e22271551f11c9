"""Offer/answer in every position RFC 3261/3262/3311 allows, with SIPp (Debian sip-tester) as the
UAs on loopback against stages 1 and 2 (real RTPProxy): each flow's SIPp pair is in tests/sipp/,
and the test's own RTP endpoints count the packets that crossed the relay in each direction.

All flows of a stage run at once against one server (each with its own callee user and ports).
"""
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.sipp_flows import PACKETS, run_flow
from tests.stack import ServerProcess

pytestmark = [pytest.mark.sipp, pytest.mark.skipif(not shutil.which("sipp"), reason="SIPp not installed (sip-tester)")]

MEDIA_FLOWS = ["late_offer", "late_offer_prack", "reinvite_nosdp", "callee_hold", "prack_early_media",
               "early_media", "update_early", "declined_video", "hold_variants"]
FLOWS = MEDIA_FLOWS + ["ipv6_488"]
# SIGNALLING=sippy: the Sippy 2.5 B2BUA does not relay PRACK/UPDATE and turns a re-INVITE without
# SDP into a hold of its own (MIGRATION.md, phase 3, known differences); the other positions hold.
SIPPY_FLOWS = ["late_offer", "early_media", "declined_video", "hold_variants", "ipv6_488"]


@pytest.mark.parametrize("stage", [1, 2, "2-sippy", "2-rtpengine"])
def test_every_offer_answer_position_relays_rtp_both_ways(stage, tmp_path):
    env = {"AUTH_INVITE": "0"}
    flows = FLOWS
    if stage == "2-sippy":
        stage, flows = 2, SIPPY_FLOWS
        env["SIGNALLING"] = "sippy"
    elif stage == "2-rtpengine":
        # rtpengine answers an IPv6 request with an IPv4 address: the backend turns that into 488
        stage, flows = 2, ["late_offer", "ipv6_488"]
        env["RTPPROXY_ENGINE"] = "rtpengine"
    srv = ServerProcess(stage, str(tmp_path), extra_env=env)
    users = {str(2001 + i): {"username": str(2001 + i), "password": "1234", "status": "ACTIVE"} for i in range(len(flows))}
    with open(os.path.join(str(tmp_path), "users.json"), "w") as fh:
        json.dump(users, fh)
    def one(i: int):
        relay = (srv.ports.relay_min, srv.ports.relay_max)     # known once the server runs (it may move)
        base = srv.ports.sip + 200 + 10 * i
        flow = flows[i]
        return run_flow(flow, srv.ports.sip, relay, str(2001 + i), (base, base + 1),
                        os.path.join(str(tmp_path), flow), media=flow in MEDIA_FLOWS)

    with srv, ThreadPoolExecutor(max_workers=len(flows)) as pool:
        results = list(pool.map(one, range(len(flows))))
    figures = {r.flow: {"caller->callee": r.a_to_b, "callee->caller": r.b_to_a, "not via relay": r.direct}
               for r in results}
    print(f"\nstage {stage}: RTP packets through the relay, of {PACKETS} sent each way")
    for flow, f in figures.items():
        print(f"  {flow:18} caller->callee {f['caller->callee']:3}  callee->caller {f['callee->caller']:3}"
              f"  not via relay {f['not via relay']}")
    for r in results:
        detail = f"{r.flow}: {figures[r.flow]} logs={r.logs}"
        assert r.uac_rc == 0, detail
        assert r.uas_rc in (0, None), detail
        if r.flow in MEDIA_FLOWS:
            # loopback: allow a few packets in flight when the call ends
            assert r.a_to_b >= 0.9 * PACKETS and r.b_to_a >= 0.9 * PACKETS, detail
            assert r.direct == 0, detail
    log = srv.output
    assert "Traceback" not in log
    assert "cannot relay IPv6 media" in log        # ipv6_488: the 488 says why, in one line
