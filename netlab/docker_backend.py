"""Docker lab backend (docker SDK for Python): the same topology and NAT profiles as netns.

Objects (all labelled ``ims-migrate.lab=<lab id>``; prune removes only labelled objects):

* one bridge network ``<lab>-<segment>`` per segment, bridge interface ``<lab>-<n>``, with the
  segment's subnet from the topology (per-slot slices, so parallel labs never overlap),
  ``internal=True`` (Docker drops anything routed between a lab bridge and any other interface),
  ``enable_ip_masquerade=false`` and ``inhibit_ipv4=true``.
* one container ``<lab>-<host>`` per host from the lab image (``netlab.image``); routers get
  NET_ADMIN and ``net.ipv4.ip_forward=1`` and run the iptables/nft rules of ``netlab.profiles``,
  exactly as the netns backend does.
* one ``DOCKER-USER`` rule per lab bridge: ``-i <bridge> -o <bridge> -j ACCEPT``. The host's
  br_netfilter passes *bridged* frames through its FORWARD chain, where Docker's internal-network
  rules would drop every frame whose IP destination is off the segment (all NATed traffic to a
  router's MAC). The rule accepts frames that stay on one bridge (layer 2) and nothing routed.

Address layout (segment subnet S, from ``netlab.topology``):

* the topology's addresses are used unchanged (routers on .1 of a LAN, server on the first public
  address); Docker's IPAM gateway is parked on the last usable address of S, which no lab host may
  use. With ``inhibit_ipv4`` that address is not configured anywhere: the host has no address on
  any lab segment, so it is not a router in the lab and cannot be reached from it.
* Docker's default route (via that gateway) is deleted in every container; hosts with a gateway
  in the topology get ``default via <their router>``; routers and the server get none.

Processes: ``docker exec`` (CLI, for stdin/stdout pipes); the interpreter is the image's
``/opt/ims-venv/bin/python`` (runtime dependencies at the host's versions) with the live project
tree mounted read-only at its host path first on PYTHONPATH, so paths and code are the same as
on the host. The working directory, the temp directory and ``$IMS_LAB_MOUNTS`` (``:``-separated)
are mounted read-write at their host paths for evidence files.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import netlab
from netlab import profiles
from netlab.base import Capture, Lab
from netlab.image import VENV_PYTHON, docker_client, ensure_image
from netlab.lifecycle import claim_lab, new_lab_id, release_lab, require_root
from netlab.topology import Topology, TopologyError

log = logging.getLogger(__name__)
LABEL = "ims-migrate.lab"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(netlab.__file__)))
NET_OPTIONS = {"com.docker.network.bridge.enable_ip_masquerade": "false",
               "com.docker.network.bridge.inhibit_ipv4": "true",
               "com.docker.network.bridge.enable_icc": "true"}
_ENV_NOT_PASSED = ("PATH", "PYTHONPATH", "HOME", "VIRTUAL_ENV", "PYTHONHOME", "LD_LIBRARY_PATH")


def _client():
    return docker_client()


def docker_gateway(subnet: str) -> str:
    """Where Docker's IPAM gateway is parked: the last usable address (never configured)."""
    net = ipaddress.ip_network(subnet)
    return str(net.broadcast_address - 1)


def _bridge_rule(lab_id: str, bridge: str) -> list[str]:
    return ["-i", bridge, "-o", bridge, "-m", "comment", "--comment", f"{LABEL}={lab_id}", "-j", "ACCEPT"]


def _iptables(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=20)


def _remove_bridge_rules(lab_id: str | None) -> int:
    """Delete the DOCKER-USER rules of one lab (or of every lab when ``lab_id`` is None)."""
    listing = _iptables(["-S", "DOCKER-USER"])
    if listing.returncode != 0:
        return 0
    ident = re.escape(lab_id) if lab_id else "imsl[0-9a-f]{6}"
    pattern = re.compile(rf"--comment \"?{re.escape(LABEL)}={ident}\"?( |$)")
    removed = 0
    for line in listing.stdout.splitlines():
        if line.startswith("-A DOCKER-USER ") and pattern.search(line):
            spec = [p.strip('"') for p in line.split()[2:]]
            if _iptables(["-D", "DOCKER-USER", *spec]).returncode == 0:
                removed += 1
    return removed


