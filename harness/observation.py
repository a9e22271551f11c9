"""Observation record of one scenario run, normalised so runs and stages can be compared.

Addresses, ports and ids become placeholders through the one normaliser, harness.normalise
(<server>, <alice>, <alice-public>, <nat_a-lan_a>, <port>, ...); times are dropped; what is left
is what a stage changes: final codes, audio direction per leg, NAT fix-ups seen on the wire, CDR rows.
"""
from __future__ import annotations

import csv
import glob
import os

from harness.normalise import Normaliser, roles_of_lab
from harness.peers.correlate import calls_of
from harness.scenario import USERS

AUDIO_THRESHOLD = 0.5
CDR_FIELDS = ("record_type", "call_state", "caller_number", "callee_number", "caller_ip", "callee_ip",
              "status_code", "status_text", "termination_reason", "call_type", "codec", "contact", "expires",
              "message_body", "cseq", "extra_info", "ringing_time")


def direction(a_to_b: bool, b_to_a: bool) -> str:
    return {(True, True): "two-way", (True, False): "A->B only", (False, True): "B->A only"}.get((a_to_b, b_to_a), "none")


def audio_of(agent_obs: dict) -> dict:
    alice, bob = agent_obs.get("alice", {}), agent_obs.get("bob", {})

    def totals(obs: dict, sender: str) -> tuple[int, int, int, int]:
        sent = recv = rtcp_sent = rtcp_recv = 0
        for st in (obs.get("rtp") or {}).values():
            sent += st.get("sent", 0)
            rtcp_sent += st.get("rtcp_sent", 0)
            rtcp_recv += st.get("rtcp_received", 0)
            recv += st.get("received", {}).get(sender, {}).get("unique", 0)
        return sent, recv, rtcp_sent, rtcp_recv

    a_sent, a_recv, a_rtcp_sent, a_rtcp_recv = totals(alice, USERS["bob"])
    b_sent, b_recv, b_rtcp_sent, b_rtcp_recv = totals(bob, USERS["alice"])
    ab = a_sent > 0 and b_recv >= AUDIO_THRESHOLD * a_sent
    ba = b_sent > 0 and a_recv >= AUDIO_THRESHOLD * b_sent
    return {"direction": direction(ab, ba) if (a_sent or b_sent) else "no media",
            "a_to_b": {"sent": a_sent, "received": b_recv, "loss": _loss(a_sent, b_recv)},
            "b_to_a": {"sent": b_sent, "received": a_recv, "loss": _loss(b_sent, a_recv)},
            "rtcp": {"a_to_b": "yes" if b_rtcp_recv else ("no" if a_rtcp_sent else "not sent"),
                     "b_to_a": "yes" if a_rtcp_recv else ("no" if b_rtcp_sent else "not sent")}}


def _loss(sent: int, recv: int) -> float:
    return round(1 - recv / sent, 3) if sent else 0.0


def read_cdr(cdr_dir: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(cdr_dir, "*", "cdr_*.csv"))):
        with open(path, newline="", encoding="utf-8") as fh:
            rows.extend(csv.DictReader(fh))
    return rows


def normalise_cdr(rows: list[dict], norm: Normaliser) -> list[dict]:
    """The CDR columns a stage may change, with addresses and ports as placeholders."""
    return [norm.cdr_row({k: r.get(k, "") for k in CDR_FIELDS}) for r in rows]


def cdr_by_call(rows: list[dict], calls: list[dict]) -> list[dict]:
    """Each normalised CDR row with the run's call it belongs to (``<run-call-N>``), found by the
    Call-ID of either leg as the parties saw it (harness.peers.correlate.calls_of), so a B2BUA that
    writes the callee leg's Call-ID still lines up with the baseline's row."""
    number = {}
    for c in calls:
        for cid in (c["caller_call_id"], c["callee_call_id"]):
            if cid:
                number.setdefault(cid, c["call"])
    return [{**norm, "call": f"<run-call-{number[raw['call_id']]}>" if raw.get("call_id") in number else ""}
            for raw, norm in rows]


def build_observation(sc, lab, steps, agent_obs: dict, registrar: list, cdr_rows: list[dict],
                      edge: dict | None = None, run_id: str = "") -> dict:
    """``registrar``: the stack's bindings [{aor, contact}]; ``cdr_rows``: its CDR rows by column
    name (harness.stack_process reads them, from the 34-column CSV or a stack's own format)."""
    norm = Normaliser(roles_of_lab(lab))
    codes: dict[str, object] = {}
    for label, code in steps:
        key, i = label, 2
        while key in codes:
            key, i = f"{label}#{i}", i + 1
        codes[key] = code
    nat = {"registrar": sorted(f"{b['aor']} -> {norm.text(b['contact'])}" for b in registrar)}
    for who in ("alice", "bob"):
        o = agent_obs.get(who, {})
        sdps = []
        for s in o.get("sdp_received", []):
            sdps.append({"where": s["where"], "c": norm.text(s["c"]), "o": norm.text(s["o"]),
                         "rtcp": None if not s.get("rtcp") else f"<port> {norm.text(s['rtcp'][1])}",
                         "direction": s.get("direction")})
        nat[f"sdp_to_{who}"] = sdps
        vias = {(v["method"], norm.text(v.get("received")), "rport" if v.get("rport") else "-")
                for v in o.get("vias", []) if v.get("status", 0) >= 200}
        nat[f"via_to_{who}"] = sorted(f"{m} received={r} {p}" for m, r, p in vias)
    # which requests the server challenged (a stage that starts challenging INVITE shows up here)
    auth = {who: sorted({f"{c['method']} {c['status']}" for c in agent_obs.get(who, {}).get("codes", [])
                         if c.get("status") in (401, 407)}) for who in ("alice", "bob")}
    calls = calls_of(run_id, {who: agent_obs.get(who, {}).get("dialogs", []) for who in ("alice", "bob")})
    raw_cdr = cdr_rows
    out = {"scenario": sc.name, "steps": codes, "audio": audio_of(agent_obs), "nat": nat, "auth": auth,
           "calls": [{"call": c["call"], "callee_leg": "seen" if c["callee_call_id"] else "not seen", "by": c["by"]}
                     for c in calls],
           "cdr": cdr_by_call(list(zip(raw_cdr, normalise_cdr(raw_cdr, norm))), calls),
           "messages_received": {w: agent_obs.get(w, {}).get("messages", []) for w in ("alice", "bob")}}
    heard = {w: agent_obs[w]["recording"]["heard"] for w in ("alice", "bob") if agent_obs.get(w, {}).get("recording")}
    if heard:       # a softphone's recording of what it played out (harness.peers.baresip)
        out["audio"]["heard"] = heard
    if edge:
        out["edge"] = edge      # hostile peer: per attack relayed / media_added / alive (harness.runner)
    return out
