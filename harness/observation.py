"""Observation record of one scenario run, normalised so runs and stages can be compared.

Addresses become role names (<server>, <alice>, <nat_a>, ...), ports and ids become placeholders,
times are dropped; what is left is what a stage changes: final codes, audio direction per leg,
NAT fix-ups seen on the wire, CDR rows.
"""
from __future__ import annotations

import csv
import glob
import os
import re

from harness.scenario import USERS

AUDIO_THRESHOLD = 0.5
CDR_FIELDS = ("record_type", "call_state", "caller_number", "callee_number", "caller_ip", "callee_ip",
              "status_code", "status_text", "termination_reason", "call_type", "codec", "contact", "expires",
              "message_body")
_IP = re.compile(r"\b(\d{1,3}(?:\.\d{1,3}){3})\b")


def role_map(lab) -> dict[str, str]:
    roles = {}
    for h in lab.topology.hosts:
        for seg, addr in h.addresses.items():
            roles[addr] = h.name if seg == "public" or h.role == "host" else f"{h.name}-{seg}"
    return roles


def norm_addr(text, roles: dict[str, str]):
    if text is None:
        return None
    return _IP.sub(lambda m: f"<{roles.get(m.group(1), 'other' if m.group(1) != '0.0.0.0' else '0.0.0.0')}>",
                   str(text))


def norm_uri(text: str, roles: dict[str, str]) -> str:
    text = norm_addr(text, roles)
    return re.sub(r"(>):\d+", r"\1:<port>", text)


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


def normalise_cdr(rows: list[dict], roles: dict[str, str]) -> list[dict]:
    out = []
    for r in rows:
        n = {k: r.get(k, "") for k in CDR_FIELDS}
        for k in ("caller_ip", "callee_ip", "contact"):
            n[k] = norm_uri(n[k], roles) if n[k] else ""
        out.append(n)
    return out


def build_observation(sc, lab, steps, agent_obs: dict, registrar: list, cdr_dir: str,
                      edge: dict | None = None) -> dict:
    roles = role_map(lab)
    codes: dict[str, object] = {}
    for label, code in steps:
        key, i = label, 2
        while key in codes:
            key, i = f"{label}#{i}", i + 1
        codes[key] = code
    nat = {"registrar": sorted(f"{b['aor']} -> {norm_uri(b['contact'], roles)}" for b in registrar)}
    for who in ("alice", "bob"):
        o = agent_obs.get(who, {})
        sdps = []
        for s in o.get("sdp_received", []):
            sdps.append({"where": s["where"], "c": norm_addr(s["c"], roles), "o": norm_addr(s["o"], roles),
                         "rtcp": None if not s.get("rtcp") else f"{'<port>'} {norm_addr(s['rtcp'][1], roles)}",
                         "direction": s.get("direction")})
        nat[f"sdp_to_{who}"] = sdps
        vias = {(v["method"], norm_addr(v.get("received"), roles), "rport" if v.get("rport") else "-")
                for v in o.get("vias", []) if v.get("status", 0) >= 200}
        nat[f"via_to_{who}"] = sorted(f"{m} received={r} {p}" for m, r, p in vias)
    out = {"scenario": sc.name, "steps": codes, "audio": audio_of(agent_obs), "nat": nat,
           "cdr": normalise_cdr(read_cdr(cdr_dir), roles),
           "messages_received": {w: agent_obs.get(w, {}).get("messages", []) for w in ("alice", "bob")}}
    if edge:
        out["edge"] = edge      # hostile peer: per attack relayed / media_added / alive (harness.runner)
    return out
