"""users.json store: compatible format, HA1 secrets, reload on change, atomic writes, locking."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from sipcore.digest import compute_ha1
from sipcore.errors import ConfigError
from sipcore.users import UserError, UserStore

ORIGINAL_ENTRY = {"username": "1003", "password": "1234", "display_name": "User 1003", "phone": "13800000003",
                  "email": "1003@example.com", "status": "ACTIVE", "service_type": "BASIC",
                  "create_time": "2025-10-27T10:00:00", "update_time": "2025-10-27T10:00:00"}


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)


def test_missing_file_creates_no_users_and_says_how_to_add_one(tmp_path, caplog):
    """No well-known passwords: the original created 1001/1002 with password 1234 on first start."""
    path = tmp_path / "data" / "users.json"
    with caplog.at_level(logging.WARNING, logger="sipcore.users"):
        store = UserStore(str(path))
    assert store.list() == []
    assert not store.authenticate("1001", "1234")
    assert any("ADD USER" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert json.loads(path.read_text()) == {}
    assert os.stat(path).st_mode & 0o077 == 0


def test_original_file_is_read_and_ha1_lookup(tmp_path):
    path = tmp_path / "users.json"
    ha1 = compute_ha1("1004", "sip.local", "s3cret", "MD5")
    ha1_256 = compute_ha1("1004", "sip.local", "s3cret", "SHA-256")
    write_json(path, {
        "1003": ORIGINAL_ENTRY,
        "1004": {"username": "1004", "ha1": ha1, "ha1_sha256": ha1_256, "status": "ACTIVE"},
        "1005": dict(ORIGINAL_ENTRY, username="1005", status="SUSPENDED"),
        "admin": {"username": "admin", "password": "pw", "status": "ACTIVE", "role": "ADMIN", "mml_access": True},
    })
    store = UserStore(str(path))
    assert store.lookup_ha1("1003", "sip.local", "MD5") == compute_ha1("1003", "sip.local", "1234", "MD5")
    assert store.lookup_ha1("1003", "sip.local", "SHA-256") == compute_ha1("1003", "sip.local", "1234", "SHA-256")
    assert store.lookup_ha1("1004", "sip.local", "MD5") == ha1
    assert store.lookup_ha1("1004", "sip.local", "SHA-256") == ha1_256
    assert store.lookup_ha1("1005", "sip.local", "MD5") is None      # only ACTIVE users
    assert store.lookup_ha1("nobody", "sip.local", "MD5") is None
    assert store.authenticate("1004", "s3cret", realm="sip.local")
    assert not store.authenticate("1004", "wrong", realm="sip.local")
    assert not store.authenticate("1005", "1234")
    assert store.get("admin")["role"] == "ADMIN"


def test_ha1_realm_mismatch_is_refused(tmp_path):
    path = tmp_path / "users.json"
    write_json(path, {"1004": {"username": "1004", "ha1": compute_ha1("1004", "other", "x"), "ha1_realm": "other",
                               "status": "ACTIVE"}})
    store = UserStore(str(path))
    assert store.lookup_ha1("1004", "sip.local", "MD5") is None
    assert store.lookup_ha1("1004", "other", "MD5") == compute_ha1("1004", "other", "x")


def test_add_modify_delete_and_case_kept(tmp_path):
    store = UserStore(str(tmp_path / "users.json"))
    store.add("Admin", "pw", display_name="Boss", role="admin")
    user = store.get("Admin")
    assert user["role"] == "ADMIN" and user["status"] == "ACTIVE" and user["display_name"] == "Boss"
    assert store.get("ADMIN") is None
    with pytest.raises(UserError, match="already exists"):
        store.add("Admin", "pw")
    store.modify("Admin", status="suspended", phone="123")
    assert store.get("Admin")["status"] == "SUSPENDED" and not store.authenticate("Admin", "pw")
    with pytest.raises(UserError, match="status"):
        store.modify("Admin", status="GONE")
    with pytest.raises(UserError, match="cannot be modified"):
        store.modify("Admin", create_time="x")
    with pytest.raises(UserError, match="does not exist"):
        store.modify("ghost", phone="1")
    for bad in ("", "a b", "a@b", "a:b", "x" * 65):
        with pytest.raises(UserError):
            store.add(bad, "pw")
    assert store.delete("Admin") and not store.delete("Admin")


def test_new_password_drops_stale_hashes(tmp_path):
    path = tmp_path / "users.json"
    write_json(path, {"u": {"username": "u", "ha1": compute_ha1("u", "sip.local", "old"), "status": "ACTIVE"}})
    store = UserStore(str(path))
    store.modify("u", password="new")
    assert store.lookup_ha1("u", "sip.local", "MD5") == compute_ha1("u", "sip.local", "new")


def test_new_and_changed_users_are_stored_as_ha1_and_the_plaintext_format_still_works(tmp_path):
    path = tmp_path / "users.json"
    write_json(path, {"1003": ORIGINAL_ENTRY})        # the original's plain-text entry
    store = UserStore(str(path), realm="ims.test")
    assert store.lookup_ha1("1003", "ims.test", "MD5") == compute_ha1("1003", "ims.test", "1234")
    assert store.lookup_ha1("1003", "ims.test", "SHA-256") == compute_ha1("1003", "ims.test", "1234", "SHA-256")
    store.add("1010", "s3cret")
    store.modify("1003", password="n3w")
    raw = path.read_text()
    assert "s3cret" not in raw and "n3w" not in raw and '"password"' not in raw
    data = json.loads(raw)
    for name, pw in (("1010", "s3cret"), ("1003", "n3w")):
        entry = data[name]
        assert entry["ha1"] == compute_ha1(name, "ims.test", pw, "MD5")
        assert entry["ha1_sha256"] == compute_ha1(name, "ims.test", pw, "SHA-256")
        assert entry["ha1_realm"] == "ims.test"
        assert store.authenticate(name, pw) and not store.authenticate(name, "1234")
    assert data["1003"]["phone"] == ORIGINAL_ENTRY["phone"]      # other fields kept


def test_external_edit_is_picked_up(tmp_path):
    path = tmp_path / "users.json"
    write_json(path, {"1003": ORIGINAL_ENTRY})
    store = UserStore(str(path))
    assert store.get("1009") is None
    data = json.loads(path.read_text())
    data["1009"] = dict(ORIGINAL_ENTRY, username="1009", password="9999")
    write_json(path, data)       # same second, maybe same size class: the signature still changes
    assert store.get("1009")["password"] == "9999"
    assert store.lookup_ha1("1009", "r", "MD5") == compute_ha1("1009", "r", "9999")


def test_broken_external_edit_keeps_previous_users(tmp_path):
    path = tmp_path / "users.json"
    write_json(path, {"1003": ORIGINAL_ENTRY})
    store = UserStore(str(path))
    path.write_text("{ not json")
    assert store.get("1003") is not None
    with pytest.raises(UserError, match="unreadable"):
        store.add("1010", "pw")
    assert path.read_text() == "{ not json"       # never overwritten with stale data


def test_corrupt_file_at_start_is_a_config_error(tmp_path):
    path = tmp_path / "users.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError) as exc:
        UserStore(str(path))
    assert exc.value.key == "USERS_FILE"


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    path = tmp_path / "users.json"
    store = UserStore(str(path))
    inode = os.stat(path).st_ino
    store.add("1010", "pw")
    assert os.stat(path).st_ino != inode             # replaced by rename, never rewritten in place
    assert json.loads(path.read_text())["1010"]["ha1"] == compute_ha1("1010", "sip.local", "pw")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("users.json", "users.json.lock")]
    assert leftovers == []


ADDER = r"""
import sys
from sipcore.users import UserStore
s = UserStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    s.add(f"{sys.argv[2]}{i}", "pw")
"""


def test_two_processes_adding_concurrently_lose_nothing(tmp_path):
    path = tmp_path / "users.json"
    UserStore(str(path))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root)
    procs = [subprocess.Popen([sys.executable, "-c", ADDER, str(path), prefix, "25"], env=env)
             for prefix in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=60) == 0
    names = set(json.loads(path.read_text()))
    assert {f"a{i}" for i in range(25)} <= names and {f"b{i}" for i in range(25)} <= names
