"""SIP message model, parser and serialiser (RFC 3261 §7, §20, §25).

Sans-IO: ``parse_message(bytes)`` returns a ``SIPRequest`` or ``SIPResponse`` or raises
``SIPParseError`` with a reason; ``msg.to_bytes()`` serialises with Content-Length recomputed.

Headers are kept as an ordered list of (name, value) in the order received: one entry per header
line (folded lines joined), compact names expanded to their full names. ``get_all`` splits the
comma-separated list headers (Via, Contact, Route, ...) respecting quotes and angle brackets, so
round trips keep what is not understood byte for byte (apart from folding and compact names).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from sipcore.errors import SIPParseError
from sipcore.recent import keep
from sipcore.uri import NameAddr, SipURI, after_quoted, format_host, format_params, parse_params, split_hostport

MAX_MESSAGE_SIZE = 65535
SIP_VERSION = "SIP/2.0"
BRANCH_MAGIC = "z9hG4bK"

COMPACT_FORMS = {
    "i": "Call-ID", "m": "Contact", "f": "From", "t": "To", "v": "Via", "l": "Content-Length",
    "c": "Content-Type", "k": "Supported", "s": "Subject", "e": "Content-Encoding",
    "o": "Event", "u": "Allow-Events", "r": "Refer-To", "b": "Referred-By", "x": "Session-Expires",
    "a": "Accept-Contact", "j": "Reject-Contact", "d": "Request-Disposition", "y": "Identity",
    "n": "Identity-Info",
}

CANONICAL_NAMES = {n.lower(): n for n in (
    "Call-ID", "CSeq", "WWW-Authenticate", "Proxy-Authenticate", "Proxy-Authorization",
    "Authorization", "RSeq", "RAck", "Record-Route", "Max-Forwards", "Content-Length",
    "Content-Type", "User-Agent", "MIME-Version", "Min-Expires", "Authentication-Info",
    "Proxy-Require", "Error-Info", "Alert-Info", "Call-Info", "In-Reply-To", "Reply-To",
    "Retry-After", "Session-Expires", "Min-SE", "P-Asserted-Identity", "Refer-To", "Referred-By",
    "Allow-Events", "Subscription-State",
)}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1); all others are single values
# that may legitimately contain commas (Date, WWW-Authenticate, Authorization, ...).
LIST_HEADERS = frozenset(h.lower() for h in (
    "Via", "Contact", "Route", "Record-Route", "Path", "Allow", "Supported", "Require",
    "Proxy-Require", "Unsupported", "Accept", "Accept-Encoding", "Accept-Language",
    "Content-Encoding", "Allow-Events", "In-Reply-To", "Alert-Info", "Call-Info", "Error-Info",
    "Warning", "Service-Route", "P-Asserted-Identity", "Reason", "Security-Client",
))

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


_CANONICAL: dict[str, str] = {}       # header names seen -> canonical (short names only, bounded)
_LOWER_CANONICAL: dict[str, str] = {}
NAMES_KEPT = 2048
NAME_MAX_CHARS = 64


def canonical_name(name: str) -> str:
    known = _CANONICAL.get(name)
    if known is None:
        known = _canonical(name)
        if len(name) <= NAME_MAX_CHARS:
            keep(_CANONICAL, name, known, NAMES_KEPT)
    return known


def _canonical(name: str) -> str:
    low = name.lower()
    if low in COMPACT_FORMS:
        return COMPACT_FORMS[low]
    if low in CANONICAL_NAMES:
        return CANONICAL_NAMES[low]
    return "-".join(p[:1].upper() + p[1:] for p in name.split("-"))


def split_list(value: str) -> list[str]:
    """Split a list header value on commas outside quotes and <...>."""
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    parts: list[str] = []
    if '"' not in value and "<" not in value:
        # the usual case (Via, Allow, Supported ...): every comma separates
        for piece in value.split(","):
            piece = piece.strip()
            if piece:
                parts.append(piece)
        return parts
    # quotes or <...>: jump from one special character to the next (str.find runs in C; a loop
    # over single characters costs a string object per character in the compiled build)
    n = len(value)
    start = i = 0
    while True:
        comma = value.find(",", i)
        end = n if comma < 0 else comma
        quote = value.find('"', i, end)
        angle = value.find("<", i, end)
        if quote < 0 and angle < 0:
            piece = value[start:end].strip()
            if piece:
                parts.append(piece)
            if comma < 0:
                return parts
            start = i = comma + 1
            continue
        if quote >= 0 and (angle < 0 or quote < angle):
            i = after_quoted(value, quote + 1)
        else:
            i = _after_angle(value, angle + 1)


def _after_angle(value: str, i: int) -> int:
    """Index after the ``>`` closing ``<...>`` whose text starts at ``i`` (quotes inside are
    still quoted strings); the end of the value when it is not closed."""
    n = len(value)
    while True:
        close = value.find(">", i)
        end = n if close < 0 else close
        quote = value.find('"', i, end)
        if quote >= 0:
            i = after_quoted(value, quote + 1)
            continue
        return n if close < 0 else close + 1


def _lower_canonical(name: str) -> str:
    known = _LOWER_CANONICAL.get(name)
    if known is None:
        known = canonical_name(name).lower()
        if len(name) <= NAME_MAX_CHARS:
            keep(_LOWER_CANONICAL, name, known, NAMES_KEPT)
    return known


class Headers:
    """Ordered, case-insensitive multi-map of header lines.

    ``_items`` holds the (name, value) lines in order; ``_keys`` the lower-case canonical name of
    each line, in step with it, so a lookup is one C-level ``list.index``/scan over interned keys
    instead of lower-casing every header name on every call.

    ``_memo`` keeps what SIPMessage's accessors parsed from these lines (Call-ID, CSeq, the tags,
    the Vias...): a proxy reads them a dozen times per message. Every method that changes a line
    drops it, so it never outlives the lines it was read from.
    """

    __slots__ = ("_items", "_keys", "_memo")

    def __init__(self, items: list[tuple[str, str]] | None = None):
        self._memo: dict[str, Any] | None = None
        if items:
            self._items: list[tuple[str, str]] = list(items)
            self._keys: list[str] = [_lower_canonical(n) for n, _ in self._items]
        else:
            self._items, self._keys = [], []

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._keys == other._keys and [v for _, v in self._items] == [v for _, v in other._items]

    def __contains__(self, name: str) -> bool:
        return _lower_canonical(name) in self._keys

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def _append(self, name: str, value: str) -> None:
        self._memo = None
        self._items.append((name, value))
        self._keys.append(_lower_canonical(name))

    def get(self, name: str, default: str | None = None) -> str | None:
        low = _lower_canonical(name)
        keys = self._keys
        try:
            i = keys.index(low)
        except ValueError:
            return default
        if low not in LIST_HEADERS:
            return self._items[i][1].strip()
        while True:
            parts = split_list(self._items[i][1])
            if parts:
                return parts[0]
            try:
                i = keys.index(low, i + 1)
            except ValueError:
                return default

    def get_raw(self, name: str) -> list[str]:
        """Values as received, one per header line (no comma splitting)."""
        low = _lower_canonical(name)
        if low not in self._keys:
            return []
        return [item[1] for k, item in zip(self._keys, self._items) if k == low]

    def get_all(self, name: str) -> list[str]:
        low = _lower_canonical(name)
        if low not in self._keys:
            return []
        values = [item[1] for k, item in zip(self._keys, self._items) if k == low]
        if low not in LIST_HEADERS:
            return [v.strip() for v in values]
        out: list[str] = []
        for v in values:
            out.extend(split_list(v))
        return out

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` by one, at the position of the first (or at the end)."""
        self.replace_all(name, [value])

    def add(self, name: str, value: str, top: bool = False) -> None:
        """Add one value: ``top=True`` puts it before the first header of that name."""
        self._memo = None
        name = canonical_name(name)
        low = _lower_canonical(name)
        if top:
            try:
                i = self._keys.index(low)
            except ValueError:
                # none yet: put it where Via-like headers usually go (start) for Via, else end
                i = 0 if low == "via" else len(self._keys)
            self._items.insert(i, (name, value))
            self._keys.insert(i, low)
            return
        self._items.append((name, value))
        self._keys.append(low)

    def remove(self, name: str) -> int:
        low = _lower_canonical(name)
        if low not in self._keys:
            return 0
        self._memo = None
        before = len(self._items)
        pairs = [(k, item) for k, item in zip(self._keys, self._items) if k != low]
        self._keys = [k for k, _ in pairs]
        self._items = [item for _, item in pairs]
        return before - len(self._items)

    def remove_first(self, name: str) -> str | None:
        """Remove the first value of ``name`` (splitting a comma list line if needed)."""
        low = _lower_canonical(name)
        try:
            i = self._keys.index(low)
        except ValueError:
            return None
        self._memo = None
        n, v = self._items[i]
        parts = split_list(v) if low in LIST_HEADERS else [v.strip()]
        first, rest = parts[0] if parts else "", parts[1:]
        if rest:
            self._items[i] = (n, ", ".join(rest))
        else:
            del self._items[i]
            del self._keys[i]
        return first

    def replace_all(self, name: str, values: list[str]) -> None:
        """Set the values of ``name`` to ``values`` (one line each) at the first position."""
        self._memo = None
        name = canonical_name(name)
        low = _lower_canonical(name)
        keys, items = self._keys, self._items
        try:
            pos = keys.index(low)
        except ValueError:
            pos = len(keys)
        else:
            if low in keys[pos + 1:]:       # several lines: keep only the others
                pairs = [(k, item) for k, item in zip(keys, items) if k != low]
                keys = self._keys = [k for k, _ in pairs]
                items = self._items = [item for _, item in pairs]
            else:
                del keys[pos]
                del items[pos]
        keys[pos:pos] = [low] * len(values)
        items[pos:pos] = [(name, v) for v in values]

    def copy(self) -> "Headers":
        h = Headers.__new__(Headers)
        h._items = list(self._items)
        h._keys = list(self._keys)
        h._memo = None
        return h


