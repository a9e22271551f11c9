"""baresip as a party of a scenario: ``python -m harness.peers.baresip``, started in the party's lab
host and driven with the agent protocol of ``harness.agent`` (config, register, call, hangup,
sleep, wait, observations, transcript, quit).

The real softphone (Debian ``baresip``) runs headless with a config directory of its own in the
evidence directory: one UDP account with digest auth through the lab's server as outbound proxy,
``answermode=auto`` (a callee answers by itself), G.711 only, a known tone as its microphone
(``aufile``: 440 Hz for the caller, 880 Hz for the callee), what it hears recorded by ``sndfile``
(``dump-*-dec.wav``), no sound card (ALSA's null device). It is controlled over ``ctrl_tcp``
(netstrings of JSON on 127.0.0.1 of its namespace), whose events (REGISTER_OK, CALL_ESTABLISHED,
CALL_CLOSED, ...) become this agent's results.

Judged from what arrived: RTP counted in a capture inside its namespace (harness.peers.correlate),
and the recording: its level and its tone (zero crossings), which tell whose audio it heard.
baresip cannot add a header: its calls are correlated by order (harness.peers.correlate.calls_of).
"""
from __future__ import annotations

import array
import asyncio
import glob
import json
import logging
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import wave

from harness.agent import agent_main
from harness.pcap import read_pcap
from harness.peers.base import PeerAgent
from harness.peers.capture import NamespaceCapture
from harness.peers.correlate import PeerCapture

log = logging.getLogger("harness.peers.baresip")
CTRL_PORT = 4444                 # ctrl_tcp on 127.0.0.1 of the party's own namespace
TONES = {"caller": 440, "callee": 880}
TONE_SECONDS = 20
RATE = 8000
_CODE = re.compile(r"\b([1-6]\d\d)\b")


def write_tone(path: str, hz: int, seconds: int = TONE_SECONDS) -> None:
    samples = array.array("h", (int(8000 * math.sin(2 * math.pi * hz * i / RATE)) for i in range(RATE * seconds)))
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.tobytes())


