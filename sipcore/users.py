"""Subscribers in a users.json compatible file (a JSON object keyed by username).

Fields kept from the original: username, password, display_name, phone, email, status
(ACTIVE/INACTIVE/SUSPENDED), service_type, create_time, update_time, role, mml_access. A user may
carry ``ha1`` (MD5 of ``user:realm:password``) and/or ``ha1_sha256`` instead of a plaintext
``password``; ``ha1_realm`` (optional) names the realm those hashes were made for.

Users added or given a new password (MML ``ADD USER``/``MOD USER``) are stored as ``ha1`` and
``ha1_sha256`` for the store's realm (``SIP_REALM``) with ``ha1_realm``, never as plaintext; entries
of the original plain-text format (``password``) are still read and used as they are. Changing
SIP_REALM later invalidates stored hashes (the user needs a new password).

Only ACTIVE users authenticate. The file is re-read when it changes on disk (inode, size or
mtime), changes are written atomically (temp file + fsync + rename) under an advisory lock
(``<file>.lock``) so two processes editing it do not lose each other's changes. If the file is
missing it is created empty (mode 0600), with a warning saying how to add a user: unlike the
original, a first start never creates users with a well-known password.
"""
from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import logging
import os
import re
import tempfile
import threading
from datetime import datetime

from sipcore.digest import compute_ha1
from sipcore.errors import ConfigError

log = logging.getLogger(__name__)

STATUSES = ("ACTIVE", "INACTIVE", "SUSPENDED")
ROLES = ("USER", "ADMIN", "OPERATOR")
EDITABLE = ("password", "display_name", "phone", "email", "status", "service_type", "role",
            "mml_access", "ha1", "ha1_sha256", "ha1_realm")
_USERNAME_RE = re.compile(r"^[A-Za-z0-9._+\-!~*'()&=$,?/%]{1,64}$")   # RFC 3261 user chars, no @ : ;
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
HA1_FIELDS = {"MD5": ("ha1", 32), "SHA-256": ("ha1_sha256", 64)}
DEFAULT_REALM = "sip.local"


class UserError(ValueError):
    """A user operation was refused (unknown user, duplicate, invalid field)."""


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def validate_username(username: str) -> str:
    if not isinstance(username, str) or not _USERNAME_RE.match(username):
        raise UserError(f"invalid username {username!r} (1-64 characters, no spaces, '@', ':' or ';')")
    return username


def _check_field(key: str, value) -> str:
    if not isinstance(value, str):
        raise UserError(f"{key} must be text")
    if key == "status" and value.upper() not in STATUSES:
        raise UserError(f"status must be one of {', '.join(STATUSES)}, got {value!r}")
    if key == "role" and value and value.upper() not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, got {value!r}")
    if key in ("ha1", "ha1_sha256"):
        length = 32 if key == "ha1" else 64
        if value and (len(value) != length or not _HEX_RE.match(value)):
            raise UserError(f"{key} must be {length} hexadecimal characters")
        return value.lower()
    if key in ("status", "role"):
        return value.upper()
    if any(c in value for c in "\r\n\x00"):
        raise UserError(f"{key} must be one line")
    return value


