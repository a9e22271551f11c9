"""Lab topologies: segments, hosts with addresses per segment, NAT routers with a profile.

Built in Python (``standard(...)``) or loaded from YAML/dicts; ``validate()`` gives clear errors.
Address plan: "public" on TEST-NET slices (203.0.113.0/24, 198.51.100.0/24), carrier NAT on
100.64.0.0/10, LANs on 10.x inside the lab namespaces only.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import yaml

PROFILES = ("none", "cone", "symmetric", "sip-alg", "cgnat", "hairpin")
ROUTER_PROFILES = ("cone", "symmetric", "sip-alg", "carrier", "hairpin")
PUBLIC_POOLS = ("203.0.113.0/24", "198.51.100.0/24")
SLOTS = 32


class TopologyError(ValueError):
    pass


@dataclass
class Segment:
    name: str
    subnet: str


@dataclass
class Host:
    name: str
    addresses: dict[str, str]                   # segment -> address
    role: str = "host"                          # host | router
    gateway: str | None = None                  # default route next hop
    nat: str | None = None                      # router profile
    wan: str | None = None                      # router: segment facing outwards
    routes: list[tuple[str, str]] = field(default_factory=list)   # (subnet, via)


@dataclass
class LinkLoss:
    router: str
    probability: float
    sip_only: bool = True


@dataclass
class Topology:
    name: str
    segments: list[Segment]
    hosts: list[Host]
    udp_timeout: int | None = None
    loss: list[LinkLoss] = field(default_factory=list)
    slot: int = 0
    meta: dict = field(default_factory=dict)

    def segment(self, name: str) -> Segment:
        for s in self.segments:
            if s.name == name:
                return s
        raise TopologyError(f"unknown segment {name!r}")

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise TopologyError(f"unknown host {name!r}")

    def routers(self) -> list[Host]:
        return [h for h in self.hosts if h.role == "router"]

    def members(self, segment: str) -> list[Host]:
        return [h for h in self.hosts if segment in h.addresses]

    def validate(self) -> "Topology":
        names = [s.name for s in self.segments]
        if len(set(names)) != len(names):
            raise TopologyError("duplicate segment names")
        nets = {}
        for s in self.segments:
            try:
                nets[s.name] = ipaddress.ip_network(s.subnet, strict=True)
            except ValueError as exc:
                raise TopologyError(f"segment {s.name}: bad subnet {s.subnet!r}: {exc}") from None
            if len(s.name) > 10 or not s.name.replace("_", "").isalnum():
                raise TopologyError(f"segment name {s.name!r}: use up to 10 letters, digits or _")
        items = list(nets.items())
        for i, (a, na) in enumerate(items):
            for b, nb in items[i + 1:]:
                if na.overlaps(nb):
                    raise TopologyError(f"segments {a} ({na}) and {b} ({nb}) overlap")
        hnames = [h.name for h in self.hosts]
        if len(set(hnames)) != len(hnames):
            raise TopologyError("duplicate host names")
        seen: dict[str, str] = {}
        for h in self.hosts:
            if len(h.name) > 10 or not h.name.replace("_", "").isalnum():
                raise TopologyError(f"host name {h.name!r}: use up to 10 letters, digits or _")
            if not h.addresses:
                raise TopologyError(f"host {h.name} has no address")
            for seg, addr in h.addresses.items():
                if seg not in nets:
                    raise TopologyError(f"host {h.name}: unknown segment {seg!r}")
                try:
                    ip = ipaddress.ip_address(addr)
                except ValueError:
                    raise TopologyError(f"host {h.name}: bad address {addr!r}") from None
                if ip not in nets[seg] or ip in (nets[seg].network_address, nets[seg].broadcast_address):
                    raise TopologyError(f"host {h.name}: address {addr} outside segment {seg} ({nets[seg]})")
                if addr in seen:
                    raise TopologyError(f"address {addr} used by {seen[addr]} and {h.name}")
                seen[addr] = h.name
            if h.role == "router":
                if h.nat not in ROUTER_PROFILES:
                    raise TopologyError(f"router {h.name}: unknown NAT profile {h.nat!r} ({', '.join(ROUTER_PROFILES)})")
                if h.wan not in h.addresses or len(h.addresses) < 2:
                    raise TopologyError(f"router {h.name}: needs a wan segment among two or more interfaces")
            if h.gateway and not any(ipaddress.ip_address(h.gateway) in nets[s] for s in h.addresses):
                raise TopologyError(f"host {h.name}: gateway {h.gateway} is not on one of its segments")
        for loss in self.loss:
            self.host(loss.router)
            if not 0 <= loss.probability < 1:
                raise TopologyError(f"loss on {loss.router}: probability must be in [0, 1)")
        if self.udp_timeout is not None and not 1 <= self.udp_timeout <= 3600:
            raise TopologyError("udp_timeout must be between 1 and 3600 seconds")
        return self

    # --- serialisation ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "Topology":
        try:
            segs = [Segment(n, s if isinstance(s, str) else s["subnet"]) for n, s in d["segments"].items()]
            hosts = []
            for name, h in d["hosts"].items():
                hosts.append(Host(name=name, addresses=dict(h["addresses"]), role=h.get("role", "host"),
                                  gateway=h.get("gateway"), nat=h.get("nat"), wan=h.get("wan"),
                                  routes=[tuple(r) for r in h.get("routes", [])]))
            loss = [LinkLoss(x["router"], float(x["probability"]), x.get("sip_only", True)) for x in d.get("loss", [])]
        except (KeyError, TypeError, AttributeError) as exc:
            raise TopologyError(f"topology is missing or has a malformed field: {exc}") from None
        return cls(d.get("name", "lab"), segs, hosts, d.get("udp_timeout"), loss, d.get("slot", 0)).validate()

    @classmethod
    def from_yaml(cls, text_or_path: str) -> "Topology":
        if "\n" not in text_or_path and text_or_path.endswith((".yaml", ".yml")):
            with open(text_or_path, encoding="utf-8") as fh:
                text_or_path = fh.read()
        try:
            data = yaml.safe_load(text_or_path)
        except yaml.YAMLError as exc:
            raise TopologyError(f"invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise TopologyError("a topology is a YAML mapping")
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return {"name": self.name, "slot": self.slot, "udp_timeout": self.udp_timeout,
                "segments": {s.name: s.subnet for s in self.segments},
                "hosts": {h.name: {"addresses": h.addresses, "role": h.role, "gateway": h.gateway,
                                   "nat": h.nat, "wan": h.wan, "routes": [list(r) for r in h.routes]}
                          for h in self.hosts},
                "loss": [{"router": x.router, "probability": x.probability, "sip_only": x.sip_only} for x in self.loss]}


def public_slice(slot: int) -> ipaddress.IPv4Network:
    if not 0 <= slot < SLOTS:
        raise TopologyError(f"slot {slot} out of range 0..{SLOTS - 1}")
    pool = ipaddress.ip_network(PUBLIC_POOLS[slot // 16])
    return list(pool.subnets(new_prefix=28))[slot % 16]


def standard(caller_nat: str = "cone", callee_nat: str = "cone", *, slot: int = 0,
             udp_timeout: int | None = None, loss: float | None = None, name: str | None = None,
             hostile: bool = False) -> Topology:
    """server on `public`; alice behind nat_a on lan_a; bob behind nat_b on lan_b.

    ``none``: the UA sits on the public segment. ``cgnat``: home router (10.x) behind a carrier
    router on 100.64.0.0/10. ``hairpin`` (caller_nat): alice and bob share lan_a behind nat_a.
    ``loss``: that fraction of SIP packets dropped at each UA's first router (both directions).
    ``hostile``: adds host ``eve`` on the public segment (the harness's hostile peer)."""
    for p in (caller_nat, callee_nat):
        if p not in PROFILES:
            raise TopologyError(f"unknown NAT profile {p!r} ({', '.join(PROFILES)})")
    pub = public_slice(slot)
    hosts_pub = list(pub.hosts())               # 14 usable
    segs = [Segment("public", str(pub))]
    hosts = [Host("server", {"public": str(hosts_pub[0])})]
    next_pub = iter(hosts_pub[1:])
    hairpin = "hairpin" in (caller_nat, callee_nat)
    sides = [("alice", "a", caller_nat, 10)] if hairpin else [("alice", "a", caller_nat, 10), ("bob", "b", callee_nat, 20)]
    for ua, tag, profile, octet in sides:
        if profile == "none":
            hosts.append(Host(ua, {"public": str(next(next_pub))}))
            continue
        lan = f"lan_{tag}"
        lan_net = ipaddress.ip_network(f"10.{slot}.{1 if tag == 'a' else 2}.0/24")
        segs.append(Segment(lan, str(lan_net)))
        router = f"nat_{tag}"
        gw = str(lan_net.network_address + 1)
        if profile == "cgnat":
            carrier_net = ipaddress.ip_network(f"100.{64 + slot}.{1 if tag == 'a' else 2}.0/24")
            cseg = f"cgn_{tag}"
            segs.append(Segment(cseg, str(carrier_net)))
            cr_addr, home_wan = str(carrier_net.network_address + 1), str(carrier_net.network_address + 2)
            hosts.append(Host(f"cgn_{tag}", {"public": str(next(next_pub)), cseg: cr_addr}, role="router",
                              nat="carrier", wan="public"))
            hosts.append(Host(router, {cseg: home_wan, lan: gw}, role="router", nat="cone", wan=cseg, gateway=cr_addr))
        else:
            nat = {"hairpin": "hairpin"}.get(profile, profile)
            hosts.append(Host(router, {"public": str(next(next_pub)), lan: gw}, role="router", nat=nat, wan="public"))
        hosts.append(Host(ua, {lan: str(lan_net.network_address + octet)}, gateway=gw))
        if hairpin:
            hosts.append(Host("bob", {lan: str(lan_net.network_address + 20)}, gateway=gw))
    if hostile:
        hosts.append(Host("eve", {"public": str(next(next_pub))}))
    losses = []
    if loss:
        for r in ("nat_a", "nat_b"):
            if any(h.name == r for h in hosts):
                losses.append(LinkLoss(r, loss, True))
    topo = Topology(name or f"std-{caller_nat}-{callee_nat}", segs, hosts, udp_timeout, losses, slot,
                    meta={"caller_nat": caller_nat, "callee_nat": callee_nat})
    return topo.validate()
