"""SIGNALLING=sipcore|sippy: which engine runs stage 2's INVITE dialogs (configuration check).

``sippy`` runs INVITE dialogs on the Sippy B2BUA (``refactored.sippy_bridge``); REGISTER, OPTIONS,
MESSAGE, auth, NAT helper, keepalive, CDR, users and MML stay sipcore's. It exists only for stage 2
and needs the ``sippy`` package; without it the server refuses to start and names the install
command, instead of silently running sipcore signalling.
"""
from __future__ import annotations

from sipcore.errors import ConfigError
from sipcore.stages import STAGES, stage_of

SIGNALLING_CHOICES = ("sipcore", "sippy")


def require_signalling(signalling: str, stage: int) -> None:
    """Raise ConfigError unless ``signalling`` can run on this stage."""
    if signalling not in SIGNALLING_CHOICES:
        raise ConfigError("SIGNALLING", f"must be one of {', '.join(SIGNALLING_CHOICES)}, got {signalling!r}")
    if signalling == "sipcore":
        return
    spec = stage_of(stage)
    if signalling not in spec.signalling:
        allowed = [s for s in STAGES.values() if signalling in s.signalling]
        raise ConfigError("SIGNALLING", f"{signalling} signalling exists only for "
                          + ", ".join(f"stage {s.number} ({s.entrypoint})" for s in allowed))
    from refactored.sippy_bridge import INSTALL_HINT, sippy_version
    if sippy_version() is None:
        raise ConfigError("SIGNALLING", f"sippy signalling needs the sippy package, which is not installed: "
                          f"{INSTALL_HINT}; or unset SIGNALLING to run stage 2 on sipcore signalling")


def build_signalling(server) -> None:
    """Attach the configured signalling engine to ``server`` (nothing for sipcore)."""
    if server.config.signalling == "sippy":
        from refactored.sippy_bridge import SippyBridge
        server.engine = SippyBridge(server)