def analyse_recording(path: str) -> dict:
    """Level and dominant tone of a 16-bit mono WAV (what the softphone heard)."""
    try:
        with wave.open(path, "rb") as w:
            rate, frames = w.getframerate(), w.readframes(w.getnframes())
    except (OSError, wave.Error, EOFError):
        return {"seconds": 0.0, "rms": 0, "tone_hz": 0}
    loud = struct.unpack(f"<{len(frames) // 2}h", frames[: len(frames) // 2 * 2])
    if not loud:
        return {"seconds": 0.0, "rms": 0, "tone_hz": 0}
    rms = int(math.sqrt(sum(s * s for s in loud) / len(loud)))
    voiced = [s for s in loud if abs(s) > 200]
    crossings = sum(1 for a, b in zip(loud, loud[1:]) if (a < 0) != (b < 0) and abs(a - b) > 400)
    voiced_seconds = len(voiced) / rate
    hz = int(crossings / 2 / voiced_seconds) if voiced_seconds > 0.2 else 0
    return {"seconds": round(len(loud) / rate, 2), "rms": rms, "tone_hz": hz}


def heard(recording: dict) -> str:
    """Whose tone a recording holds: 'caller tone', 'callee tone', 'silence' or 'other sound'."""
    if recording.get("rms", 0) < 300:
        return "silence"
    for role, hz in TONES.items():
        if abs(recording.get("tone_hz", 0) - hz) <= hz * 0.15:
            return f"{role} tone"
    return "other sound"


class BaresipPeer(PeerAgent):
    kind = "baresip"

    def __init__(self):
        super().__init__()
        self.cfg: dict = {}
        self.workdir = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.capture: NamespaceCapture | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task | None = None
        self.replies: dict[str, asyncio.Future] = {}
        self.tokens = 0
        self.codes: list[dict] = []
        self.event_log: list[str] = []
        self.short_dir = ""     # tone in, recordings out: baresip 1.0 cuts file names at 128 bytes

    # --- baresip -------------------------------------------------------------------------------
    def _write_config(self, expires: int) -> None:
        c = self.cfg
        port = int(c["rtp_port"])
        host, sip_port = c["server"]
        with open(os.path.join(self.workdir, "config"), "w") as fh:
            fh.write("\n".join([
                "poll_method epoll",
                f"sip_listen {c['local_ip']}:{c['sip_port']}",
                f"audio_source aufile,{os.path.join(self.short_dir, 'tone.wav')}",
                "audio_player alsa,null",
                f"rtp_ports {port}-{port + 40}",
                "module_path /usr/lib/baresip/modules",
                "module g711.so", "module aufile.so", "module alsa.so", "module sndfile.so",
                f"snd_path {self.short_dir}",
                "module_app account.so", "module_app menu.so", "module_app ctrl_tcp.so",
                f"ctrl_tcp_listen 127.0.0.1:{CTRL_PORT}", ""]))
        name = c.get("name", c["user"])
        with open(os.path.join(self.workdir, "accounts"), "w") as fh:
            fh.write(f'"{name}" <sip:{c["user"]}@{c["domain"]};transport=udp>;auth_user={c["user"]};'
                     f'auth_pass={c.get("password", "")};outbound="sip:{host}:{sip_port};transport=udp";'
                     f"regint={expires};answermode=auto\n")

    async def _start_baresip(self, expires: int) -> None:
        self._write_config(expires)
        out = open(os.path.join(self.workdir, "baresip.log"), "wb")
        self.proc = await asyncio.create_subprocess_exec(
            "baresip", "-f", self.workdir, cwd=self.workdir, stdin=asyncio.subprocess.DEVNULL, stdout=out,
            stderr=asyncio.subprocess.STDOUT)
        out.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                reader, self.writer = await asyncio.open_connection("127.0.0.1", CTRL_PORT)
                break
            except OSError:
                if self.proc.returncode is not None or loop.time() > deadline:
                    raise RuntimeError(f"baresip did not open its control port (exit {self.proc.returncode}); "
                                       f"see {self.workdir}/baresip.log") from None
                await asyncio.sleep(0.1)
        self.reader_task = loop.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Netstrings from ctrl_tcp: command replies (by token) and events."""
        while True:
            try:
                head = await reader.readuntil(b":")
                body = await reader.readexactly(int(head[:-1]))
                await reader.readexactly(1)         # the netstring's ','
            except (asyncio.IncompleteReadError, ValueError, asyncio.LimitOverrunError):
                return
            try:
                msg = json.loads(body)
            except ValueError:
                continue
            if msg.get("response"):
                fut = self.replies.pop(str(msg.get("token")), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif msg.get("event"):
                self.event_log.append(json.dumps(msg))
                log.info("event %s %s", msg.get("type"), msg.get("param", ""))
                self.emit({"event": str(msg.get("type", "")).lower(), "param": msg.get("param", "")})

    async def command(self, name: str, params: str = "") -> dict:
        if self.writer is None:
            raise ValueError("baresip peer: register first (it starts the softphone)")
        self.tokens += 1
        token = str(self.tokens)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.replies[token] = fut
        data = json.dumps({"command": name, "params": params, "token": token}).encode()
        self.writer.write(b"%d:%s," % (len(data), data))
        await self.writer.drain()
        return await asyncio.wait_for(fut, 10)

    async def _first_event(self, wanted: tuple[str, ...], timeout: float) -> dict | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for ev in self.history:
                if ev["event"] in wanted and not ev.get("_consumed"):
                    ev["_consumed"] = True
                    return ev
            await asyncio.sleep(0.05)
        return None

    def _final_for(self, method: str) -> int | None:
        """The last final response to ``method`` this softphone received (from its capture)."""
        try:
            cap = PeerCapture(self.cfg["local_ip"], int(self.cfg["sip_port"])).feed(read_pcap(self.capture.path))
        except (OSError, ValueError, AttributeError):
            return None
        codes = [c["status"] for c in cap.observed["codes"] if c["method"] == method]
        return codes[-1] if codes else None

    # --- commands -----------------------------------------------------------------------------
    async def handle(self, msg: dict) -> dict:
        cmd = msg.get("cmd")
        if cmd == "config":
            self.cfg = {"domain": "sip.local", "expires": 300, "role": "caller",
                        **{k: v for k, v in msg.items() if k not in ("id", "cmd")}}
            self.workdir = os.path.join(self.cfg["evidence"], f"{self.cfg.get('name', self.cfg['user'])}-baresip")
            shutil.rmtree(self.workdir, ignore_errors=True)
            os.makedirs(self.workdir)
            self.short_dir = tempfile.mkdtemp(prefix="ims-baresip-")
            write_tone(os.path.join(self.short_dir, "tone.wav"), TONES.get(self.cfg["role"], 440))
            self.capture = NamespaceCapture(os.path.join(self.workdir, "capture.pcap"), self.cfg.get("capture_iface", "any"))
            await self.capture.start()
            return {}
        if not self.cfg:
            raise ValueError("send config first")
        return await self.common_step(cmd, msg)

    def _transcript(self) -> str:
        return "\n".join(self.event_log)

    async def _register(self, expires) -> dict:
        if self.proc is not None:
            raise ValueError("baresip peer: registers once, when it starts")
        await self._start_baresip(int(self.cfg["expires"] if expires is None else expires))
        code = await self._registered(20)
        self.codes.append({"method": "REGISTER", "status": code})
        return {"code": code}

    async def _registered(self, timeout: float) -> int:
        """The registration's outcome: its event when ctrl_tcp was connected in time, else the final
        response in the capture (baresip registers as it starts, often before the control port
        answers); a challenge it does not answer stays the outcome after 3 s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        challenged_since = None
        while loop.time() < deadline:
            for ev in self.history:
                if ev["event"] in ("register_ok", "register_fail") and not ev.get("_consumed"):
                    ev["_consumed"] = True
                    if ev["event"] == "register_ok":
                        return 200
                    m = _CODE.search(str(ev.get("param", "")))
                    if m:
                        return int(m.group(1))
            code = self._final_for("REGISTER")
            if code is not None and code not in (401, 407):
                return code
            if code is not None:
                challenged_since = challenged_since or loop.time()
                if loop.time() - challenged_since > 3:
                    return code
            await asyncio.sleep(0.1)
        return self._final_for("REGISTER") or 408

    async def _call(self, target: str) -> dict:
        uri = target if target.startswith("sip:") else f"sip:{target}@{self.cfg['domain']}"
        await self.command("dial", uri)
        ev = await self._first_event(("call_established", "call_closed"), 40)
        if ev is not None and ev["event"] == "call_established":
            code = 200
        else:
            await asyncio.sleep(0.3)
            code = self._final_for("INVITE") or 408
        self.codes.append({"method": "INVITE", "status": code})
        return {"code": code}

    async def _hangup(self) -> dict:
        await self.command("hangup")
        ev = await self._first_event(("call_closed",), 10)
        await asyncio.sleep(0.3)
        code = self._final_for("BYE") or (408 if ev is None else 200)
        self.codes.append({"method": "BYE", "status": code})
        return {"code": code}

    async def _observations(self) -> dict:
        if self.capture is None:
            return {"rtp": {}}
        await self.capture.stop()
        out = self.capture.observations(self.cfg["local_ip"], int(self.cfg["sip_port"]), self.cfg.get("peer_user", ""))
        out["codes"] = list(self.codes)
        for path in glob.glob(os.path.join(self.short_dir, "dump-*.wav")):      # into the evidence
            shutil.move(path, self.workdir)
        shutil.rmtree(self.short_dir, ignore_errors=True)
        recordings = sorted(glob.glob(os.path.join(self.workdir, "dump-*-dec.wav")))
        if recordings:
            rec = analyse_recording(recordings[-1])
            out["recording"] = {**rec, "heard": heard(rec), "file": os.path.basename(recordings[-1])}
        return out

    async def close(self) -> None:
        """Fast (the controller waits 2 s): no graceful unregistration, the lab is going away."""
        if self.short_dir:
            shutil.rmtree(self.short_dir, ignore_errors=True)
        if self.reader_task is not None:
            self.reader_task.cancel()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 0.5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.capture is not None:
            await self.capture.stop()


def main(argv=None) -> int:
    return agent_main(BaresipPeer, __doc__, "python -m harness.peers.baresip", argv)


if __name__ == "__main__":
    sys.exit(main())