@dataclass
class Via:
    transport: str = "UDP"
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    def __init__(self, transport: str = "UDP", host: str = "", port: int | None = None,
                 params: dict[str, str | None] | None = None, protocol: str = "SIP/2.0") -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.transport, self.host, self.port, self.protocol = transport, host, port, protocol
        self.params = {} if params is None else params

    @classmethod
    def parse(cls, value: str) -> "Via":
        value = value.strip()
        # sent-protocol may contain LWS around '/' (RFC 4475 3.1.1.1)
        try:
            name, rest = value.split("/", 1)
            version, rest = rest.split("/", 1)
        except ValueError:
            raise SIPParseError(f"bad Via: {value[:80]!r}") from None
        rest = rest.lstrip()
        sp = 0
        while sp < len(rest) and not rest[sp].isspace():
            sp += 1
        transport, sent_by = rest[:sp], rest[sp:].strip()
        if not transport or not sent_by or name.strip().upper() != "SIP" or version.strip() != "2.0":
            raise SIPParseError(f"bad Via: {value[:80]!r}")
        hostport, semi, paramtext = sent_by.partition(";")
        # tolerate a comment after sent-by (RFC 3261 allows LWS; comments are rare): strip "(...)"
        if "(" in hostport:
            hostport = hostport.split("(", 1)[0]
        host, port = split_hostport(hostport.replace(" ", "").replace("\t", ""))
        return Via(transport.upper(), host, port, parse_params(paramtext) if semi else {}, "SIP/2.0")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {format_host(self.host)}{port}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        v = self.params.get("rport")
        return int(v) if v and v.isdigit() else None

    def response_address(self) -> tuple[str, int]:
        """Where responses go (RFC 3261 §18.2.2 + RFC 3581): received/rport win over sent-by."""
        host = self.received or self.host
        port = self.rport or self.port or (5061 if self.transport == "TLS" else 5060)
        return host, port


