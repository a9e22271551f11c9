"""Authenticated Record-Route: the proxy's route entry carries a token only this server can make.

The Record-Route URI the proxy inserts is ``<sip:HOST:PORT;lr;rt=PAYLOAD.MAC>``. ``PAYLOAD`` is
base64url text naming what identifies the dialog and how to reach its two parties::

    v1 \\n ftag \\n caller-flow \\n callee-flow          flow = host~port~transport (or empty)

``MAC`` is HMAC-SHA256 (truncated to 128 bits) keyed with the server's route secret over the
Call-ID, this server's host:port and the payload. So the token

* proves that this server record-routed the dialog (nobody without the secret can make one, and a
  token copied from another dialog fails: the Call-ID is part of the MAC, the From tag is checked);
* carries what is needed to route in-dialog requests after a restart, with no in-memory state:
  the caller's flow (the INVITE's source) and, in the copy the caller receives (the proxy rewrites
  its Record-Route in 1xx/2xx responses, RFC 3261 section 16.7 step 4 allows that), the callee's
  flow (the response's source). A request whose From tag is ``ftag`` goes to the callee flow,
  any other request of the dialog to the caller flow.

The secret comes from ``RR_SECRET`` (hex or text, >= 16 characters) or from the key file
``RR_SECRET_FILE`` (default: ``rr_secret.key`` next to USERS_FILE), created with 32 random bytes
(mode 0600) at the first start and reused afterwards, so tokens stay valid across restarts and
stage changes. Servers sharing one domain must share the secret.

Sans-IO: nothing here opens sockets; ``load_secret`` is the only file access (at start).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
from dataclasses import dataclass

from sipcore.errors import ConfigError, SIPParseError
from sipcore.message import SIPMessage, SIPRequest
from sipcore.recent import keep
from sipcore.uri import NameAddr, SipURI, format_host

log = logging.getLogger(__name__)

TOKEN_PARAM = "rt"
VERSION = "v1"
MAC_BYTES = 16
SECRET_MIN_CHARS = 16
TRANSPORTS = ("udp", "tcp", "tls", "sctp", "ws", "wss")
MEMO_SIZE = 8192     # tokens made and verified, remembered (a call makes 3 and checks 4, most alike)
MEMO_KEY_CHARS = 512


@dataclass(frozen=True)
class Flow:
    """Where one party of a dialog is reached: the source address of its requests/responses."""
    host: str
    port: int
    transport: str = "udp"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def encode(self) -> str:
        return f"{self.host}~{self.port}~{self.transport}"

    @classmethod
    def decode(cls, text: str) -> Flow | None:
        if not text:
            return None
        parts = text.rsplit("~", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            raise ValueError(f"bad flow {text!r}")
        host, port, transport = parts[0], int(parts[1]), parts[2].lower()
        if not host or not 0 < port < 65536 or transport not in TRANSPORTS:
            raise ValueError(f"bad flow {text!r}")
        return cls(host, port, transport)


@dataclass(frozen=True)
class DialogRoute:
    """What a verified token says about its dialog."""
    ftag: str
    caller: Flow | None
    callee: Flow | None

    def belongs_to(self, request: SIPMessage) -> bool:
        return self.ftag in (request.from_tag, request.to_tag)

    def target_for(self, from_tag: str | None) -> Flow | None:
        """The flow a request of this dialog goes to, by the direction its From tag tells."""
        return self.callee if from_tag == self.ftag else self.caller


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    # base64.urlsafe_b64encode's steps, called directly (the base64 module runs interpreted)
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class RouteTokens:
    """Makes and verifies this server's Record-Route entries."""

    def __init__(self, secret: bytes, host: str, port: int):
        if len(secret) < SECRET_MIN_CHARS:
            raise ValueError("route secret too short")
        self._secret = secret
        self.host = host
        self.port = port
        # the same token is made for the 180 and the 200 of a call and checked on its ACK and BYE:
        # HMAC results are remembered (sipcore.recent), keyed by everything they cover
        self._made: dict[tuple[str, str, Flow | None, Flow | None], str] = {}
        self._checked: dict[tuple[str, str], DialogRoute] = {}

    # --- making -------------------------------------------------------------------------------
    def _mac(self, call_id: str, payload: str) -> str:
        msg = "\x00".join(("rr", call_id, f"{self.host}:{self.port}", payload)).encode("utf-8", "surrogateescape")
        return _b64(hmac.digest(self._secret, msg, "sha256")[:MAC_BYTES])      # one-shot: C fast path

    def token(self, call_id: str, ftag: str, caller: Flow | None, callee: Flow | None = None) -> str:
        key = (call_id, ftag, caller, callee)
        made = self._made.get(key)
        if made is not None:
            return made
        text = "\n".join((VERSION, ftag, caller.encode() if caller else "", callee.encode() if callee else ""))
        payload = _b64(text.encode("utf-8", "surrogateescape"))
        made = f"{payload}.{self._mac(call_id, payload)}"
        if len(call_id) + len(ftag) <= MEMO_KEY_CHARS:      # wire values: a huge one is not kept
            keep(self._made, key, made, MEMO_SIZE)
        return made

    def uri(self, call_id: str, ftag: str, caller: Flow | None, callee: Flow | None = None) -> str:
        tok = self.token(call_id, ftag, caller, callee)
        return f"sip:{format_host(self.host)}:{self.port};lr;{TOKEN_PARAM}={tok}"

    def record_route(self, call_id: str, ftag: str, caller: Flow | None, callee: Flow | None = None) -> str:
        """A Record-Route header value for a request this proxy forwards."""
        return f"<{self.uri(call_id, ftag, caller, callee)}>"

    # --- checking -----------------------------------------------------------------------------
    def is_ours(self, uri: SipURI | None) -> bool:
        return (uri is not None and uri.is_sip and uri.host.lower() == self.host.lower()
                and (uri.port or 5060) == self.port)

    def verify(self, uri: SipURI | None, call_id: str | None) -> DialogRoute | None:
        """The dialog route a URI's token proves, or None (no token, forged, other dialog)."""
        if uri is None or not call_id or not self.is_ours(uri):
            return None
        tok = uri.params.get(TOKEN_PARAM)
        if not tok or "." not in tok:
            return None
        key = (tok, call_id)
        route = self._checked.get(key)
        if route is not None:
            return route
        route = self._check(tok, call_id)
        if route is not None:       # only tokens of ours are kept: a forged one may be any size
            keep(self._checked, key, route, MEMO_SIZE)
        return route

    def _check(self, tok: str, call_id: str) -> DialogRoute | None:
        payload, _, mac = tok.partition(".")
        if not hmac.compare_digest(mac.encode("ascii", "replace"),
                                   self._mac(call_id, payload).encode("ascii")):
            return None
        try:
            fields = _unb64(payload).decode("utf-8", "surrogateescape").split("\n")
            if len(fields) != 4 or fields[0] != VERSION:
                return None
            return DialogRoute(fields[1], Flow.decode(fields[2]), Flow.decode(fields[3]))
        except (ValueError, binascii.Error):
            return None

    def rewrite_response(self, response: SIPMessage, call_id: str, ftag: str, caller: Flow,
                         callee: Flow) -> bool:
        """Replace our entry in a dialog-creating response's Record-Route (the copy the caller
        keeps as its route set) by one that also names the callee's flow. False if absent."""
        values = response.headers.get_all("Record-Route")
        for i, value in enumerate(values):
            try:
                na = NameAddr.parse(value)
            except SIPParseError:
                continue
            route = self.verify(na.uri, call_id)
            if route is not None and route.ftag == ftag:
                values[i] = self.record_route(call_id, ftag, caller, callee)
                response.headers.replace_all("Record-Route", values)
                return True
        return False


