"""The server stacks the harness can run: one model, loaded from YAML stack definitions.

Built-in definitions live in ``stacks/*.yaml`` and ``stacks/*/stack.yaml`` (stages ``0``, ``1``,
``2``, ``2-sippy``; the ``kamailio`` reference stack); ``--stack FILE`` / ``--baseline-stack
FILE`` load an operator's own. The format (every key, its placeholders and the errors) is
documented in stacks/README.md; a file that does not validate raises ``StackError`` naming the
file and the key.

Stacks are named by ``int`` for the plain stages (as everywhere else) and by ``str`` otherwise.
"""
from __future__ import annotations

import glob
import os
import re
import string
from dataclasses import dataclass, field

import click
import yaml

from sipcore.stages import STAGES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK_DIR = os.path.join(ROOT, "stacks")

# what a stack definition may say, per key; the comment of each is in stacks/README.md
TOP_KEYS = ("name", "description", "stage", "reference", "start", "prepare", "relay", "users", "cdr", "registrations")
START_KEYS = ("entry", "command", "cwd", "env", "ready", "timeout")
READY_KEYS = ("log", "udp_port")
USERS_KEYS = ("file", "command")
CDR_KEYS = ("format", "dir", "files", "delimiter", "columns")
CDR_FORMATS = ("csv34", "transactions", "none")
REGISTRATION_KEYS = ("mml", "command")
RELAYS = ("none", "ims-rtpproxy")
# the placeholders a string may use, filled in per run by harness.stack_process
PLACEHOLDERS = ("address", "sip_port", "relay_socket", "workdir", "root", "stack_dir", "python", "users_file",
                "cdr_dir", "mml_port", "mml_token", "rtp_min", "rtp_max")
# columns a ``transactions`` CDR file must have (harness.stack_cdr folds them into CDR rows)
TRANSACTION_COLUMNS = ("method", "code", "reason", "callid", "from_user", "to_user", "src_ip")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StackError(ValueError):
    """A stack definition that does not validate; the text names the file and the key."""


@dataclass(frozen=True)
class Ready:
    log: str | None = None          # a regular expression the server's output matches once ready
    udp_port: bool = True           # or: the SIP port is bound (ss in the server host)


@dataclass(frozen=True)
class CDRSource:
    format: str = "csv34"
    dir: str = "{cdr_dir}"                        # csv34: <dir>/<date>/cdr_<date>.csv (34 columns)
    files: str = ""                               # transactions: a glob of delimited files
    delimiter: str = "|"
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stack:
    name: int | str
    stage: int | None                             # whose scenario expectations apply by default
    entry: str = ""                               # a Python entrypoint (ims-migrate environment)
    env: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ()                 # or a command of its own
    cwd: str = "{workdir}"
    ready: Ready = Ready()
    timeout: float = 25.0
    prepare: tuple[tuple[str, ...], ...] = ()
    relay: str = "none"
    users_file: str = "{workdir}/users.json"
    users_command: tuple[str, ...] = ()
    cdr: CDRSource = CDRSource()
    registrations_mml: bool = False
    registrations_command: tuple[str, ...] = ()
    description: str = ""
    path: str = ""                                # the definition file
    builtin: bool = False
    reference: bool = False                       # a stack we did not write: REFERENCE_DIFFERENCES apply

    @property
    def stack_dir(self) -> str:
        return os.path.dirname(self.path) if self.path else STACK_DIR

    @property
    def ims_env(self) -> bool:
        """True for our own stages (and operator copies of them): run with the harness's
        ims-migrate environment (SERVER_IP, USERS_FILE, CDR_DIR, MML_*, ...)."""
        return bool(self.entry)


def _fail(path: str, key: str, msg: str) -> StackError:
    return StackError(f"{os.path.relpath(path) if path else 'stack'}: {key}: {msg}")


def _check_keys(path: str, where: str, data: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(map(str, data)) - set(allowed))
    if unknown:
        raise _fail(path, f"{where}{unknown[0]}", f"unknown key (known: {', '.join(allowed)})")


def _mapping(path: str, key: str, value, default: dict | None = None) -> dict:
    if value is None:
        return dict(default or {})
    if not isinstance(value, dict):
        raise _fail(path, key, f"must be a mapping, got {type(value).__name__}")
    return value


def _placeholders_ok(path: str, key: str, text: str) -> str:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise _fail(path, key, f"bad placeholder in {text!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
    for n in names:
        if n not in PLACEHOLDERS:
            raise _fail(path, key, f"unknown placeholder {{{n}}} in {text!r} (known: "
                                   + ", ".join("{" + p + "}" for p in PLACEHOLDERS) + ")")
    return text


def _text(path: str, key: str, value) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _fail(path, key, f"must be a string, got {type(value).__name__}")
    return _placeholders_ok(path, key, str(value))


def _command(path: str, key: str, value) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list) or not value:
        raise _fail(path, key, "must be a non-empty list of strings (the program and its arguments, "
                               "no shell)")
    return tuple(_text(path, f"{key}[{i}]", v) for i, v in enumerate(value))


