"""Stage against baseline: noise from two baseline runs, then a verdict per scenario.

A field that differs between the two baseline runs is noise: reported, never counted. Verdicts:
  improved   better audio direction, or a step that failed in the baseline now succeeds, or the
             candidate meets the scenario's expectation where the baseline did not
  same       nothing outside noise changed (NAT fix-ups / CDR changes are listed)
  REGRESSED  worse audio, a step that succeeded now fails, a CDR row disappears or a call that
             ended normally now fails, the run errored, or the candidate misses its expectation
  changed    an accepted change: the candidate answers differently in a way MIGRATION.md lists
             under "Changes at cutover" (ACCEPTED_CHANGES); not a regression, but the operator
             must confirm that UAs and billing are ready for it (go_no_go names every one)
  noisy      the baseline disagreed with itself on audio or step results, so no verdict is safe

A request the candidate challenges (401/407) that the baseline did not, and that no accepted
change covers, is REGRESSED: phones that cannot answer it stop working.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

AUDIO_RANK = {"two-way": 3, "A->B only": 1, "B->A only": 1, "none": 0, "no media": -1}


def flatten(obj, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list):
        if all(not isinstance(x, (dict, list)) for x in obj):
            out[prefix] = tuple(obj)
        else:
            for i, v in enumerate(obj):
                out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = obj
    return out


# numbers that vary by nature (packet counts, loss ratios) are compared through the direction
VOLATILE = (".sent", ".received", ".loss")


def comparable(obs: dict) -> dict[str, object]:
    return {k: v for k, v in flatten(obs).items() if not k.endswith(VOLATILE)}


def diff(a: dict, b: dict) -> dict[str, tuple]:
    fa, fb = comparable(a), comparable(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def step_ok(code) -> bool:
    """A step succeeded: a 2xx, an awaited event seen, or a hostile peer's attack blocked."""
    return isinstance(code, int) and 200 <= code < 300 or code in ("seen", "blocked")


@dataclass(frozen=True)
class AcceptedChange:
    """A documented difference between stages (MIGRATION.md, "Changes at cutover")."""
    name: str
    what: str
    needs: str          # what UAs or billing need

    def covers(self, key: str, base, cand) -> bool:
        if self.name == "invite-challenge":
            if not key.startswith("auth."):
                return False
            added = set(cand or ()) - set(base or ())
            return bool(added) and added <= IDENTITY_CHALLENGES and set(base or ()) <= set(cand or ())
        if self.name == "cdr-auth-user":
            return key.startswith("cdr[") and key.endswith(".extra_info") and base == "" \
                and str(cand).startswith("auth_user=")
        label = key.removeprefix("steps.").split("#")[0]
        if self.name == "register-403":
            return label.startswith("register") and (base, cand) == (401, 403)
        if self.name == "unknown-user-404":
            return label.startswith(("call", "message")) and (base, cand) == (480, 404)
        return False


# initial requests the caller-identity rule (sipcore.admission) challenges in stages 1 and 2
IDENTITY_CHALLENGES = frozenset(f"{m} 407" for m in ("INVITE", "MESSAGE", "SUBSCRIBE", "REFER", "NOTIFY",
                                                     "PUBLISH", "INFO", "UPDATE", "PRACK"))

ACCEPTED_CHANGES = (
    AcceptedChange("invite-challenge", "INVITE, MESSAGE and other initial requests from our users are "
                   "challenged with 407 (caller identity)",
                   "every phone must answer 407 with its own account (AUTH_INVITE=0 keeps stage 0's behaviour)"),
    AcceptedChange("cdr-auth-user", "CDR extra_info holds auth_user=NAME on authenticated calls (blank before)",
                   "a billing importer that expects extra_info empty must accept the value"),
    AcceptedChange("register-403", "a wrong REGISTER password gets 403 instead of a fresh 401",
                   "phones show 'forbidden' instead of asking again; nothing to configure"),
    AcceptedChange("unknown-user-404", "a call or MESSAGE to a number that does not exist gets 404 instead of 480",
                   "dial plans / UAs that retry on 480 stop retrying; nothing to configure"),
)


