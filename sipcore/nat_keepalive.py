"""NAT keepalive for stage 2: ping NATed registrations so their NAT mappings stay open.

Every ``interval`` seconds each binding flagged NATed gets an OPTIONS request (or a CRLF
datagram). A binding whose OPTIONS pings go unanswered ``max_failures`` times in a row is dropped
(the UA is gone or its mapping changed). CRLF pings have no answer, so they never drop bindings.
"""
from __future__ import annotations

import asyncio
import logging
import time

from sipcore.message import Headers, SIPRequest, new_branch, new_tag
from sipcore.registrar import Binding, Registrar
from sipcore.uri import SipURI

log = logging.getLogger(__name__)


class NATKeepalive:
    def __init__(self, proxy, registrar: Registrar, *, interval: float = 25.0, method: str = "OPTIONS",
                 max_failures: int = 3, ping_timeout: float = 2.0, send_raw=None,
                 user_agent: str = "ims-migrate"):
        self.proxy = proxy
        self.registrar = registrar
        self.interval = interval
        self.method = method.upper()
        self.max_failures = max_failures
        self.ping_timeout = ping_timeout
        self.send_raw = send_raw
        self.user_agent = user_agent     # SERVER_HEADER: no stage, no version
        self.stats = {"rounds": 0, "sent": 0, "answered": 0, "failed": 0, "dropped": 0}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="nat-keepalive")
            log.info("NAT keepalive started: %s every %.0fs, drop after %d failures",
                     self.method, self.interval, self.max_failures)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.ping_all()
            except Exception:   # noqa: BLE001 - the loop must survive one bad round
                log.exception("keepalive round failed")

    async def ping_all(self) -> None:
        self.stats["rounds"] += 1
        targets = self.registrar.nated_bindings(time.time())
        await asyncio.gather(*(self.ping(b) for b in targets))

    async def ping(self, binding: Binding) -> bool:
        self.stats["sent"] += 1
        if self.method == "CRLF" and self.send_raw is not None:
            self.send_raw(b"\r\n\r\n", binding.source, binding.transport)
            return True
        request = self._options(binding)
        response = await self.proxy.originate(request, binding.source, binding.transport,
                                              timeout=self.ping_timeout)
        if response is not None:
            self.stats["answered"] += 1
            binding.keepalive_failures = 0
            return True
        self.stats["failed"] += 1
        binding.keepalive_failures += 1
        log.info("keepalive to %s (%s:%s) unanswered (%d/%d)", binding.aor, *binding.source,
                 binding.keepalive_failures, self.max_failures)
        if binding.keepalive_failures >= self.max_failures:
            self.registrar.remove_binding(binding)
            self.stats["dropped"] += 1
            log.warning("binding %s -> %s dropped: keepalive failed %d times", binding.aor,
                        binding.contact, binding.keepalive_failures)
        return False

    def _options(self, binding: Binding) -> SIPRequest:
        host, port = self.proxy.host, self.proxy.port
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{binding.transport.upper()} {host}:{port};branch={new_branch()};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<sip:keepalive@{host}:{port}>;tag={new_tag()}")
        headers.add("To", f"<{binding.contact}>")
        headers.add("Call-ID", f"ka-{new_tag()}@{host}")
        headers.add("CSeq", "1 OPTIONS")
        headers.add("User-Agent", self.user_agent)
        return SIPRequest("OPTIONS", SipURI.parse(binding.contact), headers)

    def state(self) -> dict:
        return {"method": self.method, "interval": self.interval, **self.stats}
