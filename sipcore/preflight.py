"""``--check-config``: check what a start needs, without starting the server.

Each check returns a ``Check(name, ok, detail)``; ``run_checks`` runs them all (one failing check
does not hide the others) and the entrypoint prints one line per check and exits 1 if any failed.

Checked: the users file (readable and valid, or creatable; a warning when it holds nobody), the
CDR and log directories (created if needed, writable), the SIP port(s) and the MML port (can be
bound on the configured address; a port held by a running ims-migrate server, recognised by its
MML health endpoint answering, is reported as "in use by the running server" and not a failure,
so the check can run before a cutover), the MML token, the location store (SQLite file usable,
Redis answering), and the media relay (stages 1/2: the
configured RTPProxy answers, or it is auto-started the way the server would and stopped again).
"""
from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import tempfile
import urllib.request
from dataclasses import dataclass

from sipcore.errors import ConfigError, MediaBackendError
from sipcore.stages import MEDIA_LEGACY_RELAY, stage_of


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False

    def line(self) -> str:
        mark = "ok  " if self.ok and not self.warning else ("warn" if self.ok else "FAIL")
        return f"[{mark}] {self.name}: {self.detail}"


def check_users(path: str) -> Check:
    from sipcore.users import UserStore
    if not os.path.exists(path):
        folder = os.path.dirname(os.path.abspath(path))
        parent = folder
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK):
            return Check("USERS_FILE", False, f"{path} is missing and {parent} is not writable")
        return Check("USERS_FILE", True, f"{path} is missing: it will be created empty (no users); add one with "
                                         f'`.venv/bin/ims-mml "ADD USER USERNAME=1001 PASSWORD=<secret>"`',
                     warning=True)
    try:
        store = UserStore(path, create_defaults=False)
    except ConfigError as exc:
        return Check("USERS_FILE", False, exc.message)
    active = [u for u in store.list() if str(u.get("status", "ACTIVE")).upper() == "ACTIVE"]
    if not os.access(path, os.W_OK):
        return Check("USERS_FILE", True, f"{path}: {len(active)} active users, but not writable (MML user "
                                         "changes will fail)", warning=True)
    if not active:
        return Check("USERS_FILE", True, f"{path} has no active user: every REGISTER will be refused", warning=True)
    return Check("USERS_FILE", True, f"{path}: {len(active)} active users")


def check_directory(key: str, path: str) -> Check:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".check-", delete=True):
            pass
    except OSError as exc:
        return Check(key, False, f"{path} is not a writable directory: {exc.strerror or exc}")
    return Check(key, True, f"{path} writable")


def _our_server_answers(mml_host: str, mml_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{mml_host}:{mml_port}/api/health", timeout=2) as resp:
            return resp.status in (200, 401) and isinstance(json.loads(resp.read() or b"{}"), dict)
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except (OSError, ValueError):
        return False


def check_port(key: str, host: str, port: int, kind: int, running: bool) -> Check:
    proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and running:
            return Check(key, True, f"{host}:{port}/{proto} in use by the running ims-migrate server "
                                    "(free once it stops)", warning=True)
        reason = "in use by another program" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        return Check(key, False, f"cannot bind {host}:{port}/{proto}: {reason}")
    return Check(key, True, f"{host}:{port}/{proto} can be bound")


def check_token(config) -> Check:
    if config.mml_token:
        return Check("MML_TOKEN", True, "management token set")
    return Check("MML_TOKEN", True, "no MML_TOKEN / MML_TOKEN_FILE: the MML API accepts only ADMIN/OPERATOR "
                                    "logins (scripts/setup.sh creates config/mml.token)", warning=True)


async def check_media(stage: int, config, build_media) -> Check:
    try:
        media = build_media(stage, config)
    except ConfigError as exc:
        return Check(exc.key, False, exc.message)
    started = False
    try:
        await asyncio.wait_for(media.start(), timeout=20)
        started = getattr(getattr(media, "pool", None), "local", None) is not None
    except (MediaBackendError, asyncio.TimeoutError) as exc:
        return Check("RTPPROXY", False, str(exc) or "no answer within 20 s")
    except OSError as exc:
        return Check("RTP_PORT_MIN", False, f"media relay cannot start: {exc}")
    finally:
        try:
            await media.stop()
        except Exception:   # noqa: BLE001 - the check result matters, not the cleanup
            pass
    if stage_of(stage).media == MEDIA_LEGACY_RELAY:
        return Check("MEDIA", True, f"Python relay, ports {config.rtp_port_min}-{config.rtp_port_max}")
    nodes = ", ".join(spec for spec, _ in config.rtpproxy_nodes)
    return Check("RTPPROXY", True, f"{nodes} answers" + (" (auto-started for the check, stopped again)"
                                                        if started else ""))


def check_location_store(spec: str) -> Check:
    from sipcore.location_store import open_location_store
    try:
        store = open_location_store(spec)
    except ConfigError as exc:
        return Check(exc.key, False, exc.message)
    n = len(store)
    close = getattr(store, "close", None)
    if close is not None:
        close()
    if spec == "memory":
        return Check("LOCATION_STORE", True, "memory: registrations are lost at every restart", warning=True)
    return Check("LOCATION_STORE", True, f"{spec}: {n} unexpired bindings")


async def run_checks(stage: int, config, build_media) -> list[Check]:
    """``build_media(stage, config)``: the stage's media backend factory (from the assembly)."""
    running = _our_server_answers(config.mml_host, config.mml_port)
    checks = [check_users(config.users_file), check_directory("CDR_DIR", config.cdr_dir),
              check_directory("LOG_DIR", config.log_dir),
              check_port("SERVER_PORT", config.bind_ip, config.server_port, socket.SOCK_DGRAM, running)]
    if config.enable_tcp:
        checks.append(check_port("SERVER_PORT", config.bind_ip, config.server_port, socket.SOCK_STREAM, running))
    checks.append(check_port("MML_PORT", config.mml_host, config.mml_port, socket.SOCK_STREAM, running))
    checks.append(check_token(config))
    checks.append(check_location_store(config.location_store))
    checks.append(await check_media(stage, config, build_media))
    return checks
