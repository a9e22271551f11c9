"""One exception hierarchy for every layer; each error carries the SIP status it maps to.

    SIPError                     status 500   root: something a SIP peer can be answered about
      SIPParseError              status 400   (505 for an unsupported SIP version)
      SDPParseError              status 488   an offer/answer the proxy cannot relay
      MediaBackendError          status 488   the relay refused or cannot be used (says how to start one)
      ConfigError                status 500   a configuration value is invalid (``key`` names it)

An error becomes a response in one place: ``error_response(request, exc, server_header)``, used
by the transport for messages that do not parse and by the server for errors raised while a
request is handled (the proxy core answers 488 from the failing error's ``status`` as well).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipcore.message import SIPResponse


class SIPError(Exception):
    """Root of the hierarchy; ``status`` is the SIP response code it maps to."""
    _status = 500

    @property
    def status(self) -> int:
        return self._status

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SIPParseError(SIPError, ValueError):
    """A SIP message (or part of one) could not be parsed; ``reason`` says why."""
    version_not_supported = False

    def __init__(self, reason: str, partial=None):
        super().__init__(reason)
        # The part that could be parsed (e.g. start line + headers), used to build a 400 reply.
        self.partial = partial

    @property
    def status(self) -> int:
        return 505 if self.version_not_supported else 400


class SDPParseError(SIPError, ValueError):
    """An SDP body could not be parsed."""
    _status = 488


class ConfigError(SIPError, ValueError):
    """A configuration value is invalid; ``key`` names the setting (env var or config key)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class MediaBackendError(SIPError, RuntimeError):
    """The media relay cannot be used; the message says how to start one."""
    _status = 488

    def __init__(self, reason: str = "media relay unavailable"):
        super().__init__(reason)


class MediaCapacityError(MediaBackendError):
    """The relay is down, overloaded or out of ports: a temporary condition of this server, so
    the caller gets 503 (RFC 3261 21.5.4) rather than 488, which would blame its SDP."""
    _status = 503


def error_response(request, exc: SIPError, server_header: str | None = None,
                   warn_host: str = "-") -> "SIPResponse | None":
    """The response ``exc`` maps to for ``request`` (a Warning header from ``warn_host`` says
    why), or None when there is nothing to answer (ACK, a request too broken to answer)."""
    from sipcore.message import SIPRequest, build_response       # errors.py stays at the bottom
    if not isinstance(request, SIPRequest) or request.method == "ACK":
        return None
    if not all(h in request.headers for h in ("Via", "From", "To", "Call-ID", "CSeq")):
        return None
    reason = exc.reason.replace('"', "'")[:120]
    extra = [("Warning", f'399 {warn_host} "{reason}"')] if exc.status != 500 else []
    if server_header:
        extra.append(("Server", server_header))
    try:
        return build_response(request, exc.status, extra_headers=extra)
    except SIPParseError:
        return None