_PRIVATE_CONTACT = re.compile(r"^sip:([^@]+)@<(alice|bob)>:\S+$")
_PUBLIC_CONTACT = re.compile(r"^sip:([^@]+)@<(alice|bob)-public>:\S+$")
_BINDING_AS_SENT = re.compile(r"^(\S+) -> sip:([^@]+)@<[^>]+>:\S+ received=sip:(<[^>]+>):\S+$")
_BINDING = re.compile(r"^(\S+) -> sip:([^@]+)@(<[^>]+>):\S+$")


@dataclass(frozen=True)
class ReferenceDifference(AcceptedChange):
    """A documented difference between our stages and a reference stack we did not write
    (MIGRATION.md, "Kamailio as the baseline"); it applies in either direction (reference as
    baseline or as candidate) and only when one side is a reference stack."""

    def covers(self, key: str, base, cand) -> bool:
        return self._one_way(key, base, cand) or self._one_way(key, cand, base)

    def _one_way(self, key: str, ref, ours) -> bool:
        if self.name == "contact-as-sent":
            if key.startswith("cdr[") and key.endswith(".contact"):
                a, b = _PRIVATE_CONTACT.match(str(ref or "")), _PUBLIC_CONTACT.match(str(ours or ""))
                return bool(a and b and a.groups() == b.groups())
            if key == "nat.registrar":
                sent = [_BINDING_AS_SENT.match(x) for x in ref or ()]
                fixed = [_BINDING.match(x) for x in ours or ()]
                return bool(sent) and all(sent) and all(fixed) and len(sent) == len(fixed) and \
                    sorted(m.group(1, 2, 3) for m in sent if m) == sorted(m.group(1, 2, 3) for m in fixed if m)
            return False
        if self.name == "acc-without-sdp-and-body":
            return key.startswith("cdr[") and key.endswith((".codec", ".call_type", ".message_body")) \
                and ref == "" and bool(ours)
        if self.name == "rtcp-without-address":
            return key.startswith("nat.sdp_to_") and key.endswith(".rtcp") and ref == "<port> None" \
                and ours == "<port> <server>"
        if self.name == "domain-as-number":
            return key.startswith("cdr[") and key.endswith(".callee_number") and ref == "" and "." in str(ours)
        return False


REFERENCE_DIFFERENCES = (
    ReferenceDifference("contact-as-sent", "Kamailio keeps a NATed phone's Contact as sent and its source "
                        "address apart (received); our stages store the Contact rewritten to the source "
                        "(registrar listing and CDR contact column)",
                        "nothing: both route to the NAT's address; a CDR importer reading contact gets the public one"),
    ReferenceDifference("acc-without-sdp-and-body", "Kamailio's acc records neither media nor MESSAGE bodies "
                        "(codec, call_type, message_body blank); our CDR fills them as the original does",
                        "nothing: a gap of the reference's accounting, not of ours"),
    ReferenceDifference("rtcp-without-address", "Kamailio's rtpproxy module rewrites a=rtcp to a port alone; our "
                        "stages write port and relay address (RFC 3605 allows both)",
                        "nothing: UAs take the c= address when a=rtcp has none"),
    ReferenceDifference("domain-as-number", "an OPTIONS to the domain has the domain as callee_number in our CDR "
                        "(the original's format); Kamailio's To user is empty",
                        "nothing: the original's CDR format, kept on purpose (sipcore/call_records.py)"),
)


def accepted_change(key: str, base, cand, reference: bool = False) -> AcceptedChange | None:
    rules = ACCEPTED_CHANGES + (REFERENCE_DIFFERENCES if reference else ())
    return next((rule for rule in rules if rule.covers(key, base, cand)), None)


def _step_change(key: str, label: str, b, c, accepted: list[str], reference: bool = False) -> str:
    """The reason text of a changed step result, naming the accepted change that covers it."""
    rule = accepted_change(key, b, c, reference)
    if rule is None:
        return f"{label}: {b} -> {c}"
    accepted.append(rule.name)
    return f"{label}: {b} -> {c} (accepted change {rule.name}: {rule.what})"


def _challenges_and_cdr(changes: dict, accepted: list[str], reasons: list[str], reference: bool = False) -> bool:
    """Accepted changes among the challenge and CDR differences (appended to ``accepted`` and
    ``reasons``); True when a request is newly challenged and no accepted change covers it."""
    worse = False
    for key, (b, c) in changes.items():
        rule = accepted_change(key, b, c, reference)
        if key.startswith(("cdr[", "nat.")) and rule is not None:
            accepted.append(rule.name)
        elif key.startswith("auth.") and rule is not None:
            accepted.append(rule.name)
            reasons.append(f"{key.split('.', 1)[1]} challenged: {list(b or ())} -> {list(c or ())} "
                           f"(accepted change {rule.name}: {rule.what})")
        elif key.startswith("auth.") and set(c or ()) - set(b or ()):
            worse = True
            reasons.append(f"{key.split('.', 1)[1]} newly challenged: {sorted(set(c or ()) - set(b or ()))} "
                           "(no accepted change covers it)")
    return worse


