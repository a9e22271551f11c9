"""Reactor side of SIGNALLING=sippy: Sippy's transaction manager and one B2BUA call per INVITE.

Everything in this module runs on Sippy's reactor thread (the ``ED2`` event dispatcher): it is
imported by ``refactored.sippy_bridge`` inside that thread, so ``ED2`` belongs to it. The only way
out is the bridge's ``Link`` (plain bytes, tuples and strings; its methods are thread-safe), the
only way in is ``ED2.callFromThread``. No sipcore object is touched here.

Per call (modelled on ``sippy/b2bua_simple.py``): an A-leg ``UA`` answers the caller's INVITE, a
B-leg ``UA`` calls the callee's registered Contact at its registration flow (both given by the
bridge, which looked them up in sipcore's registrar); events pass between the legs. Every SDP a
leg receives goes through ``on_remote_sdp_change`` to the bridge, which rewrites it through the
project's RTPProxy client on the asyncio loop and hands the result back; Sippy holds the event
until then. Call outcomes (ringing, answered, failed, cancelled, ended, gone) are reported to the
bridge for the CDR.
"""
from __future__ import annotations

import logging
from functools import partial
from threading import get_ident

from sippy.CCEvents import (
    CCEventConnect,
    CCEventDisconnect,
    CCEventFail,
    CCEventPreConnect,
    CCEventRedirect,
    CCEventRing,
    CCEventTry,
    CCEventUpdate,
)
from sippy.Core.EventDispatcher import ED2
from sippy.Exceptions.SdpParseError import SdpParseError
from sippy.Network_server import Network_server, Network_server_opts, Remote_address
from sippy.SipConf import SipConf
from sippy.SipContact import SipContact
from sippy.SipFrom import SipFrom
from sippy.SipTo import SipTo
from sippy.SipTransactionManager import SipTransactionManager
from sippy.SipURL import SipURL
from sippy.Time.MonoTime import MonoTime
from sippy.UA import UA

log = logging.getLogger(__name__)


class _SipLog:
    """Sippy's ``_sip_logger`` interface, written to our log at DEBUG."""

    def write(self, *args, **kwargs) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s", "".join(str(a) for a in args))


class LinkSocket(Network_server):
    """Sippy's pluggable UDP server class (``SipTransactionManager.model_udp_server``) without a
    socket of its own: what Sippy sends goes to sipcore's transport through the bridge, what
    sipcore's transport hands over arrives through ``Reactor.incoming``."""
    transport = "udp"

    def __init__(self, global_config, uopts):
        super().__init__(uopts)
        self.link = global_config["_ims_link"]

    def send_to(self, data, address, delayed=False) -> None:
        if not isinstance(data, bytes):
            data = data.encode("utf-8")
        self.link.send(data, (str(address[0]), int(address[1])))

    def join(self) -> None:     # no sender/receiver threads to wait for
        pass


class _TransactionManager(SipTransactionManager):
    model_udp_server = (LinkSocket, Network_server_opts)


def _contact() -> SipContact:
    """Our Contact without Sippy's display name "Anonymous": some UAs (SIPp's [next_url]) build
    the next Request-URI from the Contact value as a whole."""
    contact = SipContact()
    contact.address.name, contact.address.hadbrace = None, True
    return contact


class _RoutedTry(CCEventTry):
    """The caller's CCEventTry re-targeted at the callee's registered Contact, keeping the
    caller's From/To (Sippy would otherwise build them from the next-hop address)."""

    def __init__(self, original: CCEventTry, target: str, a_leg: UA):
        super().__init__(original.getData(), original.rtime, original.origin)
        self.max_forwards = original.max_forwards
        self.reason_rfc3326 = original.reason_rfc3326
        self.target = target
        self.a_leg = a_leg

    def onUacSetupComplete(self, uac) -> None:
        uac.rTarget = SipURL(url=self.target)
        to = self.a_leg.lUri.getUri().getCopy()
        to.delParam("tag")
        uac.rUri = SipTo(address=to)
        uac.lUri = SipFrom(address=self.a_leg.rUri.getUri().getCopy())
        uac.lUri.setTag(uac.lTag)


