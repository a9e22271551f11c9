#!/usr/bin/env bash
# Run the test suite (what CI runs). Installs what the tests need first (scripts/setup.sh).
# Extra arguments go to pytest, e.g.  scripts/test.sh -m slow   or   scripts/test.sh tests/sipcore
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the gate: lint (ruff: pyflakes, pycodestyle, complexity) and types (mypy on sipcore), config in pyproject.toml
.venv/bin/ruff check .
.venv/bin/mypy
WORKERS=${IMS_TEST_WORKERS:-2}
# As root (CI) the setup above provides everything, so a skip means a broken environment: fail it.
if [ "$(id -u)" -eq 0 ]; then export IMS_TESTS_FORBID_SKIP=${IMS_TESTS_FORBID_SKIP:-1}; fi
if [ $# -eq 0 ]; then
  set -- -m "not slow" tests
fi
exec .venv/bin/python -m pytest -n "$WORKERS" --dist loadgroup -q -rs "$@"