def meets(obs: dict, expect: dict | None) -> tuple[bool, list[str]]:
    if not expect:
        return True, []
    misses = []
    wanted = expect.get("audio")
    allowed = wanted if isinstance(wanted, list) else [wanted]      # a list: a race, each outcome measured
    if "audio" in expect and obs.get("audio", {}).get("direction") not in allowed:
        misses.append(f"audio {obs.get('audio', {}).get('direction')} != expected {expect['audio']}")
    for label, code in (expect.get("steps") or {}).items():
        if obs.get("steps", {}).get(label) != code:
            misses.append(f"{label} {obs.get('steps', {}).get(label)} != expected {code}")
    for who, challenged in (expect.get("auth") or {}).items():
        got = obs.get("auth", {}).get(who, [])
        if sorted(got) != sorted(challenged):
            misses.append(f"{who} challenged {sorted(got)} != expected {sorted(challenged)}")
    if "registrar_contains" in expect:
        reg = " ".join(obs.get("nat", {}).get("registrar", []))
        for text in expect["registrar_contains"]:
            if text not in reg:
                misses.append(f"registrar lacks {text!r}")
    return not misses, misses


@dataclass
class Verdict:
    scenario: str
    verdict: str
    baseline: str
    candidate: str
    audio: str
    nat: str
    cdr: str
    reasons: list[str] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)
    changes: dict = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)     # names of ACCEPTED_CHANGES seen

    def as_dict(self) -> dict:
        return {"scenario": self.scenario, "verdict": self.verdict, "baseline": self.baseline,
                "candidate": self.candidate, "audio": self.audio, "nat_fixups": self.nat, "cdr": self.cdr,
                "reasons": self.reasons, "noise_fields": self.noise, "accepted_changes": self.accepted,
                "changes": {k: [str(x) for x in v] for k, v in self.changes.items()}}


def summary_of(obs: dict) -> str:
    if obs.get("error"):
        return "error"
    steps = obs.get("steps", {})
    failed = [f"{k}={v}" for k, v in steps.items() if not step_ok(v)]
    audio = obs.get("audio", {}).get("direction", "?")
    return f"{audio}" + (f"; {', '.join(failed)}" if failed else "")


