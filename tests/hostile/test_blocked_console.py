"""Issue 10, class 4 (nothing blocks the event loop): a console nobody reads. pm2 or journald can
stall, and a server started by hand with its output on a pipe has the same problem: once a pipe's
64 KiB are full, write() blocks. The server logs from a writer thread through a bounded queue, so
SIP stays answered, the log file keeps its lines, and the console gets its lines once it is read
(what does not fit the queue is dropped and counted: tests/mgmt/test_logsetup.py)."""
import subprocess
import time

import pytest

from harness.console import is_ready_line
from tests.hostile.target import Target

pytestmark = pytest.mark.xdist_group("hostile-blocked-console")


class UnreadConsole(Target):
    """A server whose stdout/stderr pipe is read up to the ready line and never again."""

    def _start(self):
        self.proc = subprocess.Popen([self.env["PYTHON_FOR_TEST"], self.entry], cwd=self.workdir, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if is_ready_line(line):
                return self
        self.stop()
        raise RuntimeError("server did not start: " + self.output)


@pytest.mark.parametrize("stage", [0, 2])
def test_sip_is_answered_while_nobody_reads_the_console(stage, tmp_path):
    import sys
    # DEBUG: one console line per message received, so ~1500 OPTIONS write far past 64 KiB
    with UnreadConsole(stage, str(tmp_path), extra_env={"LOG_LEVEL": "DEBUG", "PYTHON_FOR_TEST": sys.executable}) as srv:
        slow = []
        for i in range(1500):
            status, rtt = srv.options(timeout=3.0)
            assert status == 200, f"OPTIONS {i} unanswered: the server froze on its console"
            if rtt > 0.5:
                slow.append(round(rtt, 3))
        assert len(slow) <= 5, slow
        time.sleep(0.5)
        log = srv.log_text()
        # the file writer is not held up by the blocked console: every OPTIONS is in the file
        assert log.count("RX OPTIONS") >= 1500
        assert "Traceback" not in log and "loop stall:" not in log
    # the console writer waited in its queue and wrote it all once the pipe was read (at stop)
    assert srv.output.count("RX OPTIONS") >= 1500
