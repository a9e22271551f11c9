"""Subscribers in a users.json compatible file (keyed by username).

Fields kept from the original: username, password, display_name, phone, email, status
(ACTIVE/INACTIVE/SUSPENDED), service_type, create_time, update_time, role, mml_access. A user may
carry ``ha1`` (MD5) / ``ha1_sha256`` instead of a plaintext password. Only ACTIVE users
authenticate. The file is re-read when it changes on disk and written atomically.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime

from sipcore.digest import compute_ha1

log = logging.getLogger(__name__)

STATUSES = ("ACTIVE", "INACTIVE", "SUSPENDED")
EDITABLE = ("password", "display_name", "phone", "email", "status", "service_type", "role", "ha1", "ha1_sha256")


class UserError(ValueError):
    pass


class UserStore:
    def __init__(self, path: str, create_defaults: bool = True):
        self.path = path
        self._lock = threading.RLock()
        self._users: dict[str, dict] = {}
        self._mtime: float | None = None
        if not os.path.exists(path) and create_defaults:
            log.warning("%s missing: creating default users 1001 and 1002 (password 1234) - change them", path)
            now = _now()
            self._users = {u: {"username": u, "password": "1234", "display_name": f"User {u}",
                               "phone": "", "email": "", "status": "ACTIVE", "service_type": "BASIC",
                               "create_time": now, "update_time": now} for u in ("1001", "1002")}
            self._save()
        self._load()

    def _load(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            log.error("cannot read %s: %s (keeping %d users in memory)", self.path, exc, len(self._users))
            return
        if not isinstance(data, dict):
            log.error("%s must hold a JSON object keyed by username", self.path)
            return
        self._users = {str(k): dict(v, username=v.get("username", k)) for k, v in data.items() if isinstance(v, dict)}
        self._mtime = mtime

    def _save(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self._users, fh, ensure_ascii=False, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._mtime = os.stat(self.path).st_mtime

    # --- queries ------------------------------------------------------------------------------
    def get(self, username: str) -> dict | None:
        with self._lock:
            self._load()
            u = self._users.get(username)
            return dict(u) if u else None

    def list(self, status: str | None = None) -> list[dict]:
        with self._lock:
            self._load()
            return [dict(u) for u in self._users.values() if status is None or u.get("status") == status]

    def lookup_ha1(self, username: str, realm: str, algorithm: str) -> str | None:
        u = self.get(username)
        if u is None or u.get("status", "ACTIVE") != "ACTIVE":
            return None
        if u.get("password"):
            return compute_ha1(username, realm, u["password"], algorithm)
        key = "ha1" if algorithm == "MD5" else "ha1_sha256"
        return u.get(key)

    def authenticate(self, username: str, password: str) -> bool:
        u = self.get(username)
        return bool(u and u.get("status") == "ACTIVE" and u.get("password") == password)

    # --- changes ------------------------------------------------------------------------------
    def add(self, username: str, password: str, **fields) -> dict:
        if not username or any(c in username for c in " \t\r\n@:;<>\""):
            raise UserError(f"invalid username {username!r}")
        with self._lock:
            self._load()
            if username in self._users:
                raise UserError(f"user {username} already exists")
            now = _now()
            user = {"username": username, "password": password, "display_name": fields.get("display_name", username),
                    "phone": fields.get("phone", ""), "email": fields.get("email", ""), "status": "ACTIVE",
                    "service_type": fields.get("service_type", "BASIC"), "create_time": now, "update_time": now}
            if fields.get("role"):
                user["role"] = fields["role"]
            self._users[username] = user
            self._save()
            return dict(user)

    def modify(self, username: str, **changes) -> dict:
        with self._lock:
            self._load()
            user = self._users.get(username)
            if user is None:
                raise UserError(f"user {username} does not exist")
            for key, value in changes.items():
                if key not in EDITABLE:
                    raise UserError(f"field {key} cannot be modified")
                if key == "status" and value not in STATUSES:
                    raise UserError(f"status must be one of {', '.join(STATUSES)}")
                user[key] = value
            user["update_time"] = _now()
            self._save()
            return dict(user)

    def delete(self, username: str) -> bool:
        with self._lock:
            self._load()
            if self._users.pop(username, None) is None:
                return False
            self._save()
            return True


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")
