"""Names, subnet slots, cleanup on exit/signals, and prune of leftovers.

Every object a lab creates is named ``imsl<6 hex>-...`` (namespaces) or labelled
``ims-migrate.lab`` (Docker). ``prune`` touches only such objects. Cleanup is registered before
the first object is created and runs on normal exit, exceptions, SIGINT and SIGTERM. A process
killed outright (SIGKILL, a machine or container restart) runs no cleanup, so each lab also
leaves a record with its owner's pid (``claim_lab``); the next lab brought up on the machine
removes the labs whose owner is dead.
"""
from __future__ import annotations

import atexit
import errno
import logging
import os
import re
import secrets
import signal
import subprocess
import threading

log = logging.getLogger(__name__)

PREFIX = "imsl"
NAME_RE = re.compile(rf"^{PREFIX}[0-9a-f]{{6}}-")
STATE_DIR = os.environ.get("IMS_NETLAB_STATE", "/run/ims-netlab")
SLOT_DIR = os.path.join(STATE_DIR, "slots")
LAB_DIR = os.path.join(STATE_DIR, "labs")

_cleanups: dict[int, callable] = {}
_lock = threading.Lock()
_installed = False


class NotRoot(RuntimeError):
    pass


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotRoot("network labs need root (network namespaces, veth, iptables). Run as root, e.g. "
                      "`sudo .venv/bin/harness lab up ...` or `sudo .venv/bin/harness compare --stage 2`.")


def new_lab_id() -> str:
    return PREFIX + secrets.token_hex(3)


def register_cleanup(fn) -> int:
    _install()
    with _lock:
        key = id(fn)
        _cleanups[key] = fn
        return key


def unregister_cleanup(key: int) -> None:
    with _lock:
        _cleanups.pop(key, None)


def run_cleanups() -> None:
    with _lock:
        fns = list(_cleanups.values())
        _cleanups.clear()
    for fn in fns:
        try:
            fn()
        except Exception:   # noqa: BLE001 - every cleanup must get its turn
            log.exception("lab cleanup failed")


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(run_cleanups)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(signum, frame, previous=previous):
                run_cleanups()
                if callable(previous) and previous not in (signal.SIG_IGN, signal.SIG_DFL):
                    previous(signum, frame)
                elif signum == signal.SIGINT:
                    raise KeyboardInterrupt
                else:
                    raise SystemExit(128 + signum)
            signal.signal(sig, handler)


# --- lab records: who owns a lab, so labs of killed processes are removed by the next run -------
def claim_lab(lab_id: str, down) -> int:
    """Call before a lab creates anything: removes labs whose owner died, records this one and
    registers ``down`` as its cleanup. Returns the cleanup key for ``release_lab``."""
    reap_dead_labs()
    os.makedirs(LAB_DIR, exist_ok=True)
    partial = os.path.join(LAB_DIR, f".{lab_id}.{os.getpid()}")
    with open(partial, "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(partial, os.path.join(LAB_DIR, lab_id))   # never seen half-written (empty = pid 0)
    return register_cleanup(down)


def release_lab(lab_id: str, cleanup_key: int | None) -> None:
    """After a lab's objects are gone."""
    if cleanup_key is not None:
        unregister_cleanup(cleanup_key)
    _forget_lab(lab_id)


def _forget_lab(lab_id: str) -> None:
    try:
        os.unlink(os.path.join(LAB_DIR, lab_id))
    except FileNotFoundError:
        pass


def _lab_records() -> list[str]:
    """Lab ids with an owner record (``harness lab up`` keeps its ``<id>.json`` beside them)."""
    try:
        return [n for n in os.listdir(LAB_DIR) if re.fullmatch(rf"{PREFIX}[0-9a-f]{{6}}", n)]
    except FileNotFoundError:
        return []


def reap_dead_labs() -> list[str]:
    """Prune every recorded lab whose owner process is gone; returns what was removed."""
    removed: list[str] = []
    for lab_id in _lab_records():
        pid = _read_pid(os.path.join(LAB_DIR, lab_id))
        if pid is not None and _dead(pid):
            log.warning("removing lab %s left behind by a process that was killed", lab_id)
            removed += prune(lab_id)
    return removed


def _read_pid(pid_file: str) -> int | None:
    try:
        with open(pid_file) as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return None


def _dead(pid: int) -> bool:
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.ESRCH
    return False


# --- subnet slots: one per live lab on this machine, so parallel labs never overlap ------------
def claim_slot(preferred: int | None = None, slots: int = 32) -> int:
    os.makedirs(SLOT_DIR, exist_ok=True)
    order = list(range(slots))
    if preferred is not None:
        order = [preferred] + [s for s in order if s != preferred]
    for slot in order:
        path = os.path.join(SLOT_DIR, str(slot))
        try:
            os.mkdir(path)
        except FileExistsError:
            if not _slot_stale(path):
                continue
            _release_dir(path)
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
        with open(os.path.join(path, "pid"), "w") as fh:
            fh.write(str(os.getpid()))
        return slot
    raise RuntimeError(f"all {slots} lab subnet slots are in use (run `harness lab prune`)")


def _slot_stale(path: str) -> bool:
    """A slot is stale when its owner is dead; a slot being claimed (no pid yet) is not."""
    import time as _time
    pid = _read_pid(os.path.join(path, "pid"))
    if pid is None:
        try:
            return _time.time() - os.stat(path).st_mtime > 10
        except OSError:
            return False
    return _dead(pid)


def _release_dir(path: str) -> None:
    try:
        os.unlink(os.path.join(path, "pid"))
    except FileNotFoundError:
        pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def release_slot(slot: int) -> None:
    _release_dir(os.path.join(SLOT_DIR, str(slot)))


# --- prune ---------------------------------------------------------------------------------------
def list_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def kill_namespace_processes(ns: str) -> None:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def delete_namespaces(names: list[str]) -> None:
    for ns in names:
        kill_namespace_processes(ns)
    if names:
        batch = "".join(f"netns delete {ns}\n" for ns in names)
        subprocess.run(["ip", "-force", "-batch", "-"], input=batch, text=True, capture_output=True, timeout=30)


def prune(lab_id: str | None = None) -> list[str]:
    """Remove namespaces (and state) carrying the project's prefix (or one lab's id)."""
    names = [n for n in list_namespaces() if NAME_RE.match(n) and (lab_id is None or n.startswith(lab_id + "-"))]
    delete_namespaces(names)
    if os.path.isdir(SLOT_DIR):
        for slot in os.listdir(SLOT_DIR):
            path = os.path.join(SLOT_DIR, slot)
            if _slot_stale(path):
                _release_dir(path)
    removed = list(names)
    try:
        from netlab.docker_backend import prune_docker
        removed += prune_docker(lab_id)
    except Exception:   # noqa: BLE001 - docker is optional
        pass
    for record in [lab_id] if lab_id is not None else _lab_records():
        _forget_lab(record)
    return removed
