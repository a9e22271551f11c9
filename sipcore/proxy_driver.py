"""Runs the sans-IO proxy core (sipcore.proxy_core) on asyncio: the one place where the proxy
meets I/O.

``ProxyDriver`` feeds the core the messages the transport hands over, sends what the core says to
send through the transport's ``send(message, address, transport)``, performs the core's media
operations on the media backend (sipcore.media.MediaBackend) and sends the results back in, and
keeps ONE loop timer armed for the core's next deadline (every transaction timer, Timer C and the
sweep of finished transactions run off it). It also offers the awaitable forms of what the core
does in steps: ``originate`` (a request of ours and its final response) and ``end_call``.

The core reads one clock: by default ``wall_clock()``, monotonic but reading as epoch seconds
(CDR timestamps and registrar expiry are wall times, timers must not jump).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from sipcore.admission import Admission
from sipcore.call import Call
from sipcore.errors import MediaBackendError
from sipcore.media_session import MediaOp
from sipcore.message import SIPMessage, SIPRequest, SIPResponse
from sipcore.originated import BYE_BY_OPERATOR, OriginatedDone
from sipcore.proxy_core import T1, Authorizer, CallEvents, ProxyCore, RegistrationHandler, Steps, Transmit
from sipcore.registrar import Registrar
from sipcore.stage_policy import StagePolicy

log = logging.getLogger(__name__)

Address = tuple[str, int]
SendFn = Callable[[SIPMessage, Address, str], None]


def wall_clock() -> Callable[[], float]:
    """A monotonic clock that reads as epoch seconds (anchored to time.time() once)."""
    offset = time.time() - time.monotonic()
    monotonic = time.monotonic
    return lambda: monotonic() + offset


class ProxyDriver:
    def __init__(self, *, host: str, port: int, policy: StagePolicy, registrar: Registrar,
                 media, events: CallEvents, send: SendFn,
                 registration: RegistrationHandler | None = None,
                 authorizer: Authorizer | None = None,
                 user_exists: Callable[[str], bool] = lambda u: False,
                 server_header: str = "ims-migrate", clock: Callable[[], float] | None = None,
                 admission: Admission | None = None):
        self.clock = clock or wall_clock()
        self.core = ProxyCore(host=host, port=port, policy=policy, registrar=registrar, events=events,
                              clock=self.clock, registration=registration, authorizer=authorizer,
                              user_exists=user_exists, server_header=server_header, admission=admission)
        self.media = media
        self.send = send
        self._waiters: dict[str, asyncio.Future] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._handle_loop: asyncio.AbstractEventLoop | None = None
        self._armed_for = 0.0
        self._tasks: set[asyncio.Task] = set()
        # the server's loop, once it runs (``bind_loop``): asking asyncio for the running loop
        # costs a getpid() system call per call on Python 3.11, and the timer is re-checked
        # after every message
        self._loop: asyncio.AbstractEventLoop | None = None

    # what the rest of the server reads ---------------------------------------------------------
    @property
    def host(self) -> str:
        return self.core.host

    @property
    def port(self) -> int:
        return self.core.port

    @property
    def stats(self) -> dict:
        return self.core.stats

    @property
    def calls(self) -> dict[str, Call]:
        return self.core.calls

    @property
    def admission(self) -> Admission:
        return self.core.admission

    @admission.setter
    def admission(self, admission: Admission) -> None:
        self.core.admission = admission

    def active_calls(self) -> list[Call]:
        return self.core.active_calls()

    # events in ---------------------------------------------------------------------------------
    async def on_request(self, req: SIPRequest, source: Address, transport: str) -> None:
        await self._drive(self.core.on_request(req, source, transport))

    async def on_response(self, resp: SIPResponse, source: Address, transport: str) -> None:
        await self._drive(self.core.on_response(resp, source, transport))

    def begin_request(self, req: SIPRequest, source: Address, transport: str):
        """``on_request`` without a task for the common case: the core runs at once, and only
        when it waits for the media backend is the rest returned as a coroutine to schedule
        (else None). Errors of the synchronous part are raised here."""
        return self._begin(self.core.on_request(req, source, transport))

    def begin_response(self, resp: SIPResponse, source: Address, transport: str):
        """``on_response`` the same way as ``begin_request``."""
        return self._begin(self.core.on_response(resp, source, transport))

    def _begin(self, steps: Steps):
        try:
            op = steps.send(None)
        except StopIteration:
            op = None
        except BaseException:
            self._flush()
            self._arm()
            raise
        self._flush()
        if op is None:
            self._arm()
            return None
        return self._drive(steps, op)

    async def originate(self, request: SIPRequest, dest: Address, transport: str = "udp",
                        timeout: float = 32 * T1) -> SIPResponse | None:
        """Send a request we originate through an RFC 3261 client transaction and return its
        final response, or None on Timer B/F (or ``timeout``)."""
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        branch = self.core.start_originated(request, dest, transport)
        self._waiters[branch] = answer
        try:
            self._flush()
            self._arm()
            return await asyncio.wait_for(answer, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            self.core.forget_originated(branch)
            self._waiters.pop(branch, None)

    async def end_call(self, call_id: str, reason: str = "FORCED_TERMINATION_BY_MML",
                       why: str = BYE_BY_OPERATOR) -> bool:
        """BYE to both parties of a call (as the other party; ``why``: its Reason text), then the
        CDR row (termination ``reason``) and media release."""
        ending = self.core.end_call(call_id, why)
        if ending is None:
            return False
        call, byes = ending
        answers = await asyncio.gather(*(self.originate(req, dest, tr, timeout=4.0) for req, dest, tr in byes),
                                       return_exceptions=True)
        await self._drive(self.core.call_ended_by_operator(call, reason, list(answers)))
        return True

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop every later event arrives on (the server's; without it each asks asyncio)."""
        self._loop = loop

    def close(self) -> None:
        """Stop the timer and any work the timer started."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for task in list(self._tasks):
            task.cancel()

    # plumbing ----------------------------------------------------------------------------------
    async def _drive(self, steps: Steps, op: MediaOp | None = None) -> None:
        """Run the core's steps to the end: its sends go out as they are made, its media
        operations are awaited on the backend and their results (or errors) sent back in."""
        try:
            value = error = None
            while True:
                if op is not None:
                    try:
                        value = await self._perform(op)
                    except MediaBackendError as exc:
                        error = exc
                try:
                    op = steps.send(value) if error is None else steps.throw(error)
                except StopIteration:
                    return
                finally:
                    self._flush()
                value = error = None
        finally:
            self._arm()

    async def _perform(self, op: MediaOp):
        media = self.media
        if op.kind == "offer":
            return await media.offer(op.call_id, op.from_tag, op.to_tag, op.sdp, op.source)
        if op.kind == "answer":
            return await media.answer(op.call_id, op.from_tag, op.to_tag, op.sdp, op.source)
        await media.delete(op.call_id, op.from_tag, op.to_tag)
        return None

    def _flush(self) -> None:
        if not self.core.pending:
            return
        send = self.send
        for action in self.core.take_actions():
            if type(action) is Transmit:
                send(action.message, action.dest, action.transport)
            elif isinstance(action, OriginatedDone):
                waiter = self._waiters.get(action.branch)
                if waiter is not None and not waiter.done():
                    waiter.set_result(action.response)

    def _arm(self) -> None:
        """Keep one loop timer for the core's next deadline (an earlier one already armed stays:
        it fires, finds nothing due and re-arms)."""
        deadline = self.core.next_deadline()
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        if self._handle is not None:
            if self._handle_loop is loop and self._armed_for <= deadline:
                return
            self._handle.cancel()
        self._handle_loop, self._armed_for = loop, deadline
        self._handle = loop.call_later(max(0.0, deadline - self.clock()), self._fire)

    def _fire(self) -> None:
        self._handle = None
        steps = self.core.on_timer()
        try:
            op = steps.send(None)
        except StopIteration:
            op = None
        except Exception:    # noqa: BLE001 - the timer must keep running
            log.exception("proxy timer processing failed")
            op = None
        finally:
            self._flush()
        if op is None:
            self._arm()
            return
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        task = loop.create_task(self._drive(steps, op))   # waits for the media backend
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
