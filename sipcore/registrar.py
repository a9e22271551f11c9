"""Registrar and location service (RFC 3261 §10), sans-IO.

``Registrar.handle_register(request, source, transport, now)`` applies a REGISTER that has already
passed authentication and returns a ``RegisterOutcome`` (response to send + what changed). The
Contact fix-up policy of the stage (legacy source rewrite, or the NAT helper's fix_contact/alias)
is applied by the caller before this, through ``contact_policy``.

Bindings live in a ``BindingStore`` (``sipcore/bindings.py``): by default the in-memory index, with
O(1) lookups in the number of registered users and expiry through a timing wheel.
"""
from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Callable

from sipcore.bindings import Binding, BindingStore, MemoryBindingStore, aor_user, shared_reasons
from sipcore.errors import SIPParseError
from sipcore.message import SIPRequest, SIPResponse, build_response
from sipcore.uri import NameAddr, SipURI

log = logging.getLogger(__name__)


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


class Registrar:
    def __init__(self, *, min_expires: int = 60, max_expires: int = 3600, default_expires: int = 3600,
                 contact_policy: ContactPolicy = keep_contact, max_contacts_per_aor: int = 10,
                 store: BindingStore | None = None, echo_registered_contact: bool = True):
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.contact_policy = contact_policy
        self.max_contacts = max_contacts_per_aor
        # RFC 3261 §10.3 step 8: the 200 lists each Contact as the UA registered it (the NAT source
        # stays beside it in Binding.source, Kamailio's "received"); False: the stored (rewritten)
        # Contact, as the original server did (stage 0)
        self.echo_registered_contact = echo_registered_contact
        self.store: BindingStore = store if store is not None else MemoryBindingStore()

    # --- queries ------------------------------------------------------------------------------
    def lookup(self, aor_or_user: str, now: float) -> list[Binding]:
        """Bindings of an AOR (``sip:user@domain``) or of a bare user name, newest first."""
        self.expire(now)
        found: list[Binding] = []
        if ":" in aor_or_user:
            found = self.store.get(aor_or_user)
            user = aor_user(aor_or_user) if not found else None
        else:
            user = aor_or_user
        if user is not None:   # a bare user, or an AOR whose domain is another of our addresses
            for aor in self.store.aors_of_user(user):
                found.extend(self.store.get(aor))
        if len(found) > 1:
            found.sort(key=lambda b: b.registered_at, reverse=True)
        return found

    def find_contact(self, uri: str, now: float) -> Binding | None:
        """The binding whose stored or original Contact URI is ``uri`` (None when unknown)."""
        self.expire(now)
        return self.store.by_contact(uri)

    def all_bindings(self, now: float) -> list[Binding]:
        self.expire(now)
        return list(self.store.bindings())

    def nated_bindings(self, now: float) -> list[Binding]:
        self.expire(now)
        return self.store.nated()

    def count(self, now: float) -> int:
        self.expire(now)
        return len(self.store)

    def expire(self, now: float) -> list[Binding]:
        gone = self.store.expire(now)
        for b in gone:
            log.info("binding expired aor=%s contact=%s", b.aor, b.contact)
        return gone

    def remove_aor(self, aor_or_user: str) -> int:
        keys = set(self.store.aors_of_user(aor_or_user))
        if self.store.get(aor_or_user):
            keys.add(aor_or_user)
        n = 0
        for k in keys:
            n += len(self.store.get(k))
            self.store.put(k, [])
        return n

    def remove_binding(self, binding: Binding) -> None:
        lst = self.store.get(binding.aor)
        if binding in lst:
            self.store.put(binding.aor, [b for b in lst if b is not binding])

    def clear(self) -> int:
        return self.store.clear()

    # --- REGISTER -----------------------------------------------------------------------------
    def handle_register(self, request: SIPRequest, source: tuple[str, int], transport: str,
                        now: float, to: NameAddr | None = None) -> RegisterOutcome:
        """``to``: the request's To already parsed by the caller (it is not changed here)."""
        try:
            if to is None:
                to = request.to_addr()
        except SIPParseError as exc:
            return RegisterOutcome(build_response(request, 400, extra_headers=[("Warning", f'399 - "{exc.reason}"')]))
        if to.uri is None or not to.uri.is_sip or to.uri.user is None:
            return RegisterOutcome(build_response(request, 400, extra_headers=[("Warning", '399 - "To must be a SIP AOR"')]))
        aor = aor_of(to.uri)
        call_id = request.call_id or ""
        cseq, _ = request.cseq
        self.expire(now)
        current = self.store.get(aor)
        try:
            contacts = request.contacts()
        except SIPParseError as exc:
            return RegisterOutcome(build_response(request, 400, extra_headers=[("Warning", f'399 - "{exc.reason}"')]), aor=aor)
        header_expires = _int_or_none(request.headers.get("Expires"))
        # every path below sets the response; a 500 until then (never None: a typed field)
        outcome = RegisterOutcome(response=SIPResponse(500, "Server Internal Error"), aor=aor)

        if any(c.wildcard for c in contacts):
            # RFC 3261 §10.3 step 6: '*' only alone and with Expires: 0
            if len(contacts) != 1 or header_expires != 0:
                outcome.response = build_response(
                    request, 400, extra_headers=[("Warning", '399 - "Contact * needs Expires: 0 and no other Contact"')])
                return outcome
            outcome.removed = list(current)
            self.store.put(aor, [])
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
            if original == stored:
                original = stored          # one string object for both (memory per binding)
            # the same Contact, or the flow's binding from an earlier REGISTER of this Call-ID (never
            # one this request just made: a REGISTER may carry several Contacts)
            existing = next((b for b in new_list if b.original_contact == original
                             or (b.source == source and b.call_id == call_id and b.cseq < cseq)), None)
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
                existing.source, existing.transport = (sys.intern(source[0]), source[1]), transport
                existing.expires_at, existing.call_id, existing.cseq = now + exp, call_id, cseq
                existing.nated, existing.nat_reasons = nated, shared_reasons(reasons)
                existing.user_agent = sys.intern(request.headers.get("User-Agent", "") or "")
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
        self.store.put(aor, new_list)
        outcome.response = self._ok(request, new_list, now)
        for b in outcome.added:
            log.info("registered aor=%s contact=%s source=%s:%s nated=%s", aor, b.contact, *b.source, b.nated)
        for b in outcome.removed:
            log.info("unregistered aor=%s contact=%s", aor, b.contact)
        return outcome

    def _ok(self, request: SIPRequest, bindings: list[Binding], now: float) -> SIPResponse:
        extra = [("Contact", (f"<{b.original_contact if self.echo_registered_contact else b.contact}>;"
                              f"expires={b.expires_in(now)}")) for b in bindings]
        return build_response(request, 200, to_tag=_register_tag(request), extra_headers=extra)


def _register_tag(request: SIPRequest) -> str:
    return hashlib.sha1((request.call_id or "").encode("utf-8", "surrogateescape")).hexdigest()[:10]


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() else None
