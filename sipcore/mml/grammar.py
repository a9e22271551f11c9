"""Sans-IO parser of the original MML grammar: ``VERB OBJECT [SUBOBJECT] [KEY=VALUE ...][;]``.

Verbs and objects are upper-cased, keys upper-cased, values keep their case; values may be quoted.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

VERBS = ("DSP", "ADD", "RMV", "MOD", "SET", "CLR", "RST", "STR", "STP", "EXP", "SAVE", "HELP")
MAX_LINE = 4096


class MMLSyntaxError(ValueError):
    pass


@dataclass
class MMLCommand:
    verb: str
    obj: str = ""
    sub: str = ""
    params: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.verb} {self.obj}".strip()


def parse_command(line: str) -> MMLCommand:
    if not isinstance(line, str):
        raise MMLSyntaxError("command must be text")
    line = line.strip()
    if len(line) > MAX_LINE:
        raise MMLSyntaxError(f"command longer than {MAX_LINE} characters")
    if line.endswith(";"):
        line = line[:-1].rstrip()
    if not line:
        raise MMLSyntaxError("empty command")
    try:
        tokens = shlex.split(line, posix=True)
    except ValueError as exc:
        raise MMLSyntaxError(f"cannot split command: {exc}") from None
    verb = tokens[0].upper()
    if verb not in VERBS:
        raise MMLSyntaxError(f"unknown verb {tokens[0]!r}; verbs: {' '.join(VERBS)}")
    cmd = MMLCommand(verb)
    for tok in tokens[1:]:
        if "=" in tok:
            key, _, value = tok.partition("=")
            key = key.strip().upper()
            if not key or not key.replace("_", "").replace(".", "").isalnum():
                raise MMLSyntaxError(f"bad parameter name in {tok!r}")
            cmd.params[key] = value
        elif cmd.params:
            raise MMLSyntaxError(f"{tok!r}: words must come before KEY=VALUE parameters")
        elif not cmd.obj:
            cmd.obj = tok.upper()
        elif not cmd.sub:
            cmd.sub = tok.upper()
        else:
            raise MMLSyntaxError(f"unexpected word {tok!r}")
    return cmd
