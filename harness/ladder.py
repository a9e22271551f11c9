"""SIP ladder diagrams from a run's captures (sans-IO: pcap bytes in, a model and SVG text out).

Columns are the lab's hosts as seen on the public segment: the caller, the NAT router(s) in front
of it, the server, the callee's router(s), the callee. A SIP datagram captured on the public
segment is drawn between the public columns; when its source or destination is a NAT router, the
arrow is continued (dashed) to the UA behind it and labelled with the translation: the address the
UA wrote in its Via (requests) or Contact (responses) against the address the packet carried.
The same datagram captured at two points (a router's and the server's public side) is drawn once.
"""
from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field

from harness.pcap import Datagram, read_pcap

_FIRST = re.compile(rb"^(?:([A-Z]+) (\S+) SIP/2\.0|SIP/2\.0 (\d{3}) ?([^\r\n]*))\r?\n")
_VIA = re.compile(rb"^(?:Via|v)\s*:\s*SIP/2\.0/\w+\s+([^;\s,]+)", re.I | re.M)
_CONTACT = re.compile(rb"^(?:Contact|m)\s*:[^\r\n]*?sips?:(?:[^@>\s;]*@)?([^>;\s]+)", re.I | re.M)
_CSEQ = re.compile(rb"^CSeq\s*:\s*\d+\s+(\w+)", re.I | re.M)
_CALLID = re.compile(rb"^(?:Call-ID|i)\s*:\s*(\S+)", re.I | re.M)


def lab_map(lab) -> dict:
    """Address -> host name, and where each UA appears on the public segment (its outer NAT)."""
    roles: dict[str, str] = {}
    for h in lab.topology.hosts:
        for seg, addr in h.addresses.items():
            roles[addr] = h.name
    uas = [h.name for h in lab.topology.hosts if h.role == "host" and h.name != "server"]
    return {"roles": roles, "public": {ua: lab.public_address(ua) for ua in uas},
            "routers": [h.name for h in lab.topology.routers()]}


@dataclass
class Message:
    ts: float
    src: str
    dst: str
    label: str
    src_addr: str
    dst_addr: str
    inner_src: str | None = None      # UA behind a NAT the packet came from: (name, address in Via/Contact)
    inner_dst: str | None = None      # UA behind the NAT the packet goes to
    translation: str = ""
    call_id: str = ""


@dataclass
class Ladder:
    columns: list[str]
    messages: list[Message] = field(default_factory=list)


def _is_sip(payload: bytes) -> bool:
    return bool(_FIRST.match(payload[:300]))


def _label(payload: bytes) -> tuple[str, bool]:
    m = _FIRST.match(payload[:300])
    if m.group(1):
        return m.group(1).decode(), True
    cseq = _CSEQ.search(payload)
    reason = m.group(4).decode(errors="replace").strip()
    return f"{m.group(3).decode()} {reason}" + (f" ({cseq.group(1).decode()})" if cseq else ""), False


def build_ladder(datagrams: list[Datagram], labmap: dict) -> Ladder:
    roles = labmap.get("roles", {})
    public = labmap.get("public", {})
    behind: dict[str, list[str]] = {}
    for ua, addr in public.items():
        name = roles.get(addr, ua)
        if name != ua:
            behind.setdefault(name, []).append(ua)
    seen: set[tuple] = set()
    msgs: list[Message] = []
    for d in sorted(datagrams, key=lambda d: d.ts):
        if not _is_sip(d.payload):
            continue
        key = (d.src, d.sport, d.dst, d.dport, d.payload)
        if key in seen:
            continue
        seen.add(key)
        label, is_request = _label(d.payload)
        src, dst = roles.get(d.src, d.src), roles.get(d.dst, d.dst)
        m = Message(d.ts, src, dst, label, f"{d.src}:{d.sport}", f"{d.dst}:{d.dport}")
        cid = _CALLID.search(d.payload)
        m.call_id = cid.group(1).decode(errors="replace") if cid else ""
        if src in behind:
            m.inner_src = "/".join(behind[src])
            found = (_VIA if is_request else _CONTACT).search(d.payload)
            inner = found.group(1).decode(errors="replace") if found else None
            if inner and inner != m.src_addr:
                m.translation = f"{inner} \u2192 {m.src_addr}"
        if dst in behind:
            m.inner_dst = "/".join(behind[dst])
        msgs.append(m)
    return Ladder(_columns(labmap, msgs, behind), msgs)


