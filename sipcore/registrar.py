"""Registrar and location service (RFC 3261 §10), sans-IO.

``Registrar.handle_register(request, source, transport, now)`` applies a REGISTER that has already
passed authentication and returns a ``RegisterOutcome`` (response to send + what changed). The
Contact fix-up policy of the stage (legacy source rewrite, or the NAT helper's fix_contact/alias)
is applied by the caller before this, through ``contact_policy``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from sipcore.errors import SIPParseError
from sipcore.message import SIPRequest, SIPResponse, build_response
from sipcore.uri import NameAddr, SipURI

log = logging.getLogger(__name__)


@dataclass
class Binding:
    aor: str                      # sip:user@domain (no port/params)
    contact: str                  # Contact URI as stored (after the stage's fix-ups)
    original_contact: str         # Contact URI as the UA sent it
    source: tuple[str, int]       # where the REGISTER came from (the flow)
    transport: str                # udp / tcp
    expires_at: float
    call_id: str
    cseq: int
    user_agent: str = ""
    nated: bool = False
    nat_reasons: tuple[str, ...] = ()
    keepalive_failures: int = 0
    registered_at: float = 0.0

    def expires_in(self, now: float) -> int:
        return max(0, int(round(self.expires_at - now)))

    def as_dict(self, now: float) -> dict:
        return {
            "aor": self.aor, "contact": self.contact, "original_contact": self.original_contact,
            "source": f"{self.source[0]}:{self.source[1]}", "transport": self.transport,
            "expires": self.expires_in(now), "user_agent": self.user_agent, "nated": self.nated,
            "nat_reasons": ",".join(self.nat_reasons), "keepalive_failures": self.keepalive_failures,
        }

    def target(self) -> tuple[SipURI, tuple[str, int]]:
        """Request-URI to use and the address to send to (always the registration flow)."""
        return SipURI.parse(self.contact), self.source


@dataclass
class RegisterOutcome:
    response: SIPResponse
    aor: str | None = None
    added: list[Binding] = field(default_factory=list)
    removed: list[Binding] = field(default_factory=list)
    refreshed: list[Binding] = field(default_factory=list)
    expires: int | None = None      # the expiry granted to the first contact (CDR)
    contact: str | None = None      # first contact as stored (CDR)
    unregistered: bool = False


# (contact NameAddr as sent, request, source) -> (stored contact URI string, nated, reasons)
ContactPolicy = Callable[[NameAddr, SIPRequest, tuple[str, int]], tuple[str, bool, tuple[str, ...]]]


def keep_contact(contact: NameAddr, request: SIPRequest, source: tuple[str, int]):
    return str(contact.uri), False, ()


def aor_of(uri: SipURI) -> str:
    return uri.aor()


def aor_user(aor: str) -> str:
    rest = aor.split(":", 1)[1] if ":" in aor else aor
    return rest.split("@", 1)[0] if "@" in rest else ""


class Registrar:
    def __init__(self, *, min_expires: int = 60, max_expires: int = 3600, default_expires: int = 3600,
                 contact_policy: ContactPolicy = keep_contact, max_contacts_per_aor: int = 10):
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.contact_policy = contact_policy
        self.max_contacts = max_contacts_per_aor
        self._bindings: dict[str, list[Binding]] = {}

    # --- queries ------------------------------------------------------------------------------
    def lookup(self, aor_or_user: str, now: float) -> list[Binding]:
        """Bindings of an AOR (``sip:user@domain``) or of a bare user name, newest first."""
        self.expire(now)
        if ":" in aor_or_user:
            found = list(self._bindings.get(aor_or_user, []))
            if not found:   # the domain part may be any of our addresses: match by user
                user = aor_user(aor_or_user)
                found = [b for k, v in self._bindings.items() if aor_user(k) == user for b in v]
        else:
            found = [b for k, v in self._bindings.items() if aor_user(k) == aor_or_user for b in v]
        return sorted(found, key=lambda b: b.registered_at, reverse=True)

    def all_bindings(self, now: float) -> list[Binding]:
        self.expire(now)
        return [b for v in self._bindings.values() for b in v]

    def expire(self, now: float) -> list[Binding]:
        gone: list[Binding] = []
        for aor in list(self._bindings):
            keep = [b for b in self._bindings[aor] if b.expires_at > now]
            gone.extend(b for b in self._bindings[aor] if b.expires_at <= now)
            if keep:
                self._bindings[aor] = keep
            else:
                del self._bindings[aor]
        for b in gone:
            log.info("binding expired aor=%s contact=%s", b.aor, b.contact)
        return gone

    def remove_aor(self, aor_or_user: str) -> int:
        keys = [k for k in self._bindings if k == aor_or_user or aor_user(k) == aor_or_user]
        n = sum(len(self._bindings[k]) for k in keys)
        for k in keys:
            del self._bindings[k]
        return n

    def remove_binding(self, binding: Binding) -> None:
        lst = self._bindings.get(binding.aor, [])
        if binding in lst:
            lst.remove(binding)
            if not lst:
                del self._bindings[binding.aor]

    def clear(self) -> int:
        n = sum(len(v) for v in self._bindings.values())
        self._bindings.clear()
        return n

    # --- REGISTER -----------------------------------------------------------------------------
    def handle_register(self, request: SIPRequest, source: tuple[str, int], transport: str,
                        now: float) -> RegisterOutcome:
        try:
            to = request.to_addr()
        except SIPParseError as exc:
            return RegisterOutcome(build_response(request, 400, extra_headers=[("Warning", f'399 - "{exc.reason}"')]))
        if to.uri is None or not to.uri.is_sip or to.uri.user is None:
            return RegisterOutcome(build_response(request, 400, extra_headers=[("Warning", '399 - "To must be a SIP AOR"')]))
        aor = aor_of(to.uri)
        call_id = request.call_id or ""
        cseq, _ = request.cseq
        self.expire(now)
        current = self._bindings.get(aor, [])
        try:
            contacts = request.contacts()
        except SIPParseError as exc:
            return RegisterOutcome(build_response(request, 400, extra_headers=[("Warning", f'399 - "{exc.reason}"')]), aor=aor)
        header_expires = _int_or_none(request.headers.get("Expires"))
        outcome = RegisterOutcome(response=None, aor=aor)  # type: ignore[arg-type]

        if any(c.wildcard for c in contacts):
            # RFC 3261 §10.3 step 6: '*' only alone and with Expires: 0
            if len(contacts) != 1 or header_expires != 0:
                outcome.response = build_response(request, 400, extra_headers=[("Warning", '399 - "Contact * needs Expires: 0 and no other Contact"')])
                return outcome
            outcome.removed = list(current)
            self._bindings.pop(aor, None)
            outcome.unregistered = True
            outcome.expires = 0
            outcome.response = self._ok(request, [], now)
            return outcome

        if not contacts:   # a query: answer with the current bindings
            outcome.response = self._ok(request, current, now)
            return outcome

        # validate all expiries first (423 if any is too brief, RFC 3261 §10.3 step 7)
        plans: list[tuple[NameAddr, int]] = []
        for c in contacts:
            exp = _int_or_none(c.params.get("expires"))
            if exp is None:
                exp = header_expires if header_expires is not None else self.default_expires
            if exp != 0 and exp < self.min_expires:
                outcome.response = build_response(request, 423, extra_headers=[("Min-Expires", str(self.min_expires))])
                return outcome
            plans.append((c, min(exp, self.max_expires)))

        new_list = list(current)
        for contact, exp in plans:
            stored, nated, reasons = self.contact_policy(contact, request, source)
            original = str(contact.uri)
            existing = next((b for b in new_list if b.original_contact == original
                             or (b.source == source and b.call_id == call_id)), None)
            if existing is not None and existing.call_id == call_id and cseq <= existing.cseq and exp != 0:
                # out-of-order refresh: RFC 3261 §10.3 step 7 says ignore (keep existing)
                outcome.refreshed.append(existing)
                continue
            if exp == 0:
                if existing is not None:
                    new_list.remove(existing)
                    outcome.removed.append(existing)
                outcome.unregistered = True
                if outcome.expires is None:
                    outcome.expires, outcome.contact = 0, stored
                continue
            if existing is not None:
                existing.contact, existing.original_contact = stored, original
                existing.source, existing.transport = source, transport
                existing.expires_at, existing.call_id, existing.cseq = now + exp, call_id, cseq
                existing.nated, existing.nat_reasons = nated, reasons
                existing.user_agent = request.headers.get("User-Agent", "") or ""
                existing.keepalive_failures = 0
                outcome.refreshed.append(existing)
            else:
                binding = Binding(aor=aor, contact=stored, original_contact=original, source=source,
                                  transport=transport, expires_at=now + exp, call_id=call_id, cseq=cseq,
                                  user_agent=request.headers.get("User-Agent", "") or "", nated=nated,
                                  nat_reasons=reasons, registered_at=now)
                new_list.append(binding)
                outcome.added.append(binding)
            if outcome.expires is None:
                outcome.expires, outcome.contact = exp, stored
        if len(new_list) > self.max_contacts:   # drop the oldest beyond the limit
            new_list.sort(key=lambda b: b.registered_at)
            outcome.removed.extend(new_list[:-self.max_contacts])
            new_list = new_list[-self.max_contacts:]
        if new_list:
            self._bindings[aor] = new_list
        else:
            self._bindings.pop(aor, None)
        outcome.response = self._ok(request, new_list, now)
        for b in outcome.added:
            log.info("registered aor=%s contact=%s source=%s:%s nated=%s", aor, b.contact, *b.source, b.nated)
        for b in outcome.removed:
            log.info("unregistered aor=%s contact=%s", aor, b.contact)
        return outcome

    def _ok(self, request: SIPRequest, bindings: list[Binding], now: float) -> SIPResponse:
        extra = [("Contact", f"<{b.contact}>;expires={b.expires_in(now)}") for b in bindings]
        return build_response(request, 200, to_tag=_register_tag(request), extra_headers=extra)


def _register_tag(request: SIPRequest) -> str:
    import hashlib
    return hashlib.sha1((request.call_id or "").encode()).hexdigest()[:10]


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() else None
