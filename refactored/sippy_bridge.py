"""SIGNALLING=sippy: INVITE dialogs on the Sippy B2BUA, everything else on sipcore.

This module is the one threading boundary between the two stacks:

- sipcore runs on the asyncio loop. Its UDP transport stays the only owner of the SIP socket;
  ``SippyBridge.take`` (the server's hand-off hook, called on the loop for every parsed message)
  decides what belongs to Sippy: a new INVITE whose callee is registered (after sipcore's caller
  authentication), and every later message with the Call-ID of a call Sippy holds (the B2BUA
  reuses the caller's Call-ID on the callee leg, so one Call-ID names both legs). REGISTER,
  OPTIONS, MESSAGE, INVITEs to unregistered callees (404/480 from the proxy), digest challenges,
  the NAT helper, NAT keepalive, CDR, users and MML stay sipcore's; INVITEs over TCP stay with the
  sipcore proxy too (the Sippy side speaks UDP).
- Sippy runs on its own reactor thread (its ``ED2`` event dispatcher is created there, when
  ``refactored.sippy_b2bua`` is first imported). Sippy objects are touched only on that thread.

What crosses the boundary is plain data: datagrams (bytes + address), the callee route (Contact
string + flow address), SDP bytes and call-outcome reports. Loop -> reactor goes through
``ED2.callFromThread``; reactor -> loop through ``Link`` (``loop.call_soon_threadsafe`` /
``asyncio.run_coroutine_threadsafe``).

Before a message is handed to Sippy it gets sipcore's stage-2 treatment, as the proxy would give
it: the NAT helper's fix-ups, force_rport, the Contact pinned to the packet source (in-dialog
requests then follow the flow, like the proxy's flow routing), and URI ``transport`` parameters
lower-cased (RFC 3261 §19.1.4: they are case-insensitive; Sippy 2.5 raises "unsupported transport:
UDP" on a Contact with ``transport=UDP``, as SIPp's stock UAS sends). Media: every SDP Sippy
receives is rewritten on the loop through the server's media backend (the project's RTPProxy
client with RTPPROXY_SOCKET / RTPPROXY_NODES and weighted failover), not through Sippy's own
``Rtp_proxy_client``. CDR rows come from the same ``CDREvents`` with sipcore's ``Call`` record,
keyed by the caller's Call-ID.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from importlib import metadata, util

from sipcore.call import Call, CallState
from sipcore.errors import ConfigError, MediaBackendError, SDPParseError
from sipcore.message import SIPMessage, SIPRequest, SIPResponse
from sipcore.proxy_core import TX_LINGER
from sipcore.sdp import SessionDescription
from sipcore.uri import SipURI, rewrite_name_addrs

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install sippy (in this project: .venv/bin/pip install -e '.[sippy]')"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
SETUP_LIMIT = 330.0       # Sippy's INVITE expiry (300 s) plus margin


class SippyUnavailable(ConfigError):
    """SIGNALLING=sippy cannot run (package missing, reactor failed to start)."""

    def __init__(self, message: str):
        super().__init__("SIGNALLING", message)


def sippy_version() -> str | None:
    """The installed sippy distribution's version, None when it is not installed."""
    if util.find_spec("sippy") is None:
        return None
    try:
        return metadata.version("sippy")
    except metadata.PackageNotFoundError:
        return "unknown"


def lower_transport(uri: SipURI) -> bool:
    """Lower-case a ``transport`` URI parameter in place; True when it changed."""
    value = uri.params.get("transport")
    if value and value != value.lower():
        uri.params["transport"] = value.lower()
        return True
    return False


def normalise_transport_params(msg: SIPMessage) -> None:
    """``transport=UDP`` -> ``transport=udp`` in the Request-URI, Contact, Route and Record-Route."""
    if isinstance(msg, SIPRequest) and msg.uri.is_sip:
        lower_transport(msg.uri)
    for name in ("Contact", "Record-Route", "Route"):
        values = msg.headers.get_all(name)
        if not any("transport=" in v.lower() for v in values):
            continue
        out = rewrite_name_addrs(values, lambda _na, uri: uri.is_sip and lower_transport(uri))
        if out is not None:
            msg.headers.replace_all(name, out)