def _columns(labmap: dict, msgs: list[Message], behind: dict[str, list[str]]) -> list[str]:
    public = labmap.get("public", {})
    roles = labmap.get("roles", {})
    order: list[str] = []

    def add(name):
        if name and name not in order:
            order.append(name)
    caller, callee = "alice", "bob"
    add(caller if caller in public else None)
    add(roles.get(public.get(caller, ""), None))
    add("server")
    add(roles.get(public.get(callee, ""), None))
    add(callee if callee in public else None)
    for m in msgs:                           # anything else that talked (other hosts, unknown peers)
        for n in (m.src, m.dst):
            add(n)
    return order


def ladder_from_evidence(evidence: str) -> Ladder | None:
    """The ladder of one run directory (its *.pcap files and lab.json), or None without captures."""
    import json
    try:
        with open(os.path.join(evidence, "lab.json"), encoding="utf-8") as fh:
            labmap = json.load(fh)
    except (OSError, ValueError):
        labmap = {}
    datagrams: list[Datagram] = []
    pcaps = sorted(p for p in os.listdir(evidence) if p.endswith(".pcap")) if os.path.isdir(evidence) else []
    for name in pcaps:
        try:
            datagrams += read_pcap(os.path.join(evidence, name))
        except (OSError, ValueError):
            continue
    if not pcaps:
        return None
    return build_ladder(datagrams, labmap)


COL_W, ROW_H, TOP, LEFT = 170, 34, 46, 90


def ladder_svg(ladder: Ladder) -> str:
    """An SVG ladder: one column per host, one row per SIP datagram (time on the left)."""
    x = {name: LEFT + i * COL_W for i, name in enumerate(ladder.columns)}
    height = TOP + ROW_H * (len(ladder.messages) + 1)
    width = LEFT + COL_W * max(1, len(ladder.columns))
    e = html.escape
    out = [f'<svg class="ladder" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">',
           '<defs><marker id="arr" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto">'
           '<path d="M0,0 L8,4 L0,8 z" fill="#333"/></marker></defs>']
    for name, cx in x.items():
        out.append(f'<text class="column" x="{cx}" y="16" text-anchor="middle" font-weight="bold">{e(name)}</text>')
        out.append(f'<line x1="{cx}" y1="24" x2="{cx}" y2="{height - 8}" stroke="#bbb" stroke-dasharray="2,3"/>')
    t0 = ladder.messages[0].ts if ladder.messages else 0.0
    for i, m in enumerate(ladder.messages):
        y = TOP + ROW_H * i + 14
        out.append(f'<text x="4" y="{y + 4}" fill="#777">{m.ts - t0:7.3f}s</text>')
        x1, x2 = x.get(m.src), x.get(m.dst)
        if x1 is None or x2 is None:
            continue
        colour = "#1a5fb4" if not m.label[:1].isdigit() else "#26a269"
        if m.inner_src and m.inner_src in x:
            out.append(f'<line x1="{x[m.inner_src]}" y1="{y}" x2="{x1}" y2="{y}" stroke="{colour}" '
                       f'stroke-dasharray="4,3"/>')
        if m.inner_dst and m.inner_dst in x:
            out.append(f'<line x1="{x2}" y1="{y}" x2="{x[m.inner_dst]}" y2="{y}" stroke="{colour}" '
                       f'stroke-dasharray="4,3" marker-end="url(#arr)"/>')
            out.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{colour}"/>')
        else:
            out.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{colour}" marker-end="url(#arr)"/>')
        mid = (x1 + x2) / 2
        out.append(f'<text class="msg" x="{mid}" y="{y - 4}" text-anchor="middle" fill="{colour}">{e(m.label)}</text>')
        note = f"{m.src_addr} \u2192 {m.dst_addr}" + (f"  NAT {m.translation}" if m.translation else "")
        out.append(f'<text class="nat" x="{mid}" y="{y + 11}" text-anchor="middle" fill="#888" '
                   f'font-size="9">{e(note)}</text>')
    out.append("</svg>")
    return "\n".join(out)