@dataclass
class RouteCheck:
    """Outcome of ``loose_route`` for an in-dialog request."""
    route: DialogRoute | None = None      # the verified token (None: no valid one)
    ours: bool = False                    # the top Route named this server
    status: int | None = None             # refuse with this status (None: admitted by the token)
    reason: str = ""

    def __init__(self, route: DialogRoute | None = None, ours: bool = False, status: int | None = None,
                 reason: str = "") -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.route, self.ours, self.status, self.reason = route, ours, status, reason


def loose_route(request: SIPRequest, tokens: RouteTokens) -> RouteCheck:
    """RFC 3261 section 16.4 / Kamailio ``loose_route`` for a request with a To tag, restricted
    to dialogs this server record-routed: the top Route must be ours and carry a valid token
    for this dialog; it (and further entries of ours) is removed. Without a Route: 404; a top
    Route naming another host, or ours without a valid token: 403 (we relay for nobody else)."""
    routes = request.headers.get_all("Route")
    if not routes:
        return RouteCheck(status=404, reason="Not Here")
    try:
        top = NameAddr.parse(routes[0]).uri
    except SIPParseError:
        return RouteCheck(status=400, reason="Bad Route")
    if not tokens.is_ours(top):
        return RouteCheck(status=403, reason="Forbidden (not our route)")
    route = tokens.verify(top, request.call_id)
    if route is None or not route.belongs_to(request):
        return RouteCheck(ours=True, status=403, reason="Forbidden (bad route token)")
    request.headers.remove_first("Route")
    for value in routes[1:]:          # a second entry of ours (e.g. transport change) goes too
        try:
            uri = NameAddr.parse(value).uri
        except SIPParseError:
            break
        if not tokens.is_ours(uri):
            break
        request.headers.remove_first("Route")
    return RouteCheck(route=route, ours=True)


def load_secret(env_secret: str | None, path: str) -> bytes:
    """The route secret: ``RR_SECRET`` if set, else the key file (created at the first start)."""
    if env_secret:
        if len(env_secret) < SECRET_MIN_CHARS:
            raise ConfigError("RR_SECRET", f"must be at least {SECRET_MIN_CHARS} characters")
        return env_secret.encode("utf-8")
    try:
        with open(path, "rb") as fh:
            data = fh.read().strip()
    except FileNotFoundError:
        data = b""
    except OSError as exc:
        raise ConfigError("RR_SECRET_FILE", f"cannot read {path}: {exc.strerror or exc}") from None
    if data:
        if len(data) < SECRET_MIN_CHARS:
            raise ConfigError("RR_SECRET_FILE", f"{path} holds fewer than {SECRET_MIN_CHARS} characters")
        return data
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:           # another process created it meanwhile: use theirs
        return load_secret(None, path)
    except OSError as exc:
        raise ConfigError("RR_SECRET_FILE", f"cannot create {path}: {exc.strerror or exc}") from None
    secret = binascii.hexlify(os.urandom(32))
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    log.info("created route secret %s (keep it: in-dialog requests of calls in progress need it "
             "after a restart)", path)
    return secret
