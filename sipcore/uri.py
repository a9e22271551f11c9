"""SIP URIs (RFC 3261 §19.1) and name-addr / addr-spec header values (§20.10, §25.1).

Sans-IO value objects. Unknown URI parameters and headers are preserved in order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import unquote

from sipcore.errors import SIPParseError

_SIP_SCHEMES = ("sip", "sips")


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on ``sep`` ignoring separators inside double quotes (backslash escapes honoured)."""
    if '"' not in text:
        return text.split(sep)
    parts: list[str] = []
    buf: list[str] = []
    in_quotes = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if in_quotes:
            buf.append(ch)
            if ch == "\\" and i + 1 < n:
                buf.append(text[i + 1])
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
            buf.append(ch)
        elif ch == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if in_quotes:
        raise SIPParseError("unterminated quoted string")
    parts.append("".join(buf))
    return parts


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ``;a=1;b;c="x;y"`` (leading ';' optional) into an ordered dict (names lower-cased)."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    if text.startswith(";"):
        text = text[1:]
    for item in _split_outside_quotes(text, ";"):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not name:
            raise SIPParseError(f"empty parameter name in {text!r}")
        params[name] = value.strip() if sep else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@dataclass
class SipURI:
    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    opaque: str | None = None   # non-SIP URIs (tel:, urn:, ...) kept verbatim after the scheme

    def __init__(self, scheme: str = "sip", user: str | None = None, password: str | None = None,
                 host: str = "", port: int | None = None, params: dict[str, str | None] | None = None,
                 headers: dict[str, str] | None = None, opaque: str | None = None) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.scheme, self.user, self.password, self.host, self.port = scheme, user, password, host, port
        self.params = {} if params is None else params
        self.headers = {} if headers is None else headers
        self.opaque = opaque

    @classmethod
    def parse(cls, text: str) -> "SipURI":
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        if not colon or not scheme or not scheme[0].isalpha():
            raise SIPParseError(f"bad URI: {text[:80]!r}")
        scheme_l = scheme.lower()
        if scheme_l not in _SIP_SCHEMES:
            if any(c in rest for c in " \t\r\n"):
                raise SIPParseError(f"bad URI: {text[:80]!r}")
            return SipURI(scheme_l, None, None, "", None, None, None, rest)
        headers: dict[str, str] = {}
        rest, qmark, hdrs = rest.partition("?")
        if qmark:
            for item in hdrs.split("&"):
                if item:
                    k, _, v = item.partition("=")
                    headers[k] = v
        # userinfo ends at the last '@' before the host part
        at = rest.rfind("@")
        user = password = None
        if at >= 0:
            userinfo, hostpart = rest[:at], rest[at + 1:]
            user, pcolon, pw = userinfo.partition(":")
            password = pw if pcolon else None
            if not user:
                raise SIPParseError(f"empty user in URI {text[:80]!r}")
        else:
            hostpart = rest
        hostport, semi, paramtext = hostpart.partition(";")
        params = parse_params(paramtext) if semi else {}
        host, port = split_hostport(hostport)
        if user and _has_any(user, " \t\r\n<>\""):
            raise SIPParseError(f"bad character in URI user part: {text[:80]!r}")
        return SipURI(scheme_l, user, password, host, port, params, headers)

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(format_host(self.host))
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(out)

    @property
    def is_sip(self) -> bool:
        return self.opaque is None

    def with_host_port(self, host: str, port: int | None) -> "SipURI":
        return SipURI(self.scheme, self.user, self.password, host, port, dict(self.params), dict(self.headers),
                      self.opaque)

    def copy(self) -> "SipURI":
        # by hand: dataclasses.replace runs interpreted and passes keywords
        return SipURI(self.scheme, self.user, self.password, self.host, self.port, dict(self.params),
                      dict(self.headers), self.opaque)

    def aor(self) -> str:
        """Address of record: scheme:user@host without port, params or headers (lower-case host)."""
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        user = f"{self.user}@" if self.user is not None else ""
        return f"{self.scheme}:{user}{self.host.lower()}"


_MUST_MATCH_PARAMS = ("user", "ttl", "method", "maddr", "transport")


def equivalent(a: SipURI, b: SipURI) -> bool:
    """RFC 3261 §19.1.4 URI comparison: scheme, user and password (case-sensitive, escapes
    decoded), host (case-insensitive) and port (an omitted port does not match an explicit one)
    compare equal; user/ttl/method/maddr/transport must match when either URI has them, other
    parameters only when both have them; URI headers must match both ways."""
    if a.scheme != b.scheme:
        return False
    if a.opaque is not None or b.opaque is not None:
        return a.opaque == b.opaque
    if _unq(a.user) != _unq(b.user) or _unq(a.password) != _unq(b.password):
        return False
    if _unq(a.host).lower() != _unq(b.host).lower() or a.port != b.port:
        return False
    pa = {k.lower(): _unq(v).lower() if v is not None else None for k, v in a.params.items()}
    pb = {k.lower(): _unq(v).lower() if v is not None else None for k, v in b.params.items()}
    for name in set(pa) | set(pb):
        if name in _MUST_MATCH_PARAMS or (name in pa and name in pb):
            if name not in pa or name not in pb or pa[name] != pb[name]:
                return False
    ha = {k.lower(): _unq(v) for k, v in a.headers.items()}
    hb = {k.lower(): _unq(v) for k, v in b.headers.items()}
    return ha == hb


