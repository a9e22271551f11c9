"""`harness drill --from A --to B`: a cutover and its rollback rehearsed in a NAT lab.

The lab runs the server the way production does: an installation directory whose run.py is a
copy of stack A's entrypoint (plus its environment: ``2-sippy`` is stage 2 with SIGNALLING=sippy,
as ``ims.env`` would set it), RTPProxy as its own process (pm2's ims-rtpproxy app, never auto-
started by the server), both UAs behind NATs of one profile (``--nat``: cone by default,
symmetric, ...) registered once. Per phase (cutover A->B, then rollback B->A):

1. a call alice -> bob is set up on the running stage and carries RTP both ways;
2. the phase's copy command runs (`cp run.py run_<x>.bak && cp <entry> run.py`) and the server is
   restarted the way `pm2 restart` does it (SIGTERM, wait up to pm2's kill_timeout, start again);
3. the ongoing call is checked: alice re-INVITEs with her media moved to a new port (answered 200,
   its answer's SDP naming the server's relay), RTP then arrives both ways, alice's BYE is
   relayed (200), and the call's CDR row ends ENDED/Normal;
4. a new call bob -> alice (no REGISTER since the restart) must be answered.

Reported per phase: the signalling outage (SIGTERM to the new process printing its ready line), and
each call kept or lost with the reason. Exit status 1 when a call was lost.

A call set up on ``2-sippy`` cannot survive a restart (``SIPPY_LOST``): the Sippy B2BUA ends the
caller's dialog and starts its own towards the callee, and both dialogs (its own tags, CSeqs and
its Contact as the remote target of each leg) exist only in the stopped process's memory. No
Record-Route token names them, nothing hands them over, so the next process cannot relay the
caller's BYE to the callee's dialog: the drill reports the call lost with that reason.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from harness.agent_control import AgentError, AgentProcess
from harness.observation import read_cdr
from harness.runner import _wait_ready
from harness.scenario import ROOT, USERS
from harness.stacks import stack
from netlab import open_lab, standard
from netlab.lifecycle import claim_slot, release_slot

KILL_TIMEOUT = 10.0          # ecosystem.config.js kill_timeout
AUDIO_SECONDS = 2.0
SIPPY_LOST = ("set up on the Sippy B2BUA (SIGNALLING=sippy): its two dialogs lived only in the stopped "
              "process, so a restart cannot keep them")


@dataclass
class CallCheck:
    name: str
    kept: bool
    details: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


@dataclass
class Phase:
    name: str
    from_stack: str
    to_stack: str
    outage_seconds: float = 0.0
    calls: list[CallCheck] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(1 for c in self.calls if not c.kept)


def _rtp_totals(stats: dict, sender: str) -> tuple[int, int]:
    """(packets sent by this UA, packets received from ``sender``) over all its streams."""
    sent = recv = 0
    for s in (stats.get("rtp") or {}).values():
        sent += s.get("sent", 0)
        recv += s.get("received", {}).get(sender, {}).get("packets", 0)
    return sent, recv


class DrillLab:
    def __init__(self, lab, workdir: str, stack_name):
        self.lab, self.workdir, self.stack_name = lab, workdir, stack_name
        self.install = os.path.join(workdir, "install")
        self.server = None
        self.server_ip = lab.address("server")
        self.token = secrets.token_hex(8)
        self.log_index = 0
        self.rtp_next = 44000
        self.env = dict(os.environ, SERVER_IP=self.server_ip, SERVER_PORT="5060", MML_PORT="8888",
                        MML_TOKEN=self.token, USERS_FILE=os.path.join(self.install, "data", "users.json"),
                        CDR_DIR=os.path.join(self.install, "CDR"), LOG_DIR=os.path.join(self.install, "logs"),
                        BLACKLIST_FILE=os.path.join(self.install, "blacklist.txt"),
                        CONFIG_FILE=os.path.join(self.install, "no-config.json"), LOG_LEVEL="INFO",
                        RTPPROXY_AUTO_START="0", RTPPROXY_UDP_HOST="127.0.0.1", RTPPROXY_UDP_PORT="7722",
                        RTP_PORT_MIN="20000", RTP_PORT_MAX="29999", PYTHONPATH=ROOT)

    def start_server(self) -> float:
        """Start run.py with the current stack's environment; returns the monotonic time it answered."""
        self.log_index += 1
        log_path = os.path.join(self.workdir, f"server-{self.log_index}.log")
        env = {k: v for k, v in self.env.items() if k != "SIGNALLING"}
        env.update(stack(self.stack_name).env)
        with open(log_path, "w") as out:
            self.server = self.lab.spawn("server", [sys.executable, os.path.join(self.install, "run.py")],
                                         env=env, cwd=self.install, stdout=out, stderr=subprocess.STDOUT)
        _wait_ready(self.server, log_path, timeout=30)
        return time.monotonic()

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(5)


