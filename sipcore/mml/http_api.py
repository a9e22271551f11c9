"""MML over HTTP on asyncio streams (no dependencies), bound to 127.0.0.1 by default.

Endpoints (JSON in, JSON out, one request per connection):

* ``POST /api/login`` ``{"username": .., "password": ..}`` -> session cookie ``session_id``
  (HttpOnly, SameSite=Strict, 1 h idle). Only ACTIVE users with role ADMIN or OPERATOR; a request
  carrying ``Authorization: Bearer <MML_TOKEN>`` also gets a session.
* ``POST /api/execute`` ``{"command": "DSP REG"}`` -> ``{retcode, retmsg, output, timestamp}``
* ``GET /api/health`` -> ``{"status": "ok", ...counters}``
* ``POST /api/logout``

Every endpoint except login needs the session cookie or the bearer token (401 otherwise, for
unknown paths too). No CORS headers are sent (the cookie is SameSite=Strict), POST bodies must
be a JSON object, and headers, bodies, sessions and time per request are bounded. Repeated failed logins from one
address are answered with 429 for a while.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from typing import Callable

from sipcore.mml.executor import MMLExecutor
from sipcore.mml.grammar import redact

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 64
HEADER_TIMEOUT = 10.0
REQUEST_TIMEOUT = 60.0
SESSION_IDLE = 3600.0
MAX_SESSIONS = 256
LOGIN_FAIL_LIMIT = 10
LOGIN_FAIL_WINDOW = 60.0
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
           415: "Unsupported Media Type", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented"}
ROUTES = {"/api/login": "POST", "/api/execute": "POST", "/api/health": "GET", "/api/logout": "POST"}
MML_ROLES = ("ADMIN", "OPERATOR")


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes, peer: str):
        self.method, self.path, self.headers, self.body, self.peer = method, path, headers, body, peer

    def json(self) -> dict:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPError(400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "body must be a JSON object")
        return data


class MMLHttpServer:
    def __init__(self, context, token: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.ctx = context
        self.executor = MMLExecutor(context)
        self.token = token or None
        self.clock = clock
        self.sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._login_failures: dict[str, list[float]] = {}
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 8888) -> None:
        self._server = await asyncio.start_server(self._client, host, port, limit=MAX_HEADER_BYTES)
        log.info("MML HTTP API on http://%s:%d (authentication required)", host, self.port)
        if host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("MML API listens on %s, not loopback: protect it (firewall, MML_TOKEN)", host)

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # --- authentication -----------------------------------------------------------------------
    def _bearer_ok(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        return bool(self.token and scheme.lower() == "bearer"
                    and hmac.compare_digest(value.strip().encode(), self.token.encode()))

    def _session_user(self, headers: dict[str, str]) -> str | None:
        for part in headers.get("cookie", "").split(";"):
            name, _, sid = part.strip().partition("=")
            if name != "session_id" or sid not in self.sessions:
                continue
            user, seen = self.sessions[sid]
            now = self.clock()
            if now - seen < SESSION_IDLE:
                self.sessions[sid] = (user, now)
                self.sessions.move_to_end(sid)
                return user
            del self.sessions[sid]
        return None

    def _who(self, req: Request) -> str | None:
        if self._bearer_ok(req.headers):
            return "token"
        return self._session_user(req.headers)

    def _new_session(self, user: str) -> str:
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = (user, self.clock())
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return sid

    def _login_blocked(self, peer: str) -> bool:
        now = self.clock()
        recent = [t for t in self._login_failures.get(peer, []) if now - t < LOGIN_FAIL_WINDOW]
        if recent:
            self._login_failures[peer] = recent
        else:
            self._login_failures.pop(peer, None)
        return len(recent) >= LOGIN_FAIL_LIMIT

    def _login_failed(self, peer: str) -> None:
        if len(self._login_failures) > 10000:
            self._login_failures.clear()
        self._login_failures.setdefault(peer, []).append(self.clock())

    def _check_user(self, username, password) -> str | None:
        if not isinstance(username, str) or not isinstance(password, str) or not username:
            return None
        user = self.ctx.users.get(username)
        if not user or str(user.get("role", "")).upper() not in MML_ROLES:
            return None
        realm = getattr(self.ctx.config, "realm", None)
        return user["username"] if self.ctx.users.authenticate(username, password, realm) else None

    # --- HTTP plumbing ------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_ip = peer[0] if isinstance(peer, tuple) else str(peer)
        extra: list[str] = []
        try:
            req = await asyncio.wait_for(self._read_request(reader, peer_ip), HEADER_TIMEOUT)
            status, body, extra = await asyncio.wait_for(self._route(req), REQUEST_TIMEOUT)
        except HTTPError as exc:
            status, body = exc.status, {"error": exc.message}
        except asyncio.TimeoutError:
            status, body = 408, {"error": "request timed out"}
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        except Exception:     # noqa: BLE001 - never a traceback to the client
            log.exception("MML HTTP request from %s failed", peer_ip)
            status, body = 500, {"error": "internal error"}
        payload = json.dumps(body).encode()
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Content-Type: application/json",
                f"Content-Length: {len(payload)}", "Cache-Control: no-store",
                "X-Content-Type-Options: nosniff", "Connection: close", *extra]
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
            await asyncio.wait_for(writer.drain(), HEADER_TIMEOUT)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader, peer: str) -> Request:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HTTPError(431, "request head too large") from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise
            raise HTTPError(400, "incomplete request head") from None
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HTTPError(400, "bad request line")
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        header_lines = [ln for ln in lines[1:] if ln]
        if len(header_lines) > MAX_HEADERS:
            raise HTTPError(431, "too many header fields")
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HTTPError(400, "malformed header field")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise HTTPError(501, "chunked bodies are not supported; send Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise HTTPError(400, "bad Content-Length")
        length = int(length_text)
        if length > MAX_BODY:
            raise HTTPError(413, f"body larger than {MAX_BODY} bytes")
        if method == "POST" and "content-length" not in headers:
            raise HTTPError(411, "Content-Length required")
        body = await reader.readexactly(length) if length else b""
        return Request(method, target.split("?", 1)[0], headers, body, peer)

    async def _route(self, req: Request) -> tuple[int, dict, list[str]]:
        if req.path == "/api/login":
            if req.method != "POST":
                raise HTTPError(405, "use POST /api/login")
            return self._login(req)
        who = self._who(req)
        if who is None:
            return 401, {"error": "authentication required (POST /api/login or Authorization: Bearer)"}, \
                ['WWW-Authenticate: Bearer realm="ims-mml"']
        expected = ROUTES.get(req.path)
        if expected is None:
            raise HTTPError(404, f"no endpoint {req.path}")
        if req.method != expected:
            return 405, {"error": f"use {expected} {req.path}"}, [f"Allow: {expected}"]
        if req.path == "/api/health":
            return 200, {"status": "ok", "user": who, **_plain(self.ctx.stats())}, []
        if req.path == "/api/logout":
            for part in req.headers.get("cookie", "").split(";"):
                name, _, sid = part.strip().partition("=")
                if name == "session_id":
                    self.sessions.pop(sid, None)
            return 200, {"ok": True}, ["Set-Cookie: session_id=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/"]
        command = req.json().get("command")
        if not isinstance(command, str) or not command.strip():
            raise HTTPError(400, "JSON field 'command' (non-empty string) is required")
        result = await self.executor.execute(command)
        log.info("MML by %s from %s: %s -> %d %s", who, req.peer, redact(command)[:200], result.retcode,
                 result.retmsg)
        return 200, result.as_dict(), []

    def _login(self, req: Request) -> tuple[int, dict, list[str]]:
        if self._login_blocked(req.peer):
            return 429, {"error": "too many failed logins; wait a minute"}, ["Retry-After: 60"]
        if self._bearer_ok(req.headers):
            user = "token"
        else:
            data = req.json()
            user = self._check_user(data.get("username"), data.get("password"))
            if user is None:
                self._login_failed(req.peer)
                log.warning("MML login failed from %s (user %r)", req.peer, str(data.get("username"))[:64])
                return 401, {"error": "invalid credentials, user not ACTIVE, or role not ADMIN/OPERATOR"}, []
        sid = self._new_session(user)
        log.info("MML login: %s from %s", user, req.peer)
        cookie = f"Set-Cookie: session_id={sid}; HttpOnly; SameSite=Strict; Path=/; Max-Age={int(SESSION_IDLE)}"
        return 200, {"ok": True, "user": user}, [cookie]


def _plain(stats: dict) -> dict:
    return json.loads(json.dumps(stats, default=str))


async def start_mml_server(context, host: str = "127.0.0.1", port: int = 8888,
                           token: str | None = None) -> MMLHttpServer:
    server = MMLHttpServer(context, token)
    await server.start(host, port)
    return server
