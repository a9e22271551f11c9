"""One stack (harness.stacks) running in a lab's server host: provisioned, started, probed for
readiness, asked for its registrations and CDR rows, stopped.

Placeholders of the stack definition are filled from the run: ``{address}`` the server's lab
address (advertised), ``{sip_port}``, ``{relay_socket}`` the control socket of the project's relay
when the stack asks for one (``relay: ims-rtpproxy``), ``{workdir}`` the run's evidence directory,
``{users_file}``, ``{cdr_dir}``, ``{mml_port}``/``{mml_token}``, ``{rtp_min}``/``{rtp_max}``,
``{root}`` (this checkout), ``{stack_dir}`` (the definition's directory), ``{python}``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

from harness.stack_cdr import read_transactions
from harness.stacks import ROOT, Stack

log = logging.getLogger(__name__)
SIP_PORT = 5060
MML_PORT = 8888
RTP_RANGE = (20000, 29999)
RELAY_CONTROL = "udp:127.0.0.1:7722"        # loopback of the server host: every lab has its own


class StackStartError(RuntimeError):
    pass


def placeholder_values(st: Stack, *, address: str, workdir: str, token: str) -> dict[str, str]:
    return {"address": address, "sip_port": str(SIP_PORT), "relay_socket": RELAY_CONTROL, "workdir": workdir,
            "root": ROOT, "stack_dir": st.stack_dir, "python": sys.executable,
            "users_file": os.path.join(workdir, "users.json"), "cdr_dir": os.path.join(workdir, "CDR"),
            "mml_port": str(MML_PORT), "mml_token": token, "rtp_min": str(RTP_RANGE[0]), "rtp_max": str(RTP_RANGE[1])}


def fill(text: str, values: dict[str, str]) -> str:
    return text.format(**values)


@dataclass
class RunningStack:
    stack: Stack
    values: dict[str, str]
    log_path: str
    proc: subprocess.Popen | None = None
    relay: subprocess.Popen | None = None
    notes: list[str] = field(default_factory=list)

    def registrations(self, lab) -> list[dict]:
        """The stack's bindings as ``[{"aor": ..., "contact": ...}]`` (empty when it has no way to list them)."""
        if self.stack.registrations_mml:
            return _mml_registrations(lab, self.values["mml_token"])
        if not self.stack.registrations_command:
            return []
        out = lab.run("server", [fill(a, self.values) for a in self.stack.registrations_command], timeout=15)
        try:
            data = json.loads(out.stdout)
        except ValueError:
            log.warning("%s: registrations command printed no JSON: %s", self.stack.name,
                        (out.stderr or out.stdout)[-300:])
            return []
        return [b for b in data if isinstance(b, dict) and "aor" in b and "contact" in b] \
            if isinstance(data, list) else []

    def cdr_rows(self) -> list[dict]:
        from harness.observation import read_cdr
        cdr = self.stack.cdr
        if cdr.format == "csv34":
            return read_cdr(fill(cdr.dir, self.values))
        if cdr.format == "transactions":
            return read_transactions(fill(cdr.files, self.values), cdr.delimiter, cdr.columns)
        return []

    def stop(self) -> None:
        for proc in (self.proc, self.relay):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def mml_json(lab, token: str, command: str):
    """One MML command (``... FORMAT=JSON``) to our stack in the lab's server host, its JSON output
    (``[]`` when there is none: a stack without MML, or the server gone)."""
    out = lab.run("server", [sys.executable, "-m", "sipcore.mml.cli", "--url", f"http://127.0.0.1:{MML_PORT}",
                             "--token", token, "--json", command], timeout=15)
    try:
        reply = json.loads(out.stdout.strip().splitlines()[-1])
        return json.loads(reply.get("output") or "[]")
    except (ValueError, IndexError):
        return []


def _mml_registrations(lab, token: str) -> list[dict]:
    data = mml_json(lab, token, "DSP REG FORMAT=JSON")
    return data if isinstance(data, list) else []


