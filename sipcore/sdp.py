"""SDP model (RFC 4566 / RFC 8866) with helpers to rewrite addresses and ports per media section.

Sans-IO: ``SessionDescription.parse(bytes)`` -> object, ``to_bytes()`` -> bytes. Lines that are not
interpreted are kept verbatim and in order, so a parse/serialise round trip preserves them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sipcore.errors import SDPParseError
from sipcore.recent import keep

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
MAX_SDP_SIZE = 65535


@dataclass
class Connection:
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    def __init__(self, nettype: str = "IN", addrtype: str = "IP4", address: str = "0.0.0.0") -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.nettype, self.addrtype, self.address = nettype, addrtype, address

    @classmethod
    def parse(cls, value: str) -> "Connection":
        parts = value.split()
        if len(parts) != 3:
            raise SDPParseError(f"bad c= line: {value!r}")
        return Connection(parts[0], parts[1], parts[2])

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass
class Origin:
    username: str
    sess_id: str
    sess_version: str
    nettype: str
    addrtype: str
    address: str

    def __init__(self, username: str, sess_id: str, sess_version: str, nettype: str, addrtype: str,
                 address: str) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.username, self.sess_id, self.sess_version = username, sess_id, sess_version
        self.nettype, self.addrtype, self.address = nettype, addrtype, address

    @classmethod
    def parse(cls, value: str) -> "Origin":
        parts = value.split()
        if len(parts) != 6:
            raise SDPParseError(f"bad o= line: {value!r}")
        return Origin(parts[0], parts[1], parts[2], parts[3], parts[4], parts[5])

    def __str__(self) -> str:
        return " ".join((self.username, self.sess_id, self.sess_version, self.nettype,
                         self.addrtype, self.address))


def _addrtype_for(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


@dataclass
class Media:
    """One m= section. ``lines`` holds every line after m= as (type, value) in order."""
    kind: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    lines: list[tuple[str, str]] = field(default_factory=list)

    def __init__(self, kind: str, port: int, proto: str, formats: list[str], port_count: int | None = None,
                 lines: list[tuple[str, str]] | None = None) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.kind, self.port, self.proto, self.formats, self.port_count = kind, port, proto, formats, port_count
        self.lines = [] if lines is None else lines

    # --- line access -------------------------------------------------------------------------
    def _first(self, typ: str) -> int | None:
        for i, (t, _) in enumerate(self.lines):
            if t == typ:
                return i
        return None

    @property
    def connection(self) -> Connection | None:
        i = self._first("c")
        return Connection.parse(self.lines[i][1]) if i is not None else None

    @connection.setter
    def connection(self, conn: Connection) -> None:
        i = self._first("c")
        if i is None:
            # c= goes after i= (if any), before b=/k=/a= (RFC 8866 order)
            pos = 1 if self.lines and self.lines[0][0] == "i" else 0
            self.lines.insert(pos, ("c", str(conn)))
        else:
            self.lines[i] = ("c", str(conn))

    @property
    def attributes(self) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for t, v in self.lines:
            if t == "a":
                name, sep, val = v.partition(":")
                out.append((name, val if sep else None))
        return out

    def attribute(self, name: str) -> str | None:
        for n, v in self.attributes:
            if n == name:
                return v if v is not None else ""
        return None

    def has_attribute(self, name: str) -> bool:
        return any(n == name for n, _ in self.attributes)

    def set_attribute(self, name: str, value: str | None) -> None:
        """Replace the first a=name (or append one)."""
        text = name if value is None else f"{name}:{value}"
        for i, (t, v) in enumerate(self.lines):
            if t == "a" and v.partition(":")[0] == name:
                self.lines[i] = ("a", text)
                return
        self.lines.append(("a", text))

    def remove_attribute(self, name: str) -> None:
        self.lines = [(t, v) for t, v in self.lines if not (t == "a" and v.partition(":")[0] == name)]

    @property
    def direction(self) -> str:
        for n, _ in self.attributes:
            if n in DIRECTIONS:
                return n
        return "sendrecv"

    def set_direction(self, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(direction)
        self.lines = [(t, v) for t, v in self.lines if not (t == "a" and v in DIRECTIONS)]
        self.lines.append(("a", direction))

    @property
    def rtcp(self) -> tuple[int, Connection | None] | None:
        """a=rtcp (RFC 3605): (port, connection or None)."""
        val = self.attribute("rtcp")
        if val is None:
            return None
        parts = val.split()
        try:
            port = int(parts[0])
        except (IndexError, ValueError):
            raise SDPParseError(f"bad a=rtcp: {val!r}") from None
        conn = Connection(parts[1], parts[2], parts[3]) if len(parts) >= 4 else None
        return port, conn

    @property
    def rtcp_mux(self) -> bool:
        return self.has_attribute("rtcp-mux")

    def codec_names(self) -> list[str]:
        """Encoding names from a=rtpmap, falling back to static payload type names."""
        names: dict[str, str] = {}
        for n, v in self.attributes:
            if n == "rtpmap" and v:
                pt, _, enc = v.partition(" ")
                names[pt] = enc.split("/")[0]
        return [names.get(f, STATIC_PAYLOAD_NAMES.get(f, f)) for f in self.formats]

    def m_line(self) -> str:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        return " ".join([self.kind, port, self.proto, *self.formats])


_RECENT: dict[bytes, "SessionDescription"] = {}     # body -> parse (never handed out: copies are)
_RECENT_MAX = 256

STATIC_PAYLOAD_NAMES = {"0": "PCMU", "3": "GSM", "4": "G723", "8": "PCMA", "9": "G722",
                        "13": "CN", "18": "G729", "34": "H263"}


@dataclass
class SessionDescription:
    """A parsed SDP body. ``session_lines`` are the session-level lines except v=/o=/c= order kept."""
    session_lines: list[tuple[str, str]] = field(default_factory=list)
    media: list[Media] = field(default_factory=list)
    line_ending: str = "\r\n"

    def __init__(self, session_lines: list[tuple[str, str]] | None = None, media: list[Media] | None = None,
                 line_ending: str = "\r\n") -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.session_lines = [] if session_lines is None else session_lines
        self.media = [] if media is None else media
        self.line_ending = line_ending

    # --- parse / serialise --------------------------------------------------------------------
    @classmethod
    def parse(cls, body: bytes | str) -> "SessionDescription":
        """Parse ``body``; each caller gets its own object to change. The same body is read by
        several steps of one call (NAT test, relay hand-off, CDR codecs): the parse of a recent
        body is kept and copied (a copy costs a fraction of a parse)."""
        if type(body) is bytes and cls is SessionDescription:
            kept = _RECENT.get(body)
            if kept is None:
                kept = cls._parse(body)
                keep(_RECENT, body, kept, _RECENT_MAX)
            return kept.copy()
        return cls._parse(body)

    @classmethod
    def _parse(cls, body: bytes | str) -> "SessionDescription":
        if isinstance(body, bytes):
            if len(body) > MAX_SDP_SIZE:
                raise SDPParseError("SDP too large")
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise SDPParseError("SDP is not UTF-8") from None
        else:
            text = body
        line_ending = "\r\n" if "\r\n" in text or "\n" not in text else "\n"
        sd = cls(line_ending=line_ending)
        current: Media | None = None
        seen_v = False
        for raw in text.splitlines():
            line = raw.rstrip("\r")
            if not line.strip():
                continue
            if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
                raise SDPParseError(f"bad SDP line: {line[:60]!r}")
            typ, value = line[0], line[2:]
            if not seen_v:
                if typ != "v":
                    raise SDPParseError("SDP must start with v=")
                seen_v = True
            if typ == "m":
                current = _parse_m(value)
                sd.media.append(current)
            elif current is not None:
                current.lines.append((typ, value))
            else:
                sd.session_lines.append((typ, value))
        if not seen_v:
            raise SDPParseError("empty SDP")
        # validate the lines we interpret
        if sd._session_index("o") is not None:
            sd.origin  # noqa: B018 - raises on malformed o=
        sd.connection  # noqa: B018
        for m in sd.media:
            m.connection  # noqa: B018
        return sd

    def to_bytes(self) -> bytes:
        out = [f"{t}={v}" for t, v in self.session_lines]
        for m in self.media:
            out.append(f"m={m.m_line()}")
            out.extend(f"{t}={v}" for t, v in m.lines)
        return (self.line_ending.join(out) + self.line_ending).encode("utf-8")

    def copy(self) -> "SessionDescription":
        """A copy to change independently (its line tuples are immutable and shared)."""
        return SessionDescription(list(self.session_lines),
                                  [Media(m.kind, m.port, m.proto, list(m.formats), m.port_count, list(m.lines))
                                   for m in self.media], self.line_ending)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionDescription):
            return NotImplemented
        return self.session_lines == other.session_lines and self.media == other.media

    # --- session level ------------------------------------------------------------------------
    def _session_index(self, typ: str) -> int | None:
        for i, (t, _) in enumerate(self.session_lines):
            if t == typ:
                return i
        return None

    @property
    def origin(self) -> Origin | None:
        i = self._session_index("o")
        return Origin.parse(self.session_lines[i][1]) if i is not None else None

    @property
    def connection(self) -> Connection | None:
        i = self._session_index("c")
        return Connection.parse(self.session_lines[i][1]) if i is not None else None

    def set_origin_address(self, address: str) -> None:
        i = self._session_index("o")
        if i is None:
            return
        o = Origin.parse(self.session_lines[i][1])
        o.address, o.addrtype = address, _addrtype_for(address)
        self.session_lines[i] = ("o", str(o))

    def bump_version(self) -> None:
        i = self._session_index("o")
        if i is None:
            return
        o = Origin.parse(self.session_lines[i][1])
        try:
            o.sess_version = str(int(o.sess_version) + 1)
        except ValueError:
            return
        self.session_lines[i] = ("o", str(o))

    def set_session_connection(self, address: str) -> None:
        conn = Connection("IN", _addrtype_for(address), address)
        i = self._session_index("c")
        if i is not None:
            self.session_lines[i] = ("c", str(conn))

    # --- media level --------------------------------------------------------------------------
    def media_address(self, index: int) -> str | None:
        conn = self.media[index].connection or self.connection
        return conn.address if conn else None

    def set_media_address(self, index: int, address: str) -> None:
        """Make media ``index`` use ``address``: its own c= is rewritten (or added when the
        session-level c= is shared with other sections that keep their address)."""
        m = self.media[index]
        conn = Connection("IN", _addrtype_for(address), address)
        if m.connection is not None:
            m.connection = conn
            return
        others_use_session = any(o.connection is None for j, o in enumerate(self.media) if j != index)
        if self.connection is not None and not others_use_session:
            self.set_session_connection(address)
        else:
            m.connection = conn

    def set_all_addresses(self, address: str) -> None:
        """Rewrite the session c= and every media c= (the usual relay rewrite)."""
        self.set_session_connection(address)
        for m in self.media:
            if m.connection is not None:
                m.connection = Connection("IN", _addrtype_for(address), address)
        if self.connection is None:
            for m in self.media:
                if m.connection is None:
                    m.connection = Connection("IN", _addrtype_for(address), address)

    def set_media_port(self, index: int, port: int) -> None:
        self.media[index].port = int(port)

    def set_rtcp(self, index: int, port: int, address: str | None = None) -> None:
        """Rewrite an existing a=rtcp line of media ``index`` (RFC 3605); no-op when absent."""
        m = self.media[index]
        if m.attribute("rtcp") is None:
            return
        value = str(port) if address is None else f"{port} IN {_addrtype_for(address)} {address}"
        m.set_attribute("rtcp", value)

    def is_hold(self, index: int) -> bool:
        addr = self.media_address(index)
        return addr in ("0.0.0.0", "::") or self.media[index].direction in ("sendonly", "inactive")

    def codec_names(self) -> list[str]:
        names: list[str] = []
        for m in self.media:
            for n in m.codec_names():
                if n not in names:
                    names.append(n)
        return names

    def media_kinds(self) -> list[str]:
        return [m.kind for m in self.media if m.port != 0]


def _parse_m(value: str) -> Media:
    parts = value.split()
    if len(parts) < 3:
        raise SDPParseError(f"bad m= line: {value!r}")
    kind, port_s, proto, *formats = parts
    port_part, slash, count = port_s.partition("/")
    try:
        port = int(port_part)
        port_count = int(count) if slash else None
    except ValueError:
        raise SDPParseError(f"bad m= port: {port_s!r}") from None
    if not 0 <= port <= 65535:
        raise SDPParseError(f"m= port out of range: {port}")
    return Media(kind=kind, port=port, proto=proto, formats=formats, port_count=port_count)