def _unq(value: str | None) -> str | None:
    return unquote(value) if value is not None else None


def split_hostport(text: str) -> tuple[str, int | None]:
    text = text.strip()
    if not text:
        raise SIPParseError("empty host")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SIPParseError(f"bad IPv6 reference: {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise SIPParseError(f"bad host:port: {text!r}")
        port_s = rest[1:] if rest else ""
    else:
        host, colon, port_s = text.partition(":")
        if colon and not port_s:
            raise SIPParseError(f"empty port: {text!r}")
    # every character alphanumeric or one of . - _ : (str methods, not a loop per character)
    letters = host.replace(".", "").replace("-", "").replace("_", "").replace(":", "")
    if letters and not letters.isalnum():
        raise SIPParseError(f"bad character in host: {text!r}")
    port = None
    if port_s:
        if not port_s.isdigit() or not 0 < int(port_s) <= 65535:
            raise SIPParseError(f"bad port: {text!r}")
        port = int(port_s)
    return host, port


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass
class NameAddr:
    """A From/To/Contact/Route value: ``"Display" <uri>;params`` or ``uri;params`` or ``*``."""
    uri: SipURI | None
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    angle: bool = True
    wildcard: bool = False

    def __init__(self, uri: SipURI | None, display: str | None = None,
                 params: dict[str, str | None] | None = None, angle: bool = True, wildcard: bool = False) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.uri, self.display, self.angle, self.wildcard = uri, display, angle, wildcard
        self.params = {} if params is None else params

    @classmethod
    def parse(cls, text: str) -> "NameAddr":
        text = text.strip()
        if text == "*":
            return NameAddr(None, None, None, True, True)
        if not text:
            raise SIPParseError("empty name-addr")
        lt = _find_unquoted(text, "<")
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise SIPParseError(f"unterminated <...> in {text[:80]!r}")
            display = text[:lt].strip() or None
            if display and display.startswith('"') and not (display.endswith('"') and len(display) >= 2):
                raise SIPParseError(f"bad display name in {text[:80]!r}")
            uri = SipURI.parse(text[lt + 1:gt])
            rest = text[gt + 1:].strip()
            if rest and not rest.startswith(";"):
                raise SIPParseError(f"junk after > in {text[:80]!r}")
            return NameAddr(uri, display, parse_params(rest), True)
        # addr-spec: parameters after the URI belong to the header (RFC 3261 §20)
        if " " in text.split(";", 1)[0]:
            raise SIPParseError(f"bad addr-spec {text[:80]!r}")
        uri_text, semi, rest = text.partition(";")
        if "?" in uri_text or "," in uri_text:
            raise SIPParseError(f"addr-spec with reserved characters must use <>: {text[:80]!r}")
        return NameAddr(SipURI.parse(uri_text), None, parse_params(rest) if semi else {}, False)

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        if self.angle or self.display or self.uri.params or self.uri.headers:
            disp = f"{self.display} " if self.display else ""
            return f"{disp}<{self.uri}>{format_params(self.params)}"
        return f"{self.uri}{format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def copy(self) -> "NameAddr":
        return NameAddr(self.uri.copy() if self.uri else None, self.display, dict(self.params), self.angle,
                        self.wildcard)


def rewrite_name_addrs(values: list[str], edit: Callable[[NameAddr, SipURI], bool]) -> list[str] | None:
    """Apply ``edit`` to each name-addr of a header's values (Contact, Route, Record-Route);
    ``edit(na, na.uri)`` changes the NameAddr in place and says whether it did. Unparsable values and the
    ``*`` Contact are kept as they are. Returns the new values, or None when nothing changed."""
    out: list[str] = []
    changed = False
    for value in values:
        try:
            na = NameAddr.parse(value)
        except SIPParseError:
            out.append(value)
            continue
        if not na.wildcard and na.uri is not None and edit(na, na.uri):
            changed = True
            value = str(na)
        out.append(value)
    return out if changed else None


def _has_any(text: str, chars: str) -> bool:
    for ch in chars:
        if ch in text:
            return True
    return False


def _find_unquoted(text: str, ch: str) -> int:
    """Index of the first ``ch`` outside double quotes, or -1 (an unterminated quote: -1)."""
    i = 0
    while True:
        found = text.find(ch, i)
        if found < 0:
            return -1
        quote = text.find('"', i, found)
        if quote < 0:
            return found
        try:
            i = after_quoted(text, quote + 1)
        except SIPParseError:
            return -1


def after_quoted(text: str, i: int) -> int:
    """Index after the quoted string whose text starts at ``i`` (after its opening quote); a
    backslash escapes the next character. SIPParseError when it is not terminated."""
    while True:
        quote = text.find('"', i)
        if quote < 0:
            raise SIPParseError(f"unterminated quoted string in {text[:80]!r}")
        slash = text.find("\\", i, quote)
        if slash < 0:
            return quote + 1
        i = slash + 2           # the escaped character, whatever it is, is skipped
