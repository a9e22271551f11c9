"""Minimal sans-IO pcap reader: the UDP/IPv4 datagrams of a capture file (for the HTML report).

Reads classic pcap (micro- and nanosecond, both byte orders) with Ethernet, Linux cooked (SLL,
SLL2) or raw IP link types; VLAN tags and IP options are handled, IP fragments and non-UDP
packets are skipped. A truncated file yields the packets before the cut.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

LINK_ETHERNET, LINK_RAW, LINK_SLL, LINK_SLL2, LINK_RAW_101 = 1, 12, 113, 276, 101


@dataclass(frozen=True)
class Datagram:
    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def _ip(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def _ip_payload(link: int, frame: bytes) -> bytes | None:
    if link == LINK_ETHERNET:
        off, ethertype = 14, struct.unpack("!H", frame[12:14])[0] if len(frame) >= 14 else 0
        while ethertype in (0x8100, 0x88A8) and len(frame) >= off + 4:
            ethertype = struct.unpack("!H", frame[off + 2:off + 4])[0]
            off += 4
        return frame[off:] if ethertype == 0x0800 else None
    if link == LINK_SLL:
        return frame[16:] if len(frame) >= 16 and struct.unpack("!H", frame[14:16])[0] == 0x0800 else None
    if link == LINK_SLL2:
        return frame[20:] if len(frame) >= 20 and struct.unpack("!H", frame[0:2])[0] == 0x0800 else None
    if link in (LINK_RAW, LINK_RAW_101):
        return frame
    return None


def parse_pcap(data: bytes) -> list[Datagram]:
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("not a pcap file (pcapng is not supported)")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    link = struct.unpack(endian + "I", data[20:24])[0] & 0x0FFFFFFF
    out: list[Datagram] = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        frame = data[off:off + incl]
        off += incl
        if len(frame) < incl:
            break
        ip = _ip_payload(link, frame)
        if ip is None or len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        flags_frag = struct.unpack("!H", ip[6:8])[0]
        if flags_frag & 0x1FFF or flags_frag & 0x2000:      # fragments: skip
            continue
        total = struct.unpack("!H", ip[2:4])[0]
        udp = ip[ihl:total] if total else ip[ihl:]
        if len(udp) < 8:
            continue
        sport, dport, length = struct.unpack("!HHH", udp[:6])
        out.append(Datagram(sec + frac / (1e9 if nano else 1e6), _ip(ip[12:16]), sport, _ip(ip[16:20]), dport,
                            bytes(udp[8:length] if length >= 8 else udp[8:])))
    return out


def read_pcap(path: str) -> list[Datagram]:
    with open(path, "rb") as fh:
        return parse_pcap(fh.read())
