"""UA agent process: ``python -m harness.agent`` — a SIP user agent driven over stdin/stdout.

Protocol: one JSON object per line.
  in:  {"id": N, "cmd": NAME, ...args}
  out: {"id": N, "ok": true|false, ...result}     one per command, in completion order
       {"event": NAME, ...}                         asynchronous events
Commands and results:
  config   user, password, domain, server [host, port], local_ip, sip_port, rtp_port,
           contact_params (e.g. ";transport=udp;ob"), expires, advertise_rtcp, answer_mode
           (auto|busy|ring|ignore|early_media|early_media_100rel), answer_after_ms, rtp_mode
           (active|silent|after_first_packet), rtp_from_port, timer_b, late_offer (INVITE without
           SDP), early_update (UPDATE offer after a reliable 183), decline_video   -> {}
  register [expires]                    -> {code, contacts, own_binding}
  unregister                            -> {code, contacts}
  call     target [video]               -> {code, call_id}    (returns at the final response)
  hangup | cancel [call_id]             -> {code}
  hold [call_id] [variant sendonly|zero] / resume [call_id]   -> {code}
  reoffer [call_id]                     -> {code}   (re-INVITE without SDP, answer in the ACK)
  reinvite [call_id] [direction] [rtp_port] -> {code} (re-INVITE with SDP; rtp_port: media moved there)
  message  target text                  -> {code}
  options  [target]                     -> {code}
  set      any config field (answer_mode, rtp_mode, ...) -> {}
  sleep    seconds                      -> {}
  wait     event timeout                -> {event...} or ok=false on timeout
  stats                                 -> {rtp: {call_id: {sent, received: {sender: {...}}}}}
  observations                          -> {sdp_received, vias, codes, register_contacts, messages, rtp}
  transcript                            -> {text}
  quit                                  -> {} then exit
Events: incoming_call, ringing, early_media, answered, call_ended, message_received.
Logs go to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from harness.ua import UAConfig, UserAgent

log = logging.getLogger("harness.agent")


class JsonLineAgent:
    """The agent protocol's loop (JSON lines on stdin/stdout, commands run concurrently, events
    in between); subclasses implement ``handle`` and ``close``. The harness's own UA below and the
    peer UAs of ``harness.peers`` (SIPp, baresip) are driven through it alike."""

    def __init__(self):
        self.events: asyncio.Queue = asyncio.Queue()
        self.history: list[dict] = []

    def write(self, obj: dict) -> None:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()

    def emit(self, event: dict) -> None:
        self.history.append(event)
        self.events.put_nowait(event)
        self.write(event)

    async def handle(self, msg: dict) -> dict:
        raise NotImplementedError

    async def close(self) -> None:
        return None

    async def wait_event(self, want: str, timeout: float) -> dict:
        for ev in self.history:
            if ev["event"] == want and not ev.get("_consumed"):
                ev["_consumed"] = True
                return {k: v for k, v in ev.items() if not k.startswith("_")}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                ev = await asyncio.wait_for(self.events.get(), deadline - loop.time())
            except asyncio.TimeoutError:
                break
            if ev["event"] == want and not ev.get("_consumed"):
                ev["_consumed"] = True
                return {k: v for k, v in ev.items() if not k.startswith("_")}
        raise TimeoutError(f"no {want} event within {timeout}s")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        tasks = set()
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                msg = json.loads(line)
            except json.JSONDecodeError as exc:
                self.write({"ok": False, "error": f"bad JSON: {exc}"})
                continue
            if msg.get("cmd") == "quit":
                self.write({"id": msg.get("id"), "ok": True})
                break
            t = loop.create_task(self._run_one(msg))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        for t in tasks:
            t.cancel()
        await self.close()

    async def _run_one(self, msg: dict) -> None:
        try:
            result = await self.handle(msg)
            self.write({"id": msg.get("id"), "ok": True, **result})
        except Exception as exc:   # noqa: BLE001 - every failure is reported to the controller
            log.debug("command failed", exc_info=True)
            self.write({"id": msg.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"})


def agent_main(agent_cls, doc: str, prog: str, argv=None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                 epilog=doc.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s agent %(levelname)s %(message)s")
    asyncio.run(agent_cls().run())
    return 0


class Agent(JsonLineAgent):
    def __init__(self):
        super().__init__()
        self.ua: UserAgent | None = None
        self.cfg: UAConfig | None = None

    async def handle(self, msg: dict) -> dict:
        cmd = msg.get("cmd")
        if cmd == "config":
            fields = {k: v for k, v in msg.items() if k in UAConfig.__dataclass_fields__}
            if "server" in fields:
                fields["server"] = tuple(fields["server"])
            self.cfg = UAConfig(**fields)
            self.ua = UserAgent(self.cfg, self.emit)
            await self.ua.start()
            return {}
        if self.ua is None:
            raise ValueError("send config first")
        ua = self.ua
        if cmd == "set":
            for k, v in msg.items():
                if k in UAConfig.__dataclass_fields__:
                    setattr(self.cfg, k, v)
            return {}
        if cmd == "register":
            return await ua.register(msg.get("expires"))
        if cmd == "unregister":
            return await ua.register(0)
        if cmd == "call":
            return await ua.call(msg["target"], bool(msg.get("video")))
        if cmd == "hangup":
            return await ua.hangup(msg.get("call_id"))
        if cmd == "cancel":
            return await ua.cancel(msg.get("call_id"))
        if cmd == "hold":
            zero = msg.get("variant") == "zero"
            return await ua.reinvite(msg.get("call_id"), "sendonly" if not zero else "sendrecv", hold_zero=zero)
        if cmd == "resume":
            return await ua.reinvite(msg.get("call_id"), "sendrecv")
        if cmd == "reinvite":       # a re-offer with SDP, optionally of a new media port
            return await ua.reinvite(msg.get("call_id"), msg.get("direction", "sendrecv"),
                                     rtp_port=msg.get("rtp_port"))
        if cmd == "reoffer":
            return await ua.reinvite(msg.get("call_id"), "sendrecv", with_sdp=False)
        if cmd == "message":
            return await ua.message(msg["target"], msg.get("text", ""))
        if cmd == "options":
            return await ua.options(msg.get("target"))
        if cmd == "sleep":
            await asyncio.sleep(float(msg.get("seconds", 1)))
            return {}
        if cmd == "wait":
            return await self.wait_event(msg.get("event"), float(msg.get("timeout", 5)))
        if cmd == "stats":
            return {"rtp": ua.rtp_stats()}
        if cmd == "observations":
            return {**ua.observed, "rtp": ua.rtp_stats()}
        if cmd == "transcript":
            return {"text": "\n".join(ua.transcript)}
        raise ValueError(f"unknown command {cmd!r}")

    async def close(self) -> None:
        if self.ua:
            await self.ua.close()


def main(argv=None) -> int:
    return agent_main(Agent, __doc__, "python -m harness.agent", argv)


if __name__ == "__main__":
    sys.exit(main())
