"""A hand-written SIP peer on a plain UDP socket: the attacker (and the victim listener) of the
hostile tests. It writes requests as text, so it can forge whatever a real UA would not send."""
from __future__ import annotations

import secrets
import socket
import time

from sipcore.digest import compute_ha1, compute_response, parse_auth_params
from sipcore.message import SIPResponse, parse_message

SDP = ("v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0\r\n")


class Peer:
    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.addr = self.sock.getsockname()

    def close(self) -> None:
        self.sock.close()

    def send(self, text: str, dest: tuple[str, int]) -> None:
        self.sock.sendto(text.encode("utf-8", "surrogateescape"), dest)

    def receive(self, seconds: float) -> list:
        """Everything that arrives within ``seconds`` (parsed when possible, else raw bytes)."""
        out = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                return out
            try:
                out.append(parse_message(data))
            except ValueError:
                out.append(data)

    def final(self, seconds: float = 3.0) -> SIPResponse | None:
        """The first final response within ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self.receive(min(0.2, max(0.0, deadline - time.monotonic()))):
                if isinstance(msg, SIPResponse) and msg.status >= 200:
                    return msg
        return None

    def request(self, method: str, uri: str, dest: tuple[str, int], *, from_user: str = "1001",
                from_host: str = "sip.local", from_tag: str | None = None, to_user: str = "1002",
                to_tag: str | None = None, call_id: str | None = None, cseq: int = 1,
                routes: tuple[str, ...] = (), body: str = "", extra: tuple[str, ...] = ()) -> str:
        """Send a request; returns its text (resent as is for digest retries)."""
        call_id = call_id or secrets.token_hex(8)
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.addr[0]}:{self.addr[1]};branch=z9hG4bK{secrets.token_hex(6)};rport",
                 "Max-Forwards: 70",
                 f"From: <sip:{from_user}@{from_host}>;tag={from_tag or secrets.token_hex(4)}",
                 f"To: <sip:{to_user}@sip.local>" + (f";tag={to_tag}" if to_tag else ""),
                 f"Call-ID: {call_id}", f"CSeq: {cseq} {method}",
                 f"Contact: <sip:{from_user}@{self.addr[0]}:{self.addr[1]}>",
                 *(f"Route: {r}" for r in routes), *extra]
        if body:
            lines.append("Content-Type: application/sdp")
        text = "\r\n".join(lines) + f"\r\nContent-Length: {len(body.encode())}\r\n\r\n{body}"
        self.send(text, dest)
        return text


def with_proxy_auth(text: str, challenge: SIPResponse, user: str, password: str) -> str:
    """``text`` with a new branch, CSeq + 1 and Proxy-Authorization for ``user`` answering ``challenge``."""
    _, p = parse_auth_params(challenge.headers.get("Proxy-Authenticate"))
    method, uri = text.split(" ", 2)[:2]
    ha1 = compute_ha1(user, p["realm"], password, "MD5")
    digest = compute_response("MD5", ha1, p["nonce"], method, uri)
    auth = (f'Proxy-Authorization: Digest username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", '
            f'uri="{uri}", response="{digest}", algorithm=MD5')
    head, _, body = text.partition("\r\n\r\n")
    lines = []
    for line in head.split("\r\n"):
        if line.startswith("Via:"):
            line = line.rsplit("branch=", 1)[0] + f"branch=z9hG4bK{secrets.token_hex(6)};rport"
        elif line.startswith("CSeq:"):
            n, m = line[5:].split()
            line = f"CSeq: {int(n) + 1} {m}"
        lines.append(line)
    lines.insert(-1, auth)
    return "\r\n".join(lines) + "\r\n\r\n" + body