class Link:
    """What the reactor thread may call: each method only queues work for the asyncio loop.

    Work is batched: ``loop.call_soon_threadsafe`` (one byte into the loop's self-pipe) is used only
    when the queue was empty. One call per message overflowed that pipe under load, and the loop's
    SIGTERM, which arrives through the same pipe, was then lost: the server ignored SIGTERM."""

    def __init__(self, bridge: SippyBridge, loop: asyncio.AbstractEventLoop):
        self._bridge = bridge
        self._loop = loop
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self.post = None          # ED2.callFromThread, set on the reactor thread

    def _call(self, fn, *args) -> None:
        with self._lock:
            self._queue.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:      # loop closed during shutdown
            pass

    def _drain(self) -> None:
        """On the loop: run everything the reactor queued."""
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            self._scheduled = False
        for fn, args in items:
            try:
                fn(*args)
            except Exception:
                log.exception("Sippy bridge: %s failed", getattr(fn, "__name__", fn))

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        self._call(self._bridge._send, data, dest)

    def report(self, call_id: str, kind: str, *args) -> None:
        self._call(self._bridge._report, call_id, kind, *args)

    def media(self, call_id: str, kind: str, from_tag: str, to_tag: str | None, sdp: bytes, leg: str,
              reply) -> None:
        """Rewrite ``sdp`` on the loop; ``reply(out_bytes_or_None, error_or_None)`` runs on the reactor."""
        self._call(self._start_media, (call_id, kind, from_tag, to_tag, sdp, leg), reply)

    def _start_media(self, args: tuple, reply) -> None:
        post = self.post

        def done(task: asyncio.Task) -> None:
            try:
                out, error = task.result()
            except Exception as exc:   # noqa: BLE001 - any failure becomes a 488 on the leg
                out, error = None, str(exc)
            post(reply, out, error)
        self._bridge._spawn(self._bridge._media(*args)).add_done_callback(done)


