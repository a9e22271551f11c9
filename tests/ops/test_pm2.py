"""The shipped pm2 file under a real pm2, driven with MIGRATION.md's commands exactly as written.

A scratch installation (the shipped ecosystem.config.js, entrypoints and ims.env.example copied,
the project's .venv linked) runs in its own PM2_HOME, with pm2 from .venv/pm2 (scripts/setup.sh
installs it for this test only). Every command of MIGRATION.md's installation block, the phase 1,
2 and 3 (SIGNALLING=sippy) cutover/rollback lines and the "Verifying in production" block is run through bash in
that directory, with no MML_* variable in the environment: the token comes from the file
setup created, the MML port from ims.env.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from tests.stack import FreePorts, ROOT

PM2 = os.path.join(ROOT, ".venv", "pm2", "node_modules", ".bin", "pm2")
MIGRATION = open(os.path.join(ROOT, "MIGRATION.md"), encoding="utf-8").read()


def section_commands(title: str) -> list[str]:
    """The lines of the ```sh blocks under the MIGRATION.md heading that starts with ``title``."""
    parts = re.split(r"^## ", MIGRATION, flags=re.M)
    [body] = [p for p in parts if p.startswith(title)]
    return [line.strip() for block in re.findall(r"```sh\n(.*?)```", body, re.S)
            for line in block.splitlines() if line.strip()]


class Install:
    def __init__(self, base: str):
        self.dir = os.path.join(base, "ims")
        os.makedirs(self.dir)
        for name in ("ecosystem.config.js", "run.py", "run_refactored.py", "run_sippy.py", "ims.env.example"):
            shutil.copy(os.path.join(ROOT, name), self.dir)
        os.symlink(os.path.join(ROOT, ".venv"), os.path.join(self.dir, ".venv"))
        self.ports = FreePorts()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MML_", "PM2_", "SERVER_", "RTP", "IMS_"))}
        self.env.update(PM2_HOME=os.path.join(base, "pm2"), HOME=base,
                        PATH=os.path.dirname(PM2) + os.pathsep + os.environ["PATH"])

    def sh(self, line: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", line], cwd=self.dir, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def mml_json(self, command: str) -> dict:
        out = self.sh(f'.venv/bin/ims-mml --json "{command}"')
        assert out.returncode == 0, (command, out.stdout, out.stderr)
        return json.loads(out.stdout)

    def wait_stage(self, stage_name: str, timeout: float = 40) -> str:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            out = self.sh('.venv/bin/ims-mml "DSP SYSINFO"', timeout=15)
            last = out.stdout + out.stderr
            if out.returncode == 0 and re.search(stage_name, out.stdout, re.M):
                return out.stdout
            time.sleep(0.5)
        logs = self.sh("pm2 logs --nostream --lines 30").stdout
        raise AssertionError(f"server did not come up as {stage_name}: {last}\n{logs}")


@pytest.mark.xdist_group("pm2")
@pytest.mark.timeout(240)
def test_pm2_file_and_migration_commands_as_written():
    if not os.path.exists(PM2):
        pytest.skip("pm2 not installed in .venv/pm2 (run scripts/setup.sh)")
    base = tempfile.mkdtemp(prefix="imspm2-")       # short: pm2's unix sockets live in PM2_HOME
    inst = Install(base)
    try:
        # installation block: token as setup.sh makes it, ims.env from the example, pm2 start
        out = inst.sh(".venv/bin/ims-mml --create-token-file config/mml.token")
        assert out.returncode == 0, out.stderr
        assert os.stat(os.path.join(inst.dir, "config", "mml.token")).st_mode & 0o077 == 0
        install = section_commands("Installation")
        assert install == ["cp ims.env.example ims.env", "pm2 start ecosystem.config.js"]
        assert inst.sh(install[0]).returncode == 0
        p = inst.ports
        changes = {"SERVER_IP": "127.0.0.1", "SERVER_PORT": p.sip, "MML_PORT": p.mml, "RTPPROXY_UDP_PORT": p.rtpproxy,
                   "RTP_PORT_MIN": p.relay_min, "RTP_PORT_MAX": p.relay_max, "RTPPROXY_LISTEN": "127.0.0.1"}
        env_path = os.path.join(inst.dir, "ims.env")
        text = open(env_path).read()
        for key, value in changes.items():
            text, n = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
            assert n == 1, key
        open(env_path, "w").write(text)
        out = inst.sh(install[1])
        assert out.returncode == 0, out.stdout + out.stderr
        inst.wait_stage("legacy")

        # no well-known password: the first start created an empty users file
        users_path = os.path.join(inst.dir, "data", "users.json")
        assert json.load(open(users_path)) == {}
        assert inst.mml_json("ADD USER USERNAME=1001 PASSWORD=s3cret-pw")["retcode"] == 0
        assert "1001" in json.load(open(users_path))

        verify = section_commands("Verifying in production")
        assert len(verify) >= 5 and all(".venv/bin/" in line for line in verify)

        def verify_all(expect_stage: str):
            for line in verify:
                out = inst.sh(line)
                assert out.returncode == 0, (line, out.stdout, out.stderr)
            assert expect_stage in inst.sh(verify[[i for i, v in enumerate(verify) if "SYSINFO" in v][0]]).stdout

        verify_all("legacy")
        # the check runs against the live installation: ports held by the running server are not failures
        check = inst.sh(next(v for v in verify if "--check-config" in v))
        assert "in use by the running ims-migrate server" in check.stdout and "[FAIL]" not in check.stdout

        # cutover and rollback lines of phase 1 and phase 2, as written
        steps = []
        for title in ("Phase 1", "Phase 2"):
            lines = [c for c in section_commands(title) if "pm2 restart ims-server" in c]
            assert len(lines) == 2, title
            steps.append(lines)
        # phase 3 (SIGNALLING=sippy) cutover and rollback, as written, while phase 2 runs
        phase3 = [c for c in section_commands("Phase 3") if "pm2 restart ims-server" in c]
        assert len(phase3) == 2, phase3
        sippy_engine, sipcore_engine = r"signalling engine\s+Sippy B2BUA", r"signalling engine\s+sipcore\s*$"
        for line, stage, engine in ((steps[0][0], "refactored", sipcore_engine), (steps[1][0], "sippy", sipcore_engine),
                                    (phase3[0], "sippy", sippy_engine), (phase3[1], "sippy", sipcore_engine),
                                    (steps[1][1], "refactored", sipcore_engine), (steps[0][1], "legacy", sipcore_engine)):
            out = inst.sh(line)
            assert out.returncode == 0, (line, out.stdout, out.stderr)
            inst.wait_stage(stage)
            inst.wait_stage(engine)
            verify_all(stage)
        assert sorted(n for n in os.listdir(inst.dir) if n.endswith(".bak")) == \
            ["run_legacy.py.bak", "run_stage1.py.bak"]

        # pm2's out log has the INFO trail, its error log no INFO line
        logs = os.path.join(inst.env["PM2_HOME"], "logs")
        out_log = open(os.path.join(logs, "ims-server-out.log")).read()
        err_log = open(os.path.join(logs, "ims-server-error.log")).read()
        assert "[INFO    ]" in out_log and "ready on 127.0.0.1" in out_log
        assert "[INFO    ]" not in err_log
        # the token never appears in pm2's view of the environment
        token = open(os.path.join(inst.dir, "config", "mml.token")).read().strip()
        shown = inst.sh("pm2 jlist").stdout
        assert token not in shown and "mml.token" in shown
    finally:
        subprocess.run([PM2, "kill"], env=inst.env, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