def prune_docker(lab_id: str | None = None) -> list[str]:
    """Remove containers, networks and DOCKER-USER rules labelled by this project (one lab or all)."""
    try:
        client = _client()
    except RuntimeError:
        return []
    import docker.errors
    label = f"{LABEL}={lab_id}" if lab_id else LABEL
    removed = []
    for c in client.containers.list(all=True, filters={"label": label}):
        try:
            c.remove(force=True)
            removed.append(c.name)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:     # 409: a parallel prune is removing it already
            log.info("container %s: %s", c.name, exc.explanation)
    deadline = time.monotonic() + 20
    for n in client.networks.list(filters={"label": label}):
        while True:
            try:
                n.remove()
                removed.append(n.name)
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as exc:  # endpoints of containers still being removed
                if time.monotonic() > deadline:
                    log.warning("network %s not removed: %s", n.name, exc.explanation)
                    break
                time.sleep(0.2)
    rules = _remove_bridge_rules(lab_id)
    if rules:
        removed.append(f"{rules} DOCKER-USER rules")
    return removed


def _work_mounts() -> list[str]:
    paths = [os.getcwd(), tempfile.gettempdir()]
    paths += [p for p in os.environ.get("IMS_LAB_MOUNTS", "").split(os.pathsep) if p]
    out = []
    for p in paths:
        p = os.path.realpath(p)
        if p == "/" or not os.path.isdir(p) or p == ROOT:
            continue
        out.append(p)
    return sorted(set(out))


def _under(path: str, dirs: list[str]) -> bool:
    path = os.path.realpath(path)
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


