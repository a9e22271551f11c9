"""Who may send what through the proxy: the edge policy, decided before anything is forwarded.

* In-dialog requests (a To tag, or ACK) are relayed only for dialogs this server record-routed:
  the top Route must be this server with a valid route token (``sipcore.record_route``), checked
  like Kamailio's ``has_totag()`` + ``loose_route()``; without a Route the answer is 404, with a
  foreign or forged one 403, and nothing is sent nor media allocated. The only other way in is a
  dialog the proxy still holds in memory and a request coming from one of its two parties' flows
  (UAs that ignore Record-Route). ACK is never answered, only dropped with one log line.
* Initial requests go to registered contacts of local users: a Request-URI naming another domain
  is refused (403 Not Relaying) unless the operator configured ``OUTBOUND_ROUTE``, and then only
  for callers who authenticated as a local user.
* Caller identity (a per-stage knob, ``StagePolicy.caller_identity``, overridden by
  ``CALLER_IDENTITY``): a request whose From names a local user must authenticate as exactly that
  user (407 challenge, 403 for someone else's credentials); a From in our domain naming no user
  is refused; callers from a foreign domain follow ``FOREIGN_CALLERS`` (``challenge``: they must
  authenticate as some local user, the default; ``reject``; ``allow``: unauthenticated, as the
  original). With the rule off (stage 0 by default) INVITE and MESSAGE from local users are
  challenged when ``AUTH_INVITE`` is on, as before. The authenticated user is returned so the CDR
  records who really authenticated.
* Credentials for our own realm (``Proxy-Authorization`` with our realm) never leave the server.

Sans-IO: requests in, decisions out.
"""
from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from sipcore.errors import SIPParseError
from sipcore.message import SIPRequest, SIPResponse, build_response
from sipcore.record_route import Flow, RouteCheck, RouteTokens, loose_route
from sipcore.uri import NameAddr, SipURI

log = logging.getLogger(__name__)

Address = tuple[str, int]
IDENTITY_EXEMPT = frozenset(("OPTIONS", "ACK", "CANCEL", "REGISTER"))
LEGACY_CHALLENGED = frozenset(("INVITE", "MESSAGE"))
_REALM_RE = re.compile(r'realm\s*=\s*(?:"([^"]*)"|([^\s,]+))', re.IGNORECASE)


class ForeignCallers(str, Enum):
    CHALLENGE = "challenge"
    REJECT = "reject"
    ALLOW = "allow"


@dataclass
class Decision:
    response: SIPResponse | None = None   # None: admitted
    auth_user: str | None = None          # who authenticated (None: nobody)
    outbound: Flow | None = None          # forward to the operator's outbound route

    def __init__(self, response: SIPResponse | None = None, auth_user: str | None = None,
                 outbound: Flow | None = None) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.response, self.auth_user, self.outbound = response, auth_user, outbound


def parse_outbound_route(text: str | None) -> Flow | None:
    """``OUTBOUND_ROUTE`` = ``sip:IP[:PORT][;transport=udp|tcp]`` (an address: no DNS on the loop)."""
    if not text or not text.strip():
        return None
    uri = SipURI.parse(text.strip())
    if not uri.is_sip or uri.user is not None:
        raise ValueError("must be sip:IP[:PORT][;transport=udp|tcp]")
    ipaddress.ip_address(uri.host)
    transport = (uri.params.get("transport") or "udp").lower()
    if transport not in ("udp", "tcp"):
        raise ValueError("transport must be udp or tcp")
    return Flow(uri.host, uri.port or 5060, transport)


