"""`ims-mml`: MML client for the server's HTTP API.

    ims-mml [--url http://127.0.0.1:8888] [--token T | --user U --password P] "DSP REG"
Without a command it reads commands interactively (or from standard input).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.token = token
        self.cookie: str | None = None
        self.timeout = timeout

    def _post(self, path: str, payload: dict) -> tuple[int, dict, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if self.cookie:
            req.add_header("Cookie", self.cookie)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}"), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)

    def login(self, user: str, password: str) -> None:
        status, body, headers = self._post("/api/login", {"username": user, "password": password})
        if status != 200:
            raise SystemExit(f"login failed: {body.get('error', status)}")
        self.cookie = headers.get("Set-Cookie", "").split(";")[0]

    def execute(self, command: str) -> dict:
        status, body, _ = self._post("/api/execute", {"command": command})
        if status != 200:
            return {"retcode": status, "retmsg": body.get("error", f"HTTP {status}"), "output": ""}
        return body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ims-mml", description="MML client for the ims-migrate server")
    ap.add_argument("--url", default=os.environ.get("MML_URL", f"http://127.0.0.1:{os.environ.get('MML_PORT', '8888')}"))
    ap.add_argument("--token", default=os.environ.get("MML_TOKEN"))
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--json", action="store_true", help="print the raw JSON reply")
    ap.add_argument("command", nargs="*", help='e.g. "DSP REG" (interactive when omitted)')
    args = ap.parse_args(argv)
    client = Client(args.url, args.token)
    try:
        if args.user:
            client.login(args.user, args.password or "")
        commands = [" ".join(args.command)] if args.command else None
        rc = 0
        if commands is None:
            interactive = sys.stdin.isatty()
            commands = []
            while True:
                try:
                    line = input("MML> ") if interactive else sys.stdin.readline()
                except EOFError:
                    break
                if not interactive and not line:
                    break
                line = line.strip()
                if line.upper() in ("QUIT", "EXIT"):
                    break
                if line:
                    rc = max(rc, _run(client, line, args.json))
            return rc
        for c in commands:
            rc = max(rc, _run(client, c, args.json))
        return rc
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach the MML API at {args.url}: {exc}", file=sys.stderr)
        return 3


def _run(client: Client, command: str, raw: bool) -> int:
    result = client.execute(command)
    if raw:
        print(json.dumps(result))
    else:
        if result.get("output"):
            print(result["output"])
        print(f"RETCODE = {result.get('retcode')}  {result.get('retmsg')}")
    return 0 if result.get("retcode") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
