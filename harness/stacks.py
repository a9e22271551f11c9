"""The server stacks the harness can run, by name: a stage's entrypoint plus the environment that
selects a variant of it. ``0``, ``1`` and ``2`` are the stages; ``2-sippy`` is stage 2 with its
INVITE dialogs on the Sippy B2BUA (``SIGNALLING=sippy``), a candidate or baseline of its own.

Stacks are named by ``int`` for the plain stages (as everywhere else) and by ``str`` for variants.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import click

from sipcore.stages import STAGES


@dataclass(frozen=True)
class Stack:
    name: int | str
    stage: int
    entry: str
    env: dict[str, str] = field(default_factory=dict)


STACKS: dict[str, Stack] = {
    **{str(n): Stack(n, n, spec.entrypoint) for n, spec in STAGES.items()},        # the stage table
    "2-sippy": Stack("2-sippy", 2, STAGES[2].entrypoint, {"SIGNALLING": "sippy"}),
}


def stack(name: int | str) -> Stack:
    try:
        return STACKS[str(name)]
    except KeyError:
        raise ValueError(f"unknown stack {name!r} (known: {', '.join(STACKS)})") from None


def expectation(expect: dict, name: int | str) -> dict | None:
    """A scenario's expectation for a stack: its own entry, else its stage's."""
    if name in expect:
        return expect[name]
    return expect.get(stack(name).stage)


class StackType(click.ParamType):
    """``--stage 2`` or ``--stage 2-sippy``: converts to the stack name (int for plain stages)."""
    name = "stage"

    def convert(self, value, param, ctx):
        try:
            return stack(value).name
        except ValueError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param, *args, **kwargs) -> str:
        return "[" + "|".join(STACKS) + "]"