class Admission:
    def __init__(self, *, tokens: RouteTokens, local_domains: Iterable[str], realm: str,
                 user_exists: Callable[[str], bool], authorizer=None, auth_invite: bool = True,
                 identity: bool = False, foreign: ForeignCallers | str = ForeignCallers.CHALLENGE,
                 outbound: Flow | None = None, server_header: str = "ims-migrate"):
        self.tokens = tokens
        self.local_domains = {d.lower() for d in local_domains if d}
        self.realm = realm
        self.user_exists = user_exists
        self.authorizer = authorizer
        self.auth_invite = auth_invite
        self.identity = identity
        self.foreign = ForeignCallers(foreign)
        self.outbound = outbound
        self.server_header = server_header
        self.stats = {"forged_in_dialog": 0, "relay_denied": 0, "identity_denied": 0}

    # --- in-dialog ----------------------------------------------------------------------------
    def in_dialog(self, request: SIPRequest, source: Address, parties: tuple[Address, ...] = ()) -> RouteCheck:
        """``parties``: the flows of a dialog held in memory for this Call-ID (may be empty)."""
        check = loose_route(request, self.tokens)
        if check.status is None:
            return check
        if source in parties:
            # a party of a dialog we hold: accepted without a token (our tokenless Route removed)
            while True:
                top = request.headers.get("Route")
                try:
                    uri = NameAddr.parse(top).uri if top else None
                except SIPParseError:
                    break
                if not self.tokens.is_ours(uri):
                    break
                request.headers.remove_first("Route")
            return RouteCheck(ours=check.ours)
        self.stats["forged_in_dialog"] += 1
        log.warning("refusing in-dialog %s %s from %s:%s: %s", request.method, request.call_id,
                    source[0], source[1], check.reason)
        return check

    # --- initial requests ---------------------------------------------------------------------
    def is_local(self, host: str | None) -> bool:
        return bool(host) and host.lower() in self.local_domains

    def initial(self, request: SIPRequest, source: Address) -> Decision:
        """Destination and caller identity of a request without a To tag (not REGISTER/ACK/CANCEL)."""
        method = request.method
        if method in IDENTITY_EXEMPT:
            return Decision()
        outbound = None
        if request.uri.is_sip and not self.is_local(request.uri.host):
            if self.outbound is None:
                self.stats["relay_denied"] += 1
                log.warning("refusing %s %s from %s:%s to foreign destination %s (no OUTBOUND_ROUTE)",
                            method, request.call_id, source[0], source[1], request.uri.host)
                return Decision(self._reply(request, 403, "Not Relaying"))
            outbound = self.outbound
        try:
            from_uri = request.from_addr().uri
        except SIPParseError:
            return Decision(self._reply(request, 400, "Bad From"))
        from_user = from_uri.user if from_uri is not None and from_uri.is_sip else None
        from_local = from_uri is not None and from_uri.is_sip and self.is_local(from_uri.host)
        if outbound is not None:
            # the operator's trunk is for local users only: always authenticated
            decision = self._authenticate(request, source, require_user=from_user if from_local else None)
            decision.outbound = outbound
            return decision
        if not self.identity:
            if self.auth_invite and self.authorizer is not None and method in LEGACY_CHALLENGED:
                # the original's rule (existing From users only); stages 1/2 (identity on) challenge
                # every From in our domains alike, which keeps svwar -m INVITE from listing users
                d = self.authorizer.decide(request, source, "Proxy-Authorization")
                return Decision(d.response, d.username)
            return Decision()
        if from_local:
            # an unknown user in our domains gets the same challenge as a known one, and then the
            # same 403 as a wrong password: the answers must not tell extensions apart (svwar)
            if not from_user:
                self.stats["identity_denied"] += 1
                log.warning("refusing %s %s from %s:%s: From names no local user (%s)", method,
                            request.call_id, source[0], source[1], from_user)
                return Decision(self._reply(request, 403, "Forbidden"))
            return self._authenticate(request, source, require_user=from_user)
        if self.foreign is ForeignCallers.ALLOW:
            return Decision()
        if self.foreign is ForeignCallers.REJECT:
            log.info("refusing %s %s from foreign domain %s (FOREIGN_CALLERS=reject)", method,
                     request.call_id, from_uri.host if from_uri else "?")
            return Decision(self._reply(request, 403, "Forbidden"))
        return self._authenticate(request, source, require_user=None)

    def _authenticate(self, request: SIPRequest, source: Address, require_user: str | None) -> Decision:
        if self.authorizer is None:
            return Decision(self._reply(request, 403, "Forbidden"))
        d = self.authorizer.decide(request, source, "Proxy-Authorization", force=True)
        if d.response is not None:
            return Decision(d.response, d.username)
        if require_user is not None and d.username != require_user:
            self.stats["identity_denied"] += 1
            log.warning("refusing %s %s from %s:%s: authenticated as %s but From claims %s",
                        request.method, request.call_id, source[0], source[1], d.username, require_user)
            return Decision(self._reply(request, 403, "Forbidden",
                                        warning="credentials do not match the From user"), d.username)
        return Decision(None, d.username)

    # --- forwarding ---------------------------------------------------------------------------
    def strip_credentials(self, request: SIPRequest) -> int:
        """Remove Proxy-Authorization values for our realm (they are ours to consume)."""
        values = request.headers.get_raw("Proxy-Authorization")
        if not values:
            return 0
        kept = [v for v in values if not self._our_realm(v)]
        if len(kept) != len(values):
            request.headers.remove("Proxy-Authorization")
            for v in kept:
                request.headers.add("Proxy-Authorization", v)
        return len(values) - len(kept)

    def _our_realm(self, value: str) -> bool:
        m = _REALM_RE.search(value)
        if m is None:
            return True          # no realm: nobody downstream can use it either
        return (m.group(1) if m.group(1) is not None else m.group(2)) == self.realm

    def _reply(self, request: SIPRequest, status: int, reason: str, warning: str | None = None) -> SIPResponse:
        extra = [("Server", self.server_header)]
        if warning:
            extra.append(("Warning", f'399 - "{warning}"'))
        return build_response(request, status, reason, to_tag="edge", extra_headers=extra)
