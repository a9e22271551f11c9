"""Sans-IO parser of the original MML grammar: ``VERB OBJECT [SUBOBJECT] [KEY=VALUE ...] [;]``.

* words and keys are case-insensitive (returned upper-cased); values keep their case;
* a value may be quoted with ``"..."`` (``\\"`` and ``\\\\`` escapes) or ``'...'`` to hold spaces;
* a trailing ``;`` is tolerated;
* anything else malformed raises ``MMLSyntaxError`` (and nothing else) with a reason and the
  character position.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

VERBS = ("DSP", "ADD", "RMV", "MOD", "SET", "CLR", "RST", "STR", "STP", "EXP", "SAVE", "HELP")
MAX_LINE = 4096
MAX_PARAMS = 32
_WORD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,31}$")


class MMLSyntaxError(ValueError):
    """The command line does not follow the grammar; ``reason`` says why, ``position`` where."""

    def __init__(self, reason: str, position: int | None = None):
        super().__init__(reason if position is None else f"{reason} (at column {position + 1})")
        self.reason = reason
        self.position = position


@dataclass
class MMLCommand:
    verb: str
    obj: str = ""
    sub: str = ""
    params: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.verb} {self.obj}".strip()

    def __str__(self) -> str:
        parts = [self.verb, self.obj, self.sub]
        parts += [f"{k}={_quote(v)}" for k, v in self.params.items()]
        return " ".join(p for p in parts if p)


SECRET_KEYS = ("PASSWORD", "PWD", "PASSWD", "TOKEN", "HA1", "SECRET")
_SECRET_RE = re.compile(r"""\b(%s)(\s*=\s*)("(?:[^"\\]|\\.)*"?|'[^']*'?|[^\s;]*)""" % "|".join(SECRET_KEYS),
                        re.IGNORECASE)


def redact(line: str) -> str:
    """The command text for logs: values of secret parameters (PASSWORD=...) replaced by ***."""
    return _SECRET_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", line)


def _quote(value: str) -> str:
    if value and not any(c.isspace() or c in "\"';=" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tokens(line: str) -> list[tuple[int, str, str | None]]:
    """Split into (position, word-or-key, value-or-None) respecting quotes."""
    out: list[tuple[int, str, str | None]] = []
    i, n = 0, len(line)
    while i < n:
        if line[i] in " \t":
            i += 1
            continue
        start = i
        while i < n and line[i] not in " \t=\"'":
            i += 1
        head = line[start:i]
        if i < n and line[i] in "\"'":
            raise MMLSyntaxError("a quote may only start a value (KEY=\"...\")", i)
        if i >= n or line[i] != "=":
            out.append((start, head, None))
            continue
        i += 1   # skip '='
        if i < n and line[i] in "\"'":
            quote, i = line[i], i + 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise MMLSyntaxError("unterminated quoted value", start)
                c = line[i]
                if c == quote:
                    i += 1
                    break
                if c == "\\" and quote == '"' and i + 1 < n and line[i + 1] in "\"\\":
                    chars.append(line[i + 1])
                    i += 2
                    continue
                chars.append(c)
                i += 1
            if i < n and line[i] not in " \t":
                raise MMLSyntaxError("expected a space after the quoted value", i)
            value = "".join(chars)
        else:
            vstart = i
            while i < n and line[i] not in " \t":
                if line[i] in "\"'":
                    raise MMLSyntaxError("quotes must enclose the whole value", i)
                i += 1
            value = line[vstart:i]
        out.append((start, head, value))
    return out


def parse_command(line: str) -> MMLCommand:
    """Parse one command line; raises ``MMLSyntaxError`` for anything malformed."""
    if not isinstance(line, str):
        raise MMLSyntaxError("command must be text")
    if len(line) > MAX_LINE:
        raise MMLSyntaxError(f"command longer than {MAX_LINE} characters")
    for pos, c in enumerate(line):
        if (ord(c) < 32 and c not in "\t\r\n") or ord(c) == 127:
            raise MMLSyntaxError("control characters are not allowed", pos)
    text = line.strip()
    if "\n" in text or "\r" in text:
        raise MMLSyntaxError("one command per line")
    if text.endswith(";"):
        text = text[:-1].rstrip()
    offset = len(line) - len(line.lstrip())
    if not text:
        raise MMLSyntaxError("empty command")
    tokens = _tokens(text)
    pos0, first, value0 = tokens[0]
    if value0 is not None:
        raise MMLSyntaxError("a command starts with a verb, not KEY=VALUE", offset + pos0)
    verb = first.upper()
    if verb not in VERBS:
        raise MMLSyntaxError(f"unknown verb {first!r}; verbs: {' '.join(VERBS)}", offset + pos0)
    cmd = MMLCommand(verb)
    for pos, head, value in tokens[1:]:
        pos += offset
        if value is None:
            if cmd.params:
                raise MMLSyntaxError(f"{head!r}: words must come before KEY=VALUE parameters", pos)
            if head == ";":
                raise MMLSyntaxError("';' may only end the command", pos)
            if not _WORD_RE.match(head):
                raise MMLSyntaxError(f"bad word {head!r} (letters, digits, '_')", pos)
            if not cmd.obj:
                cmd.obj = head.upper()
            elif not cmd.sub:
                cmd.sub = head.upper()
            else:
                raise MMLSyntaxError(f"unexpected word {head!r} (VERB OBJECT [SUBOBJECT] KEY=VALUE ...)", pos)
            continue
        if not _KEY_RE.match(head):
            raise MMLSyntaxError(f"bad parameter name {head!r}", pos)
        key = head.upper()
        if key in cmd.params:
            raise MMLSyntaxError(f"parameter {key} given twice", pos)
        if len(cmd.params) >= MAX_PARAMS:
            raise MMLSyntaxError(f"more than {MAX_PARAMS} parameters", pos)
        cmd.params[key] = value
    return cmd
