"""Declarative NAT labs on network namespaces (default) or Docker."""
from __future__ import annotations

from netlab.topology import Topology, TopologyError, standard  # noqa: F401


def open_lab(topology: Topology, backend: str = "netns"):
    """A Lab (use as a context manager: cleanup is registered before anything is created)."""
    if backend == "netns":
        from netlab.netns_backend import NetnsLab
        return NetnsLab(topology)
    if backend == "docker":
        from netlab.docker_backend import DockerLab
        return DockerLab(topology)
    raise ValueError(f"unknown lab backend {backend!r} (netns, docker)")
