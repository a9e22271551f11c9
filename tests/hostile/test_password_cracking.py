"""SIPVicious svcrack (an independent password cracker) against a real server: with the right
password early in its dictionary it finds it (so the tool works against us), with the right
password behind 40 wrong ones it finds nothing - the failed-auth limiter blocks the source after
RATE_LIMIT_FAILS failures and blacklists it - while other sources are still answered."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.hostile.target import Target

pytestmark = [pytest.mark.xdist_group("hostile-svcrack"),
              pytest.mark.skipif(shutil.which("svcrack") is None,
                                 reason="SIPVicious not installed (apt-get install sipvicious)")]


def _svcrack(srv: Target, words: list[str], tmp_path) -> str:
    wordlist = tmp_path / "words.txt"
    wordlist.write_text("\n".join(words) + "\n")
    out = subprocess.run(["svcrack", "-u", "1001", "-d", str(wordlist), "-P", str(srv.ports.ua[0]), "-t", "0.05",
                          f"udp://127.0.0.1:{srv.ports.sip}"], capture_output=True, text=True, timeout=120)
    return out.stdout + out.stderr


@pytest.mark.parametrize("stage", [0, 2])
def test_svcrack_finds_a_weak_password_only_before_the_limiter_blocks_it(stage, tmp_path):
    (tmp_path / "found").mkdir()
    with Target(stage, str(tmp_path / "found"), extra_env={"RATE_LIMIT_FAILS": "10"}) as srv:
        report = _svcrack(srv, ["a", "b", "c", "1234", "d"], tmp_path)
        assert "| 1001      | 1234     |" in report, report        # the tool works against us
    work = tmp_path / "blocked"
    work.mkdir()
    with Target(stage, str(work), extra_env={"RATE_LIMIT_FAILS": "10"}) as srv:
        report = _svcrack(srv, [f"wrong{i}" for i in range(40)] + ["1234"], tmp_path)
        assert "1234" not in report and "found nothing" in report, report
        assert srv.options(source_ip="127.0.0.2")[0] == 200        # everyone else is still served
        assert srv.options(timeout=1.0)[0] is None                 # the cracker's address is not
        log = srv.wait_log("rate limit: 127.0.0.1 added to the blacklist")
        assert "rate limit: 127.0.0.1 blocked for 60s after 10 failures" in log
        assert "rate limit: 127.0.0.1 added to the blacklist" in log
        with open(os.path.join(str(work), "bl.txt")) as fh:
            assert "127.0.0.1" in fh.read().split()
        assert not [line for line in log.splitlines() if "Traceback" in line]
