"""Suite-wide rule: under scripts/test.sh as root (CI), a skip is a failure.

scripts/setup.sh installs SIPp, starts dockerd and so on, so every skip reason in this suite
("SIPp not installed", "no Docker engine answers", "needs root") means the environment is broken.
Counting such a skip as a pass would hide exactly that, so scripts/test.sh sets IMS_TESTS_FORBID_SKIP=1
when it runs as root and this hook turns the skip into a failure that carries the skip reason."""
import os

import pytest
from hypothesis import settings

# no example database in the working directory (.hypothesis/): the suite writes nothing there
settings.register_profile("ims", database=None)
settings.load_profile("ims")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("IMS_TESTS_FORBID_SKIP") != "1" or not report.skipped:
        return
    if hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under IMS_TESTS_FORBID_SKIP=1 (CI as root must run everything): {reason}"


@pytest.fixture(scope="session", autouse=True)
def _outside_the_checkout(tmp_path_factory):
    """Every test runs from a scratch directory, so code that writes relative paths (a server's
    default LOG_DIR and data/ location store, rtpproxy's accounting file, harness-out/, MML's
    config/exports/) writes there and never into the checkout. Tests name repository files by
    absolute path (tests.stack.ROOT)."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)
