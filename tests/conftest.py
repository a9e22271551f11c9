"""Suite-wide rule: under scripts/test.sh as root (CI), a skip is a failure.

scripts/setup.sh installs SIPp, starts dockerd and so on, so every skip reason in this suite
("SIPp not installed", "no Docker engine answers", "needs root") means the environment is broken.
Counting such a skip as a pass would hide exactly that, so scripts/test.sh sets IMS_TESTS_FORBID_SKIP=1
when it runs as root and this hook turns the skip into a failure that carries the skip reason."""
import os

import pytest


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
