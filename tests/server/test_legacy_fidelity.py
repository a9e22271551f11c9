"""Stage 0 answers as the original server: the golden client (tests/golden/legacy_client.py)
drives our run.py with default settings, and what every party saw (responses, the headers that
matter, relay packets, CDR rows) must equal what the original answered (tests/golden/legacy/),
except for the differences kept on purpose, each listed here and in MIGRATION.md's fidelity
table. The CDR rows of stage 2 must equal the original's too (one billing format in every stage).
"""
from __future__ import annotations

import os
import re

import pytest

from tests.golden.legacy_client import differences, load_golden, run_cases
from tests.stack import ServerProcess

GOLDEN = load_golden(os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden", "legacy"))

# case -> {path regex: why we differ from the original on purpose}; every entry must still occur
CONTACT_EXPIRES = "REGISTER 200 states the granted expiry per Contact (RFC 3261 10.3 step 8); the original echoed none"
KEPT = {
    "register": {r"\.responses\[[135]\]\.headers\.contact\[0\]": CONTACT_EXPIRES},
    "unregister": {r"\.responses\[3\]\.headers\.contact\[0\]": CONTACT_EXPIRES},
    "busy": {r"\.callee_received\[1\]": "the proxy ACKs the 486 to the callee (the original sent the "
                                         "caller's ACK to the R-URI host by DNS, so the callee never got it)"},
    "cancel": {r"\.callee_received\[1\]\.(start|headers\.via_count)": "CANCEL is hop by hop: our own CANCEL "
                                                                     "with the forwarded INVITE's R-URI and Via",
               r"\.callee_received\[2\]": "the proxy ACKs the callee's 487",
               r"\.responses\[[23]\]": "the caller gets the 200 for its CANCEL and the 487 (the original "
                                       "sent both to the callee: the caller never got a final response)",
               r"\.stray_responses": "nothing is misrouted to the callee"},
}


def route_token(path: str, golden, observed) -> bool:
    """The edge policy's HMAC token in our Record-Route (;rt=...): opaque to UAs, which copy it."""
    return ".record-route[" in path and isinstance(observed, str) and re.sub(r";rt=[^;>]+", "", observed) == golden


def unexplained(case: str, diffs: dict) -> tuple[dict, set]:
    rules = KEPT.get(case, {})
    diffs = {k: v for k, v in diffs.items() if not route_token(k, *v)}
    left = {k: v for k, v in diffs.items() if not any(re.match(r, k) for r in rules)}
    used = {r for r in rules if any(re.match(r, k) for k in diffs)}
    return left, set(rules) - used


def test_stage0_answers_as_the_original(tmp_path):
    assert set(GOLDEN) >= {"options", "register", "register_wrong_password", "callee_unprovisioned",
                           "callee_unregistered", "message", "call", "late_offer", "busy", "cancel",
                           "unregister"}
    with ServerProcess(0, str(tmp_path)) as srv:
        results = run_cases(("127.0.0.1", srv.ports.sip), os.path.join(str(tmp_path), "CDR"))
    problems = []
    for case, golden in GOLDEN.items():
        left, stale = unexplained(case, differences(golden, results[case]))
        problems += [f"{case}{k}: original {g!r}, stage 0 {o!r}" for k, (g, o) in left.items()]
        problems += [f"{case}: kept difference {r!r} no longer occurs (update KEPT and MIGRATION.md)"
                     for r in stale]
    assert not problems, "\n".join(problems)
    # the facts the issue names, asserted plainly as well
    assert results["call"]["punch"] == {"alice": {"packets": 20, "payload_sizes": [160]},
                                        "bob": {"packets": 20, "payload_sizes": [160]}}
    assert results["late_offer"]["media"]["alice_sends_to"] == "callee"
    assert results["register_wrong_password"]["responses"][-1]["start"] == "SIP/2.0 401 Unauthorized"
    assert results["register_wrong_password"]["cdr"] == []


@pytest.mark.parametrize("stage", [2])
def test_cdr_rows_of_later_stages_match_the_original(tmp_path, stage):
    """Same cases, stage 2 with INVITE authentication off (so the client's calls go through): the
    CDR rows - which rows, every column and value format - are the original's."""
    with ServerProcess(stage, str(tmp_path), extra_env={"AUTH_INVITE": "0"}) as srv:
        results = run_cases(("127.0.0.1", srv.ports.sip), os.path.join(str(tmp_path), "CDR"))
    problems = []
    for case, golden in GOLDEN.items():
        for k, (g, o) in differences({"cdr": golden["cdr"]}, {"cdr": results[case]["cdr"]}).items():
            problems.append(f"{case}{k}: original {g!r}, stage {stage} {o!r}")
    assert not problems, "\n".join(problems)
