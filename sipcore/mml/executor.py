"""MML commands executed against a ``ManagementContext`` (see ``sipcore.mml.context``).

``await MMLExecutor(context).execute("DSP REG")`` -> ``MMLResult(retcode, retmsg, output)``.
Return codes: 0 success, 1 execution failed, 2 syntax error, 3 unknown command,
4 missing/invalid parameter, 5 not found, 6 confirmation (CONFIRM=YES) required.

Fixes against the original: ``USERNAME`` keeps its case; ``RMV CALL``/``CLR CALL`` really end the
calls (BYE on both legs); ``DSP CDR STAT`` counts answered calls by their answer time; ``HELP``
describes each command; ``DSP LOG`` and ``DSP/EXP CDR`` validate dates (no path tricks); unknown
parameters are reported instead of ignored.
"""
from __future__ import annotations

import asyncio

import json
import logging
import os
import platform
import resource
import sys
from dataclasses import dataclass, field
from datetime import date, datetime
import inspect
from typing import Callable

from tabulate import tabulate

from sipcore.cdr import check_date
from sipcore.mml.grammar import VERBS, MMLCommand, MMLSyntaxError, parse_command, redact

log = logging.getLogger(__name__)

OK, FAILED, SYNTAX, UNKNOWN, BAD_PARAM, NOT_FOUND, NEED_CONFIRM = 0, 1, 2, 3, 4, 5, 6
OBJECT_ALIASES = {"USR": "USER", "LOGLEVEL": "LOG"}
CONFIG_EXPORT_DIR = os.path.join("config", "exports")
MAX_LOG_LINES = 1000
MAX_CDR_LIMIT = 10000


@dataclass
class MMLResult:
    retcode: int
    retmsg: str
    output: str = ""

    def as_dict(self) -> dict:
        return {"retcode": self.retcode, "retmsg": self.retmsg, "output": self.output,
                "timestamp": datetime.now().isoformat(timespec="seconds")}


class MMLError(Exception):
    def __init__(self, msg: str, code: int = FAILED):
        super().__init__(msg)
        self.code = code


@dataclass
class CommandSpec:
    verb: str
    obj: str
    handler: Callable
    summary: str
    params: dict[str, str] = field(default_factory=dict)     # KEY -> description
    required: tuple[str, ...] = ()
    subs: dict[str, str] = field(default_factory=dict)       # SUBOBJECT -> description
    example: str = ""

    @property
    def name(self) -> str:
        return f"{self.verb} {self.obj}"

    def usage(self) -> str:
        parts = [self.name]
        if self.subs:
            parts.append("[" + "|".join(self.subs) + "]")
        for key in self.params:
            parts.append(f"{key}=" if key in self.required else f"[{key}=]")
        return " ".join(parts)

    def help(self) -> str:
        lines = [self.usage(), "", self.summary]
        if self.subs:
            lines += ["", "Sub-objects:"] + [f"  {k:<10} {v}" for k, v in self.subs.items()]
        if self.params:
            lines += ["", "Parameters:"] + [
                f"  {k:<10} {'(required) ' if k in self.required else ''}{v}" for k, v in self.params.items()]
        if self.example:
            lines += ["", f"Example: {self.example}"]
        return "\n".join(lines)


def _kv_table(rows, headers=("item", "value")) -> str:
    return tabulate([(k, "" if v is None else v) for k, v in rows], headers=list(headers), tablefmt="simple")


def _table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "(none)"
    cols = cols or list(rows[0].keys())
    return tabulate([["" if r.get(c) is None else r.get(c) for c in cols] for r in rows],
                    headers=cols, tablefmt="simple")


def _int_param(cmd: MMLCommand, key: str, default: int, lo: int, hi: int) -> int:
    raw = cmd.params.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MMLError(f"{key} must be a whole number, got {raw!r}", BAD_PARAM) from None
    if not lo <= value <= hi:
        raise MMLError(f"{key} must be between {lo} and {hi}, got {value}", BAD_PARAM)
    return value


def _date_param(cmd: MMLCommand, key: str) -> str | None:
    raw = cmd.params.get(key)
    if not raw:
        return None
    try:
        return check_date(raw)
    except ValueError as exc:
        raise MMLError(f"{key}: {exc}", BAD_PARAM) from None