class Call:
    """One B2BUA call: A-leg (caller side, UAS) and O-leg (callee side, UAC)."""

    def __init__(self, reactor: Reactor, call_id: str, target: str, dest: tuple[str, int]):
        self.reactor = reactor
        self.link = reactor.link
        self.call_id = call_id
        self.target = target
        self.dest = dest
        gc = reactor.global_config
        self.uaA = UA(gc, self.recv_event, dead_cbs=(self._dead,))
        self.uaA.on_remote_sdp_change = partial(self._sdp_in, "A")
        self.uaA.local_ua = reactor.server_header
        self.uaA.lContact = _contact()
        self.uaO: UA | None = None
        self.connected = False
        self.rang = False
        self.done = False
        self.offerer: str | None = None       # leg whose offer waits for an answer
        self.answered_once = False
        self.last: dict[str, tuple[str, str]] = {}   # leg -> (SDP received, SDP sent on)

    # --- tags as RTPProxy sees them: the caller's From tag and the To tag we gave the caller ---
    def _tag(self, leg: str) -> str:
        return self.uaA.rUri.getTag() if leg == "A" else self.uaA.lTag

    # --- events between the legs ------------------------------------------------------------
    def recv_event(self, event, ua) -> None:
        if ua is self.uaA:
            self._from_caller(event)
        else:
            self._from_callee(event)

    def _from_caller(self, event) -> None:
        if isinstance(event, CCEventDisconnect):
            self._outcome("ended" if self.connected else "cancelled", "Normal")
        if self.uaO is None:
            if isinstance(event, CCEventFail):
                # the caller's offer was refused by the media relay: Sippy answers it (488) itself
                data = event.getData() or (488, "Not Acceptable Here")
                self._outcome("failed", "", data[0], data[1])
                return
            if not isinstance(event, CCEventTry):
                self.uaA.recvEvent(CCEventDisconnect())
                self._gone_check()
                return
            self.uaO = UA(self.reactor.global_config, event_cb=self.recv_event, nh_address=self.dest,
                          dead_cbs=(self._dead,))
            self.uaO.on_remote_sdp_change = partial(self._sdp_in, "O")
            self.uaO.local_ua = self.reactor.server_header
            self.uaO.lContact = _contact()
            event = _RoutedTry(event, self.target, self.uaA)
        self.uaO.recvEvent(event)

    def _from_callee(self, event) -> None:
        data = event.getData()
        if isinstance(event, CCEventRing):
            code = data[0] if data else 180
            if code in (180, 183) and not self.rang:
                self.rang = True
                self.link.report(self.call_id, "ringing", code)
        elif isinstance(event, (CCEventConnect, CCEventPreConnect)):
            if not self.connected and not self.done:
                self.connected = True
                self.link.report(self.call_id, "answered", self.uaO.rUri.getTag() if self.uaO else None)
        elif isinstance(event, (CCEventFail, CCEventRedirect)):
            if not self.connected:
                code, reason = (data[0], data[1]) if data and len(data) >= 2 else (500, "Server Internal Error")
                self._outcome("failed", f"{code} {reason}", code, reason)
        elif isinstance(event, CCEventDisconnect):
            self._outcome("ended" if self.connected else "failed", "Normal", 487, "Request Terminated")
        self.uaA.recvEvent(event)

    def hang_up(self) -> None:
        """Operator hang-up (MML RMV CALL): BYE (or CANCEL) to both parties; the CDR row is the
        bridge's."""
        self.done = True
        self.uaA.disconnect()

    def _outcome(self, kind: str, text: str, code: int | None = None, reason: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.link.report(self.call_id, kind, code, reason)

    def _dead(self, ua, *args) -> None:
        self._gone_check()

    def _gone_check(self) -> None:
        if self.uaA.isDead() and (self.uaO is None or self.uaO.isDead()) \
                and self.reactor.calls.pop(self.call_id, None) is not None:
            self.link.report(self.call_id, "gone")

    # --- SDP: every body a leg receives goes through the bridge's media hand-off -------------
    def _sdp_in(self, leg: str, body, done):
        """``on_remote_sdp_change`` hook: returns None and calls ``done(body)`` later (Sippy holds
        the event meanwhile); ``body`` is rewritten in place, since the event carries it."""
        text = str(body)
        prev = self.last.get(leg)
        if prev is not None and prev[0] == text:
            self._set_body(body, prev[1])        # a 183 and its 200 with the same SDP: same rewrite
            return body
        event = done.args[0] if isinstance(done, partial) and done.args else None
        other = "O" if leg == "A" else "A"
        if isinstance(event, (CCEventTry, CCEventUpdate)) or self.offerer in (None, leg):
            kind, from_tag = "offer", self._tag(leg)
            to_tag = self._tag(other) if self.answered_once else None
            self.offerer = leg
        else:
            kind, from_tag, to_tag = "answer", self._tag(other), self._tag(leg)
            self.answered_once = True
        self.link.media(self.call_id, kind, from_tag, to_tag, text.encode("utf-8"), leg,
                        partial(self._sdp_done, leg, text, body, done))
        return None

    def _sdp_done(self, leg: str, text: str, body, done, out: bytes | None, error: str | None) -> None:
        if out is None:   # the reason is in our log; the caller gets a plain 488
            done(body, ex=SdpParseError("media relay refused the offer"))
            return
        out_text = out.decode("utf-8")
        self.last[leg] = (text, out_text)
        self._set_body(body, out_text)
        done(body)

    @staticmethod
    def _set_body(body, text: str) -> None:
        body.content, body.parsed, body.needs_update = text, False, False


class Reactor:
    """Owns Sippy's transaction manager and the calls; lives on the reactor thread."""

    def __init__(self, link, host: str, port: int, server_header: str):
        self.link = link
        self.server_header = server_header
        ED2.my_ident = get_ident()       # timers are armed from this thread only
        SipConf.my_uaname = server_header
        self.global_config = {"_sip_address": host, "_sip_port": port, "_sip_logger": _SipLog(),
                              "_ims_link": link}
        self.tm = _TransactionManager(self.global_config, self.recv_request)
        self.global_config["_sip_tm"] = self.tm
        self.socket = self.tm.l4r.getServer(None)
        self.routes: dict[str, tuple[str, tuple[str, int]]] = {}
        self.calls: dict[str, Call] = {}

    def incoming(self, data: bytes, source: tuple[str, int], route) -> None:
        """A datagram sipcore's transport handed over (``route`` with a new INVITE: the callee's
        Contact and flow looked up in sipcore's registrar)."""
        if route is not None:
            self.routes[route[0]] = (route[1], route[2])
        self.socket.handle_read(data, Remote_address(source, "udp"), MonoTime())

    def recv_request(self, req, sip_t):
        if req.getHFBody("to").getTag() is not None:
            return (req.genResponse(481, "Call Leg/Transaction Does Not Exist"), None, None)
        if req.getMethod() != "INVITE":
            return (req.genResponse(405, "Method Not Allowed"), None, None)
        call_id = str(req.getHFBody("call-id"))
        route = self.routes.pop(call_id, None)
        if route is None or call_id in self.calls:
            return (req.genResponse(500, "Server Internal Error"), None, None)
        call = Call(self, call_id, route[0], route[1])
        self.calls[call_id] = call
        return call.uaA.recvRequest(req, sip_t)

    def end_call(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is not None:
            call.hang_up()

    def shutdown(self) -> None:
        self.calls.clear()
        self.tm.shutdown()
        ED2.breakLoop()
