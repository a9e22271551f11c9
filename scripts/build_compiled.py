"""Compile the server's hot modules (sipcore, the RTPProxy client) with mypyc into build/compiled/ (see sipcore/compiled.py).

    .venv/bin/python scripts/build_compiled.py [--force]

Does nothing when the build already matches the sources. Exit status 1 and mypyc's messages when
the build fails; the server then runs the pure-Python modules (slower, same behaviour).
"""
import argparse
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["IMS_COMPILED"] = "0"        # import the pure sources while building

from sipcore import compiled  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when the build is current")
    args = ap.parse_args()
    if not args.force and compiled.stale_reason() is None:
        print(f"[build_compiled] current: {compiled.BUILD_DIR}")
        return 0
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(ROOT)                          # mypy reads pyproject.toml's [tool.mypy] from here
    shutil.rmtree(compiled.BUILD_DIR, ignore_errors=True)
    paths = [os.path.relpath(compiled.source_path(m), ROOT) for m in compiled.MODULES]
    with tempfile.TemporaryDirectory(prefix="ims-mypyc-") as tmp:
        try:
            extensions = mypycify(paths, opt_level="3", group_name=compiled.GROUP, target_dir=os.path.join(tmp, "c"))
            setup(name="sipcore-compiled", ext_modules=extensions, packages=[], py_modules=[],
                  script_args=["-q", "build_ext", "--build-lib", compiled.BUILD_DIR, "--build-temp", os.path.join(tmp, "o")])
        except SystemExit as exc:           # mypyc reports type errors by exiting
            print(f"[build_compiled] FAILED ({exc}): the server will run pure Python", file=sys.stderr)
            shutil.rmtree(compiled.BUILD_DIR, ignore_errors=True)
            return 1
    compiled.write_manifest()
    print(f"[build_compiled] built {len(paths)} modules into {compiled.BUILD_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
