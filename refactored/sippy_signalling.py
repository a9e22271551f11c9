"""SIGNALLING=sippy: Sippy B2BUA signalling for stage 2.

Not available yet: running our registrar, CDR and NAT helper on top of the Sippy B2BUA
(`pip install sippy`) is planned work. Selecting it fails at start with a clear message instead of
silently falling back to sipcore signalling, so an operator never believes a stage is running
that is not.
"""
from __future__ import annotations

from importlib import metadata

from sipcore.errors import ConfigError

SIGNALLING_CHOICES = ("sipcore", "sippy")


def sippy_version() -> str | None:
    try:
        return metadata.version("sippy")
    except metadata.PackageNotFoundError:
        return None


def require_signalling(signalling: str, stage: int) -> None:
    """Raise ConfigError unless ``signalling`` can run on this stage."""
    if signalling not in SIGNALLING_CHOICES:
        raise ConfigError("SIGNALLING", f"must be one of {', '.join(SIGNALLING_CHOICES)}, got {signalling!r}")
    if signalling == "sipcore":
        return
    if stage < 2:
        raise ConfigError("SIGNALLING", "sippy signalling exists only for stage 2 (run_sippy.py)")
    installed = sippy_version()
    where = f"the sippy package {installed} is installed" if installed else "the sippy package is not installed (pip install sippy)"
    raise ConfigError("SIGNALLING", "Sippy B2BUA signalling is not available yet in ims-migrate "
                      f"({where}); unset SIGNALLING or set SIGNALLING=sipcore to run stage 2 on sipcore signalling")
