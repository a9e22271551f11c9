"""Scenario files (scenarios/*.yaml): topology, UA settings, stage-independent steps, expectations.

    name: both-cone
    description: ...
    topology: {caller: cone, callee: cone, udp_timeout: null, loss: null, hostile: false}
    server_env: {NAT_KEEPALIVE_INTERVAL: "2"}
    alice: {contact_params: ";transport=udp;ob", rtp_mode: active}
    bob: {answer_mode: auto, answer_after_ms: 200}    # or {ua: sipp, flow: reinvite} / {ua: baresip}
    steps:
      - register: alice
      - call: {from: alice, to: bob}
      - media: 1.5
      - forge: {attack: dialog}    # hostile peer (needs topology hostile: true), see harness.hostile
      - hangup: alice
    expect:
      0: {audio: two-way}
      2: {audio: two-way, steps: {call: 200}}

``audio`` may be a list of directions when the stage's outcome is a race that the real stack
showed both ways (say so in the description); any of them meets the expectation.
"""
from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass, field

import yaml

from harness import peers
from harness.stacks import STACKS, stack
from netlab.topology import PROFILES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIO_DIR = os.path.join(ROOT, "scenarios")
UAS = ("alice", "bob")
USERS = {"alice": "1001", "bob": "1002"}
AUDIO = ("two-way", "A->B only", "B->A only", "none")
UA_FIELDS = ("contact_params", "rtp_mode", "rtp_from_port", "advertise_rtcp", "answer_mode", "answer_after_ms",
             "password", "expires", "timer_b", "late_offer", "early_update", "decline_video",
             "ua", "flow")      # ua: harness | sipp | baresip, flow: a SIPp flow (harness.peers)
STEP_KINDS = ("register", "unregister", "call", "media", "hangup", "cancel", "hold", "resume", "message",
              "options", "rebind", "wait", "set", "expect_call", "wait_event", "reoffer", "forge")
ATTACKS = ("dialog", "stranger", "malformed")


class ScenarioError(ValueError):
    pass


@dataclass
class Step:
    kind: str
    args: dict
    label: str


@dataclass
class Scenario:
    name: str
    description: str
    caller_nat: str
    callee_nat: str
    udp_timeout: int | None
    loss: float | None
    server_env: dict
    ua: dict[str, dict]
    steps: list[Step]
    expect: dict[int | str, dict]      # by stack name: 0, 1, 2, "2-sippy" (harness.stacks)
    path: str = ""
    tags: list[str] = field(default_factory=list)
    hostile: bool = False           # a hostile peer host (eve) on the public segment


def _err(path: str, msg: str) -> ScenarioError:
    return ScenarioError(f"{os.path.basename(path) or 'scenario'}: {msg}")


def parse_step(raw, index: int, path: str) -> Step:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise _err(path, f"step {index + 1} must be a mapping with one key (one of {', '.join(STEP_KINDS)})")
    kind, value = next(iter(raw.items()))
    if kind not in STEP_KINDS:
        raise _err(path, f"step {index + 1}: unknown step {kind!r} (known: {', '.join(STEP_KINDS)})")
    args: dict
    if kind in ("register", "unregister", "hangup", "cancel", "options", "resume", "reoffer"):
        args = {"who": value} if isinstance(value, str) else dict(value or {})
        if args.get("who") not in UAS:
            raise _err(path, f"step {index + 1} ({kind}): 'who' must be one of {UAS}")
    elif kind in ("media", "wait"):
        try:
            args = {"seconds": float(value)}
        except (TypeError, ValueError):
            raise _err(path, f"step {index + 1} ({kind}): needs a number of seconds") from None
        if not 0 <= args["seconds"] <= 120:
            raise _err(path, f"step {index + 1} ({kind}): seconds must be within 0..120")
    elif kind == "forge":
        args = {"attack": value} if isinstance(value, str) else dict(value or {})
        if args.get("attack") not in ATTACKS:
            raise _err(path, f"step {index + 1} (forge): attack must be one of {', '.join(ATTACKS)}")
    elif kind == "rebind":
        args = {"router": value if isinstance(value, str) else (value or {}).get("router", "nat_a")}
    else:
        if not isinstance(value, dict):
            raise _err(path, f"step {index + 1} ({kind}): needs a mapping of arguments")
        args = dict(value)
        for role_key in ("from", "to", "who"):
            if role_key in args and args[role_key] not in UAS and not (
                    role_key == "to" and str(args[role_key]).isdigit()):
                raise _err(path, f"step {index + 1} ({kind}): {role_key} must be one of {UAS}"
                                 + (" or a number (a user no UA registers)" if role_key == "to" else ""))
            if role_key == "to" and role_key in args:
                args[role_key] = str(args[role_key])
        if kind in ("call", "message") and ("from" not in args or "to" not in args):
            raise _err(path, f"step {index + 1} ({kind}): needs from and to")
        if kind in ("hold", "set", "wait_event") and "who" not in args:
            raise _err(path, f"step {index + 1} ({kind}): needs who")
    label = args.pop("label", None) or kind
    return Step(kind, args, label)


