"""MML command execution against the running server (a ManagementContext, see sipcore.management)."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from tabulate import tabulate

from sipcore.mml.grammar import MMLSyntaxError, parse_command


@dataclass
class MMLResult:
    retcode: int
    retmsg: str
    output: str = ""

    def as_dict(self) -> dict:
        return {"retcode": self.retcode, "retmsg": self.retmsg, "output": self.output,
                "timestamp": datetime.now().isoformat(timespec="seconds")}


class MMLError(Exception):
    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


HELP = {
    "DSP SYSINFO": "system and server information",
    "DSP SYSCFG": "effective configuration",
    "DSP SRVSTAT": "server counters (registrations, calls, media sessions)",
    "DSP USER": "[USERNAME=] [STATUS=] list users",
    "ADD USER": "USERNAME= PASSWORD= [NAME=] [PHONE=] [EMAIL=] [SERVICE=] [ROLE=] add a user",
    "MOD USER": "USERNAME= [PASSWORD=] [NAME=] [PHONE=] [EMAIL=] [SERVICE=] [STATUS=] [ROLE=] modify a user",
    "RMV USER": "USERNAME= delete a user",
    "DSP REG": "[URI=] registrations (contact as stored, source, NAT flags); DSP REG STAT",
    "RMV REG": "URI= CONFIRM=YES drop the bindings of an AOR",
    "CLR REG": "CONFIRM=YES drop all bindings",
    "DSP CALL": "[CALLID=] active calls; DSP CALL STAT",
    "RMV CALL": "CALLID= CONFIRM=YES end a call (BYE to both legs)",
    "CLR CALL": "CONFIRM=YES end all calls",
    "DSP CDR": "[DATE=YYYY-MM-DD] [TYPE=CALL|REGISTER|MESSAGE|OPTIONS] [LIMIT=50]; DSP CDR STAT",
    "EXP CDR": "DATE= [TYPE=] export to CDR/exports/",
    "CLR CDR": "BEFORE=YYYY-MM-DD CONFIRM=YES delete CDR folders (not the last 7 days)",
    "DSP CFG": "[KEY=] configuration values",
    "SET CFG": "KEY=LOG.LEVEL VALUE=DEBUG|INFO|WARNING|ERROR",
    "SET LOG": "LEVEL=DEBUG|INFO|WARNING|ERROR",
    "EXP CFG": "export configuration as JSON",
    "DSP MEDIA": "media relay sessions",
    "DSP NAT": "NAT helper state (stage 2): NATed bindings, fix-up and keepalive counters",
    "DSP BLACKLIST": "blocked source addresses; ADD BLACKLIST IP=; RMV BLACKLIST IP=",
    "DSP ATTACK": "STAT failed-attempt counters per source",
    "DSP LOG": "[LINES=20] tail of today's log",
    "HELP": "[VERB OBJECT] this help",
}


def _table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "(none)"
    cols = cols or list(rows[0].keys())
    return tabulate([[r.get(c, "") for c in cols] for r in rows], headers=cols, tablefmt="simple")


def _confirm(cmd) -> None:
    if cmd.params.get("CONFIRM", "").upper() != "YES":
        raise MMLError(f"{cmd.name} needs CONFIRM=YES")


def _need(cmd, key: str) -> str:
    value = cmd.params.get(key)
    if not value:
        raise MMLError(f"{cmd.name} needs {key}=")
    return value


class MMLExecutor:
    def __init__(self, context):
        self.ctx = context

    async def execute(self, line: str) -> MMLResult:
        try:
            cmd = parse_command(line)
        except MMLSyntaxError as exc:
            return MMLResult(2, f"syntax error: {exc}")
        handler = getattr(self, f"_{cmd.verb.lower()}_{cmd.obj.lower()}", None)
        if cmd.verb == "HELP":
            handler = self._help
        if handler is None:
            return MMLResult(3, f"unsupported command {cmd.name!r}; try HELP")
        try:
            out = handler(cmd)
            if hasattr(out, "__await__"):
                out = await out
            return MMLResult(0, "success", out or "")
        except MMLError as exc:
            return MMLResult(exc.code, str(exc))
        except (ValueError, KeyError, OSError) as exc:
            return MMLResult(1, f"{cmd.name} failed: {exc}")

    # --- system -------------------------------------------------------------------------------
    def _help(self, cmd) -> str:
        key = f"{cmd.obj} {cmd.sub}".strip()
        rows = [(k, v) for k, v in HELP.items() if not key or k.startswith(key) or k.endswith(key)]
        if not rows:
            raise MMLError(f"no help for {key!r}")
        return tabulate(rows, headers=["command", "parameters / meaning"], tablefmt="simple")

    def _dsp_sysinfo(self, cmd) -> str:
        s = self.ctx.stats()
        rows = [("host", platform.node()), ("os", platform.platform()), ("python", sys.version.split()[0]),
                ("stage", f"{s['stage']} ({s['stage_name']})"), ("media", self.ctx.media.name),
                ("uptime_s", s["uptime"]), ("pid", os.getpid())]
        return tabulate(rows, tablefmt="simple")

    def _dsp_srvstat(self, cmd) -> str:
        return tabulate(sorted(self.ctx.stats().items()), tablefmt="simple")

    def _dsp_syscfg(self, cmd) -> str:
        return tabulate(sorted((k, v) for k, v in self.ctx.config.describe().items()), tablefmt="simple")

    _dsp_cfg_all = _dsp_syscfg

    def _dsp_cfg(self, cmd) -> str:
        items = self.ctx.config.describe()
        key = cmd.params.get("KEY", "").upper().replace(".", "_")
        rows = sorted((k, v) for k, v in items.items() if not key or key in k)
        if not rows:
            raise MMLError(f"no configuration key matches {key!r}")
        return tabulate(rows, headers=["key", "value"], tablefmt="simple")

    def _set_cfg(self, cmd) -> str:
        key = _need(cmd, "KEY").upper()
        if key not in ("LOG.LEVEL", "LOG_LEVEL"):
            raise MMLError(f"{key} is read-only at run time; only LOG.LEVEL can be set")
        return self._set_level(_need(cmd, "VALUE"))

    def _set_log(self, cmd) -> str:
        return self._set_level(_need(cmd, "LEVEL"))

    _set_loglevel = _set_log

    def _set_level(self, level: str) -> str:
        try:
            self.ctx.set_log_level(level)
        except ValueError as exc:
            raise MMLError(str(exc)) from None
        return f"log level set to {level.upper()}"

    def _exp_cfg(self, cmd) -> str:
        os.makedirs("config/exports", exist_ok=True)
        path = f"config/exports/config_export_{datetime.now():%Y%m%d_%H%M%S}.json"
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.ctx.config.describe(), fh, indent=2, default=str)
        return f"exported to {path}"

    def _dsp_log(self, cmd) -> str:
        lines = int(cmd.params.get("LINES", "20"))
        day = cmd.params.get("DATE", date.today().isoformat())
        path = os.path.join(self.ctx.config.log_dir, day, "ims-sip-server.log")
        if not os.path.exists(path):
            raise MMLError(f"no log for {day}")
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-max(1, min(lines, 1000)):])

    # --- users --------------------------------------------------------------------------------
    def _dsp_user(self, cmd) -> str:
        name = cmd.params.get("USERNAME")
        users = self.ctx.users.list(cmd.params.get("STATUS", "").upper() or None)
        if name:
            users = [u for u in users if u["username"] == name]
        return _table(users, ["username", "display_name", "status", "service_type", "phone", "email", "role"])

    _dsp_usr = _dsp_user

    def _add_user(self, cmd) -> str:
        from sipcore.users import UserError
        try:
            u = self.ctx.users.add(_need(cmd, "USERNAME"), _need(cmd, "PASSWORD"),
                                   display_name=cmd.params.get("NAME", cmd.params["USERNAME"]),
                                   phone=cmd.params.get("PHONE", ""), email=cmd.params.get("EMAIL", ""),
                                   service_type=cmd.params.get("SERVICE", "BASIC"), role=cmd.params.get("ROLE"))
        except UserError as exc:
            raise MMLError(str(exc)) from None
        return f"user {u['username']} added"

    _add_usr = _add_user

    def _mod_user(self, cmd) -> str:
        from sipcore.users import UserError
        mapping = {"PASSWORD": "password", "NAME": "display_name", "PHONE": "phone", "EMAIL": "email",
                   "SERVICE": "service_type", "STATUS": "status", "ROLE": "role"}
        changes = {mapping[k]: v for k, v in cmd.params.items() if k in mapping}
        if not changes:
            raise MMLError("nothing to modify")
        try:
            self.ctx.users.modify(_need(cmd, "USERNAME"), **changes)
        except UserError as exc:
            raise MMLError(str(exc)) from None
        return f"user {cmd.params['USERNAME']} modified"

    _mod_usr = _mod_user

    def _rmv_user(self, cmd) -> str:
        name = _need(cmd, "USERNAME")
        if not self.ctx.users.delete(name):
            raise MMLError(f"user {name} does not exist")
        return f"user {name} removed"

    _rmv_usr = _rmv_user

    # --- registrations and calls --------------------------------------------------------------
    def _dsp_reg(self, cmd) -> str:
        rows = self.ctx.registrar.bindings()
        if cmd.sub == "STAT":
            return tabulate([("bindings", len(rows)), ("aors", len({r["aor"] for r in rows})),
                             ("nated", sum(1 for r in rows if r["nated"]))], tablefmt="simple")
        uri = cmd.params.get("URI")
        if uri:
            rows = [r for r in rows if uri in r["aor"]]
        if cmd.params.get("FORMAT", "").upper() == "JSON":
            return json.dumps(rows)
        return _table(rows, ["aor", "contact", "source", "transport", "expires", "nated", "nat_reasons"])

    def _rmv_reg(self, cmd) -> str:
        _confirm(cmd)
        n = self.ctx.registrar.remove(_need(cmd, "URI"))
        return f"{n} binding(s) removed"

    def _clr_reg(self, cmd) -> str:
        _confirm(cmd)
        return f"{self.ctx.registrar.clear()} binding(s) removed"

    def _dsp_call(self, cmd) -> str:
        rows = self.ctx.calls.list()
        if cmd.sub == "STAT":
            return tabulate([("active", len(rows)),
                             ("confirmed", sum(1 for r in rows if r["state"] == "confirmed"))], tablefmt="simple")
        cid = cmd.params.get("CALLID")
        if cid:
            rows = [r for r in rows if r["call_id"] == cid]
        if cmd.params.get("FORMAT", "").upper() == "JSON":
            return json.dumps(rows)
        return _table(rows)

    async def _rmv_call(self, cmd) -> str:
        _confirm(cmd)
        cid = _need(cmd, "CALLID")
        if not await self.ctx.calls.end(cid):
            raise MMLError(f"no active call {cid}")
        return f"call {cid} ended (BYE sent to both legs)"

    async def _clr_call(self, cmd) -> str:
        _confirm(cmd)
        return f"{await self.ctx.calls.end_all()} call(s) ended"

    # --- CDR ----------------------------------------------------------------------------------
    def _dsp_cdr(self, cmd) -> str:
        day = cmd.params.get("DATE") or (None if cmd.sub != "TODAY" else None)
        if cmd.sub == "STAT":
            return json.dumps(self.ctx.cdr.stats(day), indent=2)
        rows = self.ctx.cdr.read_rows(day, cmd.params.get("TYPE", "").upper() or None,
                                      int(cmd.params.get("LIMIT", "50")))
        if cmd.params.get("FORMAT", "").upper() == "JSON":
            return json.dumps(rows)
        return _table(rows, ["record_type", "call_state", "start_time", "caller_number", "callee_number",
                             "status_code", "duration", "termination_reason"])

    def _exp_cdr(self, cmd) -> str:
        return f"exported to {self.ctx.cdr.export(_need(cmd, 'DATE'), cmd.params.get('TYPE', '').upper() or None)}"

    def _clr_cdr(self, cmd) -> str:
        _confirm(cmd)
        before = _need(cmd, "BEFORE")
        try:
            cutoff = date.fromisoformat(before)
        except ValueError:
            raise MMLError("BEFORE must be YYYY-MM-DD") from None
        if cutoff > date.today() - timedelta(days=7):
            raise MMLError("refusing to delete CDRs of the last 7 days")
        import shutil
        removed = [d for d in self.ctx.cdr.dates() if date.fromisoformat(d) < cutoff]
        for d in removed:
            shutil.rmtree(os.path.join(self.ctx.cdr.base_dir, d))
        return f"{len(removed)} day folder(s) removed"

    # --- media, NAT, security -----------------------------------------------------------------
    def _dsp_media(self, cmd) -> str:
        return f"backend: {self.ctx.media.name}\n" + _table(self.ctx.media.sessions())

    def _dsp_nat(self, cmd) -> str:
        if self.ctx.nat is None:
            return f"stage {self.ctx.stage}: no NAT helper (REGISTER Contact rewrite only)"
        state = self.ctx.nat.state()
        if cmd.params.get("FORMAT", "").upper() == "JSON":
            return json.dumps(state, default=str)
        bindings = state.pop("nated_bindings", [])
        return tabulate(sorted((k, v) for k, v in state.items()), tablefmt="simple") + "\n\n" + _table(
            bindings, ["aor", "contact", "source", "nat_reasons", "keepalive_failures"])

    def _dsp_blacklist(self, cmd) -> str:
        return "\n".join(self.ctx.blacklist.list()) or "(empty)"

    def _add_blacklist(self, cmd) -> str:
        ip = _need(cmd, "IP")
        return f"{ip} added" if self.ctx.blacklist.add(ip) else f"{ip} already listed"

    def _rmv_blacklist(self, cmd) -> str:
        ip = _need(cmd, "IP")
        if not self.ctx.blacklist.remove(ip):
            raise MMLError(f"{ip} is not listed")
        return f"{ip} removed"

    def _dsp_attack(self, cmd) -> str:
        stats = getattr(self.ctx, "limiter_stats", lambda: {})()
        return _table([{"ip": k, **v} for k, v in stats.items()])


def now() -> float:
    return time.time()
