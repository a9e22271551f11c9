"""Server configuration from the original environment variable names, plus an optional JSON file.

Precedence: environment variable (non-empty) > ``ims.env`` in the working directory (or
``IMS_ENV_FILE``) > config file (``CONFIG_FILE``, default
``config/config.json``, the original's keys such as ``SERVER_ADDR``, ``SERVER_PUBLIC_PORT``,
``LOG_LEVEL``; env-style names are accepted there too) > default. Every value is validated at
start; an invalid one raises ``ConfigError(key, message)`` naming the variable.

``SERVER_IP=AUTO_DETECT`` asks the kernel which local address routes towards a TEST-NET address
(a UDP ``connect()`` selects a route and sends nothing); the fallback is 127.0.0.1.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
from dataclasses import dataclass, fields
from typing import Callable, Mapping

from sipcore.envfile import read_env_file
from sipcore.location_store import parse_location_store
from sipcore.errors import ConfigError
from sipcore.mml.token_file import DEFAULT_TOKEN_FILE, read_token, valid_token

log = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_LOCAL_NETWORKS = "192.168.0.0/16,10.0.0.0/8,172.16.0.0/12"
DEFAULT_CONFIG_FILE = "config/config.json"
DIGEST_ALGORITHMS = ("MD5", "SHA-256")
MEDIA_BACKENDS = ("auto", "builtin", "rtpproxy")
SIGNALLING_MODES = ("sipcore", "sippy")
RTPPROXY_ENGINES = ("rtpproxy", "rtpengine")     # what RTPPROXY_AUTO_START starts (ims-rtpproxy --engine)
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _event_loop(text: str) -> str:
    """The loop to run: asyncio (the default), uvloop, or ``auto``: uvloop when it is installed."""
    value = text.strip().lower()
    if value not in EVENT_LOOPS:
        raise ConfigError("EVENT_LOOP", f"must be one of {', '.join(EVENT_LOOPS)}, got {value!r}")
    if value == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    if value == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise ConfigError("EVENT_LOOP", "uvloop is not installed: pip install uvloop "
                              "(or .venv/bin/pip install -e '.[fast]')") from None
    return value
FOREIGN_CALLER_POLICIES = ("challenge", "reject", "allow")
RTPPROXY_SPEC_KINDS = ("udp", "udp6", "tcp", "unix")
TEST_NET_PROBE = ("192.0.2.1", 9)          # RFC 5737 TEST-NET-1; only used for a route lookup

# config.json keys of the original -> our variable names
FILE_KEY_ALIASES = {"SERVER_ADDR": "SERVER_IP", "LOCAL_NETWORKS": "LOCAL_NETWORK_CIDR"}
# original config.json keys that have no effect here (as in the original, mostly)
FILE_KEYS_IGNORED = {
    "FORCE_LOCAL_ADDR": "the advertised address comes from SERVER_IP / SERVER_PUBLIC_HOST",
    "CDR_MERGE_MODE": "one CDR row is written per outcome",
    "USERS": "subscribers are read from USERS_FILE (users.json)",
}
# dataclass field -> the variable it comes from (describe() shows variable names)
FIELD_VARIABLES = {"bind_ip": "UDP_BIND_IP", "advertised_host": "SERVER_PUBLIC_HOST",
                   "advertised_port": "SERVER_PUBLIC_PORT", "local_networks": "LOCAL_NETWORK_CIDR",
                   "realm": "SIP_REALM", "server_ip_auto": "SERVER_IP_AUTO_DETECTED"}
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$)({_LABEL})(\.{_LABEL})*\.?$")


def detect_local_ip(probe: tuple[str, int] = TEST_NET_PROBE) -> str:
    """The local address the kernel would use towards ``probe``; no packet is sent."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return "127.0.0.1"
    try:
        s.connect(probe)   # connect() on a UDP socket only selects a route
        addr = s.getsockname()[0]
        return addr if addr and addr != "0.0.0.0" else "127.0.0.1"
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


