"""User agents the project did not write, run inside a party's lab host (its namespace, behind its
NAT) behind the same agent protocol as the harness's own UA (``harness.agent``): the runner starts
``python -m <module>`` in the party's host and sends it the same commands.

A scenario names the UA per party (``alice: {ua: sipp, flow: late_offer}``):
  harness   the project's scriptable UA (default; every step kind)
  sipp      SIPp running the XML flows of harness/peers/sipp/ (``flow``: basic | late_offer |
            accept_reinvite for a caller, basic | reinvite for a callee); RTP both ways from the
            peer agent's own endpoint at the SDP port SIPp announces (harness.peers.sipp)
  baresip   the baresip softphone, headless, with its own config dir: digest auth, auto-answer,
            a known tone sent from a file (aufile), what it hears recorded (sndfile) (harness.peers.baresip)
A peer's RTP is judged from a capture taken in its own namespace (harness.peers.correlate), and
its SIP observations (SDP and Via it received) come from the same capture.
"""
from __future__ import annotations

import shutil

PEERS = {"harness": "harness.agent", "sipp": "harness.peers.sipp", "baresip": "harness.peers.baresip"}
BINARIES = {"sipp": "sipp (Debian package sip-tester)", "baresip": "baresip (Debian package baresip)"}
# the steps a peer can take part in, by the party that takes them ('who' or 'from')
PEER_STEPS = {"sipp": ("register", "call", "hangup", "media", "wait", "reoffer"),
              "baresip": ("register", "call", "hangup", "media", "wait")}
SIPP_FLOWS = {"caller": ("basic", "late_offer", "accept_reinvite"), "callee": ("basic", "reinvite")}
HOLD_STEPS = ("media", "wait")


def module(kind: str) -> str:
    return PEERS[kind]


def missing_binary(kind: str) -> str | None:
    """Why a peer kind cannot run on this machine, or None."""
    if kind in BINARIES and shutil.which(kind) is None:
        return f"ua: {kind} needs {BINARIES[kind]}; install it (scripts/setup.sh does)"
    return None


def check(ua: dict[str, dict], steps) -> str | None:
    """An error text for peer settings a scenario cannot run with, else None."""
    for who, cfg in ua.items():
        kind = cfg.get("ua", "harness")
        if kind not in PEERS:
            return f"{who}: ua must be one of {', '.join(PEERS)}, got {kind!r}"
        if kind == "harness":
            if "flow" in cfg:
                return f"{who}: flow is a setting of ua: sipp"
            continue
        for i, step in enumerate(steps):
            actor = step.args.get("who", step.args.get("from"))
            if actor == who and step.kind not in PEER_STEPS[kind]:
                return f"step {i + 1} ({step.kind}): {who} is a {kind} peer, which takes only " \
                       f"{', '.join(PEER_STEPS[kind])}"
        if kind == "sipp":
            role = "caller" if any(s.kind == "call" and s.args.get("from") == who for s in steps) else "callee"
            flow = cfg.get("flow", "basic")
            if flow not in SIPP_FLOWS[role]:
                return f"{who}: flow {flow!r} is not a SIPp {role} flow (known: {', '.join(SIPP_FLOWS[role])})"
        elif "flow" in cfg:
            return f"{who}: flow is a setting of ua: sipp"
    return None


def call_timing(steps, who: str) -> dict:
    """A SIPp flow runs its whole dialog by itself: the seconds the scenario spends between the
    party's call (or the callee's answer) and the caller's hangup, and between the answer and a
    ``reoffer`` of the callee, as milliseconds for the flow's pauses."""
    hold = reinvite_after = 0.0
    counting, before_reoffer = False, True
    for step in steps:
        if step.kind == "call":
            counting = True
        elif step.kind == "hangup":
            counting = False
        elif step.kind == "reoffer" and step.args.get("who") == who:
            before_reoffer = False
        elif counting and step.kind in HOLD_STEPS:
            if before_reoffer:
                reinvite_after += step.args["seconds"]
            hold += step.args["seconds"]
    return {"hold_ms": int(hold * 1000), "reinvite_after_ms": int(reinvite_after * 1000)}
