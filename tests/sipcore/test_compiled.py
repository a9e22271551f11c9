"""The compiled build (sipcore/compiled.py): used only when it matches the sources and the
interpreter; IMS_COMPILED=0 and a stale build fall back to the pure-Python modules."""
import json
import os
import subprocess
import sys

from sipcore import compiled

ROOT = compiled.ROOT


def _module_file(env_extra: dict) -> str:
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", "import sipcore.message as m, sipcore.compiled as c; print(m.__file__); "
                          "print(c.STATUS)"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_build_scripts_test_run_uses_is_the_compiled_one():
    # scripts/test.sh refuses to run the suite without it; this says which files the modules are
    out = _module_file({"IMS_COMPILED": "1"})
    assert out.splitlines()[0].endswith(".so") and "compiled (mypyc)" in out, out


def test_ims_compiled_0_runs_the_pure_python_modules():
    out = _module_file({"IMS_COMPILED": "0"})
    assert out.splitlines()[0].endswith(os.path.join("sipcore", "message.py")), out
    assert "IMS_COMPILED=0" in out


def test_a_build_of_other_sources_or_another_interpreter_is_not_used(tmp_path, monkeypatch):
    with open(compiled.MANIFEST) as fh:
        manifest = json.load(fh)
    stale = dict(manifest, modules=dict(manifest["modules"], **{"sipcore.message": "0" * 64}))
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(stale))
    monkeypatch.setattr(compiled, "MANIFEST", str(path))
    assert "sources changed since the build: sipcore.message" in compiled.stale_reason()
    path.write_text(json.dumps(dict(manifest, interpreter="cpython-310-linux")))
    assert "built for cpython-310-linux" in compiled.stale_reason()
    monkeypatch.setattr(compiled, "MANIFEST", str(tmp_path / "absent.json"))
    assert "no compiled build" in compiled.stale_reason()
    monkeypatch.setattr(compiled, "STATUS", compiled.STATUS)     # restored after the test
    monkeypatch.setattr(compiled, "ACTIVE", compiled.ACTIVE)
    monkeypatch.setattr(compiled, "_checked", None)
    monkeypatch.setenv("IMS_COMPILED", "1")
    package_path: list[str] = []
    compiled.activate(package_path)                  # leaves the package path alone
    assert package_path == [] and compiled.STATUS.startswith("pure Python: no compiled build")