def _confirm(cmd: MMLCommand) -> None:
    if cmd.params.get("CONFIRM", "").upper() != "YES":
        raise MMLError(f"{cmd.name} changes the running server; add CONFIRM=YES", NEED_CONFIRM)


def _json_wanted(cmd: MMLCommand) -> bool:
    fmt = cmd.params.get("FORMAT", "").upper()
    if fmt not in ("", "TABLE", "JSON"):
        raise MMLError(f"FORMAT must be TABLE or JSON, got {cmd.params['FORMAT']!r}", BAD_PARAM)
    return fmt == "JSON"


def _tail(path: str, lines: int) -> str:
    """The last ``lines`` lines of a (possibly large) text file, reading at most 4 MiB."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        chunk = min(size, 4 << 20)
        fh.seek(size - chunk)
        data = fh.read(chunk)
    text = data.decode("utf-8", "replace").splitlines()
    if chunk < size and text:
        text = text[1:]      # first line may be partial
    return "\n".join(text[-lines:])


FORMAT_PARAM = {"FORMAT": "TABLE (default) or JSON"}


class MMLExecutor:
    def __init__(self, context):
        self.ctx = context
        self.commands: dict[tuple[str, str], CommandSpec] = {}
        self._log_level: str | None = None      # set at run time via SET LOG / SET CFG
        self._register_all()

    # --- dispatch -----------------------------------------------------------------------------
    async def execute(self, line: str) -> MMLResult:
        try:
            cmd = parse_command(line)
        except MMLSyntaxError as exc:
            return MMLResult(SYNTAX, f"syntax error: {exc}")
        if cmd.verb == "HELP":
            return self._help(cmd)
        obj = OBJECT_ALIASES.get(cmd.obj, cmd.obj)
        spec = self.commands.get((cmd.verb, obj))
        if spec is None:
            return MMLResult(UNKNOWN, self._unknown(cmd))
        if cmd.sub and cmd.sub not in spec.subs:
            allowed = f" (allowed: {', '.join(spec.subs)})" if spec.subs else ""
            return MMLResult(BAD_PARAM, f"{spec.name} does not take {cmd.sub!r}{allowed}; see HELP {spec.name}")
        unknown = [k for k in cmd.params if k not in spec.params]
        if unknown:
            allowed = ", ".join(spec.params) or "none"
            return MMLResult(BAD_PARAM, f"{spec.name}: unknown parameter(s) {', '.join(unknown)} "
                                        f"(allowed: {allowed})")
        missing = [k for k in spec.required if not cmd.params.get(k)]
        if missing:
            return MMLResult(BAD_PARAM, f"{spec.name} needs {' '.join(k + '=' for k in missing)}; "
                                        f"usage: {spec.usage()}")
        try:
            out = spec.handler(cmd)
            if inspect.isawaitable(out):
                out = await out
            return MMLResult(OK, "success", out or "")
        except MMLError as exc:
            return MMLResult(exc.code, str(exc))
        except ValueError as exc:      # typed validation errors from users/cdr/blacklist
            return MMLResult(BAD_PARAM, f"{spec.name}: {exc}")
        except OSError as exc:
            return MMLResult(FAILED, f"{spec.name} failed: {exc.strerror or exc}")
        except Exception as exc:       # noqa: BLE001 - never a traceback to the operator
            log.exception("MML %s failed", redact(line))
            return MMLResult(FAILED, f"{spec.name} failed: internal error ({type(exc).__name__})")

    def _unknown(self, cmd: MMLCommand) -> str:
        if cmd.verb in ("RST", "SAVE", "STR", "STP") and not any(v == cmd.verb for v, _ in self.commands):
            return (f"{cmd.name}: {cmd.verb} commands are not supported by this server "
                    f"(the original's dialer and SAVE/RST were not ported); try HELP")
        objects = sorted(o for v, o in self.commands if v == cmd.verb)
        if not cmd.obj:
            return f"{cmd.verb} needs an object: {' '.join(objects)}"
        hint = f"; {cmd.verb} objects: {' '.join(objects)}" if objects else ""
        return f"unknown command {cmd.name!r}{hint}; try HELP"

    def _help(self, cmd: MMLCommand) -> MMLResult:
        if cmd.params:
            return MMLResult(BAD_PARAM, "HELP takes no parameters: HELP [VERB OBJECT]")
        if not cmd.obj:
            rows = [(s.usage(), s.summary) for s in self.commands.values()]
            return MMLResult(OK, "success", tabulate(rows, headers=["command", "meaning"], tablefmt="simple")
                             + "\n\nHELP VERB OBJECT shows one command in detail.")
        verb = cmd.obj
        if verb not in VERBS:
            return MMLResult(BAD_PARAM, f"HELP: {cmd.obj!r} is not a verb ({' '.join(VERBS)})")
        if not cmd.sub:
            specs = [s for (v, _), s in self.commands.items() if v == verb]
            if not specs:
                return MMLResult(NOT_FOUND, f"no {verb} commands are supported")
            rows = [(s.usage(), s.summary) for s in specs]
            return MMLResult(OK, "success", tabulate(rows, headers=["command", "meaning"], tablefmt="simple"))
        spec = self.commands.get((verb, OBJECT_ALIASES.get(cmd.sub, cmd.sub)))
        if spec is None:
            return MMLResult(NOT_FOUND, f"no help for {verb} {cmd.sub}: unknown command")
        return MMLResult(OK, "success", spec.help())

    def _add(self, verb, obj, handler, summary, params=None, required=(), subs=None, example="") -> None:
        spec = CommandSpec(verb, obj, handler, summary, dict(params or {}), tuple(required),
                           dict(subs or {}), example)
        self.commands[(verb, obj)] = spec

    def _register_all(self) -> None:
        a = self._add
        a("DSP", "SYSINFO", self._dsp_sysinfo, "host, OS, Python, stage, media backend, uptime")
        a("DSP", "SYSCFG", self._dsp_syscfg, "effective server configuration (from environment and config file)")
        a("DSP", "SRVSTAT", self._dsp_srvstat, "server counters: registrations, calls, media sessions, SIP counters")
        user_fields = {"USERNAME": "user name (case kept)", "PASSWORD": "SIP/MML password",
                       "NAME": "display name", "PHONE": "phone number", "EMAIL": "e-mail address",
                       "SERVICE": "service type (free text, e.g. BASIC)", "ROLE": "USER, ADMIN or OPERATOR"}
        a("DSP", "USER", self._dsp_user, "provisioned users (USR is an alias)",
          {"USERNAME": "exact user name", "STATUS": "ACTIVE, INACTIVE or SUSPENDED", **FORMAT_PARAM},
          example="DSP USER STATUS=ACTIVE")
        a("ADD", "USER", self._add_user, "add an ACTIVE user", user_fields, ("USERNAME", "PASSWORD"),
          example="ADD USER USERNAME=1005 PASSWORD=secret NAME=\"Front desk\"")
        a("MOD", "USER", self._mod_user, "modify a user",
          {**user_fields, "STATUS": "ACTIVE, INACTIVE or SUSPENDED"}, ("USERNAME",),
          example="MOD USER USERNAME=1005 STATUS=SUSPENDED")
        a("RMV", "USER", self._rmv_user, "delete a user", {"USERNAME": "user name"}, ("USERNAME",))
        a("DSP", "REG", self._dsp_reg, "registrations: contact as stored and as registered, source (received) address, transport, expiry",
          {"URI": "AOR or part of it (e.g. 1001)", **FORMAT_PARAM},
          subs={"ALL": "every binding (default)", "STAT": "counts only"}, example="DSP REG URI=1001")
        a("RMV", "REG", self._rmv_reg, "drop the bindings of one AOR",
          {"URI": "AOR (sip:1001@host or 1001)", "CONFIRM": "YES"}, ("URI",))
        a("CLR", "REG", self._clr_reg, "drop every binding", {"CONFIRM": "YES"})
        a("DSP", "CALL", self._dsp_call, "active calls", {"CALLID": "one Call-ID", **FORMAT_PARAM},
          subs={"ACTIVE": "active calls (default)", "STAT": "counts only"})
        a("RMV", "CALL", self._rmv_call, "end a call: BYE to both legs, media released, CDR written",
          {"CALLID": "Call-ID", "CONFIRM": "YES"}, ("CALLID",))
        a("CLR", "CALL", self._clr_call, "end every active call (BYE to both legs)", {"CONFIRM": "YES"})
        a("DSP", "CDR", self._dsp_cdr, "call detail records of one day",
          {"DATE": "YYYY-MM-DD (default today)", "TYPE": "CALL, REGISTER, MESSAGE or OPTIONS",
           "LIMIT": f"last N rows (default 50, max {MAX_CDR_LIMIT})", **FORMAT_PARAM},
          subs={"TODAY": "today's records (default)", "STAT": "counts and call figures"},
          example="DSP CDR DATE=2026-02-16 TYPE=CALL LIMIT=20")
        a("EXP", "CDR", self._exp_cdr, "export one day's CDR file to <CDR_DIR>/exports/",
          {"DATE": "YYYY-MM-DD", "TYPE": "record type filter", "FORMAT": "CSV (only)"}, ("DATE",))
        a("CLR", "CDR", self._clr_cdr, "delete CDR day folders before a date (never the last 7 days)",
          {"BEFORE": "YYYY-MM-DD", "CONFIRM": "YES"}, ("BEFORE",))
        a("DSP", "CFG", self._dsp_cfg, "configuration values",
          {"KEY": "name or part of it (SIP_REALM, LOG.LEVEL ...)", "CATEGORY": "name prefix (SERVER, RTP, NAT ...)"})
        a("SET", "CFG", self._set_cfg, "change a setting at run time (only LOG.LEVEL)",
          {"KEY": "LOG.LEVEL", "VALUE": "DEBUG, INFO, WARNING, ERROR or CRITICAL"}, ("KEY", "VALUE"),
          example="SET CFG KEY=LOG.LEVEL VALUE=DEBUG")
        a("SET", "LOG", self._set_log, "change the log level at run time (LOGLEVEL is an alias)",
          {"LEVEL": "DEBUG, INFO, WARNING, ERROR or CRITICAL"}, ("LEVEL",))
        a("EXP", "CFG", self._exp_cfg, f"write the configuration as JSON to {CONFIG_EXPORT_DIR}/")
        a("DSP", "MEDIA", self._dsp_media, "media relay backend and its sessions", dict(FORMAT_PARAM))
        a("DSP", "NAT", self._dsp_nat, "NAT helper state: NATed bindings, fix-up and keepalive counters",
          dict(FORMAT_PARAM))
        a("DSP", "BLACKLIST", self._dsp_blacklist, "blocked source addresses")
        a("ADD", "BLACKLIST", self._add_blacklist, "block a source address", {"IP": "IPv4/IPv6 address"}, ("IP",))
        a("RMV", "BLACKLIST", self._rmv_blacklist, "unblock a source address", {"IP": "address"}, ("IP",))
        a("DSP", "ATTACK", self._dsp_attack, "failed-authentication counters per source",
          subs={"STAT": "counters (default)"})
        a("DSP", "LOG", self._dsp_log, "tail of a day's log file",
          {"LINES": f"number of lines (default 20, max {MAX_LOG_LINES})", "DATE": "YYYY-MM-DD (default today)"})

    # --- system -------------------------------------------------------------------------------
    def _stats(self) -> dict:
        try:
            return dict(self.ctx.stats())
        except Exception:   # noqa: BLE001 - counters are informative only
            log.exception("stats() failed")
            return {}

    def _dsp_sysinfo(self, cmd) -> str:
        s = self._stats()
        cfg = self.ctx.config
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows = [("host", platform.node()), ("os", platform.platform()), ("python", sys.version.split()[0]),
                ("pid", os.getpid()), ("stage", f"{self.ctx.stage} ({s.get('stage_name', '')})".strip()),
                ("signalling", f"{cfg.server_ip}:{cfg.server_port} (advertised "
                               f"{cfg.advertised_host}:{cfg.advertised_port})"),
                ("signalling engine", s.get("signalling_engine", "sipcore")),
                ("media backend", getattr(self.ctx.media, "name", "")), ("uptime_s", s.get("uptime", "")),
                ("max_rss_kib", rss_kib), ("registrations", s.get("registrations", "")),
                ("active_calls", s.get("active_calls", "")), ("media_sessions", s.get("media_sessions", ""))]
        return _kv_table(rows)

    def _dsp_srvstat(self, cmd) -> str:
        s = self._stats()
        s.setdefault("pid", os.getpid())
        return _kv_table(sorted(s.items()), ("counter", "value"))

    def _config_items(self) -> dict:
        items = dict(self.ctx.config.describe())
        if self._log_level:
            items["LOG_LEVEL"] = self._log_level
        return items

    def _dsp_syscfg(self, cmd) -> str:
        return _kv_table(sorted(self._config_items().items()), ("key", "value"))

    def _dsp_cfg(self, cmd) -> str:
        items = self._config_items()
        key = cmd.params.get("KEY", "").upper().replace(".", "_")
        category = cmd.params.get("CATEGORY", "").upper().replace(".", "_")
        rows = sorted((k, v) for k, v in items.items()
                      if (not key or key in k) and (not category or k.startswith(category)))
        if not rows:
            raise MMLError(f"no configuration key matches {cmd.params.get('KEY') or cmd.params.get('CATEGORY')!r}",
                           NOT_FOUND)
        return _kv_table(rows, ("key", "value"))

    def _set_cfg(self, cmd) -> str:
        key = cmd.params["KEY"].upper()
        if key not in ("LOG.LEVEL", "LOG_LEVEL"):
            raise MMLError(f"{key} is read-only at run time (only LOG.LEVEL can be set; "
                           f"others come from the environment at start)", BAD_PARAM)
        return self._set_level(cmd.params["VALUE"])

    def _set_log(self, cmd) -> str:
        return self._set_level(cmd.params["LEVEL"])

    def _set_level(self, level: str) -> str:
        try:
            self.ctx.set_log_level(level)
        except ValueError as exc:
            raise MMLError(str(exc), BAD_PARAM) from None
        self._log_level = level.strip().upper()
        log.warning("log level changed to %s via MML", level.upper())
        return f"log level set to {level.upper()} (until restart; set LOG_LEVEL to keep it)"

    def _exp_cfg(self, cmd) -> str:
        os.makedirs(CONFIG_EXPORT_DIR, exist_ok=True)
        path = os.path.join(CONFIG_EXPORT_DIR, f"config_export_{datetime.now():%Y%m%d_%H%M%S}.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self._config_items(), fh, indent=2, default=str)
        return f"exported to {path}"

    def _dsp_log(self, cmd) -> str:
        lines = _int_param(cmd, "LINES", 20, 1, MAX_LOG_LINES)
        day = _date_param(cmd, "DATE") or date.today().isoformat()
        from sipcore.logsetup import log_file_path
        path = log_file_path(self.ctx.config.log_dir, day)
        if not os.path.exists(path):
            raise MMLError(f"no log file for {day} ({path})", NOT_FOUND)
        return _tail(path, lines)

    # --- users --------------------------------------------------------------------------------
    def _dsp_user(self, cmd) -> str:
        status = cmd.params.get("STATUS", "").upper() or None
        if status and status not in ("ACTIVE", "INACTIVE", "SUSPENDED"):
            raise MMLError("STATUS must be ACTIVE, INACTIVE or SUSPENDED", BAD_PARAM)
        users = self.ctx.users.list(status)
        name = cmd.params.get("USERNAME")
        if name:
            users = [u for u in users if u.get("username") == name]
            if not users:
                raise MMLError(f"user {name} does not exist", NOT_FOUND)
        for u in users:      # never show secrets
            for secret in ("password", "ha1", "ha1_sha256"):
                u.pop(secret, None)
        if _json_wanted(cmd):
            return json.dumps(users)
        return _table(users, ["username", "display_name", "status", "service_type", "phone", "email", "role",
                              "update_time"]) + f"\n\n{len(users)} user(s)"

    # changes to users.json (write + fsync + rename) run in a thread: never on the event loop
    async def _add_user(self, cmd) -> str:
        p = cmd.params
        fields = {"display_name": p.get("NAME"), "phone": p.get("PHONE"), "email": p.get("EMAIL"),
                  "service_type": p.get("SERVICE"), "role": p.get("ROLE")}
        user = await asyncio.to_thread(self.ctx.users.add, p["USERNAME"], p["PASSWORD"],
                                       **{k: v for k, v in fields.items() if v is not None})
        return f"user {user['username']} added"

    async def _mod_user(self, cmd) -> str:
        mapping = {"PASSWORD": "password", "NAME": "display_name", "PHONE": "phone", "EMAIL": "email",
                   "SERVICE": "service_type", "STATUS": "status", "ROLE": "role"}
        changes = {mapping[k]: v for k, v in cmd.params.items() if k in mapping}
        name = cmd.params["USERNAME"]
        if not changes:
            raise MMLError("nothing to modify: give PASSWORD=, NAME=, PHONE=, EMAIL=, SERVICE=, STATUS= or ROLE=",
                           BAD_PARAM)
        if self.ctx.users.get(name) is None:
            raise MMLError(f"user {name} does not exist", NOT_FOUND)
        await asyncio.to_thread(self.ctx.users.modify, name, **changes)
        return f"user {name} modified ({', '.join(sorted(changes))})"

    async def _rmv_user(self, cmd) -> str:
        name = cmd.params["USERNAME"]
        if not await asyncio.to_thread(self.ctx.users.delete, name):
            raise MMLError(f"user {name} does not exist", NOT_FOUND)
        return f"user {name} removed"

    # --- registrations and calls --------------------------------------------------------------
    def _dsp_reg(self, cmd) -> str:
        rows = self.ctx.registrar.bindings()
        uri = cmd.params.get("URI")
        if uri:
            rows = [r for r in rows if uri in str(r.get("aor", ""))]
        if cmd.sub == "STAT":
            stats = [("bindings", len(rows)), ("aors", len({r.get("aor") for r in rows})),
                     ("nated", sum(1 for r in rows if r.get("nated"))),
                     ("udp", sum(1 for r in rows if str(r.get("transport", "")).lower() == "udp")),
                     ("tcp", sum(1 for r in rows if str(r.get("transport", "")).lower() == "tcp"))]
            return _kv_table(stats, ("counter", "value"))
        if _json_wanted(cmd):
            return json.dumps(rows, default=str)
        if uri and not rows:
            raise MMLError(f"no registration matches {uri!r}", NOT_FOUND)
        cols = ["aor", "contact", "original_contact", "source", "transport", "expires"]
        cols += [c for c in ("nated", "nat_reasons", "user_agent") if any(c in r for r in rows)]
        return _table(rows, cols) + (f"\n\n{len(rows)} binding(s)" if rows else "")

    def _rmv_reg(self, cmd) -> str:
        _confirm(cmd)
        uri = cmd.params["URI"]
        n = self.ctx.registrar.remove(uri)
        if not n:
            raise MMLError(f"no binding for {uri}", NOT_FOUND)
        return f"{n} binding(s) removed"

    def _clr_reg(self, cmd) -> str:
        _confirm(cmd)
        return f"{self.ctx.registrar.clear()} binding(s) removed"

    def _dsp_call(self, cmd) -> str:
        rows = self.ctx.calls.list()
        cid = cmd.params.get("CALLID")
        if cid:
            rows = [r for r in rows if r.get("call_id") == cid]
        if cmd.sub == "STAT":
            states: dict[str, int] = {}
            for r in rows:
                states[str(r.get("state", ""))] = states.get(str(r.get("state", "")), 0) + 1
            return _kv_table([("active", len(rows)), *sorted(states.items())], ("counter", "value"))
        if _json_wanted(cmd):
            return json.dumps(rows, default=str)
        if cid and not rows:
            raise MMLError(f"no active call {cid}", NOT_FOUND)
        return _table(rows) + (f"\n\n{len(rows)} call(s)" if rows else "")

    async def _rmv_call(self, cmd) -> str:
        _confirm(cmd)
        cid = cmd.params["CALLID"]
        if not await self.ctx.calls.end(cid):
            raise MMLError(f"no active call {cid}", NOT_FOUND)
        return f"call {cid} ended (BYE sent to both legs)"

    async def _clr_call(self, cmd) -> str:
        _confirm(cmd)
        return f"{await self.ctx.calls.end_all()} call(s) ended"

    # --- CDR ----------------------------------------------------------------------------------
    def _dsp_cdr(self, cmd) -> str:
        day = _date_param(cmd, "DATE")
        if cmd.sub == "STAT":
            if "TYPE" in cmd.params or "LIMIT" in cmd.params:
                raise MMLError("DSP CDR STAT takes DATE= only", BAD_PARAM)
            st = self.ctx.cdr.stats(day)
            if _json_wanted(cmd):
                return json.dumps(st)
            by_type = st.pop("by_type", {})
            return (_kv_table(st.items(), ("figure", "value")) + "\n\n"
                    + (_kv_table(by_type.items(), ("type/state", "rows")) if by_type else "(no records)"))
        limit = _int_param(cmd, "LIMIT", 50, 1, MAX_CDR_LIMIT)
        rows = self.ctx.cdr.read_rows(day, cmd.params.get("TYPE") or None, limit)
        if _json_wanted(cmd):
            return json.dumps(rows)
        return _table(rows, ["record_id", "record_type", "call_state", "start_time", "caller_number",
                             "callee_number", "status_code", "duration", "termination_reason"]) \
            + (f"\n\n{len(rows)} record(s)" if rows else "")

    def _exp_cdr(self, cmd) -> str:
        fmt = cmd.params.get("FORMAT", "CSV").upper()
        if fmt != "CSV":
            raise MMLError("only FORMAT=CSV is supported", BAD_PARAM)
        day = _date_param(cmd, "DATE")
        path = self.ctx.cdr.export(day, cmd.params.get("TYPE") or None)
        return f"exported to {path}"

    def _clr_cdr(self, cmd) -> str:
        _confirm(cmd)
        before = _date_param(cmd, "BEFORE")
        removed = self.ctx.cdr.purge_before(before)
        return f"{len(removed)} day folder(s) removed" + (f": {', '.join(removed)}" if removed else "")

    # --- media, NAT, security -----------------------------------------------------------------
    def _dsp_media(self, cmd) -> str:
        sessions = self.ctx.media.sessions()
        if _json_wanted(cmd):
            return json.dumps({"backend": self.ctx.media.name, "sessions": sessions}, default=str)
        return f"backend: {self.ctx.media.name}\n\n" + _table(sessions) + \
            (f"\n\n{len(sessions)} session(s)" if sessions else "")

    def _dsp_nat(self, cmd) -> str:
        if self.ctx.nat is None:
            if _json_wanted(cmd):
                return json.dumps({"stage": self.ctx.stage, "nat_helper": False})
            return (f"stage {self.ctx.stage}: no NAT helper at this stage "
                    f"(REGISTER Contact handling only)")
        state = dict(self.ctx.nat.state())
        if _json_wanted(cmd):
            return json.dumps(state, default=str)
        bindings = state.pop("nated_bindings", [])
        keepalive = state.pop("keepalive", None)
        parts = [_kv_table(sorted(state.items()), ("counter", "value")) if state else "(no counters)"]
        if isinstance(keepalive, dict):
            parts.append("keepalive:\n" + _kv_table(sorted(keepalive.items()), ("counter", "value")))
        parts.append("NATed bindings:\n" + _table(bindings, ["aor", "contact", "source", "nat_reasons",
                                                            "keepalive_failures"]))
        return "\n\n".join(parts)

    def _dsp_blacklist(self, cmd) -> str:
        entries = list(self.ctx.blacklist.list())
        if not entries:
            return "(empty)"
        return tabulate([(e,) for e in entries], headers=["blocked address"], tablefmt="simple") + \
            f"\n\n{len(entries)} address(es)"

    def _add_blacklist(self, cmd) -> str:
        ip = cmd.params["IP"]
        _check_ip(ip)
        return f"{ip} added" if self.ctx.blacklist.add(ip) else f"{ip} already listed"

    def _rmv_blacklist(self, cmd) -> str:
        ip = cmd.params["IP"]
        _check_ip(ip)
        if not self.ctx.blacklist.remove(ip):
            raise MMLError(f"{ip} is not listed", NOT_FOUND)
        return f"{ip} removed"

    def _dsp_attack(self, cmd) -> str:
        getter = getattr(self.ctx, "limiter_stats", None)
        stats = getter() if callable(getter) else {}
        return _table([{"ip": k, **v} if isinstance(v, dict) else {"ip": k, "failures": v}
                       for k, v in stats.items()])


def _check_ip(value: str) -> None:
    import ipaddress
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise MMLError(f"IP must be an IPv4 or IPv6 address, got {value!r}", BAD_PARAM) from None