# Recent parses of header values, shared by every message that carries the same text (a
# response echoes its request's Vias, From and To). Bounded (sipcore.recent); a value longer
# than RECENT_MAX_CHARS (from the wire: anything up to the message size) is parsed each time and
# never kept. The results are shared: readers must not modify them.
RECENT_SIZE = 8192
RECENT_MAX_CHARS = 512
_RECENT_VIAS: dict[str, Via] = {}
_RECENT_NAME_ADDRS: dict[str, NameAddr] = {}


def forget_recent_parses() -> None:
    """Empty the shared parse caches (benchmarks and tests that measure memory per binding: the
    caches are a bounded constant of the process, at most RECENT_SIZE entries each)."""
    _RECENT_VIAS.clear()
    _RECENT_NAME_ADDRS.clear()


def _parsed_via(value: str) -> Via:
    via = _RECENT_VIAS.get(value)
    if via is None:
        via = Via.parse(value)
        remember_via(value, via)
    return via


def remember_via(value: str, via: Via) -> None:
    """Keep ``via`` as the parse of ``value``: the proxy passes the Vias it writes, which come
    back at the top of every response."""
    if len(value) <= RECENT_MAX_CHARS:
        keep(_RECENT_VIAS, value, via, RECENT_SIZE)


def new_branch() -> str:
    return BRANCH_MAGIC + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


