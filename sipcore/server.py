"""The SIP server every stage runs: transports + registrar + proxy + media backend + CDR + MML.

``SIPServer(stage, config, media=...)`` is assembled by ``sipcore.app``; the stage only changes the
media backend and the NAT policy (``StagePolicy``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sipcore.admission import Admission, parse_outbound_route
from sipcore import call_handover, gc_policy
from sipcore.auth_policy import SipAuthorizer
from sipcore.call import CallState
from sipcore.call_records import CDREvents
from sipcore.digest import DigestAuthenticator
from sipcore.errors import SIPError, error_response
from sipcore.message import SIPRequest
from sipcore.logsetup import describe_exception
from sipcore.nat_helper import init_nat_helper
from sipcore.nat_keepalive import NATKeepalive
from sipcore.overload import OverloadGuard
from sipcore.proxy_driver import ProxyDriver
from sipcore.record_route import RouteTokens, load_secret
from sipcore.registrar import Registrar
from sipcore.registration import Registration
from sipcore.resolver import Resolver
from sipcore.security import Blacklist, FailureLimiter
from sipcore.stage_policy import StagePolicy
from sipcore.stages import stage_of
from sipcore.transport import SIPTransport

log = logging.getLogger(__name__)
_ROOT = logging.getLogger()    # per-message DEBUG lines: its level read as an attribute, not a Logger call


def build_admission(config, policy: StagePolicy, authorizer, user_exists, server_header: str,
                    auth_invite: bool) -> Admission:
    """The edge policy from the configuration (route secret loaded or created here, at start)."""
    secret = load_secret(config.rr_secret, config.rr_secret_file)
    domains = {config.realm, config.advertised_host, config.server_ip, *config.local_domains}
    if config.bind_ip not in ("0.0.0.0", "::"):
        domains.add(config.bind_ip)
    return Admission(tokens=RouteTokens(secret, config.advertised_host, config.advertised_port),
                     local_domains=domains, realm=config.realm, user_exists=user_exists,
                     authorizer=authorizer, auth_invite=auth_invite,
                     identity=policy.caller_identity, foreign=config.foreign_callers,
                     outbound=parse_outbound_route(config.outbound_route), server_header=server_header)


class SIPServer:
    def __init__(self, stage: int, config, media, *, users, cdr, location=None):
        self.stage = stage
        self.spec = stage_of(stage)
        self.config = config
        self.media = media
        self.users = users
        self.cdr = cdr
        self.started_at = time.time()
        nat = None
        if self.spec.nat_helper:
            nat = init_nat_helper(server_ip=config.advertised_host, local_networks=config.local_networks)
        profile = self.spec
        # SERVER_HEADER overrides the stage's text; no default names a stage (issue 10, class 7)
        self.server_header = config.server_header or profile.server_header
        # AUTH_INVITE unset: the stage's default (stage 0 as the original: only REGISTER challenged)
        auth_invite = profile.auth_invite if config.auth_invite is None else config.auth_invite
        # CALLER_IDENTITY overrides the stage's default; AUTH_INVITE=0 alone turns the rule off
        identity = config.caller_identity if config.caller_identity is not None else \
            (None if auth_invite else False)
        self.policy = StagePolicy(stage, nat, identity_override=identity)
        self.registrar = Registrar(min_expires=config.min_expires, max_expires=config.max_expires,
                                   default_expires=config.default_expires,
                                   contact_policy=self.policy.register_contact,
                                   echo_registered_contact=self.spec.echo_registered_contact, store=location)
        self.blacklist = Blacklist(config.blacklist_file)
        self.limiter = FailureLimiter(block_after=config.rate_limit_fails, window=60.0,
                                      blacklist=self.blacklist)
        self.digest = DigestAuthenticator(realm=config.realm,
                                          algorithms=config.auth_algorithms or profile.auth_algorithms,
                                          nonce_ttl=config.nonce_ttl)
        self.authorizer = SipAuthorizer(self.digest, users.lookup_ha1, self._user_exists,
                                        limiter=self.limiter, server_header=self.server_header,
                                        is_local=self._is_local_uri,
                                        failure_status=profile.auth_failure_status,
                                        server_on_challenge=profile.server_on_challenge)
        self.events = CDREvents(cdr, server_ip=config.advertised_host, server_port=config.advertised_port,
                                extended=config.cdr_extended)
        self.fatal: asyncio.Future | None = None     # set by start(); resolved when the server must exit
        self.transport = SIPTransport(self._on_message, max_size=65535,
                                      bad_request_host=config.advertised_host,
                                      tcp_first_message_timeout=config.tcp_first_message_timeout,
                                      tcp_max_connections=config.tcp_max_connections,
                                      tcp_max_per_source=config.tcp_max_per_source,
                                      resolver=Resolver(timeout=config.dns_timeout, enabled=config.dns_resolve),
                                      on_fatal=self._on_fatal)
        self.admission = build_admission(config, self.policy, self.authorizer, self._user_exists,
                                         self.server_header, auth_invite)
        self.registration = Registration(self.authorizer, self.registrar, self.events, self.server_header,
                                         local_headers=lambda: self.proxy.core.local_headers())
        self.proxy = ProxyDriver(host=config.advertised_host, port=config.advertised_port, policy=self.policy,
                                 registrar=self.registrar, media=media, events=self.events,
                                 send=self.transport.send, registration=self.registration,
                                 admission=self.admission, user_exists=self._user_exists,
                                 server_header=self.server_header)
        self.overload = OverloadGuard(queue_limit=config.overload_queue_ms / 1000.0,
                                      max_pending=config.overload_max_pending,
                                      retry_after=config.overload_retry_after, server_header=self.server_header)
        self.proxy.core.retry_after = config.overload_retry_after
        self.keepalive = None
        if self.policy.keepalive:
            self.keepalive = NATKeepalive(self.proxy, self.registrar, interval=config.nat_keepalive_interval,
                                          method=config.nat_keepalive_method,
                                          max_failures=config.nat_keepalive_failures,
                                          send_raw=self.transport.send_raw, user_agent=self.server_header)
        self._tasks: list[asyncio.Task] = []
        self._handlers: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None      # the running loop, from start()
        self.mml = None
        self.accepting = False
        self.handed_over: dict = {}           # Call-ID -> Call taken over from the previous process
        self._handover_check: asyncio.Task | None = None
        # Another signalling engine for INVITE dialogs (SIGNALLING=sippy: refactored.sippy_bridge):
        # start()/stop() with the server, take(msg, source, transport) -> True for its messages.
        # Any: the engine lives above sipcore (assembly plugs it in), sipcore names no type of it.
        self.engine: Any = None

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.fatal = asyncio.get_running_loop().create_future()
        await self.media.start()
        self._take_over_calls()
        if self.engine is not None:
            await self.engine.start()
        await self.transport.listen_udp(self.config.bind_ip, self.config.server_port)
        if self.config.enable_tcp:
            await self.transport.listen_tcp(self.config.bind_ip, self.config.server_port)
        self.accepting = True
        loop = self._loop = asyncio.get_running_loop()
        self.proxy.bind_loop(loop)
        self._tasks.append(loop.create_task(self._housekeeping(), name="housekeeping"))
        if self.config.gc_full_interval:
            self._tasks.append(loop.create_task(gc_policy.run_full_collections(self.config.gc_full_interval),
                                                name="gc-full"))
        if self.keepalive is not None:
            self.keepalive.start()
        log.info("stage %d (%s) listening on %s:%d udp%s, advertised %s:%d, media %s",
                 self.stage, self.spec.name, self.config.bind_ip, self.config.server_port,
                 "+tcp" if self.config.enable_tcp else "", self.config.advertised_host,
                 self.config.advertised_port, self.media.name)

    def _on_fatal(self, reason: str) -> None:
        """A listener is gone for good: the process must exit non-zero (pm2/systemd restart it)."""
        log.critical("fatal: %s; exiting so the supervisor restarts the server", reason)
        if self.fatal is not None and not self.fatal.done():
            self.fatal.set_result(reason)

    async def stop(self) -> None:
        """Graceful: stop accepting, end media sessions, flush CDR."""
        self.accepting = False
        self.transport.close()
        if self.engine is not None:
            await self.engine.stop()
        if self.keepalive is not None:
            await self.keepalive.stop()
        self.proxy.close()
        for t in self._tasks:
            t.cancel()
        for t in list(self._handlers):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._handlers, return_exceptions=True)
        keeps = getattr(self.media, "keeps_sessions_on_stop", lambda: False)()
        handed = [c for c in self.proxy.active_calls() if keeps and c.state == CallState.CONFIRMED]
        call_handover.save(call_handover.handover_path(self.config.cdr_dir), handed, self.proxy.core.clock())
        for call in self.proxy.active_calls():
            call.state = CallState.ENDED
            if call not in handed:
                self.events.call_ended(call, "SERVER_SHUTDOWN", None)
        try:
            await self.media.stop()
        except Exception:   # noqa: BLE001 - shutdown must finish
            log.exception("media backend stop failed")
        self.events.flush()
        self.cdr.close()                # fsync what the sync thread has not yet
        close_store = getattr(self.registrar.store, "close", None)    # a location store: flush writes
        if close_store is not None:
            close_store()
        log.info("stopped (stage %d)", self.stage)

    async def _housekeeping(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            try:
                if tick % 15 == 0:
                    self.blacklist.reload()
                if tick % 30 == 0:
                    self.registrar.expire(time.time())
                    self.limiter.prune()
                if self.handed_over and tick % max(1, round(self.config.handover_check_interval)) == 0 \
                        and (self._handover_check is None or self._handover_check.done()):
                    self._handover_check = self._spawn(self._check_handed_over())
            except Exception:   # noqa: BLE001
                log.exception("housekeeping failed")

    # --- message intake -----------------------------------------------------------------------
    def _on_message(self, msg, source: tuple[str, int], transport: str) -> None:
        if not self.accepting:
            return
        ip = source[0]
        if ip in self.blacklist or self.limiter.blocked(ip):
            log.debug("dropping %s from blocked source %s", type(msg).__name__, ip)
            return
        if self.engine is not None and self.engine.take(msg, source, transport):
            return
        is_request = isinstance(msg, SIPRequest)
        if is_request and self.overload.enabled:
            core = self.proxy.core
            verdict = self.overload.check(msg, self.transport.rx_age, core.unanswered,
                                          core.server_txs.__contains__, time.monotonic())
            if verdict.reply is not None:
                self.transport.send_raw(verdict.reply, source, transport)
                return
            if verdict.drop:
                return
        # the proxy core runs here, at once; only a wait for the media backend becomes a task
        try:
            if is_request:
                if _ROOT.level <= logging.DEBUG:
                    log.debug("RX %s %s from %s:%s call-id=%s", msg.method, msg.uri, *source, msg.call_id)
                rest = self.proxy.begin_request(msg, source, transport)
            else:
                if _ROOT.level <= logging.DEBUG:
                    log.debug("RX %d %s from %s:%s call-id=%s", msg.status, msg.reason, *source, msg.call_id)
                rest = self.proxy.begin_response(msg, source, transport)
        except Exception as exc:   # noqa: BLE001 - one bad message must not stop the server
            self._failed(msg, source, transport, exc)
            return
        if rest is not None:
            loop = self._loop if self._loop is not None else asyncio.get_running_loop()
            task = loop.create_task(self._finish(rest, msg, source, transport))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _finish(self, rest, msg, source, transport) -> None:
        try:
            await rest
        except Exception as exc:   # noqa: BLE001
            self._failed(msg, source, transport, exc)

    def _failed(self, msg, source, transport, exc: Exception) -> None:
        if isinstance(exc, SIPError):          # the status it maps to is answered (never a traceback)
            reply = error_response(msg, exc, self.server_header, warn_host=self.config.advertised_host)
            if reply is None:
                log.warning("dropping message from %s:%s: %s", *source, exc.reason)
            else:
                log.warning("%s from %s:%s: %s -> %d", getattr(msg, "method", "response"), *source,
                            exc.reason, reply.status)
                self.transport.send(reply, source, transport)
            return
        log.error("internal error handling message from %s:%s: %s", *source, describe_exception(exc))
        reply = error_response(msg, SIPError("internal error"), self.server_header)
        if reply is not None:
            self.transport.send(reply, source, transport)

    # --- calls handed over by the previous process (sipcore.call_handover) ----------------------
    def _take_over_calls(self) -> None:
        """The previous process's answered calls become dialogs of this one: their re-INVITEs go
        through the relay, their BYE writes the CDR row and deletes the relay session."""
        taken = call_handover.load(call_handover.handover_path(self.config.cdr_dir))
        for h in taken.values():
            call = h.revive(self.policy.legacy_media_positions)
            self.proxy.core.adopt_call(call)
            self.media.adopt(call.call_id, call.caller_tag, call.callee_tag)
            self.handed_over[call.call_id] = call

    async def _check_handed_over(self) -> None:
        """End a handed-over call whose relay session is gone or whose time is up: BYE to both
        parties, CDR row (RELAY_TIMEOUT / HANDOVER_TIMEOUT), relay session deleted."""
        ask_relay = True
        for call in list(self.handed_over.values()):
            if call.ended:
                self.handed_over.pop(call.call_id, None)
                continue
            alive = await self.media.session_alive(call.call_id, call.caller_tag, call.callee_tag) \
                if ask_relay else None
            ask_relay = alive is not None      # a relay that cannot tell (or is down): time limits only
            reason = call_handover.ending_reason(call, self.proxy.core.clock(),
                                                 self.config.handover_call_max_seconds, alive)
            if reason is None or call.ended:
                continue
            self.handed_over.pop(call.call_id, None)
            log.info("handed-over call %s ends: %s", call.call_id, reason)
            self._spawn(self.proxy.end_call(call.call_id, reason, why=call_handover.BYE_TEXT[reason]))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        return task

    def _user_exists(self, username: str) -> bool:
        return self.users.get(username) is not None

    def _is_local_uri(self, uri) -> bool:
        """The URI names this server: one of its addresses or its realm, with our port or none."""
        c = self.config
        hosts = {c.advertised_host.lower(), c.server_ip.lower(), c.realm.lower()}
        return uri.host.lower() in hosts and uri.port in (None, c.server_port, c.advertised_port)

    # --- management ---------------------------------------------------------------------------
    def management_context(self):
        from sipcore.management import ServerManagement
        return ServerManagement(self)

    def stats(self) -> dict:
        now = time.time()
        return {"stage": self.stage, "stage_name": self.spec.name,
                "uptime": round(now - self.started_at, 1),
                "registrations": self.registrar.count(now),
                "signalling_engine": self.engine.engine if self.engine is not None else "sipcore",
                "active_calls": len(self.proxy.active_calls())
                + (len(self.engine.active_calls()) if self.engine is not None else 0),
                "media_sessions": len(self.media.sessions()),
                **{f"sip_{k}": v for k, v in self.proxy.stats.items()},
                **({f"{self.engine.name}_{k}": v for k, v in self.engine.stats.items()} if self.engine else {})}