def load(path: str) -> Scenario:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise _err(path, f"cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise _err(path, "a scenario is a YAML mapping")
    for key in ("name", "steps"):
        if key not in data:
            raise _err(path, f"missing field {key!r}")
    topo = data.get("topology") or {}
    caller, callee = topo.get("caller", "none"), topo.get("callee", "none")
    for p in (caller, callee):
        if p not in PROFILES:
            raise _err(path, f"unknown NAT profile {p!r} (known: {', '.join(PROFILES)})")
    ua = {}
    for who in UAS:
        cfg = data.get(who) or {}
        unknown = set(cfg) - set(UA_FIELDS)
        if unknown:
            raise _err(path, f"{who}: unknown settings {sorted(unknown)} (known: {', '.join(UA_FIELDS)})")
        ua[who] = cfg
    steps = [parse_step(s, i, path) for i, s in enumerate(data["steps"] or [])]
    if not steps:
        raise _err(path, "no steps")
    problem = peers.check(ua, steps)
    if problem:
        raise _err(path, problem)
    expect = {}
    for k, v in (data.get("expect") or {}).items():
        try:
            stage = stack(k).name
        except ValueError:
            raise _err(path, f"expect: keys are stage numbers or stack names ({', '.join(STACKS)}), "
                             f"got {k!r}") from None
        audio = v.get("audio")
        if "audio" in v and not (audio in AUDIO or isinstance(audio, list) and audio and all(a in AUDIO for a in audio)):
            raise _err(path, f"expect stage {stage}: audio must be one of {AUDIO} (or a list of them: a "
                             "measured race, any of them meets the expectation)")
        expect[stage] = v
    env = {str(k): str(v) for k, v in (data.get("server_env") or {}).items()}
    hostile = bool(topo.get("hostile", False))
    if any(s.kind == "forge" for s in steps) and not hostile:
        raise _err(path, "forge steps need topology hostile: true (the hostile peer host)")
    return Scenario(str(data["name"]), str(data.get("description", "")).strip(), caller, callee,
                    topo.get("udp_timeout"), topo.get("loss"), env, ua, steps, expect, path, data.get("tags", []),
                    hostile)


@dataclass
class BrokenScenario:
    """A scenario file that did not load: reported and counted as an error, never run."""
    name: str          # the file name without .yaml (the scenario's name is unknown)
    path: str
    error: str


def scenario_files(path: str) -> list[str]:
    """The YAML files of a scenario directory, or the one file given."""
    if os.path.isdir(path):
        return sorted(glob.glob(os.path.join(path, "*.yaml")) + glob.glob(os.path.join(path, "*.yml")))
    if os.path.isfile(path):
        return [path]
    raise ScenarioError(f"{path}: no such scenario file or directory")


def discover(path: str | None = None, pattern: str = "*") -> tuple[list[Scenario], list[BrokenScenario]]:
    """Load every scenario under ``path`` (directory or file) whose name matches ``pattern``.

    A file that does not load does not stop the others: it comes back as a ``BrokenScenario``
    (matched against ``pattern`` by its file name)."""
    found: list[Scenario] = []
    broken: list[BrokenScenario] = []
    for file in scenario_files(path or SCENARIO_DIR):
        try:
            sc = load(file)
        except ScenarioError as exc:
            stem = os.path.splitext(os.path.basename(file))[0]
            if fnmatch.fnmatch(stem, pattern):
                broken.append(BrokenScenario(stem, file, str(exc)))
            continue
        if fnmatch.fnmatch(sc.name, pattern):
            found.append(sc)
    return found, broken


def load_all(pattern: str = "*", directory: str = SCENARIO_DIR) -> list[Scenario]:
    """Every scenario matching ``pattern``; raises on the first broken file (for tests/tools)."""
    found, broken = discover(directory, pattern)
    if broken:
        raise ScenarioError(broken[0].error)
    return found
