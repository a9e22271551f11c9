"""A small in-memory ManagementContext for the MML tests (the real one is sipcore.management)."""
from __future__ import annotations

import ipaddress

from sipcore.config import Config
from sipcore.stages import STAGES


class FakeRegistrar:
    def __init__(self):
        self.rows = [
            {"aor": "sip:1001@sip.local", "contact": "sip:1001@203.0.113.5:40000", "source": "203.0.113.5:40000",
             "original_contact": "sip:1001@192.168.1.10:5060",
             "transport": "udp", "expires": 3500, "nated": True, "nat_reasons": "contact-private"},
            {"aor": "sip:1002@sip.local", "contact": "sip:1002@127.0.0.1:5062", "source": "127.0.0.1:5062",
             "transport": "udp", "expires": 1200, "nated": False, "nat_reasons": ""},
        ]

    def bindings(self) -> list[dict]:
        return [dict(r) for r in self.rows]

    def remove(self, aor: str) -> int:
        before = len(self.rows)
        self.rows = [r for r in self.rows if r["aor"] != aor and r["aor"].split(":")[1].split("@")[0] != aor]
        return before - len(self.rows)

    def clear(self) -> int:
        n = len(self.rows)
        self.rows = []
        return n


class FakeCalls:
    def __init__(self):
        self.active = {"abc@host": {"call_id": "abc@host", "state": "confirmed", "caller": "1001",
                                    "callee": "1002", "duration": 12.5}}
        self.byes: list[str] = []

    def list(self) -> list[dict]:
        return [dict(c) for c in self.active.values()]

    async def end(self, call_id: str) -> bool:
        if self.active.pop(call_id, None) is None:
            return False
        self.byes += [f"{call_id}:caller", f"{call_id}:callee"]
        return True

    async def end_all(self) -> int:
        n = 0
        for cid in list(self.active):
            n += await self.end(cid)
        return n


class FakeMedia:
    name = "fake-relay"

    def sessions(self) -> list[dict]:
        return [{"call_id": "abc@host", "legs": 2, "ports": "20000,20002", "packets": 100}]


class FakeNAT:
    def state(self) -> dict:
        return {"sdp_fixups": 3, "contact_fixups": 1,
                "nated_bindings": [{"aor": "sip:1001@sip.local", "contact": "sip:1001@203.0.113.5:40000",
                                    "source": "203.0.113.5:40000", "nat_reasons": "contact-private",
                                    "keepalive_failures": 0}],
                "keepalive": {"sent": 10, "answered": 9}}


class FakeBlacklist:
    def __init__(self):
        self.entries: list[str] = ["198.51.100.66"]

    def list(self) -> list[str]:
        return list(self.entries)

    def add(self, ip: str) -> bool:
        ipaddress.ip_address(ip)
        if ip in self.entries:
            return False
        self.entries.append(ip)
        return True

    def remove(self, ip: str) -> bool:
        if ip not in self.entries:
            return False
        self.entries.remove(ip)
        return True


class FakeContext:
    def __init__(self, users, cdr, tmp_path, stage: int = 2, token: str | None = None):
        env = {"SERVER_IP": "127.0.0.1", "LOG_DIR": str(tmp_path / "logs"), "CDR_DIR": str(tmp_path / "CDR"),
               "USERS_FILE": str(tmp_path / "users.json")}
        if token:
            env["MML_TOKEN"] = token
        self.users = users
        self.cdr = cdr
        self.config = Config.from_env(env, config_file=str(tmp_path / "absent.json"))
        self.registrar = FakeRegistrar()
        self.calls = FakeCalls()
        self.media = FakeMedia()
        self.nat = FakeNAT() if STAGES[stage].nat_helper else None
        self.blacklist = FakeBlacklist()
        self.stage = stage
        self.levels: list[str] = []

    def stats(self) -> dict:
        return {"stage": self.stage, "stage_name": "test", "uptime": 1.0,
                "registrations": len(self.registrar.rows), "active_calls": len(self.calls.active),
                "media_sessions": 1}

    def set_log_level(self, level: str) -> None:
        from sipcore.logsetup import normalise_level
        self.levels.append(normalise_level(level))
