"""A child that logs more than a pipe holds (64 KiB) keeps running while its console is read by
harness.console.Console; the same child with an unread pipe blocks in write() - which is how test
and bench servers froze (calls ended 408) before their consoles were drained."""
import subprocess
import sys
import time

from harness.console import Console

CHILD = ("import sys\n"
         "for i in range(20000): print('INFO line %05d of a chatty server' % i)\n"
         "sys.stdout.flush()\n"
         "print('ims-migrate stage 2 ready on 127.0.0.1:5060', flush=True)\n"
         "import time; time.sleep(0.2)\n")


def _start() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_a_drained_child_writes_past_the_pipe_size_and_gets_ready():
    proc = _start()
    console = Console(proc)
    try:
        assert console.wait_for_ready(15)
        assert proc.wait(timeout=10) == 0
        console.join()
        text = console.text()
        assert len(text.encode()) > 10 * 65536 and text.count("\n") == 20001
        assert "ready on" in console.tail(1)
    finally:
        proc.kill()
        proc.wait()


def test_an_unread_child_blocks_on_a_full_pipe():
    proc = _start()
    try:
        time.sleep(1.0)
        assert proc.poll() is None          # stuck in write(): nobody reads its stdout
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_wait_for_ready_is_false_when_the_child_ends_without_the_line():
    proc = subprocess.Popen([sys.executable, "-c", "print('boom')"], stdout=subprocess.PIPE, text=True)
    console = Console(proc)
    t0 = time.monotonic()
    assert console.wait_for_ready(15) is False
    assert time.monotonic() - t0 < 10
    proc.wait(timeout=5)
    console.join()
    assert console.text() == "boom\n"