def judge(scenario: str, base_runs: list[dict], cand_runs: list[dict], expect_base: dict | None = None,
          expect_cand: dict | None = None, reference: bool = False) -> Verdict:
    """``reference``: one side is a reference stack (harness.stacks, ``reference: true``), so the
    REFERENCE_DIFFERENCES apply besides the ACCEPTED_CHANGES."""
    base, cand = base_runs[0], cand_runs[0]
    noise = set()
    for other in base_runs[1:]:
        noise |= set(diff(base, other))
    for other in cand_runs[1:]:
        noise |= set(diff(cand, other))
    changes = {k: v for k, v in diff(base, cand).items() if k not in noise}
    reasons: list[str] = []
    accepted: list[str] = []
    better = worse = False
    b_audio = base.get("audio", {}).get("direction", "none")
    c_audio = cand.get("audio", {}).get("direction", "none")
    if "audio.direction" not in noise and b_audio != c_audio:
        if AUDIO_RANK.get(c_audio, 0) > AUDIO_RANK.get(b_audio, 0):
            better = True
            reasons.append(f"audio {b_audio} -> {c_audio}")
        else:
            worse = True
            reasons.append(f"audio {b_audio} -> {c_audio}")
    for label in sorted(set(base.get("steps", {})) | set(cand.get("steps", {}))):
        key = f"steps.{label}"
        if key in noise:
            continue
        b, c = base.get("steps", {}).get(label), cand.get("steps", {}).get(label)
        if step_ok(b) and not step_ok(c):
            worse = True
            reasons.append(f"{label}: {b} -> {c}")
        elif not step_ok(b) and step_ok(c):
            better = True
            reasons.append(f"{label}: {b} -> {c}")
        elif b != c:
            reasons.append(_step_change(key, label, b, c, accepted, reference))
    worse = _challenges_and_cdr(changes, accepted, reasons, reference) or worse
    b_rows = [r for r in base.get("cdr", [])]
    c_rows = [r for r in cand.get("cdr", [])]
    b_kinds = sorted((r["record_type"], r["call_state"]) for r in b_rows)
    c_kinds = sorted((r["record_type"], r["call_state"]) for r in c_rows)
    if not any(k.startswith("cdr") for k in noise):
        missing = [k for k in b_kinds if b_kinds.count(k) > c_kinds.count(k)]
        if missing:
            worse = True
            reasons.append(f"CDR rows missing: {sorted(set(missing))}")
        if ("CALL", "ENDED") in b_kinds and ("CALL", "ENDED") not in c_kinds:
            worse = True
            reasons.append("a call that ended normally no longer does")
    if cand.get("error"):
        worse = True
        reasons.append(f"candidate run failed: {cand['error'][:200]}")
    ok_b, _ = meets(base, expect_base)
    ok_c, misses = meets(cand, expect_cand)
    if expect_cand and not ok_c:
        worse = True
        reasons += [f"expectation: {m}" for m in misses]
    elif expect_cand and ok_c and not ok_b:
        better = True
    nat_changes = sorted({k.split("[")[0] for k in changes if k.startswith("nat.")})
    cdr_changes = sorted({k.split("]")[-1].lstrip(".") for k in changes if k.startswith("cdr")})
    base_noisy = any(k == "audio.direction" or k.startswith("steps.") for k in noise)
    if worse:
        verdict = "REGRESSED"
    elif base_noisy:
        verdict = "noisy"
    elif better:
        verdict = "improved"
    elif accepted:
        verdict = "changed"
    else:
        verdict = "same"
    audio_col = b_audio if b_audio == c_audio else f"{b_audio} -> {c_audio}"
    labels = {"registrar": "Contact", "via": "Via rcvd/rport", "sdp": "SDP"}
    nat_kinds = sorted({labels.get(n.replace("nat.", "").split("_")[0], n) for n in nat_changes})
    nat_col = "same" if not nat_kinds else "changed: " + ", ".join(nat_kinds)
    cdr_col = "same" if not cdr_changes else f"{len(cdr_changes)} fields changed" + (
        f" ({', '.join(cdr_changes[:3])}...)" if len(cdr_changes) > 3 else f" ({', '.join(cdr_changes)})")
    return Verdict(scenario, verdict, summary_of(base), summary_of(cand), audio_col, nat_col, cdr_col,
                   reasons, sorted(noise), changes, sorted(set(accepted)))


def error_verdict(scenario: str, message: str) -> Verdict:
    """A scenario that could not run at all (its file does not load): an ERROR in the table."""
    return Verdict(scenario, "ERROR", "not run", "not run", "-", "-", "-", [message])


def go_no_go(verdicts: list[Verdict]) -> tuple[bool, str]:
    regressed = [v.scenario for v in verdicts if v.verdict == "REGRESSED"]
    errors = [v.scenario for v in verdicts if v.verdict == "ERROR"]
    counts = {k: sum(1 for v in verdicts if v.verdict == k)
              for k in ("improved", "same", "changed", "REGRESSED", "noisy")}
    text = ", ".join(f"{n} {k}" for k, n in counts.items())
    if errors:
        text += f", {len(errors)} ERROR ({', '.join(errors)}: not run)"
    seen = {name: [v.scenario for v in verdicts if name in v.accepted] for name in
            dict.fromkeys(n for v in verdicts for n in v.accepted)}
    if seen:
        rules = {r.name: r for r in ACCEPTED_CHANGES + REFERENCE_DIFFERENCES}
        text += ("; accepted changes to confirm (MIGRATION.md, Changes at cutover / Kamailio as the baseline): "
                 + "; ".join(f"{n} in {len(s)} scenario(s): {rules[n].what} -> {rules[n].needs}"
                             for n, s in seen.items()))
    if regressed:
        return False, f"NO-GO: {len(regressed)} regressed ({', '.join(regressed)}); {text}"
    if errors:
        return False, f"NO-GO: {len(errors)} scenario(s) could not run; {text}"
    return True, f"GO: nothing regressed; {text}"