def parsed_name_addr(value: str) -> NameAddr:
    """The parse of a name-addr value (From, To, Contact...), shared: read only (see _parsed_via)."""
    na = _RECENT_NAME_ADDRS.get(value)
    if na is None:
        na = NameAddr.parse(value)
        if len(value) <= RECENT_MAX_CHARS:
            keep(_RECENT_NAME_ADDRS, value, na, RECENT_SIZE)
    return na


_UNSET: Any = object()      # a memo entry not computed yet (None is a value there)


def _tag_of(name_addr: str) -> str | None:
    return parsed_name_addr(name_addr).tag


class SIPMessage:
    """Common part of requests and responses."""

    headers: Headers
    body: bytes

    def __init__(self, headers: Headers | None = None, body: bytes = b""):
        self.headers = headers if headers is not None else Headers()
        self.body = body

    # --- convenience accessors ----------------------------------------------------------------
    # What they parse is kept in the headers' memo (Headers._memo) until a header line changes.
    def _memo(self) -> dict[str, Any]:
        headers = self.headers
        memo = headers._memo
        if memo is None:
            memo = headers._memo = {}
        return memo

    @property
    def call_id(self) -> str | None:
        memo = self._memo()
        value = memo.get("call-id", _UNSET)
        if value is _UNSET:
            value = memo["call-id"] = self.headers.get("Call-ID")
        return value

    @property
    def cseq(self) -> tuple[int, str]:
        memo = self._memo()
        value = memo.get("cseq")
        if value is None:
            text = self.headers.get("CSeq")
            if text is None:
                raise SIPParseError("missing CSeq")
            value = memo["cseq"] = parse_cseq(text)
        return value

    def from_addr(self) -> NameAddr:
        """The parsed From (a private copy: callers may change it)."""
        v = self.headers.get("From")
        if v is None:
            raise SIPParseError("missing From")
        return NameAddr.parse(v)

    def to_addr(self) -> NameAddr:
        """The parsed To (a private copy: callers may change it)."""
        v = self.headers.get("To")
        if v is None:
            raise SIPParseError("missing To")
        return NameAddr.parse(v)

    @property
    def from_tag(self) -> str | None:
        return self._tag("from-tag", "From")

    @property
    def to_tag(self) -> str | None:
        return self._tag("to-tag", "To")

    def _tag(self, key: str, header: str) -> str | None:
        memo = self._memo()
        value = memo.get(key, _UNSET)
        if value is _UNSET:
            v = self.headers.get(header)
            if v is None:
                raise SIPParseError(f"missing {header}")
            value = memo[key] = _tag_of(v)
        return value

    def vias(self) -> list[Via]:
        """The parsed Via values, top first. Shared with other readers: do not modify them
        (``Via.parse`` gives a private copy to change)."""
        memo = self._memo()
        value = memo.get("vias")
        if value is None:
            value = memo["vias"] = tuple([_parsed_via(v) for v in self.headers.get_all("Via")])
        return list(value)

    def top_via(self) -> Via | None:
        """The parsed top Via (shared, read-only: see ``vias``)."""
        memo = self._memo()
        value = memo.get("top-via", _UNSET)
        if value is _UNSET:
            v = self.headers.get("Via")
            value = memo["top-via"] = _parsed_via(v) if v is not None else None
        return value

    def contacts(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.headers.get_all("Contact")]

    @property
    def content_type(self) -> str | None:
        memo = self._memo()
        value = memo.get("content-type", _UNSET)
        if value is _UNSET:
            ct = self.headers.get("Content-Type")
            value = memo["content-type"] = ct.split(";")[0].strip().lower() if ct else None
        return value

    def has_sdp(self) -> bool:
        return bool(self.body) and self.content_type == "application/sdp"

    # --- serialisation ------------------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        lines = [self.start_line()]
        has_cl = False
        for name, value in self.headers:
            if name == "Content-Length":
                if has_cl:
                    continue
                has_cl = True
                value = str(len(self.body))
            lines.append(f"{name}: {value}")
        if not has_cl:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def _eq_fields(self):
        return (self.start_line(), [(n.lower(), v) for n, v in self.headers
                                    if n != "Content-Length"], self.body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SIPMessage):
            return NotImplemented
        return self._eq_fields() == other._eq_fields()


