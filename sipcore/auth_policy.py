"""Who must authenticate, and with what: glue between requests, the digest authenticator, the
user store and the failure rate limiter. Sans-IO apart from the injected clock."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sipcore.digest import DigestAuthenticator
from sipcore.message import SIPRequest, SIPResponse, build_response
from sipcore.security import FailureLimiter

log = logging.getLogger(__name__)


@dataclass
class AuthDecision:
    response: SIPResponse | None     # None: authorised
    username: str | None = None
    failed: bool = False             # credentials were sent and were wrong (CDR FAILED, rate limit)
    reason: str = ""


class SipAuthorizer:
    def __init__(self, authenticator: DigestAuthenticator, lookup_ha1, user_exists,
                 limiter: FailureLimiter | None = None, server_header: str = "ims-migrate",
                 clock=time.time, is_local=None, failure_status: int = 403,
                 server_on_challenge: bool = True):
        self.auth = authenticator
        self.lookup_ha1 = lookup_ha1
        self.user_exists = user_exists
        self.limiter = limiter
        self.server_header = server_header
        self.clock = clock
        self.is_local = is_local      # SipURI -> bool: names this server (digest uri check)
        self.failure_status = failure_status     # 401: wrong credentials get a fresh challenge (stage 0)
        self.server_on_challenge = server_on_challenge

    def decide(self, request: SIPRequest, source: tuple[str, int], header: str,
               force: bool = False) -> AuthDecision:
        """``header`` is 'Authorization' (REGISTER, 401) or 'Proxy-Authorization' (INVITE, 407).
        Without ``force`` a request without credentials whose From is no local user passes."""
        status = 401 if header == "Authorization" else 407
        challenge_header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        now = self.clock()
        values = request.headers.get_raw(header)
        if not values:
            if header == "Proxy-Authorization" and not force:
                # only requests from our own users are challenged (the original's local users)
                try:
                    from_user = request.from_addr().uri.user
                except Exception:   # noqa: BLE001 - a bad From was already rejected by the parser
                    from_user = None
                if not from_user or not self.user_exists(from_user):
                    return AuthDecision(None)
            return AuthDecision(self._challenge(request, status, challenge_header, now, stale=False))
        result = None
        for value in values:
            result = self.auth.verify(request.method, str(request.uri), value, self.lookup_ha1, now,
                                      is_local=self.is_local)
            if result.ok:
                return AuthDecision(None, username=result.username)
            if result.stale:
                return AuthDecision(self._challenge(request, status, challenge_header, now, stale=True),
                                    username=result.username, reason="stale nonce")
        reason = result.reason if result else "no credentials"
        log.info("%s from %s:%s: authentication failed (%s)", request.method, *source, reason)
        if self.limiter is not None:
            self.limiter.failure(source[0], f"auth {request.method}")
        # One answer whatever went wrong (unknown user, wrong password, bad realm ...): a different
        # text per cause lets SIPVicious svwar list the existing extensions. The cause is logged.
        if self.failure_status == status:
            return AuthDecision(self._challenge(request, status, challenge_header, now, stale=False),
                                username=result.username if result else None, failed=True, reason=reason)
        resp = build_response(request, 403, "Forbidden",
                              to_tag="auth", extra_headers=[("Server", self.server_header)])
        return AuthDecision(resp, username=result.username if result else None, failed=True, reason=reason)

    def check(self, request: SIPRequest, source: tuple[str, int], header: str) -> SIPResponse | None:
        return self.decide(request, source, header).response

    def _challenge(self, request: SIPRequest, status: int, header: str, now: float, stale: bool) -> SIPResponse:
        extra = [(header, value) for value in self.auth.challenge(now, stale=stale)]
        if self.server_on_challenge:
            extra.append(("Server", self.server_header))
        return build_response(request, status, to_tag="auth", extra_headers=extra)
