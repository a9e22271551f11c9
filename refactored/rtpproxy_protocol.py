"""RTPProxy control protocol codec (sans-IO), as sippy/rtpproxy parses it.

    U[mods] call-id remote-ip remote-port from-tag [to-tag]   offer: returns "port [address]"
    L[mods] call-id remote-ip remote-port from-tag to-tag     answer
    D call-id from-tag [to-tag]                               delete: "0"
    Q call-id from-tag to-tag                                 query: "ttl pkts_in ... "
    I / V / VF <feature>                                      info / version / capability

Datagram sockets (udp, udp6, unix) prefix every command with a cookie that the reply echoes;
stream sockets (tcp) carry none. Modifiers follow the command letter directly. Tokens must not
contain whitespace: Call-IDs and tags are percent-encoded (reversibly) when they hold anything but
safe characters, so a hostile Call-ID can never split a command.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

BASE_VERSION = "20040107"
_MODIFIERS = re.compile(r"[A-Za-z0-9,.]*")
_ERROR = re.compile(r"E(\d+)")
_SAFE = re.compile(r"^[A-Za-z0-9!#$&'()*+,\-./:<>?@\[\]^_`{|}~]+$")

E_CODES = {
    0: "syntax error", 1: "syntax error (wrong number of arguments)", 2: "syntax error (bad command)",
    3: "unknown command", 4: "bad modifier", 5: "invalid parameter", 7: "bad address", 8: "bad port",
    10: "session not found", 11: "out of ports or sockets", 12: "out of memory",
    14: "syntax error in options", 50: "session not found", 51: "session is already deleted",
    65: "internal error", 71: "out of ports", 99: "unknown error",
}

CAPACITY_CODES = frozenset((11, 12, 71, 72))      # the relay is out of ports, sockets or memory


class RTPProxyError(Exception):
    def __init__(self, code: int, text: str = ""):
        self.code = code
        self.text = text or E_CODES.get(code, "error")
        super().__init__(f"rtpproxy error E{code}: {self.text}")


def encode_token(value: str) -> str:
    """Make a Call-ID/tag safe for the command line: unchanged when safe, else percent-encoded."""
    if value is None or value == "":
        raise ValueError("empty token")
    if _SAFE.fullmatch(value) and "%" not in value and ";" not in value:   # fullmatch: "$" would allow a final \n
        return value
    out = []
    for b in value.encode("utf-8", "surrogateescape"):
        ch = chr(b)
        if ch.isascii() and (ch.isalnum() or ch in "-._~@"):
            out.append(ch)
        else:
            out.append(f"%{b:02X}")
    return "".join(out)


def decode_token(token: str) -> str:
    from urllib.parse import unquote
    return unquote(token)


def _check_ip(ip: str) -> str:
    if ":" not in ip:
        # IPv4 without the interpreted ipaddress module: inet_pton takes exactly the dotted quads
        # ipaddress takes (no leading zeros, each <= 255), and inet_ntop writes them back as given
        try:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, ip))
        except (OSError, ValueError, UnicodeError):
            raise ValueError(f"not an IP address: {ip!r}") from None
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise ValueError(f"not an IP address: {ip!r}") from None


@dataclass
class Command:
    text: str          # without cookie
    kind: str          # U L D Q I V VF

    def __init__(self, text: str, kind: str) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.text, self.kind = text, kind


def offer(call_id: str, ip: str, port: int, from_tag: str, to_tag: str | None = None,
          media_index: int | None = None, modifiers: str = "") -> Command:
    return _ul("U", call_id, ip, port, from_tag, to_tag, media_index, modifiers)


def answer(call_id: str, ip: str, port: int, from_tag: str, to_tag: str,
           media_index: int | None = None, modifiers: str = "") -> Command:
    return _ul("L", call_id, ip, port, from_tag, to_tag, media_index, modifiers)


def _tag(tag: str, media_index: int | None) -> str:
    t = encode_token(tag)
    return f"{t};{media_index}" if media_index is not None else t


def _ul(letter, call_id, ip, port, from_tag, to_tag, media_index, modifiers) -> Command:
    if modifiers and not _MODIFIERS.fullmatch(modifiers):
        raise ValueError(f"bad modifiers {modifiers!r}")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"bad port {port}")
    parts = [f"{letter}{modifiers}", encode_token(call_id), _check_ip(ip), str(int(port)),
             _tag(from_tag, media_index)]
    if to_tag:
        parts.append(_tag(to_tag, media_index))
    return Command(" ".join(parts), letter)


def delete(call_id: str, from_tag: str, to_tag: str | None = None) -> Command:
    """Deletes every stream of the call (rtpproxy matches the tags without medianum)."""
    parts = ["D", encode_token(call_id), encode_token(from_tag)]
    if to_tag:
        parts.append(encode_token(to_tag))
    return Command(" ".join(parts), "D")


def query(call_id: str, from_tag: str, to_tag: str | None = None, media_index: int | None = None) -> Command:
    parts = ["Q", encode_token(call_id), _tag(from_tag, media_index)]
    if to_tag:
        parts.append(_tag(to_tag, media_index))
    return Command(" ".join(parts), "Q")


def version() -> Command:
    return Command("V", "V")


def feature(feature_version: str = BASE_VERSION) -> Command:
    if not feature_version.isdigit():
        raise ValueError("feature version must be digits")
    return Command(f"VF {feature_version}", "VF")


def info() -> Command:
    return Command("I", "I")


def frame(cmd: Command, cookie: str | None) -> bytes:
    return (f"{cookie} {cmd.text}" if cookie else cmd.text).encode("ascii") + (b"" if cookie else b"\n")


def split_reply(data: bytes, cookie: str | None) -> str:
    text = data.decode("ascii", "replace").strip()
    if cookie is not None:
        got, _, rest = text.partition(" ")
        if got != cookie:
            raise RTPProxyError(99, f"reply cookie {got!r} does not match {cookie!r}")
        text = rest.strip()
    return text


def check_error(text: str) -> None:
    m = _ERROR.fullmatch(text.split()[0]) if text else None
    if m:
        raise RTPProxyError(int(m.group(1)))


@dataclass
class PortReply:
    port: int
    address: str | None

    def __init__(self, port: int, address: str | None) -> None:
        # written out: mypyc compiles it (a generated dataclass __init__ runs interpreted)
        self.port, self.address = port, address


def parse_port_reply(text: str) -> PortReply:
    check_error(text)
    parts = text.split()
    if not parts or not parts[0].isdigit():
        raise RTPProxyError(99, f"unexpected reply {text!r}")
    port = int(parts[0])
    if port == 0:
        raise RTPProxyError(11, "rtpproxy returned port 0")
    return PortReply(port, parts[1] if len(parts) > 1 else None)


def parse_query_reply(text: str) -> dict:
    check_error(text)
    parts = text.split()
    keys = ("ttl", "packets_from_callee", "packets_from_caller", "packets_relayed", "packets_dropped")
    return {k: int(v) for k, v in zip(keys, parts) if v.lstrip("-").isdigit()}
