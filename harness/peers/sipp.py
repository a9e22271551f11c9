"""SIPp as a party of a scenario: ``python -m harness.peers.sipp``, started in the party's lab host
and driven with the agent protocol of ``harness.agent`` (config, register, call, hangup, reoffer,
sleep, wait, observations, transcript, quit).

SIPp runs the XML flows beside this file (harness/peers/sipp/), each a whole dialog:
  caller  basic_uac (offer in the INVITE) | late_offer_uac (INVITE without SDP, answer in the ACK)
          | accept_reinvite_uac (answers the callee's re-INVITE); it sends its BYE ``hold_ms``
          after the ACK (the scenario's media/wait seconds between call and hangup)
  callee  basic_uas (answers; its SDP is the answer, or the offer of a late-offer INVITE)
          | reinvite_uas (re-INVITEs the caller ``reinvite_after_ms`` after the ACK)
Every request carries X-Ims-Scenario-Run (the INVITE with ``;call=1``). RTP: SIPp announces this
agent's RTP endpoint (``mport``) in its SDP and logs the media address it learned from the last
SDP it received; the endpoint (harness.rtp_stream, marked packets) sends there and counts what
comes back. The verdict counts packets in a capture taken in this namespace (harness.peers.correlate).
Logs go to stderr; SIPp's own logs and messages to the evidence directory.
"""
from __future__ import annotations

import asyncio
import glob
import logging
import os
import re
import sys

from harness.agent import agent_main
from harness.peers.base import PeerAgent, terminate
from harness.peers.capture import NamespaceCapture
from harness.rtp_stream import RtpStream

FLOWS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sipp")
_MEDIA = re.compile(r"^media c=IN IP4 ([0-9.]+) m=audio (\d+)\s*$")
_FINAL = re.compile(r"^SIP/2\.0 (\d{3}) ", re.M)
PROCESS_LIMIT = 90.0
log = logging.getLogger("harness.peers.sipp")


