"""The suite's own rule: under IMS_TESTS_FORBID_SKIP=1 (scripts/test.sh as root, i.e. CI) a skip fails."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _run_skipping_test(tmp_path, forbid: bool) -> subprocess.CompletedProcess:
    probe = tmp_path / "test_probe_skip.py"
    probe.write_text("import pytest\n\ndef test_needs_tool():\n    pytest.skip('tool missing')\n")
    (tmp_path / "conftest.py").write_text(open(os.path.join(HERE, "conftest.py")).read())
    env = dict(os.environ, IMS_TESTS_FORBID_SKIP="1" if forbid else "0")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           str(probe)], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)


def test_skip_fails_when_forbidden(tmp_path):
    out = _run_skipping_test(tmp_path, forbid=True)
    assert out.returncode == 1, out.stdout
    assert "1 failed" in out.stdout and "tool missing" in out.stdout


def test_skip_is_a_skip_otherwise(tmp_path):
    out = _run_skipping_test(tmp_path, forbid=False)
    assert out.returncode == 0 and "1 skipped" in out.stdout, out.stdout