class UserStore:
    def __init__(self, path: str, create_defaults: bool = True, realm: str = DEFAULT_REALM):
        self.path = path
        self.realm = realm
        self._lock = threading.RLock()
        self._users: dict[str, dict] = {}
        self._signature: tuple | None = None
        if not os.path.exists(path):
            if not create_defaults:
                raise ConfigError("USERS_FILE", f"{path} does not exist")
            # no well-known passwords: start with nobody, and say how to add someone
            log.warning("%s missing: created it empty (no users, every REGISTER is refused); add one with "
                        "`.venv/bin/ims-mml \"ADD USER USERNAME=1001 PASSWORD=<secret>\"` or edit the file",
                        path)
            with self._file_lock():
                if not os.path.exists(path):
                    self._users = {}
                    self._save(self._users)
        if not self._load():
            raise ConfigError("USERS_FILE", f"cannot use {path}: see the error above")

    # --- file handling ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _file_lock(self):
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _stat_signature(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> bool:
        """Re-read the file if it changed; False (and previous users kept) if it is unusable."""
        signature = self._stat_signature()
        if signature is None:
            log.error("%s disappeared; keeping %d users in memory", self.path, len(self._users))
            return bool(self._users)
        if signature == self._signature:
            return True
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.error("cannot read %s: %s (keeping %d users in memory)", self.path, exc, len(self._users))
            return False
        if not isinstance(data, dict):
            log.error("%s must hold a JSON object keyed by username (keeping %d users)", self.path,
                      len(self._users))
            return False
        users = {}
        for key, value in data.items():
            if not isinstance(value, dict):
                log.warning("%s: entry %r is not an object, ignored", self.path, key)
                continue
            user = dict(value)
            user["username"] = str(user.get("username") or key)
            users[str(key)] = user
        self._users = users
        self._signature = signature
        log.info("loaded %d users from %s", len(users), self.path)
        return True

    def _save(self, users: dict) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".users.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(users, fh, ensure_ascii=False, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._signature = self._stat_signature()

    @contextlib.contextmanager
    def _changing(self):
        """Lock (thread + file), re-read the latest file, let the caller change a copy, save it,
        then swap it in."""
        with self._lock, self._file_lock():
            if not self._load():
                raise UserError(f"{self.path} is unreadable; fix it before changing users")
            users = {name: dict(user) for name, user in self._users.items()}
            yield users                          # changed on a copy: readers never see half a change
            self._save(users)
            self._users = users

    def reload(self) -> bool:
        with self._lock:
            return self._load()

    # --- queries ------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Pick up an external edit of the file, unless a change is being written right now (by
        a thread: MML runs ADD/MOD/RMV USER off the loop): then the users in memory are served
        instead of waiting, so a lookup on the event loop never waits for a file write."""
        if self._lock.acquire(blocking=False):
            try:
                self._load()
            finally:
                self._lock.release()

    def get(self, username: str) -> dict | None:
        self._refresh()
        user = self._users.get(username)
        return dict(user) if user else None

    def list(self, status: str | None = None) -> list[dict]:
        self._refresh()
        users = self._users
        status = status.upper() if status else None
        return [dict(u) for _, u in sorted(users.items())
                if status is None or str(u.get("status", "ACTIVE")).upper() == status]

    def lookup_ha1(self, username: str, realm: str, algorithm: str = "MD5") -> str | None:
        """HA1 for digest verification, or None (unknown, not ACTIVE, or no usable secret)."""
        self._refresh()
        user = self._users.get(username)        # read only here: no private copy (every REGISTER)
        if user is None or str(user.get("status", "ACTIVE")).upper() != "ACTIVE":
            return None
        algorithm = algorithm.upper()
        if algorithm not in HA1_FIELDS:
            return None
        if user.get("password"):
            return compute_ha1(username, realm, str(user["password"]), algorithm)
        stored = user.get(HA1_FIELDS[algorithm][0])
        if not stored:
            return None
        if user.get("ha1_realm") and user["ha1_realm"] != realm:
            log.warning("user %s: stored HA1 is for realm %r, not %r", username, user["ha1_realm"], realm)
            return None
        return str(stored).lower()

    def authenticate(self, username: str, password: str, realm: str | None = None) -> bool:
        """Password check for the MML login (ACTIVE users; HA1-only users need ``realm``)."""
        user = self.get(username)
        if not user or str(user.get("status", "ACTIVE")).upper() != "ACTIVE" or not isinstance(password, str):
            return False
        if user.get("password"):
            return hmac.compare_digest(str(user["password"]).encode(), password.encode())
        realm = user.get("ha1_realm") or realm
        for algorithm, (key, _) in HA1_FIELDS.items():
            if user.get(key) and realm:
                return hmac.compare_digest(str(user[key]).lower(),
                                           compute_ha1(username, realm, password, algorithm))
        return False

    # --- changes ------------------------------------------------------------------------------
    def _hashed(self, username: str, fields: dict) -> dict:
        """A plaintext ``password`` in ``fields`` becomes HA1 digests (MD5, SHA-256) for our realm."""
        password = fields.pop("password", None)
        if password:
            for algorithm, (key, _) in HA1_FIELDS.items():
                fields[key] = compute_ha1(username, self.realm, password, algorithm)
            fields["ha1_realm"] = self.realm
        return fields

    def add(self, username: str, password: str | None = None, **fields) -> dict:
        """Add an ACTIVE user; a password or an ``ha1``/``ha1_sha256`` is required."""
        validate_username(username)
        unknown = set(fields) - set(EDITABLE)
        if unknown:
            raise UserError(f"unknown user field(s): {', '.join(sorted(unknown))}")
        if password is not None:
            fields["password"] = password
        clean = {k: _check_field(k, v) for k, v in fields.items() if v is not None}
        if not (clean.get("password") or clean.get("ha1") or clean.get("ha1_sha256")):
            raise UserError("a password (or ha1) is required")
        clean = self._hashed(username, clean)
        with self._changing() as users:
            if username in users:
                raise UserError(f"user {username} already exists")
            now = _now()
            user = {"username": username, "display_name": username, "phone": "",
                    "email": "", "status": "ACTIVE", "service_type": "BASIC", "create_time": now,
                    "update_time": now}
            user.update(clean)
            users[username] = user
        log.info("user %s added", username)
        return dict(user)

    def modify(self, username: str, **changes) -> dict:
        unknown = set(changes) - set(EDITABLE)
        if unknown:
            raise UserError(f"field(s) {', '.join(sorted(unknown))} cannot be modified")
        clean = {k: _check_field(k, v) for k, v in changes.items() if v is not None}
        if not clean:
            raise UserError("nothing to modify")
        with self._changing() as users:
            user = users.get(username)
            if user is None:
                raise UserError(f"user {username} does not exist")
            changed = sorted(clean)
            if clean.get("password"):
                # a new password replaces the plaintext of the original format and stale hashes
                for key in ("password", "ha1", "ha1_sha256", "ha1_realm"):
                    user.pop(key, None)
                clean = self._hashed(username, clean)
            user.update(clean)
            user["update_time"] = _now()
        log.info("user %s modified (%s)", username, ", ".join(changed))
        return dict(user)

    def delete(self, username: str) -> bool:
        with self._changing() as users:
            removed = users.pop(username, None) is not None
        if removed:
            log.info("user %s deleted", username)
        return removed
