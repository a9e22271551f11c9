"""Run one scenario against one server stage in a fresh NAT lab and return its observation.

The lab, the server, its RTPProxy, the agents and the captures are all torn down when the run
ends, also on errors and Ctrl-C (the lab registers its cleanup before it creates anything).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from harness import peers
from harness import stack_process
from harness.agent_control import AgentError, AgentProcess
from harness.console import is_ready_line
from harness.ladder import lab_map
from harness.observation import build_observation
from harness.scenario import ROOT, USERS, Scenario
from harness.stacks import stack
from netlab import open_lab, standard
from netlab.lifecycle import claim_slot, release_slot

log = logging.getLogger(__name__)
RTP_PORTS = {"alice": 40000, "bob": 42000}


@dataclass
class RunResult:
    scenario: str
    stage: int | str        # the stack's name (harness.stacks)
    run: int
    observation: dict
    evidence: str
    seconds: float
    error: str | None = None


class StepError(RuntimeError):
    pass


def _wait_ready(proc: subprocess.Popen, log_path: str, timeout: float = 25.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with open(log_path, encoding="utf-8", errors="replace") as fh:
                if any(is_ready_line(line) for line in fh):
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        tail = fh.read()[-1500:]
    raise StepError(f"server did not become ready (exit={proc.poll()}):\n{tail}")


def run_scenario(sc: Scenario, stage: int | str, *, backend: str = "netns", evidence_root: str = "harness-out",
                 run_index: int = 0, entry: str | None = None) -> RunResult:
    t0 = time.monotonic()
    st = stack(stage)
    stage = st.name
    evidence = os.path.abspath(os.path.join(evidence_root, sc.name, f"stage{stage}-run{run_index}"))
    shutil.rmtree(evidence, ignore_errors=True)
    os.makedirs(evidence, exist_ok=True)
    slot = claim_slot()
    agents: dict[str, AgentProcess] = {}
    captures = []
    server = None
    steps: list[tuple[str, object]] = []
    error = None
    topo = standard(sc.caller_nat, sc.callee_nat, slot=slot, udp_timeout=sc.udp_timeout, loss=sc.loss,
                    name=sc.name, hostile=sc.hostile)
    lab = open_lab(topo, backend)
    obs: dict = {}
    try:
        with lab:
            server_ip = lab.address("server")
            token = secrets.token_hex(8)
            users = {u: {"username": u, "password": "1234", "display_name": who, "status": "ACTIVE"}
                     for who, u in USERS.items()}
            for r in topo.routers():
                if "public" in r.addresses:
                    captures.append(lab.capture(r.name, lab.iface(r.name, "public"),
                                                os.path.join(evidence, f"{r.name}-public.pcap")))
            # the server's own view (every scenario has one, also without NAT), and who is who, for
            # the ladder diagrams of the HTML report
            captures.append(lab.capture("server", lab.iface("server", "public"),
                                        os.path.join(evidence, "server-public.pcap")))
            with open(os.path.join(evidence, "lab.json"), "w") as fh:
                json.dump(lab_map(lab), fh, indent=2)
            server = stack_process.start(lab, st, address=server_ip, workdir=evidence, token=token, users=users,
                                         extra_env=sc.server_env, entry=entry)
            server_log = server.log_path
            run_id = secrets.token_hex(6)       # X-Ims-Scenario-Run: correlates both legs (harness.peers.correlate)
            for who in ("alice", "bob"):
                agents[who] = start_agent(lab, sc, who, backend, {
                    "user": USERS[who], "password": "1234", "server": [server_ip, 5060],
                    "local_ip": lab.address(who), "sip_port": 5060, "rtp_port": RTP_PORTS[who], "run_id": run_id},
                    evidence)
            ctx = {"token": token, "server_ip": server_ip, "evidence": evidence, "edge": {}}
            try:
                steps = execute_steps(sc, lab, agents, ctx)
            except (AgentError, StepError) as exc:
                error = str(exc)
            if sc.hostile:
                with open(server_log, encoding="utf-8", errors="replace") as fh:
                    ctx["edge"]["tracebacks"] = fh.read().count("Traceback")
            time.sleep(0.3)
            agent_obs = {}
            for who, a in agents.items():
                try:
                    agent_obs[who] = a.request("observations", timeout=10)
                    with open(os.path.join(evidence, f"{who}-transcript.txt"), "w") as fh:
                        fh.write(a.request("transcript", timeout=10)["text"])
                except AgentError as exc:
                    agent_obs[who] = {}
                    error = error or str(exc)
            obs = build_observation(sc, lab, steps, agent_obs, server.registrations(lab), server.cdr_rows(),
                                    edge=ctx["edge"], run_id=run_id)
    except stack_process.StackStartError as exc:
        error = f"StepError: {exc}"
    except Exception as exc:   # noqa: BLE001 - one failed run is reported, not fatal to the compare
        log.exception("scenario %s stack %s failed", sc.name, stage)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        for who, a in agents.items():
            a.close(timeout=2)
            if a.stderr_lines:
                with open(os.path.join(evidence, f"{who}-agent.log"), "w") as fh:
                    fh.write("\n".join(a.stderr_lines) + "\n")
        if server is not None:
            server.stop()
        for c in captures:
            c.stop()
        lab.down()
        release_slot(slot)
    if error:
        obs["error"] = error
    with open(os.path.join(evidence, "observation.json"), "w") as fh:
        json.dump(obs, fh, indent=2, default=str)
    return RunResult(sc.name, stage, run_index, obs, evidence, time.monotonic() - t0, error)


def start_agent(lab, sc: Scenario, who: str, backend: str, cfg: dict, evidence: str) -> AgentProcess:
    """The party's UA in its lab host: the harness's own agent or a peer (harness.peers), configured."""
    settings = dict(sc.ua.get(who, {}))
    kind = settings.pop("ua", "harness")
    if kind != "harness":
        problem = peers.missing_binary(kind) or (
            None if backend == "netns" else f"ua: {kind} runs in the netns lab backend only (got {backend})")
        if problem:
            raise StepError(problem)
        other = next(w for w in USERS if w != who)
        role = "caller" if any(s.kind == "call" and s.args.get("from") == who for s in sc.steps) else "callee"
        cfg.update(evidence=evidence, name=who, peer_user=USERS[other], role=role, **peers.call_timing(sc.steps, who),
                   capture_iface=lab.iface(who, next(iter(lab.topology.host(who).addresses))))
    cfg.update(settings)
    proc = lab.spawn(who, [sys.executable, "-m", peers.module(kind), "--log-level", "INFO" if kind != "harness" else "WARNING"],
                     cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    agent = AgentProcess(proc, who)
    agent.request("config", **cfg)
    return agent


_mml_json = stack_process.mml_json


FORGED_METHODS = ("BYE", "INVITE", "INFO", "MESSAGE")


def _forged_seen(agents: dict[str, AgentProcess]) -> int:
    seen = 0
    for a in agents.values():
        seen += sum(1 for m in a.request("observations")["requests_received"] if m in FORGED_METHODS)
    return seen


def _sessions(lab, token: str) -> int:
    media = _mml_json(lab, token, "DSP MEDIA FORMAT=JSON")
    return len(media.get("sessions", [])) if isinstance(media, dict) else 0


def forge(lab, ctx: dict, agents: dict[str, AgentProcess], attack: str) -> str:
    """Let the hostile peer (host eve, harness.hostile) attack; record what got through in
    ``ctx['edge'][attack]`` and return ``blocked`` or what went wrong."""
    token, server_ip = ctx["token"], ctx["server_ip"]
    eve_ip = lab.address("eve")
    cfg = {"attack": attack, "server": [server_ip, 5060], "bind": eve_ip, "advertise": eve_ip,
           "call_id": secrets.token_hex(8), "from_tag": secrets.token_hex(4)}
    calls = _mml_json(lab, token, "DSP CALL FORMAT=JSON")
    if calls:       # the real dialog, as an observer on the path would see it
        from sipcore.uri import NameAddr
        call = calls[0]
        cfg.update(call_id=call["call_id"], from_tag=NameAddr.parse(call["caller"]).tag or cfg["from_tag"],
                   caller_uri=str(NameAddr.parse(call["caller"]).uri), callee_uri=str(NameAddr.parse(call["callee"]).uri))
        for b in _mml_json(lab, token, "DSP REG FORMAT=JSON"):
            if b.get("aor", "").startswith(f"sip:{USERS['bob']}@"):
                cfg["target"] = b["contact"]
    sessions, seen = _sessions(lab, token), _forged_seen(agents)
    out = lab.run("eve", [sys.executable, "-m", "harness.hostile", json.dumps(cfg)], timeout=40)
    try:
        result = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise StepError(f"hostile peer failed: {out.stderr[-500:]}") from None
    if "error" in result:
        raise StepError(f"hostile peer failed: {result['error']}")
    time.sleep(0.3)
    reached = max(0, _forged_seen(agents) - seen)
    media_added = max(0, _sessions(lab, token) - sessions)
    relayed = result["relayed"] + reached
    ctx["edge"][attack] = {"relayed": relayed, "media_added": media_added, "alive": result["alive"]}
    with open(os.path.join(ctx["evidence"], f"hostile-{attack}.json"), "w") as fh:
        json.dump({**result, "reached_parties": reached, "media_added": media_added, "config": cfg}, fh, indent=2)
    if not result["alive"]:
        return "server deaf"
    if relayed:
        return f"relayed {relayed}"
    return "media allocated" if media_added else "blocked"


def execute_steps(sc: Scenario, lab, agents: dict[str, AgentProcess], ctx: dict | None = None) -> list[tuple[str, object]]:
    results: list[tuple[str, object]] = []
    background = None
    for step in sc.steps:
        a = step.args
        if step.kind in ("register", "unregister"):
            if "password" in a:
                agents[a["who"]].request("set", password=a["password"])
            r = agents[a["who"]].request(step.kind, **({"expires": a["expires"]} if "expires" in a else {}))
            results.append((step.label, r["code"]))
            if a.get("check_contact"):
                # RFC 3261 §10.3 step 8: the 200 lists the UA's Contact as it registered it, with expires
                results.append(("contact-echo", "seen" if r.get("own_binding") else "missing"))
        elif step.kind == "call":
            if a.get("background"):
                background = (step.label, agents[a["from"]].start("call", target=USERS.get(a["to"], a["to"])))
                agents[a["from"]].request("sleep", seconds=float(a.get("ring_seconds", 1.0)))
            else:
                r = agents[a["from"]].request("call", target=USERS.get(a["to"], a["to"]), video=bool(a.get("video")))
                results.append((step.label, r["code"]))
        elif step.kind == "cancel":
            r = agents[a["who"]].request("cancel")
            results.append((step.label, r["code"]))
            if background is not None:
                label, thread = background
                thread.join(40)
                reply = thread.box.get("reply") or {}
                results.append((label, reply.get("code", 408)))
                background = None
        elif step.kind in ("media", "wait"):
            time.sleep(a["seconds"])
        elif step.kind == "hangup":
            results.append((step.label, agents[a["who"]].request("hangup")["code"]))
        elif step.kind == "hold":
            results.append((step.label, agents[a["who"]].request("hold", variant=a.get("variant", "sendonly"))["code"]))
        elif step.kind == "resume":
            results.append((step.label, agents[a["who"]].request("resume")["code"]))
        elif step.kind == "reoffer":
            results.append((step.label, agents[a["who"]].request("reoffer")["code"]))
        elif step.kind == "message":
            r = agents[a["from"]].request("message", target=USERS.get(a["to"], a["to"]), text=a.get("text", "hello"))
            results.append((step.label, r["code"]))
        elif step.kind == "options":
            results.append((step.label, agents[a["who"]].request("options")["code"]))
        elif step.kind == "rebind":
            lab.nat_rebind(a["router"])
        elif step.kind == "set":
            who = a.pop("who")
            agents[who].request("set", **a)
            a["who"] = who
        elif step.kind == "forge":
            if ctx is None:
                raise StepError("forge needs the run context (server token and address)")
            results.append((step.label, forge(lab, ctx, agents, a["attack"])))
        elif step.kind == "wait_event":
            try:
                agents[a["who"]].request("wait", event=a["event"], timeout=float(a.get("timeout", 5)))
                results.append((step.label, "seen"))
            except AgentError:
                results.append((step.label, "missing"))
    return results


def run_many(jobs: list[tuple[Scenario, int | str, int]], *, backend: str, evidence_root: str, workers: int,
             entries: dict[int | str, str] | None = None, progress=None) -> list[RunResult]:
    """Run (scenario, stage, run_index) jobs in parallel labs."""
    results: list[RunResult] = []

    def one(job):
        sc, stage, idx = job
        res = run_scenario(sc, stage, backend=backend, evidence_root=evidence_root, run_index=idx,
                           entry=(entries or {}).get(stage))
        if progress:
            progress(res)
        return res

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for res in pool.map(one, jobs):
            results.append(res)
    return results
