"""Stage 1/2 media backend: RTPProxy sessions created with U (offer) / L (answer), removed with D.

The SDP forwarded to the other party advertises the port AND the address RTPProxy returned (the
original wrote its own port numbers into the SDP, which RTPProxy never listened on).
"""
from __future__ import annotations

import asyncio
import logging

from refactored import rtpproxy_protocol as proto
from refactored.rtpproxy_client import RTPProxyPool, RTPProxyUnavailable
from sipcore.errors import MediaBackendError, MediaCapacityError
from sipcore.media import MediaBackend
from sipcore.sdp import SessionDescription

log = logging.getLogger(__name__)


class RTPProxyBackend(MediaBackend):
    name = "rtpproxy"

    def __init__(self, pool: RTPProxyPool, advertised_ip: str, launcher=None):
        self.pool = pool
        self.advertised_ip = advertised_ip
        self.launcher = launcher       # a started local rtpproxy we own (auto start)
        self._calls: dict[str, dict] = {}

    async def start(self) -> None:
        await self.pool.start()

    def keeps_sessions_on_stop(self) -> bool:
        """True when the relay is not ours (pm2/systemd runs it): it outlives this process."""
        return self.launcher is None and getattr(self.pool, "local", None) is None

    async def stop(self) -> None:
        if not self.keeps_sessions_on_stop():
            for call_id in list(self._calls):
                await self.delete(call_id)
        elif self._calls:
            # an external relay (pm2/systemd app) outlives this process: a restart or cutover keeps
            # the calls' audio flowing; sessions of calls that never end again time out in RTPProxy
            log.info("leaving %d RTPProxy sessions to the relay (restart keeps their audio)", len(self._calls))
            self._calls.clear()
        await self.pool.aclose()
        if self.launcher is not None:
            await asyncio.to_thread(self.launcher.stop)     # waits for the process: not on the loop

    def _relay_address(self, reply: proto.PortReply) -> str:
        if reply.address and reply.address not in ("0.0.0.0", "::", "127.0.0.1"):
            return reply.address
        return self.advertised_ip

    async def _rewrite(self, letter: str, call_id, from_tag, to_tag, sdp: SessionDescription) -> SessionDescription:
        out = sdp.copy()
        rewritten_any = False
        for i, m in enumerate(sdp.media):
            if m.port == 0:
                continue
            addr = sdp.media_address(i) or "0.0.0.0"
            # an IPv6 party needs the "6" modifier; a relay without an IPv6 listener (-6) refuses it
            # and the caller answers 488
            family = "6" if ":" in addr else ""
            try:
                if letter == "U":
                    cmd = proto.offer(call_id, addr, m.port, from_tag, to_tag, i + 1, family)   # tag;medianum
                else:
                    cmd = proto.answer(call_id, addr, m.port, from_tag, to_tag or "", i + 1, family)
            except ValueError as exc:
                raise MediaBackendError(f"cannot relay {call_id}: {exc}") from None
            try:
                reply = proto.parse_port_reply(await self.pool.command(call_id, cmd))
            except proto.RTPProxyError as exc:
                if family:
                    raise MediaBackendError(f"rtpproxy cannot relay IPv6 media ({addr}) for {call_id}: {exc}; "
                                            "it needs an IPv6 listener (rtpproxy -6 ADDRESS)") from None
                if exc.code in proto.CAPACITY_CODES:           # out of ports/memory: 503, not 488
                    raise MediaCapacityError(f"rtpproxy refused {letter} for {call_id}: {exc}") from None
                raise MediaBackendError(f"rtpproxy refused {letter} for {call_id}: {exc}") from None
            except RTPProxyUnavailable as exc:
                raise MediaCapacityError(str(exc)) from None
            relay = self._relay_address(reply)
            if family and ":" not in relay:
                # rtpengine without an IPv6 interface answers an IPv6 request with an IPv4 address:
                # media an IPv6-only party cannot reach. Refused as the embedded RTPProxy refuses it
                # (488), and the relay session of a new call is not left behind.
                if call_id not in self._calls:
                    await self.delete(call_id, from_tag, to_tag)
                raise MediaBackendError(f"rtpproxy cannot relay IPv6 media ({addr}) for {call_id}: the relay "
                                        f"answered with IPv4 address {relay}; it needs an IPv6 interface")
            out.set_media_address(i, relay)
            out.set_media_port(i, reply.port)
            out.set_rtcp(i, reply.port + 1, relay if (m.rtcp and m.rtcp[1]) else None)
            rewritten_any = True
        if rewritten_any:
            out.set_origin_address(self.advertised_ip)
        self._calls.setdefault(call_id, {"from_tag": from_tag, "to_tag": to_tag, "streams": len(sdp.media)})
        if to_tag:
            self._calls[call_id]["to_tag"] = self._calls[call_id]["to_tag"] or to_tag
        return out

    async def offer(self, call_id, from_tag, to_tag, sdp, source):
        return await self._rewrite("U", call_id, from_tag, to_tag, sdp)

    async def answer(self, call_id, from_tag, to_tag, sdp, source):
        return await self._rewrite("L", call_id, from_tag, to_tag, sdp)

    async def delete(self, call_id, from_tag=None, to_tag=None) -> None:
        info = self._calls.pop(call_id, None)
        ftag = from_tag or (info or {}).get("from_tag")
        if not ftag:
            return
        try:
            reply = await self.pool.command(call_id, proto.delete(call_id, ftag, to_tag or (info or {}).get("to_tag")))
            proto.check_error(reply)
        except (proto.RTPProxyError, RTPProxyUnavailable) as exc:
            log.info("rtpproxy delete %s: %s", call_id, exc)

    async def session_alive(self, call_id, from_tag, to_tag) -> bool | None:
        """Q on the first stream: E50 (session not found) once RTPProxy dropped it (its own
        inactivity timeout); None when the relay does not answer."""
        try:
            proto.check_error(await self.pool.command(call_id, proto.query(call_id, from_tag, to_tag, 1)))
        except proto.RTPProxyError as exc:
            return exc.code not in (10, 50, 51)
        except RTPProxyUnavailable:
            return None
        return True

    def adopt(self, call_id, from_tag, to_tag) -> None:
        self._calls.setdefault(call_id, {"from_tag": from_tag, "to_tag": to_tag, "streams": 1})

    def sessions(self) -> list[dict]:
        return [{"call_id": cid, "from_tag": v["from_tag"], "to_tag": v["to_tag"] or "", "streams": v["streams"],
                 "relay": "rtpproxy"} for cid, v in self._calls.items()]


def build_rtpproxy_backend(config) -> RTPProxyBackend:
    """Backend for the configured nodes; starts a local relay first when RTPPROXY_AUTO_START=1 and
    the single configured node is a local udp/unix socket that does not answer."""
    from refactored.rtpproxy_launcher import AutoStartPool
    pool = AutoStartPool(list(config.rtpproxy_nodes), config) if config.rtpproxy_auto_start \
        else RTPProxyPool(list(config.rtpproxy_nodes))
    return RTPProxyBackend(pool, config.advertised_host)
