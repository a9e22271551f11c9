"""MML over HTTP (asyncio streams, no dependencies), bound to 127.0.0.1 by default.

Every endpoint except POST /api/login needs a session cookie (ACTIVE users with role ADMIN or
OPERATOR) or ``Authorization: Bearer <MML_TOKEN>``. Requests are size- and time-bounded.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time

from sipcore.mml.executor import MMLExecutor

log = logging.getLogger(__name__)
MAX_BODY = 16384
SESSION_IDLE = 3600.0


class MMLHttpServer:
    def __init__(self, context, token: str | None = None):
        self.ctx = context
        self.executor = MMLExecutor(context)
        self.token = token
        self.sessions: dict[str, tuple[str, float]] = {}
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._client, host, port)
        log.info("MML HTTP API on http://%s:%d (auth required)", host, port)

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _authorised(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if self.token and auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip(), self.token):
            return "token"
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "session_id" and value in self.sessions:
                user, seen = self.sessions[value]
                if time.monotonic() - seen < SESSION_IDLE:
                    self.sessions[value] = (user, time.monotonic())
                    return user
                del self.sessions[value]
        return None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body, extra = await asyncio.wait_for(self._handle(reader), 30.0)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        except ValueError as exc:
            status, body, extra = 400, {"error": str(exc)}, []
        payload = json.dumps(body).encode()
        head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}", "Content-Type: application/json",
                f"Content-Length: {len(payload)}", "Connection: close", *extra]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _handle(self, reader) -> tuple[int, dict, list[str]]:
        request_line = (await reader.readline()).decode("latin-1").strip()
        parts = request_line.split()
        if len(parts) != 3:
            raise ValueError("bad request line")
        method, path = parts[0], parts[1].split("?")[0]
        headers: dict[str, str] = {}
        for _ in range(100):
            line = (await reader.readline()).decode("latin-1")
            if line in ("\r\n", "\n", ""):
                break
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY:
            return 413, {"error": "request too large"}, []
        raw = await reader.readexactly(length) if length else b""
        data = {}
        if raw:
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                return 400, {"error": "body must be JSON"}, []
        if method == "POST" and path == "/api/login":
            user = self.ctx.users.get(str(data.get("username", "")))
            if (user and user.get("status") == "ACTIVE" and user.get("role") in ("ADMIN", "OPERATOR")
                    and hmac.compare_digest(str(user.get("password", "")), str(data.get("password", "")))):
                sid = secrets.token_urlsafe(24)
                self.sessions[sid] = (user["username"], time.monotonic())
                return 200, {"ok": True}, [f"Set-Cookie: session_id={sid}; HttpOnly; SameSite=Strict; Path=/"]
            return 401, {"error": "invalid credentials or not an ADMIN/OPERATOR"}, []
        who = self._authorised(headers)
        if who is None:
            return 401, {"error": "authentication required"}, ['WWW-Authenticate: Bearer realm="ims-mml"']
        if method == "GET" and path == "/api/health":
            return 200, {"ok": True, **self.ctx.stats()}, []
        if method == "POST" and path == "/api/execute":
            command = data.get("command")
            if not isinstance(command, str):
                return 400, {"error": "JSON field 'command' (string) is required"}, []
            log.info("MML %s by %s", command, who)
            return 200, (await self.executor.execute(command)).as_dict(), []
        if method == "POST" and path == "/api/logout":
            return 200, {"ok": True}, []
        return 404, {"error": f"no endpoint {method} {path}"}, []


async def start_mml_server(context, host: str, port: int, token: str | None = None) -> MMLHttpServer:
    server = MMLHttpServer(context, token)
    await server.start(host, port)
    return server
