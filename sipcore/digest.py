"""Server-side HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760). Sans-IO.

Nonces are ``<timestamp hex>.<random>.<HMAC>``: their integrity and age are checked without state,
and each nonce's highest nonce-count is remembered so a captured Authorization header cannot be
replayed (the original accepted replays). An expired nonce gets a new challenge with stale=true.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from sipcore.errors import SIPParseError
from sipcore.uri import SipURI, equivalent

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def _h(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode("utf-8", "surrogateescape")).hexdigest()


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    return _h(algorithm, f"{username}:{realm}:{password}")


def compute_response(algorithm: str, ha1: str, nonce: str, method: str, uri: str,
                     qop: str | None = None, nc: str | None = None, cnonce: str | None = None) -> str:
    ha2 = _h(algorithm, f"{method}:{uri}")
    if qop:
        return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{ha2}")


# the usual shape of a credential (what every UA sends): name=token or name="text without
# escapes", separated by commas; anything else takes the general parser below
_WELL_FORMED = re.compile(r'(?:[A-Za-z0-9_-]+=(?:"[^"\\]*"|[^\s,"\\]*)(?:[ \t]*,[ \t]*|[ \t]*$))*')
_PARAM = re.compile(r'([A-Za-z0-9_-]+)="([^"\\]*)"|([A-Za-z0-9_-]+)=([^\s,"\\]*)')


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """``Digest a=b, c="d,e"`` -> ("digest", {"a": "b", "c": "d,e"}); quoted-string aware."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if _WELL_FORMED.fullmatch(rest) is not None:     # one regex pass (every REGISTER comes here)
        return scheme.lower(), {(q or t).lower(): (qv if q else tv) for q, qv, t, tv in _PARAM.findall(rest)}
    return scheme.lower(), _parse_params_slowly(rest)


def _parse_params_slowly(rest: str) -> dict[str, str]:
    """Character by character: backslash escapes, unterminated quotes, names without a value."""
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t,":
            i += 1
        start = i
        while i < n and rest[i] not in "=,":
            i += 1
        name = rest[start:i].strip().lower()
        if i >= n or rest[i] != "=":
            if name:
                params[name] = ""
            continue
        i += 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            buf = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(rest[i])
                i += 1
            i += 1
            params[name] = "".join(buf)
        else:
            start = i
            while i < n and rest[i] != ",":
                i += 1
            params[name] = rest[start:i].strip()
    return params


def uri_matches(digest_uri: str, request_uri: str,
                is_local: Callable[[SipURI], bool] | None = None) -> bool:
    """The digest ``uri`` names the Request-URI (RFC 3261 §22.4 with §19.1.4 equivalence). Also
    accepted: both name this server itself, without a user part (``is_local``): SIPp, for one,
    always sends ``uri="sip:HOST:PORT"`` of the server it talks to, whatever its Request-URI
    (``sip:domain``, ``sip:IP``). The response hash covers the uri as sent, so this widens nothing
    an attacker could use: the credentials still only work for this server, realm and nonce."""
    if digest_uri == request_uri:
        return True
    try:
        d, r = SipURI.parse(digest_uri), SipURI.parse(request_uri)
    except SIPParseError:
        return False
    if equivalent(d, r):
        return True
    return (is_local is not None and d.is_sip and r.is_sip and d.user is None and r.user is None
            and is_local(d) and is_local(r))


@dataclass
class AuthResult:
    ok: bool
    username: str | None = None
    stale: bool = False
    reason: str = ""


