"""Location store behind the registrar: bindings that survive a restart or a stage change.

``LOCATION_STORE`` selects it (validated at start, errors name the key):

- ``memory``: bindings live only in the process (the original behaviour);
- ``sqlite:PATH``: an embedded SQLite file (WAL), the default, next to ``USERS_FILE``
  (``location.sqlite``); one server, survives restarts and `cp run_sippy.py run.py`;
- ``redis://HOST:PORT/N``: a Redis database shared by several servers of one domain (the way
  Kamailio's usrloc uses a database): a REGISTER through one server is found by the others.

The hot path stays in memory: ``PersistentBindingStore`` is the registrar's in-memory index
(``MemoryBindingStore``) that also writes every change through to the backend from a writer
thread, so a REGISTER costs a JSON encoding and a dict entry, and an INVITE lookup never leaves the
process. SQLite gets the changes of each 0.1 s in one transaction (``WRITE_DELAY``): a change is in
the file (and survives a killed process) at most about 0.1 s after the REGISTER. At start
the stored, unexpired bindings are loaded into memory (NATed ones included, so the NAT keepalive
pings them again at once). With Redis, every write also publishes the AOR on a channel; the other
servers mark it stale and re-read it from Redis at its next lookup, and a lookup of an AOR not in
memory asks Redis once (a user who registered through another server).
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import types
from typing import Iterator
from urllib.parse import urlparse

from sipcore.bindings import Binding, MemoryBindingStore, aor_user
from sipcore.errors import ConfigError

log = logging.getLogger(__name__)

KEY = "LOCATION_STORE"
def binding_to_dict(b: Binding) -> dict:
    # a dict literal (no getattr loop): this runs once per REGISTER on the event loop
    return {"aor": b.aor, "contact": b.contact, "original_contact": b.original_contact, "transport": b.transport,
            "expires_at": b.expires_at, "call_id": b.call_id, "cseq": b.cseq, "user_agent": b.user_agent,
            "nated": b.nated, "keepalive_failures": b.keepalive_failures, "registered_at": b.registered_at,
            "source": [b.source[0], b.source[1]], "nat_reasons": list(b.nat_reasons)}


def binding_from_dict(d: dict) -> Binding:
    return Binding(aor=d["aor"], contact=d["contact"], original_contact=d.get("original_contact") or d["contact"],
                   source=(str(d["source"][0]), int(d["source"][1])), transport=d.get("transport", "udp"),
                   expires_at=float(d["expires_at"]), call_id=d.get("call_id", ""), cseq=int(d.get("cseq", 0)),
                   user_agent=d.get("user_agent", ""), nated=bool(d.get("nated")),
                   nat_reasons=tuple(d.get("nat_reasons") or ()), keepalive_failures=int(d.get("keepalive_failures", 0)),
                   registered_at=float(d.get("registered_at", 0.0)))


_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(bindings: list[Binding]) -> str:
    return _ENCODER.encode([binding_to_dict(b) for b in bindings])


def decode(text: str | bytes) -> list[Binding]:
    return [binding_from_dict(d) for d in json.loads(text)]


# --- backends -------------------------------------------------------------------------------------
class SQLiteBackend:
    """One row per AOR: its bindings as JSON and the latest expiry (WAL, synchronous=NORMAL)."""

    def __init__(self, path: str):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
            conn = self._connect()
            conn.execute("CREATE TABLE IF NOT EXISTS location (aor TEXT PRIMARY KEY, bindings TEXT NOT NULL, "
                         "expires_at REAL NOT NULL)")
            conn.commit()
            conn.close()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(KEY, f"cannot use SQLite location store {path}: {exc}") from None
        self._writer: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def load(self, now: float) -> list[tuple[str, str]]:
        conn = self._connect()
        try:
            conn.execute("DELETE FROM location WHERE expires_at <= ?", (now,))
            conn.commit()
            return list(conn.execute("SELECT aor, bindings FROM location"))
        finally:
            conn.close()

    def write(self, ops: list[tuple[str, str | None, float]]) -> None:
        """Called from the writer thread: (aor, json or None to delete, latest expiry)."""
        if self._writer is None:
            self._writer = self._connect()
        with self._writer:
            for aor, data, expires in ops:
                if aor == "*":
                    self._writer.execute("DELETE FROM location")
                elif data is None:
                    self._writer.execute("DELETE FROM location WHERE aor = ?", (aor,))
                else:
                    self._writer.execute("INSERT INTO location (aor, bindings, expires_at) VALUES (?, ?, ?) "
                                         "ON CONFLICT(aor) DO UPDATE SET bindings = excluded.bindings, "
                                         "expires_at = excluded.expires_at", (aor, data, expires))

    def fetch(self, aor: str) -> str | None:       # not shared between servers: memory is complete
        return None

    def aors_of_user(self, user: str) -> list[str]:
        return []

    def changed_aors(self) -> set[str]:
        return set()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RedisBackend:
    """``ims:loc:aor:<aor>`` JSON with the expiry as key TTL, ``ims:loc:user:<user>`` set of AORs,
    ``ims:loc:aors`` all AORs; changes published on ``ims:loc:changed`` (the AOR)."""

    PREFIX = "ims:loc:"
    CHANNEL = "ims:loc:changed"

    def __init__(self, url: str):
        try:
            import redis
        except ImportError:
            raise ConfigError(KEY, "the redis client is not installed (.venv/bin/pip install redis)") from None
        parsed = urlparse(url)
        try:
            db = int((parsed.path or "/0").lstrip("/") or 0)
            port = parsed.port or 6379
        except ValueError:
            raise ConfigError(KEY, f"must be redis://HOST:PORT/N, got {url!r}") from None
        if not parsed.hostname:
            raise ConfigError(KEY, f"must be redis://HOST:PORT/N, got {url!r}")
        self.url = url
        self.client = redis.Redis(host=parsed.hostname, port=port, db=db, socket_timeout=2,
                                  socket_connect_timeout=2)
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise ConfigError(KEY, f"Redis at {parsed.hostname}:{port}/{db} does not answer ({exc}); start one "
                                   "(apt-get install redis-server) or set LOCATION_STORE=sqlite:PATH") from None
        self._changed: set[str] = set()
        self._lock = threading.Lock()
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(**{self.CHANNEL: self._on_change})
        self._listener = self._pubsub.run_in_thread(sleep_time=0.2, daemon=True)
        self.origin = f"{os.getpid()}@{os.uname().nodename}"

    def describe(self) -> str:
        return self.url

    def _on_change(self, message) -> None:
        data = message.get("data", b"")
        origin, _, aor = (data.decode(errors="replace") if isinstance(data, bytes) else str(data)).partition(" ")
        if origin != self.origin and aor:
            with self._lock:
                self._changed.add(aor)

    def changed_aors(self) -> set[str]:
        with self._lock:
            out, self._changed = self._changed, set()
        return out

    def load(self, now: float) -> list[tuple[str, str]]:
        aors = [a.decode() for a in self.client.smembers(self.PREFIX + "aors")]
        rows = []
        for aor in aors:
            data = self.client.get(self.PREFIX + "aor:" + aor)
            if data is None:
                self.client.srem(self.PREFIX + "aors", aor)
                self.client.srem(self.PREFIX + "user:" + aor_user(aor), aor)
            else:
                rows.append((aor, data.decode()))
        return rows

    def fetch(self, aor: str) -> str | None:
        data = self.client.get(self.PREFIX + "aor:" + aor)
        return data.decode() if data is not None else None

    def aors_of_user(self, user: str) -> list[str]:
        return [a.decode() for a in self.client.smembers(self.PREFIX + "user:" + user)]

    def write(self, ops: list[tuple[str, str | None, float]]) -> None:
        pipe = self.client.pipeline()
        for aor, data, expires in ops:
            if aor == "*":
                for key in self.client.scan_iter(self.PREFIX + "*"):
                    pipe.delete(key)
                continue
            key = self.PREFIX + "aor:" + aor
            if data is None:
                pipe.delete(key)
                pipe.srem(self.PREFIX + "aors", aor)
                pipe.srem(self.PREFIX + "user:" + aor_user(aor), aor)
            else:
                pipe.set(key, data)
                pipe.pexpireat(key, int(expires * 1000) + 1000)
                pipe.sadd(self.PREFIX + "aors", aor)
                pipe.sadd(self.PREFIX + "user:" + aor_user(aor), aor)
            pipe.publish(self.CHANNEL, f"{self.origin} {aor}")
        pipe.execute()

    def close(self) -> None:
        try:
            self._listener.stop()
            self._listener.join(2)          # its get_message() must not race the socket close
            self._pubsub.close()
            self.client.close()
        except Exception:   # noqa: BLE001 - closing must not fail the shutdown
            pass


# --- the store ------------------------------------------------------------------------------------
# How long the writer gathers changes before it writes them (SQLite): one transaction then holds
# every REGISTER of that time instead of one commit each, which cost more than the REGISTER itself.
# A shared store (Redis) is written at once, the other servers must see a REGISTER at once (a
# 5 ms delay already let a call through another server miss a REGISTER just answered); changes
# that come while it writes go in its next pipeline.
WRITE_DELAY = 0.1


class PersistentBindingStore(MemoryBindingStore):
    """The in-memory index, written through to a backend by one writer thread.

    ``put`` encodes the AOR's bindings at once (the event loop's consistent view) and files them
    in a dict of pending changes keyed by AOR, so a later change of the same AOR replaces an
    unwritten one; the writer thread takes the whole dict ``write_delay`` seconds after the first
    change (0.1 s; at once for a shared store) and writes it in one batch. It is woken once per batch, not
    once per REGISTER."""

    def __init__(self, backend, *, clock=time.time, write_delay: float | None = None):
        super().__init__()
        self.backend = backend
        self.clock = clock
        self._loading = False
        self._expiring = False
        self.shared = isinstance(backend, RedisBackend)
        if not self.shared:     # nothing changes behind our back: the lookups are the memory index's
            self.get = types.MethodType(MemoryBindingStore.get, self)
            self.aors_of_user = types.MethodType(MemoryBindingStore.aors_of_user, self)
        self.write_delay = (0.0 if self.shared else WRITE_DELAY) if write_delay is None else write_delay
        self.restored = 0
        self.write_errors = 0
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[str | None, float]] = {}   # aor -> (json or None, latest expiry)
        self._requested = 0          # changes filed so far ...
        self._written = 0            # ... and how many of them the writer has handled
        self._signalled = False      # the writer was woken for what is pending
        self._stopping = False
        self._wake = threading.Event()
        self._hurry = threading.Event()   # flush/close: write now, without the delay
        self._writer = threading.Thread(target=self._write_loop, name="location-writer", daemon=True)
        self._writer.start()
        self._load()

    def _load(self) -> None:
        now = self.clock()
        self._loading = True
        try:
            for aor, data in self.backend.load(now):
                self._install(aor, data, now)
        finally:
            self._loading = False
        self.restored = len(self)
        nated = len(self.nated())
        log.info("location store %s: %d bindings restored (%d NATed)", self.backend.describe(), self.restored, nated)

    def _install(self, aor: str, data: str | None, now: float) -> None:
        try:
            bindings = [b for b in decode(data) if b.expires_at > now] if data else []
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("location store: unreadable bindings of %s dropped (%s)", aor, exc)
            bindings = []
        self._loading, was = True, self._loading
        try:
            MemoryBindingStore.put(self, aor, bindings)
        finally:
            self._loading = was

    # --- shared stores: what other servers changed ----------------------------------------------
    def _refresh(self, aor: str | None = None) -> None:
        changed = self.backend.changed_aors()
        if aor is not None and not MemoryBindingStore.get(self, aor):
            changed.add(aor)
        now = self.clock()
        for a in changed:
            self._install(a, self.backend.fetch(a), now)

    def get(self, aor: str) -> list[Binding]:
        if self.shared and not self._loading:
            self._refresh(aor)
        return super().get(aor)

    def aors_of_user(self, user: str) -> list[str]:
        found = super().aors_of_user(user)
        if not found and self.shared and not self._loading:
            now = self.clock()
            for a in self.backend.aors_of_user(user):
                self._install(a, self.backend.fetch(a), now)
            found = super().aors_of_user(user)
        return found

    # --- write-through ---------------------------------------------------------------------------
    def put(self, aor: str, bindings: list[Binding]) -> None:
        super().put(aor, bindings)
        # a shared store expires by itself (key TTL): writing our expiry could undo another
        # server's fresh REGISTER of the same AOR that we have not seen yet
        if not self._loading and not (self._expiring and self.shared):
            if bindings:
                self._file(aor, (encode(bindings), max(b.expires_at for b in bindings)))
            else:
                self._file(aor, (None, 0.0))

    def _file(self, aor: str, change: tuple[str | None, float]) -> None:
        with self._lock:
            if aor == "*":
                self._pending.clear()                 # everything before a clear is moot
            else:
                self._pending.pop(aor, None)          # re-filed after a pending "*"
            self._pending[aor] = change
            self._requested += 1
            if self._signalled:
                return
            self._signalled = True
        self._wake.set()

    def expire(self, now: float) -> list[Binding]:
        self._expiring = True
        try:
            return super().expire(now)
        finally:
            self._expiring = False

    def clear(self) -> int:
        n = super().clear()
        self._file("*", (None, 0.0))
        return n

    def _write_loop(self) -> None:
        while True:
            if not self._wake.wait(1.0):
                continue
            if self.write_delay > 0:
                self._hurry.wait(self.write_delay)    # gather the changes of the next moment
            with self._lock:
                batch, self._pending = self._pending, {}
                upto, self._signalled = self._requested, False
                self._wake.clear()
                self._hurry.clear()
                stopping = self._stopping
            if batch:
                ops = [(aor, data, expires) for aor, (data, expires) in batch.items()]
                try:
                    self.backend.write(ops)
                except Exception as exc:   # noqa: BLE001 - a store outage must not stop registrations
                    self.write_errors += 1
                    log.warning("location store %s: %d changes not written: %s", self.backend.describe(),
                                len(ops), exc)
                del ops
            del batch                               # not kept alive while the writer waits
            self._written = upto
            if stopping:
                return

    def flush(self, timeout: float = 5.0) -> bool:
        """Write every change filed so far now (bounded wait); True when done."""
        target = self._requested
        deadline = time.monotonic() + timeout
        while self._written < target and time.monotonic() < deadline and self._writer.is_alive():
            self._hurry.set()
            self._wake.set()
            time.sleep(0.005)
        return self._written >= target

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._stopping = True
        self._hurry.set()
        self._wake.set()
        self._writer.join(5)
        self.backend.close()

    def bindings(self) -> Iterator[Binding]:
        if self.shared and not self._loading:
            self._refresh()
        return super().bindings()


def parse_location_store(value: str, users_file: str) -> str:
    """Validate ``LOCATION_STORE`` (config time, no I/O); returns the normalised spec."""
    text = (value or "").strip()
    if not text:
        folder = os.path.dirname(users_file) or "."
        return "sqlite:" + os.path.join(folder, "location.sqlite")
    if text == "memory":
        return text
    if text.startswith("sqlite:"):
        path = text[len("sqlite:"):]
        if not path or "\x00" in path:
            raise ConfigError(KEY, f"sqlite:PATH needs a file path, got {value!r}")
        return text
    if text.startswith("redis://"):
        parsed = urlparse(text)
        try:
            ok = bool(parsed.hostname) and (parsed.path in ("", "/") or parsed.path.lstrip("/").isdigit())
            _ = parsed.port
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(KEY, f"must be redis://HOST:PORT/N, got {value!r}")
        return text
    raise ConfigError(KEY, f"must be memory, sqlite:PATH or redis://HOST:PORT/N, got {value!r}")


def open_location_store(spec: str) -> MemoryBindingStore:
    """The registrar's store for a validated spec (connects; raises ConfigError naming the key)."""
    if spec == "memory":
        return MemoryBindingStore()
    if spec.startswith("sqlite:"):
        return PersistentBindingStore(SQLiteBackend(spec[len("sqlite:"):]))
    return PersistentBindingStore(RedisBackend(spec))
