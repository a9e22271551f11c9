"""The compiled build of the server's hot modules (mypyc), and the switch that puts it in use.

``scripts/build_compiled.py`` (run by scripts/setup.sh) compiles MODULES with mypyc into
``build/compiled/`` and writes a manifest holding the SHA-256 of every source it compiled.
``sipcore/__init__.py`` (and ``refactored/__init__.py``) call ``activate()`` before any other module
of the package is imported: when the manifest matches the sources on disk and this interpreter, the
compiled directory goes in front of the package's ``__path__`` and the compiled modules replace the
``.py`` ones; otherwise (no build, a source edited since, another Python, ``IMS_COMPILED=0``) the
pure-Python modules run, which behave the same, only slower. ``STATUS`` says which, and why; the server logs it at start.

This module is never compiled itself: it runs before the compiled ones can be found.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_DIR = os.path.join(ROOT, "build", "compiled")
MANIFEST = os.path.join(BUILD_DIR, "manifest.json")
GROUP = "sipcore_compiled"           # name of the shared runtime library mypyc builds for the group

# The modules a SIP message passes through, per message, and their plain helpers, per package.
# Left out: the cold modules (app, config, logging, location-store backends, MML), the media
# backend base class (subclassed by interpreted code), errors (exceptions deriving from built-in
# types are not native classes), and everything Sippy.
PACKAGES: dict[str, tuple[str, ...]] = {
    "sipcore": (
        "admission", "auth_policy", "bindings", "call", "call_records", "cdr", "deadlines", "digest", "media_session",
        "message", "nat_helper", "offer_answer", "originated", "overload", "proxy_core", "proxy_driver",
        "recent", "record_route", "registrar", "registration", "resolver", "sdp", "security", "server",
        "stage_policy", "stages", "textsafe", "transaction", "transaction_runner", "transport", "uri",
    ),
    # the RTPProxy control client of stages 1/2: three commands per call
    "refactored": ("rtpproxy_client", "rtpproxy_media", "rtpproxy_protocol"),
}
MODULES = tuple(f"{package}.{name}" for package, names in PACKAGES.items() for name in names)

STATUS = "pure Python (not activated)"
ACTIVE = False
_checked: str | None = None          # the stale reason, worked out once per process ("" = current)


def source_path(module: str) -> str:
    """``module`` dotted ("sipcore.message")."""
    return os.path.join(ROOT, *module.split(".")) + ".py"


def source_digest(module: str) -> str:
    with open(source_path(module), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def interpreter_tag() -> str:
    return f"{sys.implementation.cache_tag}-{sys.platform}"


def write_manifest() -> None:
    """Called by the build script after a successful build."""
    data = {"interpreter": interpreter_tag(), "modules": {m: source_digest(m) for m in MODULES}}
    with open(MANIFEST, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)


def stale_reason() -> str | None:
    """Why the build cannot be used, or None when it matches the sources and this interpreter."""
    try:
        with open(MANIFEST) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return "no compiled build (run scripts/setup.sh, or .venv/bin/python scripts/build_compiled.py)"
    except (OSError, ValueError) as exc:
        return f"unreadable {MANIFEST}: {exc}"
    if data.get("interpreter") != interpreter_tag():
        return f"built for {data.get('interpreter')}, running {interpreter_tag()}"
    built = data.get("modules", {})
    if set(built) != set(MODULES):
        return "the compiled build holds another module list (rebuild it)"
    changed = [m for m in MODULES if built[m] != source_digest(m)]
    if changed:
        return f"sources changed since the build: {', '.join(changed)} (rebuild it)"
    return None


def activate(package_path: list[str], package: str = "sipcore") -> None:
    """Put the compiled build in front of ``package_path`` (the package's __path__) when it is
    current. All packages of the build go together: one stale source leaves every one pure."""
    global STATUS, ACTIVE, _checked
    if os.environ.get("IMS_COMPILED", "1") == "0":
        STATUS = "pure Python (IMS_COMPILED=0)"
        return
    if _checked is None:
        _checked = stale_reason() or ""
    if _checked:
        STATUS = f"pure Python: {_checked}"
        return
    package_path.insert(0, os.path.join(BUILD_DIR, package))
    if BUILD_DIR not in sys.path:
        sys.path.append(BUILD_DIR)          # the group's shared runtime library, imported by name
    ACTIVE = True
    STATUS = f"compiled (mypyc): {len(MODULES)} modules from {BUILD_DIR}"
