"""`run.py --check-config` checks what a start needs, on real sockets and files; the systemd units
are valid for systemd; ims-mml finds the token file and the MML port by itself."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

from sipcore.stages import ENTRYPOINTS
from tests.stack import FreePorts, PYTHON, ROOT, ServerProcess


def check(tmp_path, stage=2, **extra):
    ports = FreePorts()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MML_", "IMS_"))}
    env.update(SERVER_IP="127.0.0.1", SERVER_PORT=str(ports.sip), MML_PORT=str(ports.mml),
               RTPPROXY_UDP_PORT=str(ports.rtpproxy), RTP_PORT_MIN=str(ports.relay_min),
               RTP_PORT_MAX=str(ports.relay_max), CONFIG_FILE=str(tmp_path / "none.json"),
               USERS_FILE=str(tmp_path / "data" / "users.json"), CDR_DIR=str(tmp_path / "CDR"),
               LOG_DIR=str(tmp_path / "logs"))
    env.update({k: str(v) for k, v in extra.items()})
    entry = ENTRYPOINTS[stage]
    out = subprocess.run([PYTHON, os.path.join(ROOT, entry), "--check-config"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    lines = {line.split("]", 1)[1].split(":", 1)[0].strip(): line for line in out.stdout.splitlines()
             if line.startswith("[")}
    return out, lines, ports


def test_check_config_passes_and_auto_starts_the_relay(tmp_path):
    out, lines, _ = check(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "auto-started for the check" in lines["RTPPROXY"] and lines["RTPPROXY"].startswith("[ok")
    assert lines["USERS_FILE"].startswith("[warn") and "ADD USER" in lines["USERS_FILE"]
    assert lines["SERVER_PORT"].startswith("[ok") and lines["MML_PORT"].startswith("[ok")
    assert not os.path.exists(tmp_path / "data" / "users.json")       # a check creates no users file


def test_check_config_reports_every_problem(tmp_path):
    (tmp_path / "CDR").write_text("a file where the CDR directory should be")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "users.json").write_text("{ broken")
    ports = FreePorts()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)      # another program holds the SIP port
    blocker.bind(("127.0.0.1", ports.sip))
    try:
        out, lines, _ = check(tmp_path, SERVER_PORT=ports.sip, RTPPROXY_AUTO_START=0,
                              RTPPROXY_UDP_PORT=ports.rtpproxy)
    finally:
        blocker.close()
    assert out.returncode == 1 and "Traceback" not in out.stderr
    for key in ("USERS_FILE", "CDR_DIR", "SERVER_PORT", "RTPPROXY"):
        assert lines[key].startswith("[FAIL]"), (key, out.stdout)
    assert "in use by another program" in lines["SERVER_PORT"]
    assert "ims-rtpproxy" in lines["RTPPROXY"]                       # says how to start one
    assert lines["LOG_DIR"].startswith("[ok") and lines["MML_PORT"].startswith("[ok")


def test_ims_mml_reads_the_token_file_and_ims_env(tmp_path):
    with ServerProcess(0, str(tmp_path)) as srv:
        work = tmp_path / "install"
        (work / "config").mkdir(parents=True)
        (work / "config" / "mml.token").write_text(srv.token + "\n")
        os.chmod(work / "config" / "mml.token", 0o600)
        (work / "ims.env").write_text(f"MML_PORT={srv.ports.mml}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MML_", "IMS_"))}
        out = subprocess.run([os.path.join(ROOT, ".venv", "bin", "ims-mml"), "--json", "DSP SYSINFO"], cwd=work,
                             env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "legacy" in json.loads(out.stdout)["output"]
        (work / "config" / "mml.token").write_text("wrong-token-value\n")
        out = subprocess.run([os.path.join(ROOT, ".venv", "bin", "ims-mml"), "DSP SYSINFO"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and "401" in out.stdout


def test_systemd_units_verify(tmp_path):
    """systemd accepts the units (paths pointed at this checkout), with EnvironmentFile and a user."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing (Debian package systemd)"
    for name in ("ims-server.service", "ims-rtpproxy.service"):
        text = open(os.path.join(ROOT, "deploy", name)).read()
        assert "EnvironmentFile=-/etc/ims-migrate/ims.env" in text and "User=ims" in text
        (tmp_path / name).write_text(text.replace("/opt/ims-migrate", ROOT))
    out = subprocess.run([analyze, "verify", str(tmp_path / "ims-server.service"),
                          str(tmp_path / "ims-rtpproxy.service")], capture_output=True, text=True, timeout=60)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if "ims-" in line and "Failed to" not in line or "Unknown" in line or "Invalid" in line]
    assert not problems, out.stdout + out.stderr
