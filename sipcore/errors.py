"""Typed errors shared by every layer (parse errors, configuration errors, media backend errors)."""


class SIPParseError(ValueError):
    """A SIP message (or part of one) could not be parsed; ``reason`` says why."""

    def __init__(self, reason: str, partial=None):
        super().__init__(reason)
        self.reason = reason
        # The part that could be parsed (e.g. start line + headers), used to build a 400 reply.
        self.partial = partial


class SDPParseError(ValueError):
    """An SDP body could not be parsed."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ConfigError(ValueError):
    """A configuration value is invalid; ``key`` names the setting (env var or config key)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class MediaBackendError(RuntimeError):
    """The media relay cannot be used; the message says how to start one."""