class DockerLab(Lab):
    backend = "docker"

    def __init__(self, topology: Topology, lab_id: str | None = None, image: str | None = None):
        super().__init__(topology)
        self.id = lab_id or new_lab_id()
        self.image = image or os.environ.get("IMS_LAB_IMAGE") or None
        self._cleanup_key: int | None = None
        self.up_seconds: float | None = None
        self._ifnames: dict[tuple[str, str], str] = {}
        self._bridges: list[str] = []
        self._rw_mounts = _work_mounts()
        self._spawn_seq = 0

    def cname(self, host: str) -> str:
        return f"{self.id}-{host}"

    def _check_addresses(self) -> None:
        for seg in self.topology.segments:
            gw = docker_gateway(seg.subnet)
            for h in self.topology.members(seg.name):
                if h.addresses[seg.name] == gw:
                    raise TopologyError(f"{h.name} uses {gw}, the address the docker backend reserves on "
                                        f"segment {seg.name} (last usable address of {seg.subnet})")

    # --- lifecycle ----------------------------------------------------------------------------
    def up(self) -> "DockerLab":
        require_root()
        self._check_addresses()
        self._cleanup_key = claim_lab(self.id, self.down)    # before anything exists
        t0 = time.monotonic()
        client = _client()
        image = self.image or ensure_image(client=client)
        t_image = time.monotonic() - t0
        import docker.types
        topo = self.topology
        labels = {LABEL: self.id}
        nets = {}
        for i, seg in enumerate(topo.segments):
            bridge = f"{self.id}-{i}"
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=seg.subnet,
                                                                                  gateway=docker_gateway(seg.subnet))])
            self._bridges.append(bridge)
            self._allow_bridged(bridge)
            nets[seg.name] = client.networks.create(
                f"{self.id}-{seg.name}", driver="bridge", internal=True, ipam=ipam, labels=labels,
                options={**NET_OPTIONS, "com.docker.network.bridge.name": bridge})
        volumes = {ROOT: {"bind": ROOT, "mode": "ro"}}
        volumes.update({p: {"bind": p, "mode": "rw"} for p in self._rw_mounts})
        for h in topo.hosts:
            segs = list(h.addresses)
            first = nets[segs[0]].name
            c = client.containers.create(
                image, ["sleep", "infinity"], name=self.cname(h.name), hostname=h.name, labels=labels,
                cap_add=["NET_ADMIN", "NET_RAW"], sysctls=profiles.sysctls(topo, h) or None, volumes=volumes,
                network=first, init=True, detach=True,
                networking_config={first: client.api.create_endpoint_config(ipv4_address=h.addresses[segs[0]])})
            for seg in segs[1:]:
                nets[seg].connect(c, ipv4_address=h.addresses[seg])
            c.start()
        for h in topo.hosts:
            self._configure(h)
        self.up_seconds = time.monotonic() - t0
        log.info("docker lab %s up in %.1fs (image lookup %.1fs)", self.id, self.up_seconds, t_image)
        return self

    def _allow_bridged(self, bridge: str) -> None:
        if _iptables(["-S", "DOCKER-USER"]).returncode != 0:
            log.warning("no DOCKER-USER chain (dockerd --iptables=false?): not adding the bridge rule")
            return
        res = _iptables(["-I", "DOCKER-USER", *_bridge_rule(self.id, bridge)])
        if res.returncode != 0:
            raise RuntimeError(f"adding the DOCKER-USER rule for {bridge} failed: {res.stderr.strip()[:300]}")

    def _configure(self, h) -> None:
        out = self._exec(h.name, ["ip", "-o", "-4", "addr", "show"]).stdout
        for line in out.splitlines():
            parts = line.split()
            ifname, addr = parts[1], parts[3].split("/")[0]
            for seg, a in h.addresses.items():
                if a == addr:
                    self._ifnames[(h.name, seg)] = ifname
        missing = [seg for seg in h.addresses if (h.name, seg) not in self._ifnames]
        if missing:
            raise RuntimeError(f"{h.name}: no interface carries its address on {', '.join(missing)}")
        script = ["ip route del default 2>/dev/null || true"]      # Docker's, via the parked gateway
        for dest, via in profiles.lab_routes(self.topology, h):
            script.append(f"ip route replace {dest} via {via}")
        if h.role == "router":
            rules = profiles.iptables_rules(self.topology, h, lambda seg: self._ifnames[(h.name, seg)])
            script.append(f"iptables-restore <<'EOF'\n{rules}EOF")
            nft = profiles.nft_script(h)
            if nft:
                script.append(f"nft -f - <<'EOF'\n{nft}EOF")
        res = self._exec(h.name, ["sh", "-ec", "\n".join(script)])
        if res.returncode != 0:
            raise RuntimeError(f"configuring {h.name} failed: {res.stderr.strip()[-400:]}")

    def down(self) -> None:
        """Idempotent; safe on a partly built lab."""
        self._stop_processes()
        prune_docker(self.id)
        self._bridges.clear()
        release_lab(self.id, self._cleanup_key)
        self._cleanup_key = None

    # --- processes ----------------------------------------------------------------------------
    def _kill_process(self, proc: subprocess.Popen) -> None:
        subprocess.Popen.kill(proc)   # the local `docker exec`; the container goes with the lab

    def _translate(self, argv: list[str]) -> list[str]:
        exe = argv[0] if argv else ""
        if exe == sys.executable or (os.path.dirname(exe) == os.path.join(sys.prefix, "bin")
                                     and os.path.basename(exe).startswith("python")):
            return [VENV_PYTHON, *argv[1:]]
        return list(argv)

    def _exec_args(self, host: str, env: dict | None, cwd: str | None) -> list[str]:
        self.topology.host(host)
        base = {"PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
        for k, v in (env or {}).items():
            if os.environ.get(k) != v and k not in _ENV_NOT_PASSED:
                base[k] = v
        args = ["docker", "exec", "-i"]
        for k, v in base.items():
            args += ["-e", f"{k}={v}"]
        if cwd:
            args += ["-w", cwd]
        return [*args, self.cname(host)]

    def _exec(self, host: str, argv: list[str], env=None, cwd=None, timeout: float = 30, input_text=None):
        cmd = self._exec_args(host, env, cwd) + ["timeout", "-k", "2", str(max(1, int(timeout))),
                                                 *self._translate(argv)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10, input=input_text)

    def run(self, host: str, argv: list[str], timeout: float = 30, input_text: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        res = self._exec(host, argv, timeout=timeout, input_text=input_text)
        if res.returncode == 124:
            raise subprocess.TimeoutExpired(argv, timeout, res.stdout, res.stderr)
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, argv, res.stdout, res.stderr)
        return res

    def spawn(self, host: str, argv: list[str], env: dict | None = None, cwd: str | None = None,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
        self._spawn_seq += 1
        pidfile = f"/run/ims-spawn-{self._spawn_seq}.pid"
        wrapped = ["sh", "-c", f'echo $$ > {pidfile}; exec "$@"', "sh", *self._translate(argv)]
        proc = _ContainerProcess(self, host, pidfile, self._exec_args(host, env, cwd) + wrapped,
                                 stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, text=True, bufsize=1)
        self._procs.append(proc)
        return proc

    def capture(self, host: str, iface: str, path: str, bpf: str = "udp") -> Capture:
        path = os.path.abspath(path)
        direct = _under(os.path.dirname(path), self._rw_mounts)
        inside = path if direct else f"/var/tmp/ims-capture-{self._spawn_seq + 1}.pcap"
        proc = self.spawn(host, ["tcpdump", "-U", "--immediate-mode", "-n", "-Z", "root", "-s", "0", "-i", iface, "-w", inside, bpf],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:     # wait until tcpdump has written the pcap header
            if direct:
                ready = os.path.exists(path) and os.path.getsize(path) >= 24
            else:
                ready = self._exec(host, ["sh", "-c", f'[ "$(stat -c %s {inside} 2>/dev/null || echo 0)" -ge 24 ]'],
                                   timeout=5).returncode == 0
            if ready:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"tcpdump in {host} failed: {proc.stderr.read()[:300]}")
            time.sleep(0.05)
        cap = _DockerCapture(self, host, proc, path, None if direct else inside)
        self._captures.append(cap)
        return cap

    def copy_out(self, host: str, inside: str, path: str) -> None:
        """Copy one file from a container to ``path`` on the host (Docker SDK get_archive)."""
        import io
        import tarfile
        container = _client().containers.get(self.cname(host))
        stream, _ = container.get_archive(inside)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.getmembers()[0]
            data = tar.extractfile(member).read()
        with open(path, "wb") as fh:
            fh.write(data)

    def nat_rebind(self, router: str) -> None:
        self.run(router, ["conntrack", "-F"], timeout=10)

    def conntrack(self, router: str) -> str:
        return self.run(router, ["conntrack", "-L"], timeout=10).stdout

    def iface(self, host: str, segment: str) -> str:
        return self._ifnames[(host, segment)]

    def info(self) -> dict:
        d = super().info()
        d["docker"] = {"lab": self.id, "containers": {h.name: self.cname(h.name) for h in self.topology.hosts},
                       "bridges": dict(zip([s.name for s in self.topology.segments], self._bridges)),
                       "parked_gateways": {s.name: docker_gateway(s.subnet) for s in self.topology.segments},
                       "up_seconds": self.up_seconds}
        return d


class _ContainerProcess(subprocess.Popen):
    """A ``docker exec`` client whose signals reach the process inside the container."""

    def __init__(self, lab: DockerLab, host: str, pidfile: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lab, self._host, self._pidfile = lab, host, pidfile

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        try:
            subprocess.run(["docker", "exec", self._lab.cname(self._host), "sh", "-c",
                            f"kill -{int(sig)} $(cat {self._pidfile}) 2>/dev/null"],
                           capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if sig == signal.SIGKILL and self.poll() is None:
            super().send_signal(sig)


class _DockerCapture(Capture):
    def __init__(self, lab: DockerLab, host: str, proc: _ContainerProcess, path: str, inside: str | None):
        super().__init__(proc, path)
        self.lab, self.host, self.inside = lab, host, inside

    def _interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)           # delivered inside the container

    def stop(self, timeout: float = 5.0) -> str:
        super().stop(timeout)
        if self.inside:
            self.lab.copy_out(self.host, self.inside, self.path)
            self.inside = None
        return self.path
