"""The operator documents are true: every command in MIGRATION.md is exercised here (or by the
harness tests for `harness compare/run`), and the pm2 file names files that exist and variables
the server reads."""
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess


from harness.cli import cli
from tests.stack import FreePorts, PYTHON, ROOT, ServerProcess

MIGRATION = open(os.path.join(ROOT, "MIGRATION.md"), encoding="utf-8").read()
COMMANDS = [line.strip() for block in re.findall(r"```sh\n(.*?)```", MIGRATION, re.S)
            for line in block.splitlines() if line.strip()]


def config_source() -> str:
    with open(os.path.join(ROOT, "sipcore", "config.py"), encoding="utf-8") as fh:
        return fh.read()


def test_pm2_file_names_existing_files_and_read_variables():
    text = open(os.path.join(ROOT, "ecosystem.config.js"), encoding="utf-8").read()
    assert 'name: "ims-server"' in text and 'path.join(root, "run.py")' in text
    assert os.path.exists(os.path.join(ROOT, "run.py"))
    assert "ims-rtpproxy" in text and shutil.which("ims-rtpproxy", path=os.path.dirname(PYTHON))
    env_block = re.search(r"const DEFAULTS = \{(.*?)\};", text, re.S).group(1)
    names = re.findall(r"^\s*([A-Z_]+):", env_block, re.M)
    assert len(names) > 8
    src = config_source() + open(os.path.join(ROOT, "sipcore", "mml", "token_file.py")).read()
    for name in names:
        used_here = f"env.{name}" in text      # e.g. RTPPROXY_LISTEN: the ims-rtpproxy app's -l
        assert used_here or f'"{name}"' in src, f"{name} in ecosystem.config.js is read by nobody"


def test_migration_harness_commands_parse():
    harness_lines = [c for c in COMMANDS if c.startswith(".venv/bin/harness")]
    assert any("compare --stage 2" in c for c in harness_lines)
    for line in harness_lines:
        args = shlex.split(line)[1:]
        cmd = cli.get_command(None, args[0])
        assert cmd is not None, line
        cmd.make_context(args[0], args[1:])          # raises on an unknown option or bad value


def test_migration_mml_commands_run_against_stage2(tmp_path):
    mml_lines = [c for c in COMMANDS if c.startswith(".venv/bin/ims-mml")]
    assert len(mml_lines) >= 4
    with ServerProcess(2, str(tmp_path)) as srv:
        env = dict(os.environ, MML_TOKEN=srv.token, MML_PORT=str(srv.ports.mml))
        for line in mml_lines:
            args = shlex.split(line)[1:]
            out = subprocess.run([PYTHON, "-m", "sipcore.mml.cli", *args], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, (line, out.stdout, out.stderr)
        assert "sippy" in srv.mml("DSP SYSINFO")["output"]


def test_migration_cutover_and_rollback_copies(tmp_path):
    for name in ("run.py", "run_refactored.py", "run_sippy.py"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    ports = FreePorts()
    env = dict(os.environ, SERVER_IP="127.0.0.1", CONFIG_FILE="/nonexistent", SERVER_PORT=str(ports.sip),
               MML_PORT=str(ports.mml), RTPPROXY_UDP_PORT=str(ports.rtpproxy), RTP_PORT_MIN=str(ports.relay_min),
               RTP_PORT_MAX=str(ports.relay_max))

    def stage():
        out = subprocess.run([PYTHON, "run.py", "--check-config"], cwd=tmp_path, capture_output=True, text=True,
                             env=env, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout
    for line in COMMANDS:
        if line.startswith("cp ") and "pm2 restart ims-server" in line:
            shell = line.split("&& pm2")[0]
            subprocess.run(shell, shell=True, cwd=tmp_path, check=True)
            if "run_sippy.py run.py" in shell:
                assert "stage 2" in stage()
            elif "run_refactored.py run.py" in shell:
                assert "stage 1" in stage()
            else:
                assert "stage" in stage()


def test_migration_rtpproxy_launcher_line():
    [line] = [c for c in COMMANDS if c.startswith(".venv/bin/ims-rtpproxy")]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    args = shlex.split(line.replace("7722", str(port)).replace("-m 20000 -M 29999", "-m 46000 -M 46998"))[1:]
    proc = subprocess.Popen([PYTHON, "-m", "refactored.rtpproxy_launcher", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(0.5)
        reply = None
        for _ in range(20):
            c.sendto(b"k1 V", ("127.0.0.1", port))
            try:
                reply = c.recvfrom(100)[0]
                break
            except socket.timeout:
                continue
        assert reply == b"k1 20040107\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_migration_benchmark_scripts_run_and_report_rates():
    """The committed micro-benchmarks named in MIGRATION.md run (briefly) and print positive rates."""
    import json
    lines = [c for c in COMMANDS if c.startswith(".venv/bin/python benchmarks/")]
    assert {shlex.split(c)[1] for c in lines} == {"benchmarks/bench_proxy.py", "benchmarks/bench_parser.py",
                                                  "benchmarks/bench_registrar.py"}
    quick = {"benchmarks/bench_proxy.py": ["--calls", "200", "--repeat", "1"],
             "benchmarks/bench_parser.py": ["--seconds", "0.2"],
             "benchmarks/bench_registrar.py": ["--users", "0,500", "--seconds", "0.2"]}
    for line in lines:
        script = shlex.split(line)[1]
        out = subprocess.run([PYTHON, os.path.join(ROOT, script), *quick[script]], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        rates = [v for v in report.values() if isinstance(v, (int, float))] + \
                [v for d in report.values() if isinstance(d, dict) for v in d.values()]
        assert rates and all(r > 0 for r in rates), report
