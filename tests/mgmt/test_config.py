"""Config.from_env: the original variable names, defaults, config file, and typed errors."""
from __future__ import annotations

import ipaddress
import json

import pytest

from sipcore.config import Config, detect_local_ip
from sipcore.errors import ConfigError


def cfg(tmp_path, **env):
    return Config.from_env({k: str(v) for k, v in env.items()}, config_file=str(tmp_path / "absent.json"),
                           detect_ip=lambda: "192.0.2.44")


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)              # no ims.env, no config/mml.token here
    c = cfg(tmp_path)
    assert c.server_ip == "192.0.2.44" and c.server_ip_auto      # AUTO_DETECT is the default
    assert c.server_port == 5060 and c.advertised_host == "192.0.2.44" and c.advertised_port == 5060
    assert c.rtpproxy_nodes == (("udp:127.0.0.1:7722", 1),) and c.rtpproxy_auto_start
    assert c.local_networks == ("192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12")
    assert (c.rtp_port_min, c.rtp_port_max) == (20000, 29999)
    assert c.media_relay_backend == "auto" and not c.enable_tcp
    assert (c.log_level, c.log_dir, c.cdr_dir) == ("INFO", "logs", "CDR")
    assert (c.users_file, c.blacklist_file) == ("data/users.json", "config/ip_blacklist.txt")
    # AUTH_INVITE / AUTH_ALGORITHMS unset: each stage's default applies (sipcore.stage_policy)
    assert c.realm == "sip.local" and c.auth_invite is None and c.auth_algorithms is None
    assert not c.cdr_extended
    assert (c.nonce_ttl, c.min_expires, c.max_expires, c.default_expires) == (300, 60, 3600, 3600)
    assert (c.nat_keepalive_interval, c.nat_keepalive_method, c.nat_keepalive_failures) == (25.0, "OPTIONS", 3)
    assert c.rate_limit_fails == 10 and (c.mml_host, c.mml_port, c.mml_token) == ("127.0.0.1", 8888, None)
    assert c.signalling == "sipcore" and c.rtp_inactivity_timeout == 60.0


def test_every_variable_is_read(tmp_path):
    c = cfg(tmp_path, SERVER_IP="10.1.2.3", SERVER_PORT=5070, SERVER_PUBLIC_HOST="sip.example.org",
            SERVER_PUBLIC_PORT=15060, RTPPROXY_AUTO_START=0, LOCAL_NETWORK_CIDR="10.0.0.0/8, 100.64.0.0/10",
            RTP_PORT_MIN=30000, RTP_PORT_MAX=30100, MEDIA_RELAY_BACKEND="RTPPROXY", ENABLE_TCP=1,
            LOG_LEVEL="debug", LOG_DIR="/tmp/l", CDR_DIR="/tmp/c", USERS_FILE="/tmp/u.json",
            BLACKLIST_FILE="/tmp/b.txt", SIP_REALM="ims.test", AUTH_INVITE=0, AUTH_ALGORITHMS="sha-256",
            NONCE_TTL=120, MIN_EXPIRES=30, MAX_EXPIRES=600, DEFAULT_EXPIRES=300, NAT_KEEPALIVE_INTERVAL=15,
            NAT_KEEPALIVE_METHOD="crlf", NAT_KEEPALIVE_FAILURES=5, RATE_LIMIT_FAILS=4, MML_HOST="::1",
            MML_PORT=9999, MML_TOKEN="s3cret-token", SIGNALLING="sippy", RTP_INACTIVITY_TIMEOUT=30,
            CDR_EXTENDED=1)
    assert (c.server_ip, c.server_port, c.advertised_host, c.advertised_port) == ("10.1.2.3", 5070, "sip.example.org", 15060)
    assert not c.server_ip_auto and not c.rtpproxy_auto_start and c.enable_tcp
    assert c.local_networks == ("10.0.0.0/8", "100.64.0.0/10")
    assert (c.rtp_port_min, c.rtp_port_max, c.media_relay_backend) == (30000, 30100, "rtpproxy")
    assert (c.log_level, c.log_dir, c.cdr_dir, c.users_file, c.blacklist_file) == (
        "DEBUG", "/tmp/l", "/tmp/c", "/tmp/u.json", "/tmp/b.txt")
    assert (c.realm, c.auth_invite, c.auth_algorithms, c.nonce_ttl) == ("ims.test", False, ("SHA-256",), 120)
    assert (c.min_expires, c.max_expires, c.default_expires) == (30, 600, 300)
    assert (c.nat_keepalive_interval, c.nat_keepalive_method, c.nat_keepalive_failures) == (15.0, "CRLF", 5)
    assert (c.rate_limit_fails, c.mml_host, c.mml_port, c.mml_token) == (4, "::1", 9999, "s3cret-token")
    assert c.signalling == "sippy" and c.rtp_inactivity_timeout == 30.0 and c.cdr_extended
    assert c.describe()["MML_TOKEN"] == "***" and c.describe()["SERVER_PORT"] == 5070