def _install(workdir: str, from_stack: str) -> str:
    inst = os.path.join(workdir, "install")
    os.makedirs(os.path.join(inst, "data"), exist_ok=True)
    for name in ("run.py", "run_refactored.py", "run_sippy.py"):
        shutil.copy(os.path.join(ROOT, name), os.path.join(inst, name))
    shutil.copy(os.path.join(ROOT, stack(from_stack).entry), os.path.join(inst, "run.py"))
    users = {u: {"username": u, "password": "1234", "display_name": who, "status": "ACTIVE"} for who, u in USERS.items()}
    with open(os.path.join(inst, "data", "users.json"), "w") as fh:
        json.dump(users, fh)
    return inst


def _phase(dl: DrillLab, agents: dict[str, AgentProcess], name: str, a: str, b: str) -> Phase:
    phase = Phase(name, a, b)
    alice, bob = agents["alice"], agents["bob"]
    for ua in (alice, bob):
        dl.rtp_next += 4
        ua.request("set", rtp_port=dl.rtp_next)
    ongoing = CallCheck("ongoing call alice->bob across the restart", False)
    phase.calls.append(ongoing)
    reply = alice.request("call", target=USERS["bob"])
    ongoing.details["setup"] = reply.get("code")
    if reply.get("code") != 200:
        ongoing.reasons.append(f"set-up failed before the restart: {reply.get('code')}")
    call_id = reply.get("call_id", "")
    time.sleep(AUDIO_SECONDS)

    # the phase's copy command, then pm2's restart
    backup = f"run_stage{stack(a).stage}.py.bak"
    shutil.copy(os.path.join(dl.install, "run.py"), os.path.join(dl.install, backup))
    shutil.copy(os.path.join(ROOT, stack(b).entry), os.path.join(dl.install, "run.py"))
    t0 = time.monotonic()
    dl.stop_server()
    dl.stack_name = b
    ready = dl.start_server()
    phase.outage_seconds = round(ready - t0, 2)

    # a re-INVITE after the restart moving alice's media to a new port: its SDP must go through
    # the relay again (the answer names the server's relay, not bob)
    time.sleep(AUDIO_SECONDS / 2)
    dl.rtp_next += 4
    try:
        reinvite = alice.request("reinvite", rtp_port=dl.rtp_next).get("code")
    except AgentError as exc:
        reinvite = f"error: {exc}"
    answer = (alice.request("observations").get("sdp_received") or [{}])[-1] if reinvite == 200 else {}
    ongoing.details.update(reinvite=reinvite, reinvite_answer_media=f"{answer.get('c')}:{answer.get('m_port')}"
                           if answer else "")
    if reinvite != 200:
        ongoing.reasons.append(f"re-INVITE after the restart answered {reinvite}")
    elif answer.get("where") != "reinvite-sendrecv" or answer.get("c") != dl.server_ip:
        ongoing.reasons.append(f"re-INVITE answer not through the relay: media {answer.get('c')}:{answer.get('m_port')}")
    a_sent0, a_recv0 = _rtp_totals(alice.request("stats"), USERS["bob"])
    b_sent0, b_recv0 = _rtp_totals(bob.request("stats"), USERS["alice"])
    time.sleep(AUDIO_SECONDS)
    a_sent1, a_recv1 = _rtp_totals(alice.request("stats"), USERS["bob"])
    b_sent1, b_recv1 = _rtp_totals(bob.request("stats"), USERS["alice"])
    # packets that crossed during AUDIO_SECONDS after the restart and the re-INVITE, each way
    ab = (b_recv1 - b_recv0, a_sent1 - a_sent0)
    ba = (a_recv1 - a_recv0, b_sent1 - b_sent0)
    ongoing.details.update(after_restart_alice_to_bob=f"{ab[0]} of {ab[1]}", after_restart_bob_to_alice=f"{ba[0]} of {ba[1]}")
    for label, (got, sent) in (("alice->bob", ab), ("bob->alice", ba)):
        if sent == 0 or got < 0.5 * sent:
            ongoing.reasons.append(f"audio {label} after the restart: {got} of {sent} packets")
    try:
        bye = alice.request("hangup").get("code")
    except AgentError as exc:
        bye = f"error: {exc}"
    ongoing.details["bye"] = bye
    if bye != 200:
        ongoing.reasons.append(f"BYE after the restart answered {bye}")
    time.sleep(0.5)
    rows = [r for r in read_cdr(dl.env["CDR_DIR"]) if r.get("call_id") == call_id and r.get("record_type") == "CALL"]
    states = [f"{r.get('call_state')}/{r.get('termination_reason')}" for r in rows]
    ongoing.details["cdr"] = states
    if not any(r.get("call_state") == "ENDED" and "SHUTDOWN" not in (r.get("termination_reason") or "")
               for r in rows):
        ongoing.reasons.append(f"no CDR row of a normally ended call (rows: {states or 'none'})")
    if ongoing.reasons and stack(a).env.get("SIGNALLING") == "sippy":
        ongoing.reasons.insert(0, SIPPY_LOST)
    ongoing.kept = not ongoing.reasons

    incoming = CallCheck("new call bob->alice after the restart, no new REGISTER", False)
    phase.calls.append(incoming)
    # a fresh media port per call: the harness UA keeps the last call's port bound
    for ua in (alice, bob):
        dl.rtp_next += 4
        ua.request("set", rtp_port=dl.rtp_next)
    try:
        code = bob.request("call", target=USERS["alice"]).get("code")
        incoming.details["setup"] = code
        if code == 200:
            time.sleep(0.5)
            incoming.details["bye"] = bob.request("hangup").get("code")
        else:
            incoming.reasons.append(f"answered {code}")
    except AgentError as exc:
        incoming.reasons.append(str(exc)[:200])
    incoming.kept = not incoming.reasons
    return phase


