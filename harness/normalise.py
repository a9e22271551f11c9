"""Normalisation of what a run observed, so that runs and stages can be compared field by field.

Everything that changes from run to run by nature becomes a stable placeholder:
  addresses     -> role names: <server>, <alice>, <bob>, <alice-public>, <bob-public>,
                   <alice+bob-public> (hairpin), <nat_a-cgn_a> (other router sides), <other>
  ports         -> 5060 kept (the SIP port is meaningful), a UA's own RTP/RTCP port -> <alice-rtp>,
                   <alice-rtcp>, any other port -> <port>
  Call-IDs, tags, branches, CDR record ids -> <call-1>, <tag-1>, <branch-1>, <record-1>;
                   baresip's per-run Contact user suffix (1001-0x55d2...@) -> 1001-<instance>@
                   (numbered in order of first appearance, so "same call id in two rows" survives)
  times         -> <time>; durations -> <duration> (or "0" when zero, "" when absent)

Pure functions and one small stateful ``Normaliser`` (placeholder numbering); no I/O.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

UA_NAMES = ("alice", "bob")
SIP_PORT = 5060
_IPV4 = r"\d{1,3}(?:\.\d{1,3}){3}"
_ADDR_PORT = re.compile(rf"(?<![\d.])({_IPV4})(?::(\d{{1,5}}))?(?![\d.])")
_TAG = re.compile(r"(;\s*tag=)([^;>,\s]+)", re.IGNORECASE)
_BRANCH = re.compile(r"(;\s*branch=)([^;>,\s]+)", re.IGNORECASE)
# baresip's Contact user is "<user>-0x<address of its UA object>", new every run
_INSTANCE = re.compile(r"(sips?:[^@;>\s:]+?)-0x[0-9a-f]+@", re.IGNORECASE)
CDR_TIME_FIELDS = ("date", "start_time", "end_time", "invite_time", "ringing_time", "answer_time", "bye_time")
CDR_DURATION_FIELDS = ("duration", "setup_time")
CDR_PORT_FIELDS = ("caller_port", "callee_port", "server_port")
CDR_ADDRESS_FIELDS = ("caller_ip", "callee_ip", "server_ip")
CDR_URI_FIELDS = ("caller_uri", "callee_uri", "contact", "extra_info")


def role_names(hosts: Iterable[tuple[str, str, dict[str, str]]], public_of: Callable[[str], str]) -> dict[str, str]:
    """Address -> role name.

    ``hosts``: (name, role 'host'|'router', {segment: address}) for each lab machine;
    ``public_of(ua)``: where that UA's traffic appears on the public segment."""
    roles: dict[str, str] = {}
    host_list = list(hosts)
    for name, role, addresses in host_list:
        for segment, addr in addresses.items():
            roles[addr] = name if role == "host" else f"{name}-{segment}"
    uas = [name for name, role, _ in host_list if role == "host" and name in UA_NAMES]
    publics = {ua: public_of(ua) for ua in uas}
    for ua, pub in publics.items():
        if roles.get(pub) == ua:            # on the public segment itself: no NAT
            continue
        owners = [u for u in uas if publics[u] == pub]
        roles[pub] = "+".join(owners) + "-public"
    return roles


def roles_of_lab(lab) -> dict[str, str]:
    hosts = [(h.name, h.role, dict(h.addresses)) for h in lab.topology.hosts]
    return role_names(hosts, lab.public_address)


class Normaliser:
    """Replaces addresses, ports and ids in observed text by stable placeholders."""

    def __init__(self, roles: dict[str, str], ports: dict[int, str] | None = None):
        self.roles = dict(roles)
        self.ports = dict(ports or {})
        self._tokens: dict[str, dict[str, str]] = {}

    # --- single values --------------------------------------------------------------------------
    def token(self, kind: str, value: str | None) -> str:
        """``<kind-N>``, N counting distinct values of that kind in order of first appearance."""
        if value in (None, ""):
            return ""
        seen = self._tokens.setdefault(kind, {})
        if value not in seen:
            seen[value] = f"<{kind}-{len(seen) + 1}>"
        return seen[value]

    def address(self, addr: str | None) -> str | None:
        if addr is None:
            return None
        if addr in ("", "0.0.0.0"):
            return addr
        return f"<{self.roles.get(addr, 'other')}>"

    def port(self, value) -> str:
        if value in (None, ""):
            return ""
        try:
            number = int(value)
        except (TypeError, ValueError):
            return str(value)
        if number == SIP_PORT:
            return str(SIP_PORT)
        return f"<{self.ports[number]}>" if number in self.ports else "<port>"

    # --- text -------------------------------------------------------------------------------------
    def text(self, value: str | None) -> str | None:
        """Addresses (with an optional :port), tags and branches inside free text or a URI."""
        if value is None:
            return None

        def addr_port(m: re.Match) -> str:
            out = self.address(m.group(1)) or ""
            return out + (f":{self.port(m.group(2))}" if m.group(2) else "")
        value = _ADDR_PORT.sub(addr_port, _INSTANCE.sub(r"\1-<instance>@", str(value)))
        value = _TAG.sub(lambda m: m.group(1) + self.token("tag", m.group(2)), value)
        return _BRANCH.sub(lambda m: m.group(1) + self.token("branch", m.group(2)), value)

    # --- CDR ----------------------------------------------------------------------------------------
    def cdr_row(self, row: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in row.items():
            value = "" if value is None else str(value)
            if key == "record_id":
                out[key] = self.token("record", value)
            elif key == "call_id":
                out[key] = self.token("call", value)
            elif key in CDR_TIME_FIELDS:
                out[key] = "<time>" if value else ""
            elif key in CDR_DURATION_FIELDS:
                out[key] = duration(value)
            elif key in CDR_PORT_FIELDS:
                out[key] = self.port(value)
            elif key in CDR_ADDRESS_FIELDS:
                out[key] = self.text(value) or ""
            elif key in CDR_URI_FIELDS:
                out[key] = self.text(value) or ""
            else:
                out[key] = value
        return out

    def cdr_rows(self, rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return [self.cdr_row(r) for r in rows]


def duration(value: str) -> str:
    if not value:
        return ""
    try:
        seconds = float(value.rstrip("s"))
    except ValueError:
        return "<duration>"
    return "0" if seconds == 0 else "<duration>"
