"""Runs one sans-IO transaction (sipcore.transaction) on the asyncio event loop.

The state machines only return actions; this binds one of them to where its messages go (the
``send(message, address, transport)`` callable, a destination and a transport) and arms one loop
timer for its next deadline, re-armed after every event. Pass-ups are returned to the caller;
``on_timeout`` is called when Timer B/F/H fires.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from sipcore.message import SIPMessage, SIPRequest, SIPResponse
from sipcore.transaction import ClientTransaction, PassUp, Send, ServerTransaction, Timeout

Address = tuple[str, int]
SendFn = Callable[[SIPMessage, Address, str], None]


class RunningTransaction:
    def __init__(self, txn: ClientTransaction | ServerTransaction, send: SendFn, dest: Address,
                 transport: str, on_timeout: Callable[[], None] | None = None):
        self.txn = txn
        self.send = send
        self.dest = dest
        self.transport = transport
        self.on_timeout = on_timeout
        self._handle: asyncio.TimerHandle | None = None

    @property
    def state(self) -> str:
        return self.txn.state

    # events ------------------------------------------------------------------------------------
    def start(self) -> list:
        return self._feed(self.txn.start(self._now()))

    def response(self, resp: SIPResponse) -> list:
        """A response for a client transaction; returns the responses passed up."""
        return self._feed(self.txn.on_response(resp, self._now()))

    def request(self, request: SIPRequest) -> list:
        """A retransmission (or the ACK of a non-2xx final) for a server transaction."""
        return self._feed(self.txn.on_request(request, self._now()))

    def respond(self, resp: SIPResponse) -> bool:
        """Send a response through a server transaction; False when the state machine dropped it."""
        actions = self.txn.respond(resp, self._now())
        self._feed(actions)
        return any(isinstance(a, Send) for a in actions)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    # plumbing ----------------------------------------------------------------------------------
    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _feed(self, actions: list) -> list:
        passed = []
        for action in actions:
            if isinstance(action, Send):
                self.send(action.message, self.dest, self.transport)
            elif isinstance(action, PassUp):
                passed.append(action.message)
            elif isinstance(action, Timeout) and self.on_timeout is not None:
                self.on_timeout()
        self._arm()
        return passed

    def _arm(self) -> None:
        self.stop()
        deadline = self.txn.next_deadline()
        if deadline is None or self.txn.state == "terminated":
            return
        self._handle = asyncio.get_running_loop().call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._feed(self.txn.on_timer(self._now()))