def parse(data, path: str = "", *, builtin: bool = False) -> Stack:
    """A stack definition from its YAML data; raises ``StackError`` naming the key."""
    if not isinstance(data, dict):
        raise _fail(path, "(top level)", "a stack definition is a YAML mapping")
    _check_keys(path, "", data, TOP_KEYS)
    if "name" not in data:
        raise _fail(path, "name", "missing (the stack's name, as --stage/--baseline print it)")
    name = str(data["name"])
    if not NAME_RE.match(name):
        raise _fail(path, "name", f"{name!r}: letters, digits, '.', '_' and '-' only")
    stage = data.get("stage")
    if stage is not None and stage not in STAGES:
        raise _fail(path, "stage", f"must be one of {', '.join(map(str, STAGES))} (whose expectations apply), "
                                   f"got {stage!r}")
    start = _mapping(path, "start", data.get("start"))
    _check_keys(path, "start.", start, START_KEYS)
    entry = start.get("entry")
    command = start.get("command")
    if entry is not None and command is not None:
        raise _fail(path, "start.entry", "give start.entry (a Python entrypoint) or start.command, not both")
    if entry is None and command is None:
        if stage is None:
            raise _fail(path, "start.command", "missing: say how to start the server (start.command, or "
                                               "start.entry for a Python entrypoint run like run.py)")
        entry = STAGES[stage].entrypoint
    env_raw = _mapping(path, "start.env", start.get("env"))
    env = {}
    for k, v in env_raw.items():
        if not isinstance(k, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            raise _fail(path, f"start.env.{k}", "not a valid environment variable name")
        env[k] = _text(path, f"start.env.{k}", v)
    ready_raw = _mapping(path, "start.ready", start.get("ready"))
    _check_keys(path, "start.ready.", ready_raw, READY_KEYS)
    log_re = ready_raw.get("log")
    if log_re is not None:
        try:
            re.compile(str(log_re))
        except re.error as exc:
            raise _fail(path, "start.ready.log", f"not a regular expression: {exc}") from None
    elif entry is not None:
        log_re = r"^ims-migrate .* ready on "       # what our stages print
    ready = Ready(str(log_re) if log_re is not None else None, bool(ready_raw.get("udp_port", log_re is None)))
    timeout = start.get("timeout", 25)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 1 <= timeout <= 300:
        raise _fail(path, "start.timeout", f"seconds within 1..300, got {timeout!r}")
    prepare_raw = data.get("prepare") or []
    if not isinstance(prepare_raw, list):
        raise _fail(path, "prepare", "must be a list of commands (each a list of strings)")
    prepare = tuple(_command(path, f"prepare[{i}]", c) for i, c in enumerate(prepare_raw))
    relay = str(data.get("relay", "none"))
    if relay not in RELAYS:
        raise _fail(path, "relay", f"must be one of {', '.join(RELAYS)}, got {relay!r}")
    users = _mapping(path, "users", data.get("users"))
    _check_keys(path, "users.", users, USERS_KEYS)
    cdr_raw = _mapping(path, "cdr", data.get("cdr"))
    _check_keys(path, "cdr.", cdr_raw, CDR_KEYS)
    cdr = _cdr(path, cdr_raw)
    regs = _mapping(path, "registrations", data.get("registrations"))
    _check_keys(path, "registrations.", regs, REGISTRATION_KEYS)
    if "mml" in regs and "command" in regs:
        raise _fail(path, "registrations.mml", "give registrations.mml or registrations.command, not both")
    mml = regs.get("mml", entry is not None and "command" not in regs)
    if not isinstance(mml, bool):
        raise _fail(path, "registrations.mml", f"must be true or false, got {mml!r}")
    reference = data.get("reference", False)
    if not isinstance(reference, bool):
        raise _fail(path, "reference", f"must be true or false, got {reference!r}")
    stack_name: int | str = int(name) if name.isdigit() else name
    return Stack(
        name=stack_name, stage=stage, entry=_text(path, "start.entry", entry) if entry is not None else "",
        env=env, command=_command(path, "start.command", command) if command is not None else (),
        cwd=_text(path, "start.cwd", start.get("cwd", "{workdir}")), ready=ready, timeout=float(timeout),
        prepare=prepare, relay=relay,
        users_file=_text(path, "users.file", users.get("file", "{workdir}/users.json")),
        users_command=_command(path, "users.command", users["command"]) if "command" in users else (),
        cdr=cdr, registrations_mml=mml,
        registrations_command=_command(path, "registrations.command", regs["command"]) if "command" in regs else (),
        description=str(data.get("description", "")).strip(), path=os.path.abspath(path) if path else "",
        builtin=builtin, reference=reference)


def _cdr(path: str, raw: dict) -> CDRSource:
    fmt = str(raw.get("format", "csv34"))
    if fmt not in CDR_FORMATS:
        raise _fail(path, "cdr.format", f"must be one of {', '.join(CDR_FORMATS)}, got {fmt!r}")
    if fmt == "csv34":
        for k in ("files", "columns", "delimiter"):
            if k in raw:
                raise _fail(path, f"cdr.{k}", "only for cdr.format transactions (csv34 reads cdr.dir)")
        return CDRSource(fmt, _text(path, "cdr.dir", raw.get("dir", "{cdr_dir}")))
    if fmt == "none":
        return CDRSource(fmt)
    if "dir" in raw:
        raise _fail(path, "cdr.dir", "only for cdr.format csv34 (transactions reads cdr.files)")
    if "files" not in raw:
        raise _fail(path, "cdr.files", "missing: a glob of the accounting files (e.g. {workdir}/acc/*.log)")
    columns = raw.get("columns")
    if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
        raise _fail(path, "cdr.columns", "must be a list of column names, in file order")
    missing = [c for c in TRANSACTION_COLUMNS if c not in columns]
    if missing:
        raise _fail(path, "cdr.columns", f"lacks {', '.join(missing)} (needed: {', '.join(TRANSACTION_COLUMNS)})")
    delimiter = str(raw.get("delimiter", "|"))
    if len(delimiter) != 1:
        raise _fail(path, "cdr.delimiter", f"one character, got {delimiter!r}")
    return CDRSource(fmt, files=_text(path, "cdr.files", raw["files"]), delimiter=delimiter, columns=tuple(columns))


def load_file(path: str, *, builtin: bool = False) -> Stack:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise StackError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise StackError(f"{path}: not YAML: {exc}") from None
    return parse(data, path, builtin=builtin)


def _builtin_files() -> list[str]:
    return sorted(glob.glob(os.path.join(STACK_DIR, "*.yaml"))) + sorted(
        glob.glob(os.path.join(STACK_DIR, "*", "stack.yaml")))


def _load_builtins() -> dict[str, Stack]:
    found: dict[str, Stack] = {}
    for f in _builtin_files():
        st = load_file(f, builtin=True)
        if str(st.name) in found:
            raise StackError(f"{f}: name: {st.name!r} is also defined by {found[str(st.name)].path}")
        found[str(st.name)] = st
    # stages in order (each before its variants), then the others by name
    order = sorted(found.values(), key=lambda st: (st.stage is None, st.stage or 0, str(st.name) != str(st.stage),
                                                   str(st.name)))
    return {str(st.name): st for st in order}


STACKS: dict[str, Stack] = _load_builtins()
_LOADED: dict[str, Stack] = {}          # stack files given on the command line, by name


def register_file(path: str) -> Stack:
    """Load an operator's stack file and make its name known to ``stack()``."""
    st = load_file(path)
    key = str(st.name)
    if key in STACKS:
        raise StackError(f"{path}: name: {st.name!r} is a built-in stack (known: {', '.join(STACKS)}); "
                         "give your stack a name of its own")
    if key in _LOADED and _LOADED[key].path != st.path:
        raise StackError(f"{path}: name: {st.name!r} is also the name of {_LOADED[key].path}")
    _LOADED[key] = st
    return st


def stack(name: int | str | Stack) -> Stack:
    if isinstance(name, Stack):
        return name
    try:
        return STACKS[str(name)]
    except KeyError:
        pass
    try:
        return _LOADED[str(name)]
    except KeyError:
        raise ValueError(f"unknown stack {name!r} (known: {', '.join(STACKS)}, or a stack file)") from None


def expectation(expect: dict, name: int | str) -> dict | None:
    """A scenario's expectation for a stack: its own entry, else its stage's."""
    if name in expect:
        return expect[name]
    st = stack(name)
    return expect.get(st.stage) if st.stage is not None else None


def is_stack_file(value: str) -> bool:
    return str(value).endswith((".yaml", ".yml")) or os.sep in str(value)


class StackType(click.ParamType):
    """``--stage 2``, ``--stage 2-sippy``, ``--stage kamailio`` or ``--stack FILE.yaml``: converts
    to the stack name (int for plain stages); a file is loaded, validated and registered."""
    name = "stack"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, str)) and str(value) in STACKS:
            return STACKS[str(value)].name
        if is_stack_file(str(value)):
            try:
                return register_file(str(value)).name
            except StackError as exc:
                self.fail(str(exc), param, ctx)
        try:
            return stack(value).name
        except ValueError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param, *args, **kwargs) -> str:
        return "[" + "|".join(STACKS) + "|FILE.yaml]"