@pytest.mark.parametrize("env, nodes", [
    ({"RTPPROXY_UDP_HOST": "127.0.0.2", "RTPPROXY_UDP_PORT": "7000"}, (("udp:127.0.0.2:7000", 1),)),
    ({"RTPPROXY_TCP_HOST": "127.0.0.3", "RTPPROXY_TCP_PORT": "7001"}, (("tcp:127.0.0.3:7001", 1),)),
    ({"RTPPROXY_TCP_PORT": "7001"}, (("tcp:127.0.0.1:7001", 1),)),
    ({"RTPPROXY_SOCKET": "unix:/var/run/rtpproxy.sock"}, (("unix:/var/run/rtpproxy.sock", 1),)),
    ({"RTPPROXY_SOCKET": "/run/rtpp.sock"}, (("unix:/run/rtpp.sock", 1),)),
    ({"RTPPROXY_SOCKET": "udp6:[::1]:7722"}, (("udp6:[::1]:7722", 1),)),
    ({"RTPPROXY_NODES": "udp:127.0.0.1:7722=2, tcp:127.0.0.1:7723=1", "RTPPROXY_SOCKET": "unix:/x"},
     (("udp:127.0.0.1:7722", 2), ("tcp:127.0.0.1:7723", 1))),
    ({"RTPPROXY_NODES": "unix:/a.sock"}, (("unix:/a.sock", 1),)),
])
def test_rtpproxy_specs(tmp_path, env, nodes):
    assert cfg(tmp_path, **env).rtpproxy_nodes == nodes


@pytest.mark.parametrize("key, value", [
    ("SERVER_IP", "not-an-ip"), ("SERVER_PORT", "0"), ("SERVER_PORT", "70000"), ("SERVER_PORT", "50x"),
    ("SERVER_PUBLIC_PORT", "-1"), ("SERVER_PUBLIC_HOST", "bad host"), ("LOCAL_NETWORK_CIDR", "10.0.0.0/33"),
    ("LOCAL_NETWORK_CIDR", "10.0.0.0/8,nonsense"), ("RTP_PORT_MIN", "80"), ("RTP_PORT_MAX", "99999"),
    ("MEDIA_RELAY_BACKEND", "kamailio"), ("ENABLE_TCP", "maybe"), ("LOG_LEVEL", "LOUD"),
    ("AUTH_ALGORITHMS", "MD5,SHA-512"), ("AUTH_INVITE", "2"), ("NONCE_TTL", "1"), ("MIN_EXPIRES", "0"),
    ("MAX_EXPIRES", "x"), ("DEFAULT_EXPIRES", "99999"), ("NAT_KEEPALIVE_INTERVAL", "0"),
    ("NAT_KEEPALIVE_INTERVAL", "nan"), ("NAT_KEEPALIVE_METHOD", "PING"), ("NAT_KEEPALIVE_FAILURES", "0"),
    ("RATE_LIMIT_FAILS", "-3"), ("MML_PORT", "65536"), ("MML_HOST", "exa mple"), ("MML_TOKEN", "short"),
    ("SIGNALLING", "pjsip"), ("RTP_INACTIVITY_TIMEOUT", "-5"), ("RTPPROXY_AUTO_START", "sometimes"),
    ("RTPPROXY_SOCKET", "http://x"), ("RTPPROXY_SOCKET", "udp:127.0.0.1:99999"), ("RTPPROXY_NODES", "udp:h:1=0"),
    ("RTPPROXY_NODES", "udp6:notv6:7722"), ("RTPPROXY_UDP_PORT", "0"), ("RTPPROXY_TCP_PORT", "abc"),
    ("SIP_REALM", 'a"b'), ("UDP_BIND_IP", "localhost"), ("RTPPROXY_ENGINE", "mediaproxy"),
    ("GC_FULL_INTERVAL", "soon"), ("GC_FULL_INTERVAL", "-1"),
])
def test_invalid_values_name_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError) as exc:
        cfg(tmp_path, **{key: value})
    assert exc.value.key == key
    assert key in str(exc.value)


def test_rtpengine_needs_a_udp_control_socket(tmp_path):
    assert cfg(tmp_path, RTPPROXY_ENGINE="RTPengine").rtpproxy_engine == "rtpengine"
    assert cfg(tmp_path).rtpproxy_engine == "rtpproxy"
    with pytest.raises(ConfigError) as exc:
        cfg(tmp_path, RTPPROXY_ENGINE="rtpengine", RTPPROXY_SOCKET="unix:/tmp/rtpp.sock")
    assert exc.value.key == "RTPPROXY_ENGINE" and "unix:/tmp/rtpp.sock" in str(exc.value)


