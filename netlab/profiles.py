"""NAT profiles as kernel rules: what a router namespace (or container) runs.

Returns an iptables-restore document and an optional nft script per router, used by both the
netns and the Docker backends so the same profile gives the same behaviour on both.
"""
from __future__ import annotations

from netlab.topology import Host, Topology


def iptables_rules(topo: Topology, router: Host, ifname) -> str:
    """``ifname(segment) -> interface name`` inside the router."""
    wan = ifname(router.wan)
    lans = [s for s in router.addresses if s != router.wan]
    nat, filt = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                 ":POSTROUTING ACCEPT [0:0]"], ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]",
                                               ":OUTPUT ACCEPT [0:0]"]
    profile = router.nat
    if profile in ("cone", "sip-alg", "hairpin", "carrier"):
        nat.append(f"-A POSTROUTING -o {wan} -j MASQUERADE")
    elif profile == "symmetric":
        nat.append(f"-A POSTROUTING -o {wan} -j MASQUERADE --random-fully")
    if profile == "hairpin":
        for seg in lans:
            net = topo.segment(seg).subnet
            nat.append(f"-A POSTROUTING -o {ifname(seg)} -s {net} -d {net} -j MASQUERADE")
    # never forward anything that is not lab traffic (defence in depth: no route leaves the lab)
    lab_nets = [s.subnet for s in topo.segments]
    for net in lab_nets:
        filt.append(f"-A FORWARD -d {net} -j ACCEPT")
    filt.append("-A FORWARD -j DROP")
    for loss in topo.loss:
        if loss.router == router.name:
            match = "-p udp -m multiport --ports 5060 " if loss.sip_only else "-p udp "
            filt.insert(4, f"-A FORWARD {match}-m statistic --mode random --probability {loss.probability:.4f} -j DROP")
    return "\n".join(nat + ["COMMIT"] + filt + ["COMMIT"]) + "\n"


def nft_script(router: Host) -> str | None:
    """SIP ALG: the conntrack SIP helper (nf_conntrack_sip/nf_nat_sip) on UDP 5060."""
    if router.nat != "sip-alg":
        return None
    return ("table ip imsalg {\n"
            "  ct helper sip5060 { type \"sip\" protocol udp; }\n"
            "  chain pre { type filter hook prerouting priority 0; udp dport 5060 ct helper set \"sip5060\"; }\n"
            "}\n")


def sysctls(topo: Topology, host: Host) -> dict[str, str]:
    out = {}
    if host.role == "router":
        out["net.ipv4.ip_forward"] = "1"
        if topo.udp_timeout:
            out["net.netfilter.nf_conntrack_udp_timeout"] = str(topo.udp_timeout)
            out["net.netfilter.nf_conntrack_udp_timeout_stream"] = str(topo.udp_timeout)
    return out


def lab_routes(topo: Topology, host: Host) -> list[tuple[str, str]]:
    """Routes beyond connected subnets: default via gateway plus explicit ones."""
    routes = list(host.routes)
    if host.gateway:
        routes.append(("default", host.gateway))
    return routes
