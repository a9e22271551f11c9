"""Server configuration from the original environment variable names (plus an optional JSON file).

Every value is validated at start; an invalid one raises ``ConfigError`` naming the key.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
from dataclasses import dataclass, fields

from sipcore.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_LOCAL_NETWORKS = "192.168.0.0/16,10.0.0.0/8,172.16.0.0/12"


def detect_local_ip() -> str:
    """The address the kernel would use towards a TEST-NET destination; nothing is sent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))   # connect() on UDP only selects a route
        return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


@dataclass(frozen=True)
class Config:
    server_ip: str
    server_port: int
    bind_ip: str
    advertised_host: str
    advertised_port: int
    enable_tcp: bool
    local_networks: tuple[str, ...]
    rtpproxy_nodes: tuple[tuple[str, int], ...]
    rtpproxy_auto_start: bool
    rtp_port_min: int
    rtp_port_max: int
    rtp_inactivity_timeout: float
    media_relay_backend: str
    users_file: str
    cdr_dir: str
    log_dir: str
    log_level: str
    blacklist_file: str
    realm: str
    auth_invite: bool
    auth_algorithms: tuple[str, ...]
    nonce_ttl: int
    min_expires: int
    max_expires: int
    default_expires: int
    nat_keepalive_interval: float
    nat_keepalive_method: str
    nat_keepalive_failures: int
    rate_limit_fails: int
    mml_host: str
    mml_port: int
    mml_token: str | None
    signalling: str

    @classmethod
    def from_env(cls, environ=None, config_file: str | None = None) -> "Config":
        env = dict(os.environ if environ is None else environ)
        file_values: dict = {}
        path = config_file or env.get("CONFIG_FILE") or "config/config.json"
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as fh:
                    file_values = json.load(fh)
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError("CONFIG_FILE", f"cannot read {path}: {exc}") from None
            if not isinstance(file_values, dict):
                raise ConfigError("CONFIG_FILE", f"{path} must hold a JSON object")

        def get(key: str, default=None, file_key: str | None = None):
            if key in env and env[key] != "":
                return env[key]
            fk = file_key or key
            if fk in file_values and file_values[fk] is not None:
                return str(file_values[fk])
            return default

        server_ip = get("SERVER_IP", "AUTO_DETECT", file_key="SERVER_ADDR")
        if server_ip.upper() == "AUTO_DETECT":
            server_ip = detect_local_ip()
        _ip("SERVER_IP", server_ip)
        port = _port("SERVER_PORT", get("SERVER_PORT", "5060"))
        public_host = get("SERVER_PUBLIC_HOST", server_ip)
        public_port = _port("SERVER_PUBLIC_PORT", get("SERVER_PUBLIC_PORT", str(port)))
        nets = []
        for n in get("LOCAL_NETWORK_CIDR", DEFAULT_LOCAL_NETWORKS).split(","):
            n = n.strip()
            if not n:
                continue
            try:
                nets.append(str(ipaddress.ip_network(n, strict=False)))
            except ValueError:
                raise ConfigError("LOCAL_NETWORK_CIDR", f"not a CIDR: {n!r}") from None
        rtp_min = _int("RTP_PORT_MIN", get("RTP_PORT_MIN", "20000"), 1024, 65534)
        rtp_max = _int("RTP_PORT_MAX", get("RTP_PORT_MAX", "29999"), 1025, 65535)
        if rtp_min >= rtp_max:
            raise ConfigError("RTP_PORT_MIN", f"must be below RTP_PORT_MAX ({rtp_min} >= {rtp_max})")
        level = get("LOG_LEVEL", "INFO").upper()
        if level not in LOG_LEVELS:
            raise ConfigError("LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
        algs = tuple(a.strip().upper() for a in get("AUTH_ALGORITHMS", "SHA-256,MD5").split(",") if a.strip())
        for a in algs:
            if a not in ("MD5", "SHA-256"):
                raise ConfigError("AUTH_ALGORITHMS", f"unsupported algorithm {a!r} (MD5, SHA-256)")
        if not algs:
            raise ConfigError("AUTH_ALGORITHMS", "at least one algorithm is needed")
        min_exp = _int("MIN_EXPIRES", get("MIN_EXPIRES", "60"), 1, 86400)
        max_exp = _int("MAX_EXPIRES", get("MAX_EXPIRES", "3600"), 1, 604800)
        if min_exp > max_exp:
            raise ConfigError("MIN_EXPIRES", f"must not exceed MAX_EXPIRES ({min_exp} > {max_exp})")
        method = get("NAT_KEEPALIVE_METHOD", "OPTIONS").upper()
        if method not in ("OPTIONS", "CRLF"):
            raise ConfigError("NAT_KEEPALIVE_METHOD", f"must be OPTIONS or CRLF, got {method!r}")
        signalling = get("SIGNALLING", "sipcore").lower()
        backend = get("MEDIA_RELAY_BACKEND", "auto").lower()
        if backend not in ("auto", "builtin", "rtpproxy"):
            raise ConfigError("MEDIA_RELAY_BACKEND", f"must be builtin or rtpproxy, got {backend!r}")
        return cls(
            server_ip=server_ip, server_port=port, bind_ip=get("UDP_BIND_IP", "0.0.0.0"),
            advertised_host=public_host, advertised_port=public_port,
            enable_tcp=_bool("ENABLE_TCP", get("ENABLE_TCP", "0")),
            local_networks=tuple(nets), rtpproxy_nodes=_rtpproxy_nodes(get),
            rtpproxy_auto_start=_bool("RTPPROXY_AUTO_START", get("RTPPROXY_AUTO_START", "1")),
            rtp_port_min=rtp_min, rtp_port_max=rtp_max,
            rtp_inactivity_timeout=_float("RTP_INACTIVITY_TIMEOUT", get("RTP_INACTIVITY_TIMEOUT", "60")),
            media_relay_backend=backend,
            users_file=get("USERS_FILE", "data/users.json"), cdr_dir=get("CDR_DIR", "CDR"),
            log_dir=get("LOG_DIR", "logs"), log_level=level,
            blacklist_file=get("BLACKLIST_FILE", "config/ip_blacklist.txt"),
            realm=get("SIP_REALM", "sip.local"), auth_invite=_bool("AUTH_INVITE", get("AUTH_INVITE", "1")),
            auth_algorithms=algs, nonce_ttl=_int("NONCE_TTL", get("NONCE_TTL", "300"), 5, 86400),
            min_expires=min_exp, max_expires=max_exp,
            default_expires=_int("DEFAULT_EXPIRES", get("DEFAULT_EXPIRES", "3600"), 1, 604800),
            nat_keepalive_interval=_float("NAT_KEEPALIVE_INTERVAL", get("NAT_KEEPALIVE_INTERVAL", "25")),
            nat_keepalive_method=method,
            nat_keepalive_failures=_int("NAT_KEEPALIVE_FAILURES", get("NAT_KEEPALIVE_FAILURES", "3"), 1, 100),
            rate_limit_fails=_int("RATE_LIMIT_FAILS", get("RATE_LIMIT_FAILS", "10"), 1, 100000),
            mml_host=get("MML_HOST", "127.0.0.1"), mml_port=_port("MML_PORT", get("MML_PORT", "8888")),
            mml_token=get("MML_TOKEN", None), signalling=signalling,
        )

    def describe(self) -> dict:
        out = {f.name.upper(): getattr(self, f.name) for f in fields(self)}
        if out.get("MML_TOKEN"):
            out["MML_TOKEN"] = "***"
        return out


def _rtpproxy_nodes(get) -> tuple[tuple[str, int], ...]:
    nodes_text = get("RTPPROXY_NODES")
    if nodes_text:
        nodes = []
        for item in nodes_text.split(","):
            spec, _, weight = item.strip().partition("=")
            _spec("RTPPROXY_NODES", spec)
            nodes.append((spec, _int("RTPPROXY_NODES", weight or "1", 1, 1000)))
        return tuple(nodes)
    sock = get("RTPPROXY_SOCKET")
    if sock:
        if sock.startswith("/"):
            sock = "unix:" + sock
        _spec("RTPPROXY_SOCKET", sock)
        return ((sock, 1),)
    if get("RTPPROXY_UDP_HOST") or get("RTPPROXY_UDP_PORT") or not get("RTPPROXY_TCP_PORT"):
        host = get("RTPPROXY_UDP_HOST", "127.0.0.1")
        port = _port("RTPPROXY_UDP_PORT", get("RTPPROXY_UDP_PORT", "7722"))
        return ((f"udp:{host}:{port}", 1),)
    host = get("RTPPROXY_TCP_HOST", "127.0.0.1")
    port = _port("RTPPROXY_TCP_PORT", get("RTPPROXY_TCP_PORT", "7722"))
    return ((f"tcp:{host}:{port}", 1),)


def _spec(key: str, spec: str) -> None:
    if not spec.startswith(("udp:", "udp6:", "unix:", "tcp:")):
        raise ConfigError(key, f"rtpproxy socket must be udp:HOST:PORT, udp6:[HOST]:PORT, unix:/path or tcp:HOST:PORT, got {spec!r}")


def _ip(key: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(key, f"not an IP address: {value!r}") from None


def _int(key: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"not a whole number: {value!r}") from None
    if not lo <= n <= hi:
        raise ConfigError(key, f"must be between {lo} and {hi}, got {n}")
    return n


def _port(key: str, value: str) -> int:
    return _int(key, value, 1, 65535)


def _float(key: str, value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise ConfigError(key, f"not a number: {value!r}") from None
    if f <= 0:
        raise ConfigError(key, f"must be positive, got {f}")
    return f


def _bool(key: str, value: str) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, f"must be 0 or 1, got {value!r}")


logging.getLogger(__name__).addHandler(logging.NullHandler())
