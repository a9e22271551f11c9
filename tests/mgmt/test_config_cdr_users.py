"""Configuration from the original env vars, CDR files, users.json."""
import csv
import json
import os
import subprocess
import sys

import pytest

from sipcore.cdr import COLUMNS, CDRWriter
from sipcore.config import Config
from sipcore.digest import compute_ha1
from sipcore.errors import ConfigError
from sipcore.users import UserStore

BASE = {"SERVER_IP": "198.51.100.1", "CONFIG_FILE": "/nonexistent"}


def test_defaults_keep_the_original_names_and_values():
    c = Config.from_env(BASE)
    assert c.server_port == 5060 and c.rtpproxy_nodes == (("udp:127.0.0.1:7722", 1),)
    assert c.local_networks == ("192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12")
    assert (c.rtp_port_min, c.rtp_port_max) == (20000, 29999) and c.rtpproxy_auto_start
    assert c.mml_host == "127.0.0.1"


def test_auto_detect_and_rtpproxy_socket_variants():
    c = Config.from_env({"SERVER_IP": "AUTO_DETECT", "CONFIG_FILE": "/nonexistent"})
    assert c.server_ip.count(".") == 3
    assert Config.from_env({**BASE, "RTPPROXY_SOCKET": "/var/run/rtpproxy.sock"}).rtpproxy_nodes == (("unix:/var/run/rtpproxy.sock", 1),)
    assert Config.from_env({**BASE, "RTPPROXY_TCP_PORT": "7000"}).rtpproxy_nodes == (("tcp:127.0.0.1:7000", 1),)
    nodes = Config.from_env({**BASE, "RTPPROXY_NODES": "udp:127.0.0.1:7722=2,udp:127.0.0.1:7723=1"}).rtpproxy_nodes
    assert nodes == (("udp:127.0.0.1:7722", 2), ("udp:127.0.0.1:7723", 1))


@pytest.mark.parametrize("key,value", [("SERVER_PORT", "70000"), ("SERVER_IP", "nope"), ("LOCAL_NETWORK_CIDR", "10.0.0.0/33"),
                                       ("RTP_PORT_MIN", "30000"), ("LOG_LEVEL", "LOUD"), ("AUTH_ALGORITHMS", "SHA-512"),
                                       ("ENABLE_TCP", "maybe"), ("RTPPROXY_SOCKET", "http://x"), ("NAT_KEEPALIVE_METHOD", "PING")])
def test_invalid_values_name_the_key(key, value):
    with pytest.raises(ConfigError) as exc:
        Config.from_env({**BASE, key: value, "RTP_PORT_MAX": "29999"})
    assert exc.value.key == key


def test_config_file_supplies_server_addr(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"SERVER_ADDR": "203.0.113.9", "LOG_LEVEL": "DEBUG"}))
    c = Config.from_env({"CONFIG_FILE": str(p)})
    assert c.server_ip == "203.0.113.9" and c.log_level == "DEBUG"


def test_cdr_has_the_original_34_columns_in_order(tmp_path):
    w = CDRWriter(str(tmp_path), clock=lambda: 1_764_000_000.0)
    w.write({"record_type": "CALL", "call_state": "ENDED", "call_id": "c1"})
    [path] = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert os.path.basename(path).startswith("cdr_") and os.path.basename(os.path.dirname(path)) in path
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == COLUMNS and len(COLUMNS) == 34
    assert rows[0][:3] == ["record_id", "record_type", "call_state"] and rows[0][-1] == "extra_info"
    assert rows[1][1:3] == ["CALL", "ENDED"] and len(rows[1][0]) == 20
    with pytest.raises(ValueError):
        w.write({"not_a_column": 1})


def test_rows_survive_kill_9(tmp_path):
    code = (f"import os,sys; sys.path.insert(0, {os.getcwd()!r}); from sipcore.cdr import CDRWriter; "
            f"w=CDRWriter({str(tmp_path)!r}); w.write({{'record_type':'OPTIONS','call_state':'COMPLETED'}}); "
            "print('written', flush=True); import time; time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    proc.kill()
    proc.wait()
    rows = CDRWriter(str(tmp_path)).read_rows(None) or CDRWriter(str(tmp_path)).read_rows(
        sorted(os.listdir(tmp_path))[0])
    assert [r["record_type"] for r in rows] == ["OPTIONS"]


def test_users_json_compatible_with_ha1_and_status(tmp_path):
    p = tmp_path / "users.json"
    p.write_text(json.dumps({"1001": {"username": "1001", "password": "1234", "status": "ACTIVE"},
                             "1002": {"username": "1002", "ha1": compute_ha1("1002", "sip.local", "pw"), "status": "ACTIVE"},
                             "1003": {"username": "1003", "password": "x", "status": "SUSPENDED"}}))
    store = UserStore(str(p))
    assert store.lookup_ha1("1001", "sip.local", "MD5") == compute_ha1("1001", "sip.local", "1234")
    assert store.lookup_ha1("1002", "sip.local", "MD5") == compute_ha1("1002", "sip.local", "pw")
    assert store.lookup_ha1("1003", "sip.local", "MD5") is None
    store.add("1004", "pw4", display_name="Four")
    assert json.loads(p.read_text())["1004"]["status"] == "ACTIVE"
    data = json.loads(p.read_text())
    data["1004"]["status"] = "INACTIVE"
    os.utime(p, None)
    p.write_text(json.dumps(data))
    os.utime(p, (os.stat(p).st_atime, os.stat(p).st_mtime + 5))
    assert store.get("1004")["status"] == "INACTIVE"      # external edits are picked up


def test_missing_users_file_creates_defaults(tmp_path):
    store = UserStore(str(tmp_path / "data" / "users.json"))
    assert {u["username"] for u in store.list()} == {"1001", "1002"}
