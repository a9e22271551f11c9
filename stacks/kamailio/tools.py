"""Glue between the harness and the Kamailio reference stack (stacks/kamailio/stack.yaml).

    python tools.py exec kamailio ARGS...      run Kamailio with KAM_NATPING = NAT_KEEPALIVE_INTERVAL
                                               rounded up to whole seconds (natping_interval)
    python tools.py users USERS_JSON OUT_CFG   users.json (ACTIVE users) -> Kamailio include file that
                                               fills the htable "users" (username -> password)
    python tools.py registrations FIFO         ul.dump over the JSON-RPC FIFO -> [{"aor", "contact"}]
                                               on stdout (the contact as Kamailio routes to it: its
                                               received address when fix_nated_register kept one)
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import time

DOMAIN = "sip.local"
SAFE = re.compile(r"^[A-Za-z0-9._+-]{1,64}$")


def users(src: str, out: str) -> int:
    with open(src, encoding="utf-8") as fh:
        data = json.load(fh)
    lines = ["# generated from %s by stacks/kamailio/tools.py: do not edit" % os.path.basename(src),
             "event_route[htable:mod-init] {"]
    for key, u in sorted(data.items()):
        name, password = str(u.get("username", key)), str(u.get("password", ""))
        if u.get("status", "ACTIVE") != "ACTIVE":
            continue
        if not SAFE.match(name) or not SAFE.match(password):
            print(f"error: users: {name!r}: username and password must match {SAFE.pattern} "
                  "(they are written into the Kamailio configuration)", file=sys.stderr)
            return 2
        lines.append(f'\t$sht(users=>{name}) = "{password}";')
    lines.append("}")
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return 0


def rpc(fifo: str, method: str, timeout: float = 5.0) -> dict:
    """One JSON-RPC call through Kamailio's FIFO; the reply comes back on a FIFO of our own, which
    Kamailio opens in its fifo_reply_dir (/tmp/ by default), so only its name goes in the request."""
    name = f"kamrpc-{os.getpid()}-{time.monotonic_ns()}"
    reply = os.path.join(tempfile.gettempdir(), name)
    os.mkfifo(reply, 0o600)
    request = {"jsonrpc": "2.0", "method": method, "id": 1, "reply_name": name}
    try:
        rfd = os.open(reply, os.O_RDONLY | os.O_NONBLOCK)
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(request) + "\n")
        chunks, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = os.read(rfd, 65536)
            except BlockingIOError:
                chunk = b""
            if chunk:
                chunks.append(chunk)
                try:
                    return json.loads(b"".join(chunks))
                except ValueError:
                    continue
            time.sleep(0.02)
        raise TimeoutError(f"no JSON-RPC reply to {method} within {timeout}s")
    finally:
        try:
            os.close(rfd)
        except (OSError, UnboundLocalError):
            pass
        try:
            os.unlink(reply)
        except OSError:
            pass


def registrations(fifo: str) -> int:
    try:
        result = rpc(fifo, "ul.dump").get("result", {})
    except (OSError, TimeoutError, ValueError) as exc:
        print(f"error: ul.dump: {exc}", file=sys.stderr)
        print("[]")
        return 1
    out = []
    for domain in result.get("Domains", []):
        for rec in domain.get("Domain", {}).get("AoRs", []):
            info = rec.get("Info", {})
            aor = info.get("AoR", "")
            for c in info.get("Contacts", []):
                contact = c.get("Contact", {})
                uri = contact.get("Address", "")
                received = contact.get("Received", "")
                if received and received != "[not set]":
                    uri = f"{uri} received={received}"
                out.append({"aor": aor if aor.startswith("sip:") else f"sip:{aor}@{DOMAIN}", "contact": uri})
    print(json.dumps(out))
    return 0


def exec_kamailio(argv: list[str]) -> int:
    interval = os.environ.get("NAT_KEEPALIVE_INTERVAL", "")
    try:
        seconds = max(1, math.ceil(float(interval))) if interval else 10
    except ValueError:
        print(f"error: NAT_KEEPALIVE_INTERVAL: not a number: {interval!r}", file=sys.stderr)
        return 2
    os.environ["KAM_NATPING"] = str(seconds)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"error: cannot run {argv[0]}: {exc.strerror} (Debian: apt-get install -y kamailio; "
              "scripts/setup.sh installs it)", file=sys.stderr)
    return 127


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "exec":
        return exec_kamailio(argv[1:])
    if len(argv) == 3 and argv[0] == "users":
        return users(argv[1], argv[2])
    if len(argv) == 2 and argv[0] == "registrations":
        return registrations(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
