"""REGISTER handling: authentication, the AOR check, the binding update and its CDR row.

The proxy core hands each new REGISTER (after transaction matching, Via stamping) to the
``RegistrationHandler`` it was given and sends the returned final response through the request's
server transaction. Sans-IO: the registrar, the authorizer and the CDR events are plain objects.
"""
from __future__ import annotations

from typing import Callable

from sipcore.auth_policy import SipAuthorizer
from sipcore.call_records import CDREvents
from sipcore.message import SIPRequest, SIPResponse, build_response
from sipcore.registrar import Registrar

Address = tuple[str, int]


class Registration:
    def __init__(self, authorizer: SipAuthorizer, registrar: Registrar, events: CDREvents,
                 server_header: str, local_headers: Callable[[], list[tuple[str, str]]] | None = None):
        self.authorizer = authorizer
        self.registrar = registrar
        self.events = events
        self.server_header = server_header
        # the headers of the server's own responses (stage 0: Server, Allow and Date, as the original)
        self.local_headers = local_headers or (lambda: [("Server", self.server_header)])

    def handle(self, req: SIPRequest, source: Address, transport: str, now: float) -> SIPResponse:
        decision = self.authorizer.decide(req, source, "Authorization")
        if decision.response is not None:
            if decision.failed:
                self.events.register_failed(req, source, decision.response, decision.reason)
            return decision.response
        to = req.to_addr()
        to_user = to.uri.user if to.uri is not None else None
        if decision.username and to_user and decision.username != to_user:
            denial = build_response(req, 403, "Forbidden", to_tag="auth",
                                    extra_headers=[("Warning", '399 - "credentials do not match the AOR"')])
            self.events.register_failed(req, source, denial, "credentials do not match the AOR")
            return denial
        outcome = self.registrar.handle_register(req, source, transport, now, to=to)
        resp: SIPResponse = outcome.response
        for name, value in self.local_headers():
            resp.headers.add(name, value)
        if resp.status == 200 and outcome.expires is not None:
            if outcome.unregistered and not outcome.added and not outcome.refreshed:
                self.events.register_unregistered(req, source, outcome.aor or "", outcome.contact or "")
            else:
                self.events.register_success(req, source, outcome.aor or "", outcome.contact or "",
                                             outcome.expires)
        return resp