class SippPeer(PeerAgent):
    kind = "SIPp"

    def __init__(self):
        super().__init__()
        self.cfg: dict = {}
        self.workdir = ""
        self.rtp: RtpStream | None = None
        self.capture: NamespaceCapture | None = None
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.logs: dict[str, str] = {}
        self._watch: asyncio.Task | None = None
        self.codes: list[dict] = []

    # --- SIPp processes -----------------------------------------------------------------------
    def _sipp_argv(self, name: str, xml: str, extra: list[str], variables: dict) -> list[str]:
        log_file = os.path.join(self.workdir, f"{name}.log")
        self.logs[name] = log_file
        argv = ["sipp", *extra, "-sf", os.path.join(FLOWS, xml), "-i", self.cfg["local_ip"],
                "-p", str(self.cfg["sip_port"]), "-m", "1", "-nostdin", "-timeout", str(int(PROCESS_LIMIT)),
                "-trace_logs", "-log_file", log_file, "-trace_msg", "-message_file",
                os.path.join(self.workdir, f"{name}-messages.log"), "-trace_err", "-error_file",
                os.path.join(self.workdir, f"{name}-errors.log")]
        for key, value in {"run": self.cfg.get("run_id") or "none", **variables}.items():
            argv += ["-set", key, str(value)]
        return argv

    async def _start(self, name: str, argv: list[str]) -> None:
        self.procs[name] = await asyncio.create_subprocess_exec(
            *argv, cwd=self.workdir, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)

    def _log_lines(self, name: str) -> list[str]:
        try:
            with open(self.logs[name], encoding="utf-8", errors="replace") as fh:
                return fh.read().splitlines()
        except (OSError, KeyError):
            return []

    def _last_final(self, name: str) -> int:
        """The last final response SIPp received in that dialog (its messages log), else 408."""
        try:
            with open(os.path.join(self.workdir, f"{name}-messages.log"), encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError:
            return 408
        codes = [int(c) for c in _FINAL.findall(text) if int(c) >= 200]
        return codes[-1] if codes else 408

    async def _until(self, name: str, line: str, timeout: float) -> bool:
        """Wait until SIPp logged ``line`` or its process ended; True when logged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        proc = self.procs.get(name)
        while loop.time() < deadline:
            if line in self._log_lines(name):
                return True
            if proc is not None and proc.returncode is not None:
                return line in self._log_lines(name)
            await asyncio.sleep(0.05)
        return False

    async def _follow_media(self, name: str) -> None:
        """Send RTP wherever the flow's last completed offer/answer points (its ``media`` lines)."""
        seen = 0
        while True:
            lines = self._log_lines(name)
            for line in lines[seen:]:
                m = _MEDIA.match(line)
                if m and self.rtp is not None:
                    log.info("%s: RTP to %s:%s", name, m.group(1), m.group(2))
                    self.rtp.set_remote(m.group(1), int(m.group(2)))
                    self.rtp.start()
            seen = len(lines)
            proc = self.procs.get(name)
            if proc is not None and proc.returncode is not None:
                log.info("%s: SIPp ended (exit %s)", name, proc.returncode)
                if self.rtp is not None:
                    self.rtp.stop_sending()
                return
            await asyncio.sleep(0.05)

    def _follow(self, name: str) -> None:
        self._watch = asyncio.get_running_loop().create_task(self._follow_media(name))

    # --- commands -----------------------------------------------------------------------------
    async def handle(self, msg: dict) -> dict:
        cmd = msg.get("cmd")
        if cmd == "config":
            return await self._config(msg)
        if not self.cfg:
            raise ValueError("send config first")
        if cmd == "set":
            self.cfg.update({k: v for k, v in msg.items() if k not in ("id", "cmd")})
            return {}
        if cmd == "reoffer":
            return await self._reoffer()
        return await self.common_step(cmd, msg)

    async def _config(self, msg: dict) -> dict:
        self.cfg = {"domain": "sip.local", "expires": 300, "flow": "basic", "hold_ms": 1500,
                    "reinvite_after_ms": 1000, "role": "caller",
                    **{k: v for k, v in msg.items() if k not in ("id", "cmd")}}
        self.workdir = os.path.join(self.cfg["evidence"], f"{self.cfg.get('name', self.cfg['user'])}-sipp")
        os.makedirs(self.workdir, exist_ok=True)
        self.capture = NamespaceCapture(os.path.join(self.workdir, "capture.pcap"), self.cfg.get("capture_iface", "any"))
        await self.capture.start()
        self.rtp = RtpStream(self.cfg["user"], 1 if self.cfg["role"] == "caller" else 2, self.cfg["local_ip"],
                             int(self.cfg["rtp_port"]))
        await self.rtp.open()
        return {}

    def _server(self) -> str:
        host, port = self.cfg["server"]
        return f"{host}:{port}"

    async def _register(self, expires) -> dict:
        n = sum(1 for k in self.procs if k.startswith("register"))
        name = f"register{n + 1}"
        argv = self._sipp_argv(name, "register.xml", [self._server(), "-s", self.cfg["user"], "-au", self.cfg["user"],
                                                      "-ap", self.cfg.get("password", "")],
                               {"domain": self.cfg["domain"], "expires": self.cfg["expires"] if expires is None else expires})
        await self._start(name, argv)
        try:
            await asyncio.wait_for(self.procs[name].wait(), 40)
        except asyncio.TimeoutError:
            self.procs[name].kill()
            await self.procs[name].wait()
        code = 200 if "final 200" in self._log_lines(name) else self._last_final(name)
        self.codes.append({"method": "REGISTER", "status": code})
        if code == 200 and self.cfg["role"] == "callee" and "uas" not in self.procs:
            flow = f"{self.cfg['flow']}_uas.xml"
            await self._start("uas", self._sipp_argv("uas", flow, [], {
                "user": self.cfg["user"], "mport": self.cfg["rtp_port"],
                **({"reinvite_after": max(200, int(self.cfg["reinvite_after_ms"]))} if self.cfg["flow"] == "reinvite" else {})}))
            self._follow("uas")
            await asyncio.sleep(0.2)       # SIPp binds its port
        return {"code": code}

    async def _call(self, target: str) -> dict:
        hold = int(self.cfg["hold_ms"])
        if self.cfg["flow"] == "accept_reinvite":
            hold = max(300, hold - int(self.cfg["reinvite_after_ms"]))
        argv = self._sipp_argv("uac", f"{self.cfg['flow']}_uac.xml",
                               [self._server(), "-s", target, "-au", self.cfg["user"], "-ap", self.cfg.get("password", ""),
                                # the digest uri is the Request-URI (SIPp's default, sip:SERVER:PORT, is
                                # refused on INVITE by stages 1/2: "digest uri does not match")
                                "-auth_uri", f"{target}@{self.cfg['domain']}"],
                               {"domain": self.cfg["domain"], "user": self.cfg["user"], "hold": max(100, hold),
                                "mport": self.cfg["rtp_port"]})
        await self._start("uac", argv)
        self._follow("uac")
        answered = await self._until("uac", "final 200", 40)
        code = 200 if answered else self._last_final("uac")
        self.codes.append({"method": "INVITE", "status": code})
        if answered:
            self.emit({"event": "answered"})
        return {"code": code}

    async def _hangup(self) -> dict:
        """The flow sends its BYE by itself after ``hold_ms``: wait for it and report its answer."""
        proc = self.procs.get("uac")
        if proc is None:
            raise ValueError("SIPp peer: hang up needs a call of this party (a SIPp callee does not hang up)")
        ok = await self._until("uac", "bye 200", float(self.cfg["hold_ms"]) / 1000 + 20)
        code = 200 if ok else self._last_final("uac")
        self.codes.append({"method": "BYE", "status": code})
        return {"code": code}

    async def _reoffer(self) -> dict:
        """A SIPp callee's re-INVITE (flow reinvite): sent by the flow itself, reported here."""
        if self.cfg["flow"] != "reinvite" or "uas" not in self.procs:
            raise ValueError("SIPp peer: reoffer needs a callee with flow: reinvite")
        ok = await self._until("uas", "reinvite 200", float(self.cfg["reinvite_after_ms"]) / 1000 + 20)
        code = 200 if ok else self._last_final("uas")
        self.codes.append({"method": "INVITE", "status": code})
        return {"code": code}

    async def _observations(self) -> dict:
        out: dict = {"rtp": {}}
        if self.capture is not None:
            await self.capture.stop()
            out = self.capture.observations(self.cfg["local_ip"], int(self.cfg["sip_port"]), self.cfg.get("peer_user", ""))
        out["codes"] = list(self.codes)         # SIPp's own view of its finals (it retransmits, the capture repeats)
        if self.rtp is not None:
            out["endpoint"] = self.rtp.stats()
            log.info("endpoint %s", out["endpoint"])
        return out

    def _transcript(self) -> str:
        parts = []
        for path in sorted(glob.glob(os.path.join(self.workdir, "*-messages.log"))):
            with open(path, encoding="utf-8", errors="replace") as fh:
                parts.append(f"=== {os.path.basename(path)}\n{fh.read()}")
        return "\n".join(parts)

    async def close(self) -> None:
        for proc in self.procs.values():
            await terminate(proc)
        if self._watch is not None:
            self._watch.cancel()
        if self.rtp is not None:
            await self.rtp.close()
        if self.capture is not None:
            await self.capture.stop()


def main(argv=None) -> int:
    return agent_main(SippPeer, __doc__, "python -m harness.peers.sipp", argv)


if __name__ == "__main__":
    sys.exit(main())
