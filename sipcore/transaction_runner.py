"""Runs one sans-IO transaction (sipcore.transaction) on the asyncio event loop, for a user agent.

A ``BoundTransaction`` on the loop's clock with one loop timer for its next deadline, re-armed after
every event. Pass-ups are returned to the caller; ``on_timeout`` is called when Timer B/F/H fires.
(The proxy does not use this: its driver, sipcore.proxy_driver, runs all of the proxy core's
transactions on one timer.)
"""
from __future__ import annotations

import asyncio
from typing import Callable

from sipcore.message import SIPMessage, SIPRequest, SIPResponse
from sipcore.transaction import BoundTransaction, ClientTransaction, ServerTransaction

Address = tuple[str, int]
SendFn = Callable[[SIPMessage, Address, str], None]


class RunningTransaction:
    def __init__(self, txn: ClientTransaction | ServerTransaction, send: SendFn, dest: Address,
                 transport: str, on_timeout: Callable[[], None] | None = None):
        self.bound = BoundTransaction(txn, send, dest, transport, on_timeout, scheduler=self._arm)
        self.txn = txn
        self._handle: asyncio.TimerHandle | None = None

    @property
    def state(self) -> str:
        return self.txn.state

    # events ------------------------------------------------------------------------------------
    def start(self) -> list:
        return self.bound.start(self._now())

    def response(self, resp: SIPResponse) -> list:
        """A response for a client transaction; returns the responses passed up."""
        return self.bound.response(resp, self._now())

    def request(self, request: SIPRequest) -> list:
        """A retransmission (or the ACK of a non-2xx final) for a server transaction."""
        return self.bound.request(request, self._now())

    def respond(self, resp: SIPResponse) -> bool:
        """Send a response through a server transaction; False when the state machine dropped it."""
        return self.bound.respond(resp, self._now())

    def stop(self) -> None:
        self.bound.stop()

    # plumbing ----------------------------------------------------------------------------------
    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _arm(self, bound: BoundTransaction) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        deadline = bound.deadline()
        if deadline is not None:
            self._handle = asyncio.get_running_loop().call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self.bound.timer(self._now())
