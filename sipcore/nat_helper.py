"""Server-side NAT handling for stage 2, modelled on Kamailio's nathelper module.

The seed API is kept (without its module-level global: the server holds its helper):
``init_nat_helper(server_ip=..., local_networks=[...])``, ``process_register_contact(msg, source_addr)``,
``process_invite_sdp(msg, source_addr)`` and ``process_response_sdp(msg, source_addr)``. Everything here is sans-IO: messages in, messages
changed in place, booleans/reasons out. The keepalive loop that pings NATed contacts lives in
``sipcore.nat_keepalive``.

Detection (``nat_uac_test``) runs separate tests, like Kamailio's flags:
  ``private_contact`` (1)  Contact host is a private/carrier-NAT address
  ``via_received``    (2)  top Via sent-by host differs from the packet source address
  ``private_via``     (4)  top Via sent-by host is a private address
  ``private_sdp``     (8)  SDP c= address is private
  ``via_port``        (16) top Via port differs from the packet source port
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterable

from sipcore.errors import SDPParseError, SIPParseError
from sipcore.message import SIPMessage, SIPRequest, parsed_name_addr
from sipcore.recent import keep
from sipcore.sdp import SessionDescription
from sipcore.uri import NameAddr, SipURI, rewrite_name_addrs

log = logging.getLogger(__name__)

TEST_PRIVATE_CONTACT = 1
TEST_VIA_RECEIVED = 2
TEST_PRIVATE_VIA = 4
TEST_PRIVATE_SDP = 8
TEST_VIA_PORT = 16
TEST_ALL = 31

CLASSIFIED_KEPT = 4096

_TEST_NAMES = {
    TEST_PRIVATE_CONTACT: "private_contact", TEST_VIA_RECEIVED: "via_received",
    TEST_PRIVATE_VIA: "private_via", TEST_PRIVATE_SDP: "private_sdp", TEST_VIA_PORT: "via_port",
}

# RFC 1918 + RFC 6598 (carrier-grade NAT) + loopback/link-local, as Kamailio's nat_uac_test does
_ALWAYS_PRIVATE = [ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7",
)]


@dataclass
class NATCounters:
    register_fixed: int = 0
    contact_fixed: int = 0
    sdp_fixed: int = 0
    detected: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class NATHelper:
    def __init__(self, server_ip: str, local_networks: Iterable[str] | None = None, *,
                 fix_origin: bool = True, fix_rtcp: bool = True, use_alias: bool = True,
                 tests: int = TEST_ALL):
        self.server_ip = server_ip
        self.local_networks = [ipaddress.ip_network(n.strip(), strict=False)
                               for n in (local_networks or []) if n.strip()]
        self.fix_origin = fix_origin
        self.fix_rtcp = fix_rtcp
        self.use_alias = use_alias
        self.tests = tests
        self.counters = NATCounters()
        nets = [*_ALWAYS_PRIVATE, *self.local_networks]
        self._ranges4 = [(int(n.network_address), int(n.netmask)) for n in nets if n.version == 4]
        self._ranges6 = [(int(n.network_address), int(n.netmask)) for n in nets if n.version == 6]
        self._classified: dict[str, bool] = {}     # recent answers of is_private (bounded)

    # --- classification ---------------------------------------------------------------------
    def is_private(self, address: str) -> bool:
        """Private, carrier-NAT, link-local or a configured local network. The same few
        addresses are asked about several times per message: recent answers are kept."""
        known = self._classified.get(address)
        if known is None:
            known = self._is_private(address)
            if len(address) <= 64:
                keep(self._classified, address, known, CLASSIFIED_KEPT)
        return known

    def forget_classifications(self) -> None:
        """Empty the kept is_private answers (bounded; benchmarks measuring memory per binding)."""
        self._classified.clear()

    def _is_private(self, address: str) -> bool:
        text = address.strip("[]")
        # the common case without ipaddress objects: an address as integer against (network, mask)
        for family, ranges in ((socket.AF_INET, self._ranges4), (socket.AF_INET6, self._ranges6)):
            try:
                value = int.from_bytes(socket.inet_pton(family, text), "big")
            except OSError:
                continue
            return any(value & mask == net for net, mask in ranges)
        try:
            ip = ipaddress.ip_address(text)         # e.g. an IPv6 address with a zone
        except ValueError:
            return False     # a host name: cannot tell, treat as routable
        return any(ip in n for n in _ALWAYS_PRIVATE) or any(ip in n for n in self.local_networks)

    def nat_uac_test(self, msg: SIPMessage, source: tuple[str, int], tests: int | None = None) -> tuple[str, ...]:
        """The reasons why the sender looks NATed (empty when it does not)."""
        tests = self.tests if tests is None else tests
        src_ip, src_port = source
        reasons: list[str] = []
        try:
            via = msg.top_via()
        except SIPParseError:
            via = None
        if tests & TEST_PRIVATE_CONTACT:
            for c in _contacts(msg):
                if c.uri is not None and c.uri.is_sip and self.is_private(c.uri.host) and not self.is_private(src_ip):
                    reasons.append(_TEST_NAMES[TEST_PRIVATE_CONTACT])
                    break
        if via is not None:
            if tests & TEST_VIA_RECEIVED and via.host != src_ip:
                reasons.append(_TEST_NAMES[TEST_VIA_RECEIVED])
            if tests & TEST_PRIVATE_VIA and self.is_private(via.host) and not self.is_private(src_ip):
                reasons.append(_TEST_NAMES[TEST_PRIVATE_VIA])
            if tests & TEST_VIA_PORT and (via.port or 5060) != src_port:
                reasons.append(_TEST_NAMES[TEST_VIA_PORT])
        if tests & TEST_PRIVATE_SDP and msg.has_sdp():
            try:
                sd = SessionDescription.parse(msg.body)
                if any(self.is_private(sd.media_address(i) or "") for i in range(len(sd.media))) \
                        and not self.is_private(src_ip):
                    reasons.append(_TEST_NAMES[TEST_PRIVATE_SDP])
            except SDPParseError:
                pass
        if reasons:
            self.counters.detected += 1
            for r in reasons:
                self.counters.by_reason[r] = self.counters.by_reason.get(r, 0) + 1
        return tuple(reasons)

    # --- fix-ups ------------------------------------------------------------------------------
    def fix_contact(self, msg: SIPMessage, source: tuple[str, int]) -> bool:
        """Rewrite host:port of every Contact URI to the packet source, keeping URI and header
        parameters (``;transport``, ``;ob``, ...). Kamailio's fix_nated_contact()."""
        def to_source(na: NameAddr, uri: SipURI) -> bool:
            if not uri.is_sip or (uri.host, uri.port or 5060) == (source[0], source[1]):
                return False
            na.uri = uri.with_host_port(source[0], source[1])
            na.angle = True
            return True
        if not _rewrite_contacts(msg, to_source):
            return False
        self.counters.contact_fixed += 1
        return True

    def alias_param(self, source: tuple[str, int], transport: str = "udp") -> str:
        proto = {"udp": 1, "tcp": 2, "tls": 3}.get(transport, 1)
        return f"{source[0]}~{source[1]}~{proto}"

    def add_contact_alias(self, msg: SIPMessage, source: tuple[str, int], transport: str = "udp") -> bool:
        """Kamailio add_contact_alias(): keep the Contact as sent and add ``;alias=ip~port~proto``."""
        def add_alias(na: NameAddr, uri: SipURI) -> bool:
            if not uri.is_sip or "alias" in uri.params:
                return False
            uri.params["alias"] = self.alias_param(source, transport)
            na.angle = True
            return True
        return _rewrite_contacts(msg, add_alias)

    def fix_nated_sdp(self, msg: SIPMessage, source: tuple[str, int]) -> bool:
        """Rewrite private SDP addresses to the packet source IP: every c= (and o= and an a=rtcp
        address when enabled). Ports are left: the relay latches on the real source port."""
        if not msg.has_sdp():
            return False
        try:
            sd = SessionDescription.parse(msg.body)
        except SDPParseError as exc:
            log.warning("fix_nated_sdp: unparsable SDP from %s:%s: %s", *source, exc.reason)
            return False
        src_ip = source[0]
        changed = False
        conn = sd.connection
        if conn is not None and conn.address != src_ip and conn.address not in ("0.0.0.0", "::"):
            sd.set_session_connection(src_ip)
            changed = True
        for i, m in enumerate(sd.media):
            mc = m.connection
            if mc is not None and mc.address != src_ip and mc.address not in ("0.0.0.0", "::"):
                sd.set_media_address(i, src_ip)
                changed = True
            if self.fix_rtcp:
                rtcp = m.rtcp
                if rtcp is not None and rtcp[1] is not None and rtcp[1].address != src_ip:
                    sd.set_rtcp(i, rtcp[0], src_ip)
                    changed = True
        if self.fix_origin:
            o = sd.origin
            if o is not None and o.address != src_ip and self.is_private(o.address):
                sd.set_origin_address(src_ip)
                changed = True
        if changed:
            msg.body = sd.to_bytes()
            self.counters.sdp_fixed += 1
        return changed

    # --- seed API -----------------------------------------------------------------------------
    def process_register_contact(self, msg: SIPRequest, source_addr: tuple[str, int]) -> bool:
        """REGISTER: when the UA looks NATed, fix its Contact(s) to the source address."""
        reasons = self.nat_uac_test(msg, source_addr, TEST_PRIVATE_CONTACT | TEST_VIA_RECEIVED | TEST_VIA_PORT)
        if not reasons:
            return False
        changed = self.fix_contact(msg, source_addr)
        if changed:
            self.counters.register_fixed += 1
            log.info("NAT REGISTER from %s:%s (%s): Contact fixed", *source_addr, ",".join(reasons))
        return changed

    def process_invite_sdp(self, msg: SIPMessage, source_addr: tuple[str, int]) -> bool:
        """INVITE/UPDATE/re-INVITE (or ACK with SDP): fix Contact and SDP when NATed."""
        reasons = self.nat_uac_test(msg, source_addr)
        if not reasons:
            return False
        self.fix_contact(msg, source_addr)
        fixed = self.fix_nated_sdp(msg, source_addr)
        log.info("NAT %s from %s:%s (%s): contact fixed, sdp %s", getattr(msg, "method", "message"),
                 *source_addr, ",".join(reasons), "fixed" if fixed else "unchanged")
        return True

    def process_response_sdp(self, msg: SIPMessage, source_addr: tuple[str, int]) -> bool:
        """18x/2xx from a NATed callee: fix Contact and SDP."""
        reasons = self.nat_uac_test(msg, source_addr,
                                    TEST_PRIVATE_CONTACT | TEST_PRIVATE_SDP | TEST_PRIVATE_VIA)
        if not reasons:
            return False
        self.fix_contact(msg, source_addr)
        fixed = self.fix_nated_sdp(msg, source_addr)
        log.info("NAT response from %s:%s (%s): contact fixed, sdp %s", *source_addr,
                 ",".join(reasons), "fixed" if fixed else "unchanged")
        return True

    def state(self) -> dict:
        c = self.counters
        return {"server_ip": self.server_ip,
                "local_networks": [str(n) for n in self.local_networks],
                "register_fixed": c.register_fixed, "contact_fixed": c.contact_fixed,
                "sdp_fixed": c.sdp_fixed, "detected": c.detected, "by_reason": dict(c.by_reason)}


def _rewrite_contacts(msg: SIPMessage, edit: Callable[[NameAddr, SipURI], bool]) -> bool:
    out = rewrite_name_addrs(msg.headers.get_all("Contact"), edit)
    if out is None:
        return False
    msg.headers.replace_all("Contact", out)
    return True


def _contacts(msg: SIPMessage) -> list[NameAddr]:
    """The parsed Contacts, shared with other readers (read only)."""
    out = []
    for v in msg.headers.get_all("Contact"):
        try:
            out.append(parsed_name_addr(v))
        except SIPParseError:
            continue
    return out


def init_nat_helper(server_ip: str, local_networks: Iterable[str] | None = None, **kwargs) -> NATHelper:
    helper = NATHelper(server_ip, local_networks, **kwargs)
    log.info("NAT helper initialised, local networks: %s", [str(n) for n in helper.local_networks])
    return helper
