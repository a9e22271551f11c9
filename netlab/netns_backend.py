"""The default lab backend: Linux network namespaces, veth pairs and iptables/nft NAT.

Each host is a namespace ``<lab>-<host>``; each segment a namespace ``<lab>-s-<segment>`` holding
a bridge. Both veth ends are created directly inside lab namespaces, so deleting the namespaces
removes everything and the root namespace never gets a lab interface or route.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time

from netlab import profiles
from netlab.base import Capture, Lab
from netlab.lifecycle import claim_lab, delete_namespaces, new_lab_id, release_lab, require_root
from netlab.topology import Topology

log = logging.getLogger(__name__)


def _ip(args: list[str], input_text: str | None = None, timeout: float = 20) -> None:
    proc = subprocess.run(["ip", *args], input=input_text, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args[:3])} failed: {proc.stderr.strip()[:500]}")


def ifname(segment: str) -> str:
    return f"e-{segment}"[:15]


class NetnsLab(Lab):
    backend = "netns"

    def __init__(self, topology: Topology, lab_id: str | None = None):
        super().__init__(topology)
        self.id = lab_id or new_lab_id()
        self._cleanup_key: int | None = None
        self._created: list[str] = []
        self.up_seconds: float | None = None

    def ns(self, host: str) -> str:
        return f"{self.id}-{host}"

    def _switch(self, segment: str) -> str:
        return f"{self.id}-s-{segment}"

    # --- lifecycle ----------------------------------------------------------------------------
    def up(self) -> "NetnsLab":
        require_root()
        self._cleanup_key = claim_lab(self.id, self.down)    # before anything exists
        t0 = time.monotonic()
        topo = self.topology
        namespaces = [self.ns(h.name) for h in topo.hosts] + [self._switch(s.name) for s in topo.segments]
        self._created = list(namespaces)
        root_batch = [f"netns add {n}" for n in namespaces]
        for seg in topo.segments:
            sw = self._switch(seg.name)
            for h in topo.members(seg.name):
                root_batch.append(f"link add {ifname(seg.name)} netns {self.ns(h.name)} type veth "
                                  f"peer name {('p-' + h.name)[:15]} netns {sw}")
        _ip(["-batch", "-"], "\n".join(root_batch) + "\n")
        for seg in topo.segments:
            sw = self._switch(seg.name)
            cmds = ["link add br0 type bridge", "link set br0 up", "link set lo up"]
            for h in topo.members(seg.name):
                port = ("p-" + h.name)[:15]
                cmds += [f"link set {port} master br0", f"link set {port} up"]
            _ip(["-n", sw, "-batch", "-"], "\n".join(cmds) + "\n")
        for h in topo.hosts:
            cmds = ["link set lo up"]
            for seg, addr in h.addresses.items():
                prefix = topo.segment(seg).subnet.split("/")[1]
                cmds += [f"addr add {addr}/{prefix} dev {ifname(seg)}", f"link set {ifname(seg)} up"]
            for dest, via in profiles.lab_routes(topo, h):
                cmds.append(f"route add {dest} via {via}")
            _ip(["-n", self.ns(h.name), "-batch", "-"], "\n".join(cmds) + "\n")
            self._configure_host(h)
        self.up_seconds = time.monotonic() - t0
        log.info("lab %s up in %.3fs (%d namespaces)", self.id, self.up_seconds, len(namespaces))
        return self

    def _configure_host(self, h) -> None:
        ns = self.ns(h.name)
        sysctls = profiles.sysctls(self.topology, h)
        script = []
        for k, v in sysctls.items():
            script.append(f"echo {v} > /proc/sys/{k.replace('.', '/')}")
        if h.role == "router":
            rules = profiles.iptables_rules(self.topology, h, ifname)
            script.append(f"iptables-restore <<'EOF'\n{rules}EOF")
            nft = profiles.nft_script(h)
            if nft:
                script.append(f"nft -f - <<'EOF'\n{nft}EOF")
        if script:
            proc = subprocess.run(["ip", "netns", "exec", ns, "sh", "-ec", "\n".join(script)],
                                  capture_output=True, text=True, timeout=20)
            if proc.returncode != 0:
                raise RuntimeError(f"configuring {h.name} failed: {proc.stderr.strip()[:500]}")

    def _kill_process(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)       # the whole group spawn() started in the netns
        except OSError:
            proc.kill()

    def down(self) -> None:
        self._stop_processes()
        if self._created:
            delete_namespaces(self._created)
            self._created = []
        release_lab(self.id, self._cleanup_key)
        self._cleanup_key = None

    # --- processes ----------------------------------------------------------------------------
    def _argv(self, host: str, argv: list[str]) -> list[str]:
        self.topology.host(host)
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def run(self, host: str, argv: list[str], timeout: float = 30, input_text: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(self._argv(host, argv), capture_output=True, text=True, timeout=timeout,
                              input=input_text, check=check)

    def spawn(self, host: str, argv: list[str], env: dict | None = None, cwd: str | None = None,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
        proc = subprocess.Popen(self._argv(host, argv), stdin=subprocess.PIPE, stdout=stdout, stderr=stderr,
                                text=True, bufsize=1, env=env, cwd=cwd, start_new_session=True)
        self._procs.append(proc)
        return proc

    def capture(self, host: str, iface: str, path: str, bpf: str = "udp") -> Capture:
        if not shutil.which("tcpdump"):
            raise RuntimeError("tcpdump is not installed (apt-get install tcpdump)")
        proc = self.spawn(host, ["tcpdump", "-U", "--immediate-mode", "-n", "-s", "0", "-i", iface, "-w", path, bpf],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:      # wait until tcpdump has opened the interface
            if os.path.exists(path) and os.path.getsize(path) >= 24:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"tcpdump failed: {proc.stderr.read()[:300]}")
            time.sleep(0.02)
        cap = Capture(proc, path)
        self._captures.append(cap)
        return cap

    def nat_rebind(self, router: str) -> None:
        self.run(router, ["conntrack", "-F"], timeout=10)

    def conntrack(self, router: str) -> str:
        return self.run(router, ["conntrack", "-L"], timeout=10).stdout

    def iface(self, host: str, segment: str) -> str:
        return ifname(segment)

