"""``ims-mml``: command-line client for the server's MML HTTP API.

    ims-mml [--url http://127.0.0.1:8888] [--token T | --user U [--password P]] "DSP REG"

Without a command it reads commands from a prompt (or from standard input when it is not a
terminal), one per line; ``QUIT`` or end of input stops. Exit status: 0 when every command
returned retcode 0, 1 when one did not, 2 for a login/usage problem, 3 when the API cannot be
reached. The password may also come from ``MML_PASSWORD``.

Defaults, so that on the server host ``ims-mml "DSP REG"`` just works: the token is ``MML_TOKEN``,
else the file ``MML_TOKEN_FILE``, else ``config/mml.token`` (the root-only file scripts/setup.sh
creates); the address is ``MML_HOST``/``MML_PORT``. Each variable is taken from the environment,
else from ``ims.env`` in the current directory (the file the pm2 process file reads), else the
server's default. ``--create-token-file PATH`` writes a new random token file (mode 0600).
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import urllib.error
import urllib.request


class MMLClientError(Exception):
    """Login refused or an unusable reply from the API."""


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.cookie: str | None = None
        self.timeout = timeout

    def _request(self, method: str, path: str, payload: dict | None = None) -> tuple[int, dict, dict]:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if self.cookie:
            req.add_header("Cookie", self.cookie)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, _json(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read()), dict(exc.headers or {})

    def login(self, user: str, password: str) -> None:
        status, body, headers = self._request("POST", "/api/login", {"username": user, "password": password})
        if status != 200:
            raise MMLClientError(f"login failed: {body.get('error', f'HTTP {status}')}")
        cookie = headers.get("Set-Cookie", "").split(";")[0]
        if not cookie.startswith("session_id="):
            raise MMLClientError("login reply carried no session cookie")
        self.cookie = cookie

    def health(self) -> dict:
        status, body, _ = self._request("GET", "/api/health")
        if status != 200:
            raise MMLClientError(body.get("error", f"HTTP {status}"))
        return body

    def execute(self, command: str) -> dict:
        status, body, _ = self._request("POST", "/api/execute", {"command": command})
        if status != 200:
            return {"retcode": status, "retmsg": body.get("error", f"HTTP {status}"), "output": ""}
        return body


def _json(raw: bytes) -> dict:
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"error": "reply is not JSON (is this the MML API?)"}
    return data if isinstance(data, dict) else {"error": "unexpected reply"}


def _print_result(result: dict, raw: bool) -> int:
    if raw:
        print(json.dumps(result))
    else:
        if result.get("output"):
            print(result["output"])
        print(f"RETCODE = {result.get('retcode')}  {result.get('retmsg')}")
    return 0 if result.get("retcode") == 0 else 1


def _interactive(client: Client, raw: bool) -> int:
    tty = sys.stdin.isatty()
    rc = 0
    while True:
        try:
            line = input("MML> ") if tty else sys.stdin.readline()
        except EOFError:
            break
        if not tty and not line:
            break
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().rstrip(";") in ("QUIT", "EXIT", "BYE"):
            break
        rc = max(rc, _print_result(client.execute(line), raw))
    return rc


def _setting(name: str, env_file: dict[str, str], default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value:
        return value
    return env_file.get(name) or default


def default_token(env_file: dict[str, str]) -> str | None:
    """MML_TOKEN, else the token file (MML_TOKEN_FILE or config/mml.token) when it exists."""
    from sipcore.mml.token_file import DEFAULT_TOKEN_FILE, read_token
    token = _setting("MML_TOKEN", env_file)
    if token:
        return token
    path = _setting("MML_TOKEN_FILE", env_file)
    if path or os.path.exists(DEFAULT_TOKEN_FILE):
        return read_token(path or DEFAULT_TOKEN_FILE)
    return None


def main(argv: list[str] | None = None) -> int:
    from sipcore.envfile import read_env_file
    from sipcore.errors import ConfigError
    try:
        env_file = read_env_file()
    except ConfigError as exc:
        print(f"error: {exc.key}: {exc.message}", file=sys.stderr)
        return 2
    host = _setting("MML_HOST", env_file, "127.0.0.1")
    port = _setting("MML_PORT", env_file, "8888")
    ap = argparse.ArgumentParser(prog="ims-mml", description="MML client for the ims-migrate server")
    ap.add_argument("--url", default=os.environ.get("MML_URL") or f"http://{host}:{port}",
                    help="API address (default http://$MML_HOST:$MML_PORT, from the environment or "
                         "./ims.env, else 127.0.0.1:8888)")
    ap.add_argument("--token", help="bearer token (default MML_TOKEN, else the file MML_TOKEN_FILE "
                                    "or config/mml.token)")
    ap.add_argument("--create-token-file", metavar="PATH",
                    help="create PATH with a random token, mode 0600, unless it exists; then exit")
    ap.add_argument("--owner", help="with --create-token-file: user to own the file (the service user)")
    ap.add_argument("--user", help="log in as an ADMIN/OPERATOR user")
    ap.add_argument("--password", help="password for --user (else MML_PASSWORD or a prompt)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    ap.add_argument("--json", action="store_true", help="print the raw JSON reply")
    ap.add_argument("command", nargs="*", help='e.g. "DSP REG" (interactive when omitted)')
    args = ap.parse_args(argv)
    if args.timeout <= 0:
        ap.error("--timeout must be positive")
    if args.create_token_file:
        from sipcore.mml.token_file import create_token_file
        try:
            created = create_token_file(args.create_token_file, args.owner)
        except (OSError, KeyError) as exc:
            print(f"error: cannot create {args.create_token_file}: {exc}", file=sys.stderr)
            return 2
        print(f"{'created' if created else 'kept existing'} MML token file {args.create_token_file}")
        return 0
    token = None
    if not args.user:
        try:
            token = args.token or default_token(env_file)
        except ConfigError as exc:
            print(f"error: {exc.key}: {exc.message}", file=sys.stderr)
            return 2
    client = Client(args.url, token, timeout=args.timeout)
    try:
        if args.user:
            password = args.password if args.password is not None else os.environ.get("MML_PASSWORD")
            if password is None:
                if not sys.stdin.isatty():
                    print("error: --password or MML_PASSWORD is needed without a terminal", file=sys.stderr)
                    return 2
                password = getpass.getpass(f"password for {args.user}: ")
            client.login(args.user, password)
        if args.command:
            return _print_result(client.execute(" ".join(args.command)), args.json)
        return _interactive(client, args.json)
    except MMLClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"error: cannot reach the MML API at {args.url}: {reason}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
