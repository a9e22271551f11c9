"""Docker lab backend (docker SDK for Python): the same topology and NAT profiles as netns.

* one bridge network per segment: fixed subnet, IP masquerade off (nothing is NATed out of the host
  and no lab host routes via the bridge); Docker's gateway address moves to the last address of each subnet so
  the lab's addresses (routers on .1) stay as in the topology. Hosts never route via it.
* one container per host (routers get NET_ADMIN and ip_forward); NAT rules come from
  ``netlab.profiles`` exactly as in the netns backend.
* the image is built offline (debootstrap + ``docker import``, ``netlab/images/build_offline.sh``)
  or with ``netlab/images/Dockerfile``; the project and its virtualenv's site-packages are mounted
  read-only at their host paths (Debian bookworm's Python 3.11 runs them), so commands and paths
  are the same as on the host.
Every object carries the label ``ims-migrate.lab=<lab id>``; prune removes only labelled objects.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import sys
import sysconfig
import time

from netlab import profiles
from netlab.base import Capture, Lab
from netlab.lifecycle import new_lab_id, register_cleanup, require_root, unregister_cleanup
from netlab.topology import Topology

log = logging.getLogger(__name__)
LABEL = "ims-migrate.lab"
IMAGE = os.environ.get("IMS_LAB_IMAGE", "ims-migrate-lab:bookworm-1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _client():
    import docker
    try:
        client = docker.from_env(timeout=60)
        client.ping()
        return client
    except Exception as exc:   # noqa: BLE001 - docker raises many kinds
        raise RuntimeError(f"no Docker engine answers ({exc}); start one with: bash scripts/docker-engine.sh") from None


def ensure_image(tag: str = IMAGE) -> str:
    client = _client()
    try:
        client.images.get(tag)
        return tag
    except Exception:   # noqa: BLE001 - ImageNotFound
        pass
    script = os.path.join(ROOT, "netlab", "images", "build_offline.sh")
    proc = subprocess.run(["bash", script, tag], capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"building the lab image failed: {proc.stderr[-800:]}")
    return tag


def prune_docker() -> list[str]:
    try:
        client = _client()
    except RuntimeError:
        return []
    import docker.errors
    removed = []
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        try:
            c.remove(force=True)
            removed.append(c.name)
        except (docker.errors.NotFound, docker.errors.APIError) as exc:     # gone, or going
            log.debug("container %s: %s", c.name, exc)
    for n in client.networks.list(filters={"label": LABEL}):
        try:
            n.remove()
            removed.append(n.name)
        except (docker.errors.NotFound, docker.errors.APIError) as exc:
            log.debug("network %s: %s", n.name, exc)
    return removed


class DockerLab(Lab):
    backend = "docker"

    def __init__(self, topology: Topology, lab_id: str | None = None):
        super().__init__(topology)
        self.id = lab_id or new_lab_id()
        self._cleanup_key = None
        self.up_seconds: float | None = None
        self._ifnames: dict[tuple[str, str], str] = {}
        self._procs: list[subprocess.Popen] = []
        self.python = "python3"
        self.site = sysconfig.get_paths()["purelib"]

    def cname(self, host: str) -> str:
        return f"{self.id}-{host}"

    def up(self) -> "DockerLab":
        require_root()
        self._cleanup_key = register_cleanup(self.down)
        t0 = time.monotonic()
        client = _client()
        image = ensure_image()
        topo = self.topology
        labels = {LABEL: self.id}
        self._remove_stale(client)
        nets = {}
        import docker.types
        for seg in topo.segments:
            net = ipaddress.ip_network(seg.subnet)
            gateway = str(net.broadcast_address - 1)        # keep .1 for the lab's routers
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=seg.subnet, gateway=gateway)])
            nets[seg.name] = client.networks.create(
                f"{self.id}-{seg.name}", driver="bridge", internal=False, ipam=ipam, labels=labels,
                options={"com.docker.network.bridge.enable_ip_masquerade": "false"})
        mounts = {p: {"bind": p, "mode": "ro"} for p in {ROOT, self.site}}
        for p in {os.getcwd(), "/tmp"}:
            mounts[p] = {"bind": p, "mode": "rw"}
        for h in topo.hosts:
            sysctls = profiles.sysctls(topo, h)
            c = client.containers.create(image, ["sleep", "infinity"], name=self.cname(h.name), labels=labels,
                                         network_mode="none", cap_add=["NET_ADMIN", "NET_RAW"], sysctls=sysctls or None,
                                         volumes=mounts, hostname=h.name, detach=True)
            c.start()
            client.networks.get("none").disconnect(c)
            for seg, addr in h.addresses.items():
                nets[seg].connect(c, ipv4_address=addr)
        for h in topo.hosts:
            self._configure(h)
        self.up_seconds = time.monotonic() - t0
        log.info("docker lab %s up in %.1fs", self.id, self.up_seconds)
        return self

    def _remove_stale(self, client) -> None:
        """Our subnet slot is claimed by this process, so a project-labelled network still
        holding one of our subnets is a leftover of a dead run: remove it (and its containers)."""
        wanted = [ipaddress.ip_network(s.subnet) for s in self.topology.segments]
        for net in client.networks.list(filters={"label": LABEL}):
            net.reload()
            configs = (net.attrs.get("IPAM") or {}).get("Config") or []
            if any(ipaddress.ip_network(c["Subnet"]).overlaps(w) for c in configs if c.get("Subnet") for w in wanted):
                for c in client.containers.list(all=True, filters={"label": f"{LABEL}={net.attrs['Labels'][LABEL]}"}):
                    c.remove(force=True)
                log.warning("removing leftover lab network %s", net.name)
                net.remove()

    def _configure(self, h) -> None:
        out = self._exec(h.name, ["ip", "-o", "-4", "addr", "show"]).stdout
        for line in out.splitlines():
            parts = line.split()
            ifname, addr = parts[1], parts[3].split("/")[0]
            for seg, a in h.addresses.items():
                if a == addr:
                    self._ifnames[(h.name, seg)] = ifname
        # Docker gives every container a default route via the bridge gateway, i.e. the host:
        # remove it, so lab traffic can only follow the lab's own routes (network safety).
        script = ["while ip route del default 2>/dev/null; do :; done"]
        for dest, via in profiles.lab_routes(self.topology, h):
            script.append(f"ip route replace {dest} via {via}")
        if h.role == "router":
            rules = profiles.iptables_rules(self.topology, h, lambda seg: self._ifnames[(h.name, seg)])
            script.append(f"iptables-restore <<'EOF'\n{rules}EOF")
            nft = profiles.nft_script(h)
            if nft:
                script.append(f"nft -f - <<'EOF'\n{nft}EOF")
        if script:
            res = self._exec(h.name, ["sh", "-ec", "\n".join(script)])
            if res.returncode != 0:
                raise RuntimeError(f"configuring {h.name} failed: {res.stderr[-400:]}")

    def down(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
        self._procs.clear()
        try:
            client = _client()
            for c in client.containers.list(all=True, filters={"label": f"{LABEL}={self.id}"}):
                c.remove(force=True)
            for n in client.networks.list(filters={"label": f"{LABEL}={self.id}"}):
                n.remove()
        except RuntimeError:
            pass
        if self._cleanup_key is not None:
            unregister_cleanup(self._cleanup_key)
            self._cleanup_key = None

    # --- processes ----------------------------------------------------------------------------
    def _translate(self, argv: list[str]) -> list[str]:
        return [self.python if a == sys.executable else a for a in argv]

    def _env_args(self, env: dict | None) -> list[str]:
        base = {"PYTHONPATH": f"{ROOT}:{self.site}", "PYTHONUNBUFFERED": "1"}
        if env:
            for k, v in env.items():
                if os.environ.get(k) != v and k not in ("PATH", "PYTHONPATH"):
                    base[k] = v
        return [x for k, v in base.items() for x in ("-e", f"{k}={v}")]

    def _exec(self, host: str, argv: list[str], env=None, cwd=None, timeout=30, input_text=None):
        cmd = ["docker", "exec", "-i", *self._env_args(env)] + (["-w", cwd] if cwd else []) + \
              [self.cname(host), *self._translate(argv)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input_text)

    def run(self, host, argv, timeout=30, input_text=None, check=False):
        self.topology.host(host)
        res = self._exec(host, argv, timeout=timeout, input_text=input_text)
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, argv, res.stdout, res.stderr)
        return res

    def spawn(self, host, argv, env=None, cwd=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
        self.topology.host(host)
        cmd = ["docker", "exec", "-i", *self._env_args(env)] + (["-w", cwd] if cwd else []) + \
              [self.cname(host), *self._translate(argv)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, text=True, bufsize=1)
        self._procs.append(proc)
        return proc

    def capture(self, host, iface, path, bpf="udp") -> Capture:
        proc = self.spawn(host, ["tcpdump", "-U", "-n", "-s", "0", "-i", iface, "-w", os.path.abspath(path), bpf],
                          stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (os.path.exists(path) and os.path.getsize(path) >= 24):
            time.sleep(0.05)
        return _DockerCapture(self, host, proc, path)

    def nat_rebind(self, router: str) -> None:
        self.run(router, ["conntrack", "-F"], timeout=10)

    def conntrack(self, router: str) -> str:
        return self.run(router, ["conntrack", "-L"], timeout=10).stdout

    def iface(self, host: str, segment: str) -> str:
        return self._ifnames[(host, segment)]


class _DockerCapture(Capture):
    def __init__(self, lab: DockerLab, host: str, proc, path: str):
        super().__init__(proc, path)
        self.lab, self.host = lab, host

    def stop(self, timeout: float = 5.0) -> str:
        self.lab.run(self.host, ["pkill", "-INT", "tcpdump"], timeout=10)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.path