def drillable(name) -> str | None:
    """Why ``name`` cannot be drilled, or None: the drill copies one of the project's own
    entrypoints over run.py, as the operator's cutover does, so only the built-in stages qualify."""
    st = stack(name)
    if not (st.builtin and st.entry and st.stage is not None):
        return (f"{name}: the drill swaps the project's own entrypoints (0, 1, 2, 2-sippy) in one "
                "installation; this stack is not one of them")
    return None


def run_drill(from_stack, to_stack, *, backend: str = "netns", output: str = "harness-out/drill",
              nat: str = "cone") -> list[Phase]:
    for name in (from_stack, to_stack):
        why = drillable(name)
        if why is not None:
            raise ValueError(why)
    workdir = os.path.abspath(output)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    _install(workdir, from_stack)
    slot = claim_slot()
    agents: dict[str, AgentProcess] = {}
    phases: list[Phase] = []
    lab = open_lab(standard(nat, nat, slot=slot, name="drill"), backend)
    try:
        with lab:
            dl = DrillLab(lab, workdir, from_stack)
            with open(os.path.join(workdir, "rtpproxy.log"), "w") as out:   # pm2's ims-rtpproxy app
                lab.spawn("server", [sys.executable, "-m", "refactored.rtpproxy_launcher", "-l", dl.server_ip,
                                     "-s", "udp:127.0.0.1:7722", "-m", "20000", "-M", "29999"],
                          env=dict(os.environ, PYTHONPATH=ROOT), cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
            time.sleep(0.5)
            dl.start_server()
            for i, who in enumerate(("alice", "bob")):
                proc = lab.spawn(who, [sys.executable, "-m", "harness.agent"], cwd=ROOT,
                                 env=dict(os.environ, PYTHONPATH=ROOT))
                agents[who] = AgentProcess(proc, who)
                agents[who].request("config", user=USERS[who], password="1234", server=[dl.server_ip, 5060],
                                    local_ip=lab.address(who), sip_port=5060, rtp_port=40000 + 2000 * i)
                code = agents[who].request("register").get("code")
                if code != 200:
                    raise RuntimeError(f"{who} could not register: {code}")
            try:
                phases.append(_phase(dl, agents, "cutover", from_stack, to_stack))
                phases.append(_phase(dl, agents, "rollback", to_stack, from_stack))
            finally:
                for a in agents.values():
                    a.close(timeout=2)
                dl.stop_server()
    finally:
        release_slot(slot)
    with open(os.path.join(workdir, "drill.json"), "w") as fh:
        json.dump([{**asdict(p), "lost": p.lost} for p in phases], fh, indent=2)
    return phases