class DigestAuthenticator:
    def __init__(self, realm: str, algorithms: tuple[str, ...] | list[str] = ("SHA-256", "MD5"),
                 nonce_ttl: float = 300.0, secret: bytes | None = None, max_tracked: int = 100_000):
        unknown = [a for a in algorithms if a not in ALGORITHMS]
        if unknown or not algorithms:
            raise ValueError(f"unsupported digest algorithms: {unknown or 'none'}")
        self.realm = realm
        self.algorithms = tuple(algorithms)
        self.nonce_ttl = nonce_ttl
        self.secret = secret or secrets.token_bytes(32)
        self.max_tracked = max_tracked
        # nonce -> (highest nc, issued), in the order of first use: expired ones leave from the front
        self._nc: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._floor = 0.0     # nonces issued up to here that are not tracked are answered stale

    def _sign(self, stamp: str, rand: str) -> str:
        return hmac.new(self.secret, f"{stamp}.{rand}".encode(), hashlib.sha256).hexdigest()[:24]

    def new_nonce(self, now: float) -> str:
        stamp = format(int(now * 1000), "x")
        rand = secrets.token_hex(8)
        return f"{stamp}.{rand}.{self._sign(stamp, rand)}"

    def challenge(self, now: float, stale: bool = False) -> list[str]:
        """One challenge value per algorithm (SHA-256 first, RFC 8760 §2.4)."""
        nonce = self.new_nonce(now)
        out = []
        for alg in self.algorithms:
            v = f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={alg}, qop="auth"'
            if stale:
                v += ", stale=true"
            out.append(v)
        return out

    def _nonce_issued(self, nonce: str) -> float | None:
        parts = nonce.split(".")
        if len(parts) != 3 or not hmac.compare_digest(parts[2], self._sign(parts[0], parts[1])):
            return None
        try:
            return int(parts[0], 16) / 1000.0
        except ValueError:
            return None

    def _purge(self, now: float) -> None:
        """O(1) amortised: forget nonces from the front while they are expired (they are refused
        stale by their age) or while more than ``max_tracked`` are remembered; a live nonce
        forgotten that way, and every untracked one issued before it, is refused stale from then
        on (the UA retries with a fresh nonce), so forgetting never lets a replay through."""
        nc = self._nc
        while nc:
            _, issued = nc[next(iter(nc))]
            if now - issued > self.nonce_ttl:
                nc.popitem(last=False)
            elif len(nc) >= self.max_tracked:
                self._floor = max(self._floor, issued)
                nc.popitem(last=False)
            else:
                return

    def verify(self, method: str, request_uri: str, authorization_value: str,
               lookup_ha1: Callable[[str, str, str], str | None], now: float,
               is_local: Callable[[SipURI], bool] | None = None) -> AuthResult:
        """``is_local`` names this server's own URIs (see uri_matches)."""
        scheme, p = parse_auth_params(authorization_value)
        if scheme != "digest":
            return AuthResult(False, reason="not a Digest credential")
        username = p.get("username")
        if not username:
            return AuthResult(False, reason="no username")
        if p.get("realm") != self.realm:
            return AuthResult(False, username, reason="wrong realm")
        algorithm = (p.get("algorithm") or "MD5").upper()
        if algorithm not in self.algorithms:
            return AuthResult(False, username, reason=f"algorithm {algorithm} not offered")
        nonce = p.get("nonce", "")
        issued = self._nonce_issued(nonce)
        if issued is None:
            return AuthResult(False, username, reason="nonce not issued by us")
        uri = p.get("uri", "")
        if not uri_matches(uri, request_uri, is_local):
            return AuthResult(False, username, reason="digest uri does not match the Request-URI")
        ha1 = lookup_ha1(username, self.realm, algorithm)
        if ha1 is None:
            return AuthResult(False, username, reason="unknown or inactive user")
        qop = p.get("qop")
        if qop not in (None, "auth"):
            return AuthResult(False, username, reason=f"qop {qop} not supported")
        nc_text, cnonce = p.get("nc"), p.get("cnonce")
        if qop and (not nc_text or not cnonce):
            return AuthResult(False, username, reason="qop=auth needs nc and cnonce")
        expected = compute_response(algorithm, ha1, nonce, method, uri, qop, nc_text, cnonce)
        if not hmac.compare_digest(expected, p.get("response", "").lower()):
            return AuthResult(False, username, reason="wrong password")
        if now - issued > self.nonce_ttl:
            return AuthResult(False, username, stale=True, reason="nonce expired")
        # replay protection: nc must grow for a nonce; without qop a nonce is single use
        try:
            nc = int(nc_text, 16) if nc_text else 0
        except ValueError:
            return AuthResult(False, username, reason="bad nc")
        last = self._nc.get(nonce)
        if last is not None and nc <= last[0]:
            return AuthResult(False, username, reason="replayed credentials (nonce count not increasing)")
        if last is None and issued <= self._floor:
            return AuthResult(False, username, stale=True, reason="nonce no longer tracked")
        self._purge(now)
        self._nc[nonce] = (nc, issued)
        return AuthResult(True, username)
