#!/usr/bin/env bash
# Run the test suite (what CI runs). Installs what the tests need first (scripts/setup.sh).
# Extra arguments go to pytest, e.g.  scripts/test.sh -m slow   or   scripts/test.sh tests/sipcore
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORKERS=${IMS_TEST_WORKERS:-2}
if [ $# -eq 0 ]; then
  set -- -m "not slow" tests
fi
exec .venv/bin/python -m pytest -n "$WORKERS" --dist loadgroup -q -rs "$@"
