"""`harness lab ...`: bring labs up and down by hand, list them, prune leftovers."""
from __future__ import annotations

import json
import os
import sys

import click

from netlab.lifecycle import LAB_DIR, NotRoot, prune, release_lab, require_root
from netlab.topology import Topology, TopologyError, standard



def _root() -> None:
    try:
        require_root()
    except NotRoot as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.group("lab")
def lab_group() -> None:
    """Build NAT labs (network namespaces or Docker) by hand."""


@lab_group.command("up")
@click.argument("topology", required=False)
@click.option("--standard", "std", metavar="CALLER,CALLEE", help="standard lab, e.g. cone,symmetric")
@click.option("--backend", type=click.Choice(["netns", "docker"]), default="netns", show_default=True)
def lab_up(topology, std, backend) -> None:
    """Create a lab from TOPOLOGY.yaml (or --standard) and leave it running."""
    _root()
    try:
        if std:
            caller, _, callee = std.partition(",")
            topo = standard(caller, callee or caller, slot=31)
        elif topology:
            topo = Topology.from_yaml(topology)
        else:
            raise click.UsageError("give a TOPOLOGY.yaml or --standard CALLER,CALLEE")
    except TopologyError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    from netlab import open_lab
    lab = open_lab(topo, backend)
    lab.up()
    # the user owns it now (`harness lab down ID`): no cleanup at our exit, no owner record, so a
    # later run does not take it for the leftover of a killed process
    release_lab(lab.id, lab._cleanup_key)
    lab._cleanup_key = None
    os.makedirs(LAB_DIR, exist_ok=True)
    with open(os.path.join(LAB_DIR, f"{lab.id}.json"), "w") as fh:
        json.dump({"id": lab.id, "backend": backend, **lab.info()}, fh, indent=2)
    click.echo(f"{lab.id} up ({backend}); hosts: " + ", ".join(f"{h.name}={lab.address(h.name)}" for h in topo.hosts))
    click.echo(f"run a command: ip netns exec {lab.id}-<host> <command>; remove: harness lab down {lab.id}")


@lab_group.command("down")
@click.argument("lab_id")
def lab_down(lab_id) -> None:
    """Remove one lab (by the id `lab up` printed)."""
    _root()
    removed = prune(lab_id)
    try:
        os.unlink(os.path.join(LAB_DIR, f"{lab_id}.json"))
    except FileNotFoundError:
        pass
    click.echo(f"removed {len(removed)} objects")


@lab_group.command("ls")
def lab_ls() -> None:
    """List labs started with `lab up`."""
    if not os.path.isdir(LAB_DIR):
        return
    for name in sorted(os.listdir(LAB_DIR)):
        with open(os.path.join(LAB_DIR, name)) as fh:
            d = json.load(fh)
        click.echo(f"{d['id']}  {d['backend']}  {d['topology']['name']}")


@lab_group.command("show")
@click.argument("lab_id")
def lab_show(lab_id) -> None:
    """Print a lab's resolved topology and addresses as JSON."""
    path = os.path.join(LAB_DIR, f"{lab_id}.json")
    if not os.path.exists(path):
        click.echo(f"error: no lab {lab_id} (see `harness lab ls`)", err=True)
        sys.exit(2)
    with open(path) as fh:
        click.echo(fh.read())


@lab_group.command("prune")
def lab_prune() -> None:
    """Remove every leftover object carrying the project's prefix (imsl*) and nothing else."""
    _root()
    removed = prune()
    if os.path.isdir(LAB_DIR):
        for name in os.listdir(LAB_DIR):
            os.unlink(os.path.join(LAB_DIR, name))
    click.echo(f"removed {len(removed)} objects" + (": " + ", ".join(removed) if removed else ""))