def is_host_address(ip: str) -> bool:
    """True when ``ip`` is an address of this host (a socket can bind it); nothing is sent."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.is_unspecified:
        return False
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


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
    auth_invite: bool | None               # None: the stage's default (sipcore.stage_policy)
    auth_algorithms: tuple[str, ...] | None  # None: the stage's default
    cdr_extended: bool
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
    server_ip_auto: bool = False
    # edge policy (sipcore.admission / sipcore.record_route)
    caller_identity: bool | None = None      # None: the stage's default (StagePolicy)
    foreign_callers: str = "challenge"
    outbound_route: str | None = None
    local_domains: tuple[str, ...] = ()
    rr_secret: str | None = None
    rr_secret_file: str = "data/rr_secret.key"
    location_store: str = "memory"
    # calls taken over from a previous server process (sipcore.call_handover)
    handover_call_max_seconds: float = 7200.0
    handover_check_interval: float = 15.0
    config_file: str | None = None
    event_loop: str = "asyncio"              # asyncio | uvloop (PyPI, optional extra "fast"); auto resolved
    # overload control (sipcore.overload): 0 turns a test off
    overload_queue_ms: int = 200
    overload_max_pending: int = 5000
    overload_retry_after: int = 5
    gc_full_interval: int = 3600             # seconds between full garbage collections (sipcore.gc_policy)
    # edge safety (issue 10)
    server_header: str | None = None        # None: the stage's own text (sipcore/stages.py)
    tcp_max_connections: int = 1000
    tcp_max_per_source: int = 32
    tcp_first_message_timeout: float = 10.0
    dns_timeout: float = 2.0
    dns_resolve: bool = True
    rtpproxy_engine: str = "rtpproxy"         # RTPPROXY_ENGINE: the relay an auto-start launches

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, config_file: str | None = None, *,
                 detect_ip: Callable[[], str] = detect_local_ip,
                 is_local: Callable[[str], bool] | None = None) -> "Config":
        env = dict(os.environ if environ is None else environ)
        is_local = is_local or is_host_address
        # ims.env (the installation's KEY=VALUE file, also read by the pm2 file and ims-mml) sits
        # between the environment and the config file, so `run.py --check-config` run by hand in
        # the installation directory sees the settings pm2/systemd give the server.
        for key, value in read_env_file(env.get("IMS_ENV_FILE") or None).items():
            if not env.get(key):
                env[key] = value
        path = config_file or env.get("CONFIG_FILE") or DEFAULT_CONFIG_FILE
        file_values = _read_config_file(path, explicit=bool(config_file or env.get("CONFIG_FILE")))
        get = _Getter(env, file_values)

        raw_ip = get("SERVER_IP", "AUTO_DETECT").strip()
        auto = raw_ip.upper() == "AUTO_DETECT"
        server_ip = detect_ip() if auto else raw_ip
        _ip("SERVER_IP", server_ip)
        port = _port("SERVER_PORT", get("SERVER_PORT", "5060"))
        public_host = get("SERVER_PUBLIC_HOST", server_ip).strip()
        _host("SERVER_PUBLIC_HOST", public_host)
        public_port = _port("SERVER_PUBLIC_PORT", get("SERVER_PUBLIC_PORT", str(port)))
        # SIP (and the stage-0 relay) listen on SERVER_IP when it is one of this host's addresses,
        # so replies leave from the address the UAs know; 0.0.0.0 for AUTO_DETECT or a NATed/public
        # SERVER_IP the host does not own. UDP_BIND_IP overrides both.
        default_bind = server_ip if not auto and is_local(server_ip) else "0.0.0.0"
        bind_ip = get("UDP_BIND_IP", default_bind).strip()
        _ip("UDP_BIND_IP", bind_ip)

        rtp_min = _int("RTP_PORT_MIN", get("RTP_PORT_MIN", "20000"), 1024, 65534)
        rtp_max = _int("RTP_PORT_MAX", get("RTP_PORT_MAX", "29999"), 1025, 65535)
        if rtp_min >= rtp_max:
            raise ConfigError("RTP_PORT_MIN", f"must be below RTP_PORT_MAX ({rtp_min} >= {rtp_max})")

        level = get("LOG_LEVEL", "INFO").strip().upper()
        level = "WARNING" if level == "WARN" else level
        if level not in LOG_LEVELS:
            raise ConfigError("LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")

        min_exp = _int("MIN_EXPIRES", get("MIN_EXPIRES", "60"), 1, 86400)
        max_exp = _int("MAX_EXPIRES", get("MAX_EXPIRES", "3600"), 1, 604800)
        if min_exp > max_exp:
            raise ConfigError("MIN_EXPIRES", f"must not exceed MAX_EXPIRES ({min_exp} > {max_exp})")
        default_exp = _int("DEFAULT_EXPIRES", get("DEFAULT_EXPIRES", str(min(3600, max_exp))), 1, 604800)
        if not min_exp <= default_exp <= max_exp:
            raise ConfigError("DEFAULT_EXPIRES", f"must lie between MIN_EXPIRES and MAX_EXPIRES "
                                                 f"({min_exp}..{max_exp}), got {default_exp}")

        method = get("NAT_KEEPALIVE_METHOD", "OPTIONS").strip().upper()
        if method not in ("OPTIONS", "CRLF"):
            raise ConfigError("NAT_KEEPALIVE_METHOD", f"must be OPTIONS or CRLF, got {method!r}")
        signalling = get("SIGNALLING", "sipcore").strip().lower()
        if signalling not in SIGNALLING_MODES:
            raise ConfigError("SIGNALLING", f"must be one of {', '.join(SIGNALLING_MODES)}, got {signalling!r}")
        event_loop = _event_loop(get("EVENT_LOOP", "asyncio"))
        backend = get("MEDIA_RELAY_BACKEND", "auto").strip().lower()
        if backend not in MEDIA_BACKENDS:
            raise ConfigError("MEDIA_RELAY_BACKEND", f"must be builtin or rtpproxy, got {backend!r}")

        realm = get("SIP_REALM", "sip.local").strip()
        if not realm or any(c in realm for c in '"\\\r\n'):
            raise ConfigError("SIP_REALM", f"must be a non-empty token without quotes, got {realm!r}")
        mml_host = get("MML_HOST", "127.0.0.1").strip()
        _host("MML_HOST", mml_host)
        token = get("MML_TOKEN", None)
        if token is not None and not valid_token(token):
            raise ConfigError("MML_TOKEN", "must be at least 8 characters without spaces")
        token_file = get("MML_TOKEN_FILE", None)
        if token is None and (token_file or os.path.exists(DEFAULT_TOKEN_FILE)):
            token = read_token(token_file or DEFAULT_TOKEN_FILE)

        identity_text = get("CALLER_IDENTITY", "").strip()
        caller_identity = _bool("CALLER_IDENTITY", identity_text) if identity_text else None
        foreign = get("FOREIGN_CALLERS", "challenge").strip().lower()
        if foreign not in FOREIGN_CALLER_POLICIES:
            raise ConfigError("FOREIGN_CALLERS", f"must be one of {', '.join(FOREIGN_CALLER_POLICIES)}, got {foreign!r}")
        outbound = get("OUTBOUND_ROUTE", "").strip() or None
        if outbound:
            from sipcore.admission import parse_outbound_route
            try:
                parse_outbound_route(outbound)
            except ValueError as exc:
                raise ConfigError("OUTBOUND_ROUTE", f"{exc}; got {outbound!r}") from None
        domains = tuple(d.strip().lower() for d in get("LOCAL_DOMAINS", "").split(",") if d.strip())
        for d in domains:
            _host("LOCAL_DOMAINS", d)
        rr_secret = get("RR_SECRET", None)
        if rr_secret is not None and len(rr_secret) < 16:
            raise ConfigError("RR_SECRET", "must be at least 16 characters")
        users_file = get("USERS_FILE", "data/users.json")
        rr_secret_file = get("RR_SECRET_FILE", os.path.join(os.path.dirname(users_file) or ".", "rr_secret.key"))
        location_store = parse_location_store(get("LOCATION_STORE", ""), users_file)

        for name in ("USERS_FILE", "CDR_DIR", "LOG_DIR", "BLACKLIST_FILE", "RR_SECRET_FILE"):
            if "\x00" in get(name, "x"):
                raise ConfigError(name, "path contains a NUL character")

        rtpproxy_nodes = _rtpproxy_nodes(get)
        rtpproxy_engine = _rtpproxy_engine(get("RTPPROXY_ENGINE", "rtpproxy"), rtpproxy_nodes)
        return cls(
            server_ip=server_ip, server_port=port, bind_ip=bind_ip, event_loop=event_loop,
            advertised_host=public_host, advertised_port=public_port,
            enable_tcp=_bool("ENABLE_TCP", get("ENABLE_TCP", "0")),
            local_networks=_networks("LOCAL_NETWORK_CIDR", get("LOCAL_NETWORK_CIDR", DEFAULT_LOCAL_NETWORKS)),
            rtpproxy_nodes=rtpproxy_nodes,
            rtpproxy_auto_start=_bool("RTPPROXY_AUTO_START", get("RTPPROXY_AUTO_START", "1")),
            rtpproxy_engine=rtpproxy_engine,
            rtp_port_min=rtp_min, rtp_port_max=rtp_max,
            rtp_inactivity_timeout=_float("RTP_INACTIVITY_TIMEOUT", get("RTP_INACTIVITY_TIMEOUT", "60")),
            media_relay_backend=backend,
            users_file=users_file, cdr_dir=get("CDR_DIR", "CDR"),
            log_dir=get("LOG_DIR", "logs"), log_level=level,
            blacklist_file=get("BLACKLIST_FILE", "config/ip_blacklist.txt"),
            realm=realm,
            auth_invite=_bool("AUTH_INVITE", get("AUTH_INVITE")) if _given(get("AUTH_INVITE")) else None,
            auth_algorithms=_algorithms(get("AUTH_ALGORITHMS")) if _given(get("AUTH_ALGORITHMS")) else None,
            cdr_extended=_bool("CDR_EXTENDED", get("CDR_EXTENDED", "0")),
            nonce_ttl=_int("NONCE_TTL", get("NONCE_TTL", "300"), 5, 86400),
            min_expires=min_exp, max_expires=max_exp, default_expires=default_exp,
            nat_keepalive_interval=_float("NAT_KEEPALIVE_INTERVAL", get("NAT_KEEPALIVE_INTERVAL", "25")),
            nat_keepalive_method=method,
            nat_keepalive_failures=_int("NAT_KEEPALIVE_FAILURES", get("NAT_KEEPALIVE_FAILURES", "3"), 1, 100),
            rate_limit_fails=_int("RATE_LIMIT_FAILS", get("RATE_LIMIT_FAILS", "10"), 1, 100000),
            mml_host=mml_host, mml_port=_port("MML_PORT", get("MML_PORT", "8888")),
            mml_token=token, signalling=signalling, server_ip_auto=auto,
            config_file=path if file_values else None,
            caller_identity=caller_identity, foreign_callers=foreign, outbound_route=outbound,
            local_domains=domains, rr_secret=rr_secret, rr_secret_file=rr_secret_file,
            location_store=location_store,
            handover_call_max_seconds=_float("HANDOVER_CALL_MAX_SECONDS", get("HANDOVER_CALL_MAX_SECONDS", "7200")),
            handover_check_interval=_float("HANDOVER_CHECK_INTERVAL", get("HANDOVER_CHECK_INTERVAL", "15")),
            **_edge_safety(get),
        )

    def describe(self) -> dict:
        """Variable name -> value for MML ``DSP SYSCFG`` / ``DSP CFG`` (the token is masked)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = ",".join(f"{v[0]}={v[1]}" if isinstance(v, tuple) else str(v) for v in value)
            out[FIELD_VARIABLES.get(f.name, f.name.upper())] = value
        if self.mml_token:
            out["MML_TOKEN"] = "***"
        if self.rr_secret:
            out["RR_SECRET"] = "***"
        return out