class SIPRequest(SIPMessage):
    def __init__(self, method: str, uri: SipURI | str, headers: Headers | None = None,
                 body: bytes = b"", version: str = SIP_VERSION):
        super().__init__(headers, body)
        self.method = method
        self.uri = SipURI.parse(uri) if isinstance(uri, str) else uri
        self.version = version

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def copy(self) -> "SIPRequest":
        return SIPRequest(self.method, self.uri.copy(), self.headers.copy(), self.body, self.version)

    def __repr__(self) -> str:
        return f"<SIPRequest {self.method} {self.uri} call-id={self.call_id}>"


class SIPResponse(SIPMessage):
    def __init__(self, status: int, reason: str = "", headers: Headers | None = None,
                 body: bytes = b"", version: str = SIP_VERSION):
        super().__init__(headers, body)
        self.status = status
        self.reason = reason
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> "SIPResponse":
        return SIPResponse(self.status, self.reason, self.headers.copy(), self.body, self.version)

    def __repr__(self) -> str:
        return f"<SIPResponse {self.status} {self.reason} call-id={self.call_id}>"


def parse_cseq(value: str) -> tuple[int, str]:
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit():
        raise SIPParseError(f"bad CSeq: {value[:60]!r}")
    num = int(parts[0])
    if num >= 2 ** 31:
        raise SIPParseError(f"CSeq number out of range: {parts[0]}")
    method = parts[1]
    if not _TOKEN_CHARS.issuperset(method):
        raise SIPParseError(f"bad CSeq method: {method!r}")
    return num, method


REQUIRED_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")
_HEADER_NAMES: dict[str, tuple[str, str]] = {}   # raw header name -> (canonical name, lookup key)


