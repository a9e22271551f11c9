"""What every lab backend offers (netns, docker)."""
from __future__ import annotations

import abc
import os
import signal
import subprocess

from netlab.topology import Topology


class Capture:
    """A running packet capture; ``stop()`` ends it and returns the pcap path."""

    def __init__(self, proc: subprocess.Popen, path: str):
        self.proc, self.path = proc, path

    def _interrupt(self) -> None:
        """SIGINT lets the capture tool flush its pcap."""
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
        except OSError:
            self.proc.send_signal(signal.SIGINT)

    def stop(self, timeout: float = 5.0) -> str:
        if self.proc.poll() is None:
            self._interrupt()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.path


class Lab(abc.ABC):
    backend = "abstract"

    def __init__(self, topology: Topology):
        self.topology = topology
        self._procs: list[subprocess.Popen] = []     # what spawn() started, ended by down()
        self._captures: list[Capture] = []           # stopped gracefully by down() before the kill

    def __enter__(self) -> "Lab":
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc) -> None:
        self.down()

    def _kill_process(self, proc: subprocess.Popen) -> None:
        proc.kill()

    def _stop_processes(self) -> None:
        """Part of down(): stop captures gracefully (their pcap keeps every packet read so far),
        then kill what spawn() started and reap it (bounded)."""
        for c in self._captures:
            try:
                c.stop()
            except Exception:   # noqa: BLE001 - teardown must go on
                pass
        self._captures.clear()
        for p in self._procs:
            if p.poll() is None:
                self._kill_process(p)
        for p in self._procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()

    @abc.abstractmethod
    def up(self) -> "Lab": ...

    @abc.abstractmethod
    def down(self) -> None: ...

    @abc.abstractmethod
    def run(self, host: str, argv: list[str], timeout: float = 30, input_text: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess: ...

    @abc.abstractmethod
    def spawn(self, host: str, argv: list[str], env: dict | None = None, cwd: str | None = None,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen: ...

    @abc.abstractmethod
    def capture(self, host: str, iface: str, path: str, bpf: str = "udp") -> Capture: ...

    @abc.abstractmethod
    def nat_rebind(self, router: str) -> None: ...

    @abc.abstractmethod
    def conntrack(self, router: str) -> str: ...

    @abc.abstractmethod
    def iface(self, host: str, segment: str) -> str: ...

    # --- addressing ---------------------------------------------------------------------------
    def address(self, host: str, segment: str | None = None) -> str:
        h = self.topology.host(host)
        if segment is None:
            return next(iter(h.addresses.values()))
        return h.addresses[segment]

    def public_address(self, host: str) -> str:
        """Where ``host``'s traffic appears on the public segment (its outermost NAT)."""
        topo = self.topology
        h = topo.host(host)
        for _ in range(5):
            if "public" in h.addresses:
                return h.addresses["public"]
            router = next(r for r in topo.routers() if h.gateway in r.addresses.values())
            h = router
        raise ValueError(f"{host} has no path to the public segment")

    def first_router(self, host: str) -> str | None:
        h = self.topology.host(host)
        if not h.gateway:
            return None
        return next(r.name for r in self.topology.routers() if h.gateway in r.addresses.values())

    def info(self) -> dict:
        return {"backend": self.backend, "topology": self.topology.to_dict(),
                "public": {h.name: self.public_address(h.name) for h in self.topology.hosts if h.role == "host"}}