def _given(value) -> bool:
    """Set to something (a per-stage default applies otherwise)."""
    return value is not None and str(value).strip() != ""


class _Getter:
    """Looks a key up in the environment, then in the config file, then returns the default."""

    def __init__(self, env: dict[str, str], file_values: dict[str, str]):
        self.env = env
        self.file_values = file_values

    def __call__(self, key: str, default=None):
        value = self.env.get(key)
        if value is not None and value != "":
            return value
        value = self.file_values.get(key)
        if value is not None:
            return value
        return default


def _read_config_file(path: str, explicit: bool) -> dict[str, str]:
    if not os.path.exists(path):
        if explicit:
            log.info("config file %s not found; using environment and defaults", path)
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("CONFIG_FILE", f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("CONFIG_FILE", f"{path} must hold a JSON object")
    out: dict[str, str] = {}
    for key, value in data.items():
        name = FILE_KEY_ALIASES.get(str(key).upper(), str(key).upper())
        if name in FILE_KEYS_IGNORED:
            log.warning("%s: %s is ignored (%s)", path, key, FILE_KEYS_IGNORED[name])
            continue
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = "1" if value else "0"
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value)
        elif isinstance(value, (str, int, float)):
            out[name] = str(value)
        else:
            raise ConfigError(name, f"{path}: value of {key} must be a string, number or list")
    return out