def parse_message(data: bytes, max_size: int = MAX_MESSAGE_SIZE,
                  stream: bool = False) -> SIPRequest | SIPResponse:
    """Parse one SIP message.

    ``stream=False`` (UDP): the datagram is the message; bytes beyond Content-Length are dropped
    and a body shorter than Content-Length is an error. ``stream=True`` (TCP framing already
    applied by the caller) behaves the same but Content-Length is mandatory.
    """
    if len(data) > max_size:
        raise SIPParseError(f"message larger than {max_size} bytes")
    # tolerate leading CRLFs (RFC 3261 §7.5)
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    sep = data.find(b"\r\n\r\n", start)
    if sep >= 0:
        head, body = data[start:sep], data[sep + 4:]
        newline = b"\r\n"
    else:
        sep = data.find(b"\n\n", start)
        if sep < 0:
            head, body = data[start:].rstrip(b"\r\n"), b""
            if not head:
                raise SIPParseError("empty message")
            if b"\n" not in head and not head.startswith(b"SIP/"):
                raise SIPParseError("no end of headers")
        else:
            head, body = data[start:sep], data[sep + 2:]
        newline = b"\n"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # RFC 3261 allows UTF-8 only in headers; keep going with surrogates so we can still answer
        text = head.decode("utf-8", "surrogateescape")
    raw_lines = text.split("\r\n") if newline == b"\r\n" else text.replace("\r\n", "\n").split("\n")
    if not raw_lines or not raw_lines[0]:
        raise SIPParseError("missing start line")
    start_line = raw_lines[0]
    headers = Headers()
    items = headers._items
    keys = headers._keys
    names = _HEADER_NAMES
    for line in raw_lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            if not items:
                raise SIPParseError("continuation line before first header")
            n, v = items[-1]
            items[-1] = (n, (v + " " + line.strip()).strip())
            continue
        raw_name, colon, value = line.partition(":")
        if not colon:
            raise SIPParseError(f"malformed header line: {line[:60]!r}")
        known = names.get(raw_name)
        if known is None:
            if not raw_name:
                raise SIPParseError(f"malformed header line: {line[:60]!r}")
            name = raw_name.rstrip()
            if not name or not _TOKEN_CHARS.issuperset(name):
                raise SIPParseError(f"bad header name: {name[:40]!r}")
            known = (canonical_name(name), _lower_canonical(name))
            if len(names) < 2048 and len(raw_name) <= NAME_MAX_CHARS:     # names as received -> (canonical, key)
                names[raw_name] = known
        items.append((known[0], value.strip()))
        keys.append(known[1])

    msg: SIPRequest | SIPResponse
    if start_line.startswith("SIP/"):
        parts = start_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) != 3:
            raise SIPParseError(f"bad status line: {start_line[:80]!r}")
        if parts[0] != SIP_VERSION:
            raise SIPParseError(f"unsupported SIP version {parts[0][:20]!r}")
        status = int(parts[1])
        if not 100 <= status <= 699:
            raise SIPParseError(f"status code out of range: {status}")
        msg = SIPResponse(status, parts[2] if len(parts) > 2 else "", headers)
    else:
        parts = start_line.split(" ")
        if len(parts) != 3:
            raise SIPParseError(f"bad request line: {start_line[:80]!r}")
        method, uri_text, version = parts
        if not method or not _TOKEN_CHARS.issuperset(method):
            raise SIPParseError(f"bad method: {method[:20]!r}")
        if version.upper() != SIP_VERSION:
            err = SIPParseError(f"unsupported SIP version {version[:20]!r}")
            err.version_not_supported = True
            raise err
        try:
            uri = SipURI.parse(uri_text)
        except SIPParseError as exc:
            raise SIPParseError(f"bad Request-URI: {exc.reason}",
                                partial=_partial(method, headers)) from None
        msg = SIPRequest(method, uri, headers, version=SIP_VERSION)

    # body length (RFC 3261 §18.3)
    cl_values = headers.get_raw("Content-Length")
    if cl_values:
        cl_text = cl_values[0].strip()
        if not cl_text.isdigit():
            raise SIPParseError(f"bad Content-Length: {cl_text[:20]!r}", partial=msg)
        if len(set(v.strip() for v in cl_values)) > 1:
            raise SIPParseError("conflicting Content-Length headers", partial=msg)
        length = int(cl_text)
        if length > len(body):
            raise SIPParseError(f"Content-Length {length} larger than body ({len(body)} bytes)",
                                partial=msg)
        body = body[:length]
    elif stream:
        raise SIPParseError("Content-Length required on stream transports", partial=msg)
    msg.body = body

    for required in REQUIRED_HEADERS:
        if required not in headers:
            raise SIPParseError(f"missing {required} header", partial=msg)
    try:
        cseq_num, cseq_method = msg.cseq
        if isinstance(msg, SIPRequest) and cseq_method != msg.method:
            raise SIPParseError(f"CSeq method {cseq_method} does not match {msg.method}")
        msg.from_tag            # validation (From/To parse); the values stay in the memo
        msg.to_tag
        msg.vias()
        dup = [n for n, k in (("Call-ID", "call-id"), ("From", "from"), ("To", "to")) if keys.count(k) > 1]
        if dup:
            raise SIPParseError("more than one " + "/".join(dup))
        mf = headers.get("Max-Forwards")
        if mf is not None and (not mf.isdigit() or int(mf) > 255):
            raise SIPParseError(f"bad Max-Forwards: {mf[:20]!r}")
    except SIPParseError as exc:
        raise SIPParseError(exc.reason, partial=msg) from None
    return msg


def _partial(method: str, headers: Headers) -> SIPRequest:
    return SIPRequest(method, SipURI(host="invalid"), headers, b"")


REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 407: "Proxy Authentication Required",
    408: "Request Timeout", 413: "Request Entity Too Large", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}


def build_response(request: SIPRequest, status: int, reason: str | None = None,
                   to_tag: str | None = None, extra_headers: tuple | list = ()) -> SIPResponse:
    """A response to ``request`` per RFC 3261 §8.2.6: Via/From/To/Call-ID/CSeq copied."""
    headers = Headers()
    for value in request.headers.get_raw("Via"):
        headers.add("Via", value)
    for name in ("From", "To", "Call-ID", "CSeq"):
        copied = request.headers.get(name)
        if copied is not None:
            headers.add(name, copied)
    if to_tag and status > 100:
        to_value = headers.get("To")
        if to_value is not None:
            try:
                to = NameAddr.parse(to_value)
                if to.tag is None:
                    to.params["tag"] = to_tag
                    headers.set("To", str(to))
            except SIPParseError:
                pass
    timestamp = request.headers.get("Timestamp") if status == 100 else None
    if timestamp:
        headers.add("Timestamp", timestamp)
    for name, value in extra_headers:
        headers.add(name, value)
    return SIPResponse(status, reason or REASON_PHRASES.get(status, ""), headers)