def write_users(path: str, users: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(users, fh)


def start(lab, st: Stack, *, address: str, workdir: str, token: str, users: dict,
          extra_env: dict[str, str] | None = None, entry: str | None = None) -> RunningStack:
    """Provision and start ``st`` in the lab's server host; returns once it is ready (or raises
    ``StackStartError`` with the end of its output). The caller stops it (``RunningStack.stop``)."""
    values = placeholder_values(st, address=address, workdir=workdir, token=token)
    values["users_file"] = fill(st.users_file, values)
    running = RunningStack(st, values, os.path.join(workdir, "server.log"))
    for cmd in st.prepare:
        _run_step(lab, st, "prepare", [fill(a, values) for a in cmd])
    write_users(values["users_file"], users)
    if st.users_command:
        _run_step(lab, st, "users.command", [fill(a, values) for a in st.users_command])
    env = dict(os.environ)
    if st.ims_env:
        env.update(SERVER_IP=address, SERVER_PORT=str(SIP_PORT), MML_PORT=str(MML_PORT), MML_TOKEN=token,
                   USERS_FILE=values["users_file"], CDR_DIR=values["cdr_dir"], LOG_DIR=os.path.join(workdir, "logs"),
                   BLACKLIST_FILE=os.path.join(workdir, "blacklist.txt"),
                   CONFIG_FILE=os.path.join(workdir, "no-config.json"), LOG_LEVEL="INFO", PYTHONPATH=ROOT)
    env.update({k: fill(v, values) for k, v in st.env.items()})
    env.update(extra_env or {})
    if st.relay == "ims-rtpproxy":
        running.relay = _start_relay(lab, address, workdir)
    if st.ims_env:
        if entry:       # --candidate-entry: a file named relative to where the harness runs
            path = os.path.abspath(entry)
        else:           # the stack's entry: relative to this checkout
            path = fill(st.entry, values)
            path = path if os.path.isabs(path) else os.path.join(ROOT, path)
        argv = [sys.executable, path]
    else:
        argv = [fill(a, values) for a in st.command]
    cwd = fill(st.cwd, values)
    os.makedirs(cwd, exist_ok=True)
    try:
        with open(running.log_path, "w") as out:
            running.proc = lab.spawn("server", argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    except OSError as exc:
        running.stop()
        raise StackStartError(f"stack {st.name}: cannot start {argv[0]!r}: {exc.strerror or exc} "
                              f"(start.command in {st.path})") from None
    try:
        _wait_ready(lab, running)
    except StackStartError:
        running.stop()
        raise
    return running


def _run_step(lab, st: Stack, key: str, argv: list[str]) -> None:
    try:
        out = lab.run("server", argv, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise StackStartError(f"stack {st.name}: {key} {argv[0]!r} did not run: {exc} ({st.path})") from None
    if out.returncode != 0:
        raise StackStartError(f"stack {st.name}: {key} {' '.join(argv)[:200]} exited {out.returncode}: "
                              f"{(out.stderr or out.stdout)[-500:]} ({st.path})")


def _start_relay(lab, address: str, workdir: str) -> subprocess.Popen:
    """The project's relay (ims-rtpproxy) in the server host, control on its loopback."""
    path = os.path.join(workdir, "relay.log")
    with open(path, "w") as out:
        proc = lab.spawn("server", [sys.executable, "-m", "refactored.rtpproxy_launcher", "-l", address, "-s",
                                    RELAY_CONTROL, "-m", str(RTP_RANGE[0]), "-M", str(RTP_RANGE[1])],
                         env=dict(os.environ, PYTHONPATH=ROOT), cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with open(path, encoding="utf-8", errors="replace") as fh:
            if "ims-rtpproxy: relaying on" in fh.read():
                return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    with open(path, encoding="utf-8", errors="replace") as fh:
        tail = fh.read()[-800:]
    if proc.poll() is None:
        proc.kill()
    raise StackStartError(f"the relay (ims-rtpproxy -l {address} -s {RELAY_CONTROL}) did not start:\n{tail}")


def _port_bound(lab, port: int) -> bool:
    out = lab.run("server", ["ss", "-Hlun"], timeout=5)
    return any(re.search(rf":{port}\b", line.split()[3]) for line in out.stdout.splitlines() if len(line.split()) > 3)


def _wait_ready(lab, running: RunningStack) -> None:
    st, proc = running.stack, running.proc
    assert proc is not None
    pattern = re.compile(st.ready.log, re.M) if st.ready.log else None
    deadline = time.monotonic() + st.timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        ok = True
        if pattern is not None:
            try:
                with open(running.log_path, encoding="utf-8", errors="replace") as fh:
                    ok = bool(pattern.search(fh.read()))
            except FileNotFoundError:
                ok = False
        if ok and st.ready.udp_port:
            ok = _port_bound(lab, SIP_PORT)
        if ok:
            return
        time.sleep(0.1)
    with open(running.log_path, encoding="utf-8", errors="replace") as fh:
        tail = fh.read()[-1500:]
    what = f"log line /{st.ready.log}/" if st.ready.log else f"UDP port {SIP_PORT} bound"
    raise StackStartError(f"server did not become ready (stack {st.name}, waited {st.timeout:.0f}s for "
                          f"{what}, exit={proc.poll()}):\n{tail}")