def _rtpproxy_nodes(get: _Getter) -> tuple[tuple[str, int], ...]:
    """RTPPROXY_NODES > RTPPROXY_SOCKET > RTPPROXY_UDP_* (run.py) > RTPPROXY_TCP_* (run_refactored)."""
    nodes_text = get("RTPPROXY_NODES")
    if nodes_text:
        nodes = []
        for item in nodes_text.split(","):
            item = item.strip()
            if not item:
                continue
            spec, sep, weight = item.rpartition("=") if "=" in item else (item, "", "")
            spec = _spec("RTPPROXY_NODES", spec.strip())
            nodes.append((spec, _int("RTPPROXY_NODES", weight.strip() if sep else "1", 1, 1000)))
        if not nodes:
            raise ConfigError("RTPPROXY_NODES", "no node given")
        return tuple(nodes)
    sock = get("RTPPROXY_SOCKET")
    if sock:
        return ((_spec("RTPPROXY_SOCKET", sock.strip()), 1),)
    if get("RTPPROXY_UDP_HOST") or get("RTPPROXY_UDP_PORT") or not (get("RTPPROXY_TCP_HOST") or get("RTPPROXY_TCP_PORT")):
        host = get("RTPPROXY_UDP_HOST", "127.0.0.1").strip()
        _host("RTPPROXY_UDP_HOST", host)
        port = _port("RTPPROXY_UDP_PORT", get("RTPPROXY_UDP_PORT", "7722"))
        return ((f"udp:{host}:{port}", 1),)
    host = get("RTPPROXY_TCP_HOST", "127.0.0.1").strip()
    _host("RTPPROXY_TCP_HOST", host)
    port = _port("RTPPROXY_TCP_PORT", get("RTPPROXY_TCP_PORT", "7722"))
    return ((f"tcp:{host}:{port}", 1),)


