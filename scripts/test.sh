#!/usr/bin/env bash
# Run the test suite (what CI runs). Installs what the tests need first (scripts/setup.sh).
# Extra arguments go to pytest, e.g.  scripts/test.sh -m slow   or   scripts/test.sh tests/sipcore
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the gate: lint (ruff: pyflakes, pycodestyle, complexity) and types (mypy on sipcore), config in pyproject.toml
.venv/bin/ruff check .
.venv/bin/mypy
# the tests run the compiled build the server ships with (sipcore/compiled.py): it must be in use
.venv/bin/python -c 'import sipcore.compiled as c; import sys; print("[test] sipcore:", c.STATUS); sys.exit(0 if c.ACTIVE else 1)'
WORKERS=${IMS_TEST_WORKERS:-2}
# As root (CI) the setup above provides everything, so a skip means a broken environment: fail it.
if [ "$(id -u)" -eq 0 ]; then export IMS_TESTS_FORBID_SKIP=${IMS_TESTS_FORBID_SKIP:-1}; fi
if [ $# -eq 0 ]; then
  set -- -m "not slow" tests
fi
exec .venv/bin/python -m pytest -n "$WORKERS" --dist loadgroup -q -rs "$@"