def test_min_above_max_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as exc:
        cfg(tmp_path, RTP_PORT_MIN=30000, RTP_PORT_MAX=20000)
    assert exc.value.key == "RTP_PORT_MIN"
    with pytest.raises(ConfigError) as exc:
        cfg(tmp_path, MIN_EXPIRES=600, MAX_EXPIRES=60)
    assert exc.value.key == "MIN_EXPIRES"


def test_max_expires_alone_lowers_the_default(tmp_path):
    assert cfg(tmp_path, MAX_EXPIRES=600).default_expires == 600


def test_original_config_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"FORCE_LOCAL_ADDR": False, "SERVER_ADDR": "10.9.8.7", "SERVER_PORT": 5080,
                                "SERVER_PUBLIC_PORT": None, "USERS": {"1001": "1234"}, "LOG_LEVEL": "DEBUG",
                                "CDR_MERGE_MODE": True, "LOCAL_NETWORKS": ["10.0.0.0/8"]}))
    c = Config.from_env({}, config_file=str(path))
    assert (c.server_ip, c.server_port, c.advertised_port, c.log_level) == ("10.9.8.7", 5080, 5080, "DEBUG")
    assert c.local_networks == ("10.0.0.0/8",) and c.config_file == str(path)
    # the environment wins over the file; CONFIG_FILE names the file
    c = Config.from_env({"CONFIG_FILE": str(path), "LOG_LEVEL": "ERROR", "SERVER_IP": "127.0.0.1"})
    assert (c.log_level, c.server_ip, c.server_port) == ("ERROR", "127.0.0.1", 5080)


def test_config_file_address_auto_detect(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"SERVER_ADDR": "AUTO_DETECT"}))
    assert Config.from_env({}, config_file=str(path), detect_ip=lambda: "10.0.0.9").server_ip == "10.0.0.9"


@pytest.mark.parametrize("text", ["{broken", "[1,2]", '{"SERVER_PORT": {"a": 1}}'])
def test_bad_config_file(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        Config.from_env({}, config_file=str(path))
    assert exc.value.key in ("CONFIG_FILE", "SERVER_PORT")


def test_detect_local_ip_returns_an_address_and_falls_back():
    assert ipaddress.ip_address(detect_local_ip())
    assert detect_local_ip(("256.256.256.256", 9)) == "127.0.0.1"


def test_frozen(tmp_path):
    c = cfg(tmp_path)
    with pytest.raises(Exception):
        c.server_port = 1   # type: ignore[misc]


def test_mml_token_file(tmp_path, monkeypatch):
    """The server reads the root-only token file setup creates when MML_TOKEN is not set."""
    from sipcore.mml.token_file import create_token_file
    monkeypatch.chdir(tmp_path)
    assert cfg(tmp_path).mml_token is None
    path = tmp_path / "config" / "mml.token"
    assert create_token_file(str(path)) and not create_token_file(str(path))   # kept when present
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text().strip()
    assert len(token) >= 32
    assert cfg(tmp_path).mml_token == token                         # default path, relative to cwd
    assert cfg(tmp_path, MML_TOKEN="explicit-token").mml_token == "explicit-token"
    other = tmp_path / "other.token"
    other.write_text("short\n")
    with pytest.raises(ConfigError) as exc:
        cfg(tmp_path, MML_TOKEN_FILE=str(other))
    assert exc.value.key == "MML_TOKEN_FILE"
    with pytest.raises(ConfigError) as exc:
        cfg(tmp_path, MML_TOKEN_FILE=str(tmp_path / "missing.token"))
    assert exc.value.key == "MML_TOKEN_FILE" and "--create-token-file" in exc.value.message


def test_sip_binds_server_ip_when_it_is_a_host_address(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cfg(tmp_path, SERVER_IP="127.0.0.1").bind_ip == "127.0.0.1"          # a real local address
    # 203.0.113.9 is no address of this host (the server sits behind a NAT/port forward): any
    assert cfg(tmp_path, SERVER_IP="203.0.113.9").bind_ip == "0.0.0.0"
    assert cfg(tmp_path).bind_ip == "0.0.0.0"                                    # AUTO_DETECT
    assert cfg(tmp_path, SERVER_IP="127.0.0.1", UDP_BIND_IP="0.0.0.0").bind_ip == "0.0.0.0"


def test_ims_env_file_sits_between_environment_and_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ims.env").write_text('# installation\nSERVER_PORT=5099\nexport MML_PORT="9000"\n\nLOG_LEVEL=DEBUG\n')
    c = cfg(tmp_path, LOG_LEVEL="ERROR")
    assert (c.server_port, c.mml_port, c.log_level) == (5099, 9000, "ERROR")
    (tmp_path / "ims.env").write_text("SERVER_PORT 5099\n")
    with pytest.raises(ConfigError) as exc:
        cfg(tmp_path)
    assert exc.value.key == "IMS_ENV_FILE" and "line 1" in exc.value.message