def _spec(key: str, spec: str) -> str:
    """Validate an rtpproxy control socket spec; a bare absolute path means ``unix:``."""
    if spec.startswith("/"):
        spec = "unix:" + spec
    kind, sep, rest = spec.partition(":")
    usage = "udp:HOST:PORT, udp6:[ADDR]:PORT, tcp:HOST:PORT or unix:/path"
    if not sep or kind not in RTPPROXY_SPEC_KINDS or not rest:
        raise ConfigError(key, f"rtpproxy socket must be {usage}, got {spec!r}")
    if kind == "unix":
        if "\x00" in rest:
            raise ConfigError(key, f"bad unix socket path in {spec!r}")
        return spec
    host, _, port = rest.rpartition(":")
    if not host:
        raise ConfigError(key, f"rtpproxy socket must be {usage}, got {spec!r}")
    _port(key, port)
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if kind == "udp6":
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise ConfigError(key, f"not an IPv6 address in {spec!r}") from None
    else:
        _host(key, bare)
    return spec


def _networks(key: str, text: str) -> tuple[str, ...]:
    nets = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            nets.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(key, f"not a CIDR network: {item!r}") from None
    return tuple(nets)


def _algorithms(text: str) -> tuple[str, ...]:
    algs = []
    for a in text.split(","):
        a = a.strip().upper()
        if not a:
            continue
        a = "SHA-256" if a in ("SHA256", "SHA-256") else a
        if a not in DIGEST_ALGORITHMS:
            raise ConfigError("AUTH_ALGORITHMS", f"unsupported algorithm {a!r} (supported: MD5, SHA-256)")
        if a not in algs:
            algs.append(a)
    if not algs:
        raise ConfigError("AUTH_ALGORITHMS", "at least one algorithm is needed")
    return tuple(algs)