class SippyBridge:
    """The server's signalling engine for SIGNALLING=sippy (see the module text)."""

    name = "sippy"

    def __init__(self, server):
        self.server = server
        self.calls: dict[str, Call] = {}
        self._legs: dict[str, tuple[str, int]] = {}        # call-id -> callee flow
        self._seen: dict[str, dict[str, SIPMessage]] = {}  # call-id -> last INVITE 18x/2xx, BYE, CANCEL
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: Link | None = None
        self._thread: threading.Thread | None = None
        self._reactor = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task] = set()
        self.version = sippy_version()
        self.stats = {"handed_in": 0, "handed_out": 0, "calls": 0}

    @property
    def engine(self) -> str:
        return f"Sippy B2BUA {self.version} (INVITE dialogs; REGISTER/OPTIONS/MESSAGE on sipcore)"

    # --- lifecycle (loop) --------------------------------------------------------------------
    async def start(self) -> None:
        if self.version is None:
            raise SippyUnavailable(f"SIGNALLING=sippy needs the sippy package: {INSTALL_HINT}")
        self._loop = asyncio.get_running_loop()
        self._link = Link(self, self._loop)
        self._thread = threading.Thread(target=self._reactor_main, name="sippy-reactor", daemon=True)
        self._thread.start()
        ok = await self._loop.run_in_executor(None, self._ready.wait, START_TIMEOUT)
        if self._error is not None or not ok:
            raise SippyUnavailable(f"the Sippy reactor did not start: {self._error or 'timeout'}")
        log.info("signalling: %s", self.engine)

    async def stop(self) -> None:
        for call in list(self.calls.values()):
            if not call.ended:
                call.state = CallState.ENDED
                self.server.events.call_ended(call, "SERVER_SHUTDOWN", None)
        if self._thread is None or not self._thread.is_alive():
            return
        self._link.post(self._reactor.shutdown)
        await self._loop.run_in_executor(None, self._thread.join, STOP_TIMEOUT)
        if self._thread.is_alive():
            log.error("the Sippy reactor thread did not stop within %.0fs", STOP_TIMEOUT)
        else:
            log.info("Sippy reactor stopped")

    def _reactor_main(self) -> None:
        """The reactor thread: import Sippy here (so ED2 is this thread's), run its loop."""
        try:
            from refactored import sippy_b2bua
            cfg = self.server.config
            self._reactor = sippy_b2bua.Reactor(self._link, cfg.advertised_host, cfg.advertised_port,
                                                f"{self.server.server_header} (Sippy {self.version})")
            self._link.post = sippy_b2bua.ED2.callFromThread
        except BaseException as exc:   # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            sippy_b2bua.ED2.loop()
        except BaseException:
            log.exception("Sippy reactor loop failed")
        finally:
            # ElPeriodic 1.5's finaliser (prdic_free, run by the garbage collector at interpreter
            # exit in the main thread) segfaults once call-from-thread was used: the process then
            # ends with SIGSEGV instead of 0. The timer handle is left to the process exit instead.
            sippy_b2bua.ED2.elp._hndl = None

    # --- the hand-off hook (loop) -------------------------------------------------------------
    def take(self, msg: SIPMessage, source: tuple[str, int], transport: str) -> bool:
        """True when ``msg`` belongs to Sippy (and was handed over); False leaves it to sipcore."""
        call_id = msg.call_id or ""
        call = self.calls.get(call_id)
        if call is None:
            if not (isinstance(msg, SIPRequest) and msg.method == "INVITE" and msg.to_tag is None
                    and transport == "udp"):
                return False
            return self._new_invite(msg, source)
        self._remember(call, msg, source)
        self._hand_over(msg, source, None)
        return True

    def _new_invite(self, req: SIPRequest, source: tuple[str, int]) -> bool:
        server = self.server
        user = req.uri.user
        now = time.time()
        bindings = server.registrar.lookup(user, now) if user and server.admission.is_local(req.uri.host) else []
        if len(bindings) > 1:
            bindings = [b for b in bindings if b.source != source] or bindings
        if not bindings:
            return False   # the proxy answers (404/480, 403 Not Relaying, the trunk) and writes the CDR
        server.proxy.core.stamp_via(req, source)                  # force_rport, also for a 407/403 from here
        decision = server.admission.initial(req, source)       # caller identity, as the proxy does it
        if decision.response is not None:
            server.transport.send(decision.response, source, "udp")
            return True
        binding = bindings[0]
        uri, dest = binding.target()
        lower_transport(uri)
        call = Call(call_id=req.call_id or "", caller_tag=req.from_tag or "", caller_flow=source,
                    caller_transport="udp", caller_from=req.headers.get("From") or "",
                    callee_to=req.headers.get("To") or "", caller_contact=req.headers.get("Contact") or "",
                    started=now, invite_cseq=req.cseq[0], caller_cseq=req.cseq[0],
                    user_agent=req.headers.get("User-Agent") or "")
        call.callee_flow, call.callee_transport = dest, binding.transport
        call.auth_user = decision.auth_user
        self.calls[call.call_id] = call
        self._legs[call.call_id] = dest
        self._seen[call.call_id] = {}
        self.stats["calls"] += 1
        server.events.call_started(call, req)
        self._loop.call_later(SETUP_LIMIT, self._setup_expired, call.call_id, call)
        log.info("INVITE %s -> Sippy B2BUA, callee %s at %s:%s", call.call_id, uri, *dest)
        self._hand_over(req, source, (call.call_id, str(uri), dest))
        return True

    def _remember(self, call: Call, msg: SIPMessage, source: tuple[str, int]) -> None:
        seen = self._seen.setdefault(call.call_id, {})
        if isinstance(msg, SIPResponse):
            if msg.cseq[1] == "INVITE" and msg.status in (180, 183, 200):
                seen.setdefault(str(msg.status // 100), msg)
        elif msg.method in ("BYE", "CANCEL"):
            seen[msg.method] = msg

    def _hand_over(self, msg: SIPMessage, source: tuple[str, int], route) -> None:
        policy = self.server.policy
        if isinstance(msg, SIPRequest):
            policy.on_request(msg, source)
            self.server.proxy.core.stamp_via(msg, source)
        else:
            policy.on_response(msg, source)
        if policy.nat is not None and (isinstance(msg, SIPRequest) or msg.cseq[1] == "INVITE"):
            policy.nat.fix_contact(msg, source)     # in-dialog requests follow the flow
        normalise_transport_params(msg)
        self.stats["handed_in"] += 1
        self._link.post(self._reactor.incoming, msg.to_bytes(), source, route)

    # --- called from the reactor through Link (loop) ------------------------------------------
    def _send(self, data: bytes, dest: tuple[str, int]) -> None:
        self.stats["handed_out"] += 1
        self.server.transport.send_raw(data, dest, "udp")

    async def _media(self, call_id: str, kind: str, from_tag: str, to_tag: str | None, sdp: bytes,
                     leg: str) -> tuple[bytes | None, str | None]:
        call = self.calls.get(call_id)
        if call is None:
            return None, "call gone"
        try:
            sd = SessionDescription.parse(sdp)
        except SDPParseError as exc:
            log.warning("%s for %s has bad SDP: %s", kind, call_id, exc.reason)
            return None, exc.reason
        source = call.caller_flow if leg == "A" else self._legs.get(call_id, call.caller_flow)
        operation = self.server.media.offer if kind == "offer" else self.server.media.answer
        try:
            out = await operation(call_id, from_tag, to_tag, self.server.policy.media_target_sdp(sd, source), source)
        except MediaBackendError as exc:
            log.error("media %s failed for %s: %s", kind, call_id, exc)
            return None, str(exc)
        call.media = True
        if kind == "offer" and leg == "A" and not call.media_kinds:
            call.media_kinds, call.codecs = sd.media_kinds(), sd.codec_names()
        return out.to_bytes(), None

    def _report(self, call_id: str, kind: str, *args) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        events = self.server.events
        seen = self._seen.get(call_id, {})
        if kind == "ringing":
            if call.ringing_at is None:
                call.ringing_at, call.state = time.time(), CallState.EARLY
                events.call_ringing(call, seen.get("1"))
        elif kind == "answered":
            call.callee_tag = args[0] if args else None
            call.state, call.answered_at = CallState.CONFIRMED, time.time()
            answer = seen.get("2")
            if answer is not None:
                call.callee_contact = answer.headers.get("Contact")
                events.call_answered(call, answer)
        elif kind in ("ended", "cancelled", "failed"):
            if call.ended:
                return
            call.state = CallState.ENDED
            if kind == "ended":
                events.call_ended(call, "Normal", seen.get("BYE"))
            elif kind == "cancelled":
                events.call_cancelled(call, seen.get("CANCEL"))
            else:
                events.call_failed(call, int(args[0]), str(args[1]))
            self._spawn(self._delete_media(call))
        elif kind == "gone":
            self._loop.call_later(TX_LINGER, self._forget, call_id)

    def _setup_expired(self, call_id: str, call: Call) -> None:
        """Sippy gives an unanswered INVITE 300 s; a call still in setup after that never reached
        a Sippy dialog (e.g. Sippy could not parse the INVITE): record it and let the Call-ID go."""
        if self.calls.get(call_id) is call and call.state in (CallState.TRYING, CallState.EARLY):
            log.warning("call %s: no outcome from Sippy after %.0fs, recorded as 408", call_id, SETUP_LIMIT)
            call.state = CallState.ENDED
            self.server.events.call_failed(call, 408, "Request Timeout")
            self._spawn(self._delete_media(call))
            self._forget(call_id)

    def _forget(self, call_id: str) -> None:
        self.calls.pop(call_id, None)
        self._legs.pop(call_id, None)
        self._seen.pop(call_id, None)

    async def _delete_media(self, call: Call) -> None:
        if not call.media:
            return
        call.media = False
        try:
            await self.server.media.delete(call.call_id, call.caller_tag)
        except MediaBackendError as exc:
            log.warning("media delete failed for %s: %s", call.call_id, exc)

    def _spawn(self, coro) -> asyncio.Task:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- management ---------------------------------------------------------------------------
    def active_calls(self) -> list[Call]:
        return [c for c in self.calls.values() if not c.ended]

    async def end_call(self, call_id: str, reason: str) -> bool:
        """MML RMV CALL: the CDR row is written here, Sippy sends the BYEs (or CANCEL)."""
        call = self.calls.get(call_id)
        if call is None or call.ended:
            return False
        call.state = CallState.ENDED
        self.server.events.call_ended(call, reason, None)
        self._link.post(self._reactor.end_call, call_id)
        await self._delete_media(call)
        return True


def require_sippy() -> str:
    """The installed version, or SippyUnavailable naming the install command."""
    version = sippy_version()
    if version is None:
        raise SippyUnavailable(f"SIGNALLING=sippy needs the sippy package: {INSTALL_HINT}")
    return version


__all__ = [
    "INSTALL_HINT",
    "SippyBridge",
    "SippyUnavailable",
    "normalise_transport_params",
    "require_sippy",
    "sippy_version",
]