def _ip(key: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(key, f"not an IP address: {value!r}") from None


def _host(key: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if not _HOSTNAME_RE.match(value or "") or value.replace(".", "").isdigit():
        raise ConfigError(key, f"not an IP address or host name: {value!r}")


def _int(key: str, value, lo: int, hi: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"not a whole number: {value!r}") from None
    if not lo <= n <= hi:
        raise ConfigError(key, f"must be between {lo} and {hi}, got {n}")
    return n


def _port(key: str, value) -> int:
    return _int(key, value, 1, 65535)


def _edge_safety(get) -> dict:
    """SERVER_HEADER, TCP caps and DNS settings (issue 10) as Config fields."""
    server_header = get("SERVER_HEADER", None)
    if server_header is not None and (not server_header.strip() or len(server_header) > 200
                                      or not server_header.isprintable()):
        raise ConfigError("SERVER_HEADER", "must be 1-200 printable characters")
    return {
        "server_header": server_header,
        "tcp_max_connections": _int("TCP_MAX_CONNECTIONS", get("TCP_MAX_CONNECTIONS", "1000"), 1, 1000000),
        "tcp_max_per_source": _int("TCP_MAX_PER_SOURCE", get("TCP_MAX_PER_SOURCE", "32"), 1, 1000000),
        "tcp_first_message_timeout": _float("TCP_FIRST_MESSAGE_TIMEOUT", get("TCP_FIRST_MESSAGE_TIMEOUT", "10")),
        "dns_timeout": _float("DNS_TIMEOUT", get("DNS_TIMEOUT", "2")),
        "dns_resolve": _bool("DNS_RESOLVE", get("DNS_RESOLVE", "1")),
        "overload_queue_ms": _int("OVERLOAD_QUEUE_MS", get("OVERLOAD_QUEUE_MS", "200"), 0, 60000),
        "overload_max_pending": _int("OVERLOAD_MAX_PENDING", get("OVERLOAD_MAX_PENDING", "5000"), 0, 10000000),
        "overload_retry_after": _int("OVERLOAD_RETRY_AFTER", get("OVERLOAD_RETRY_AFTER", "5"), 1, 3600),
        "gc_full_interval": _int("GC_FULL_INTERVAL", get("GC_FULL_INTERVAL", "3600"), 0, 10000000),
    }


def _float(key: str, value) -> float:
    try:
        f = float(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"not a number: {value!r}") from None
    if not 0 < f < 1e7:
        raise ConfigError(key, f"must be a positive number of seconds, got {value!r}")
    return f


def _rtpproxy_engine(value: str, nodes: tuple[tuple[str, int], ...]) -> str:
    engine = value.strip().lower()
    if engine not in RTPPROXY_ENGINES:
        raise ConfigError("RTPPROXY_ENGINE", f"must be one of {', '.join(RTPPROXY_ENGINES)}, got {engine!r}")
    if engine == "rtpengine" and not nodes[0][0].startswith("udp:"):
        raise ConfigError("RTPPROXY_ENGINE", f"rtpengine takes the rtpproxy protocol on udp:HOST:PORT only, "
                                             f"the relay node is {nodes[0][0]}")
    return engine


def _bool(key: str, value) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, f"must be 0 or 1, got {value!r}")
