"""The MML management token on disk: created once by scripts/setup.sh, readable only by its owner.

The server reads it when ``MML_TOKEN`` is not set (``MML_TOKEN_FILE``, default
``config/mml.token``); ``ims-mml`` reads the same file by default, so an operator on the host
never types or exports the token, and it never shows in ``pm2 env`` or ``systemctl show``.
"""
from __future__ import annotations

import logging
import os
import secrets
import stat

from sipcore.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TOKEN_FILE = os.path.join("config", "mml.token")
MIN_LENGTH = 8


def valid_token(token: str) -> bool:
    return len(token) >= MIN_LENGTH and not any(c.isspace() for c in token)


def read_token(path: str, key: str = "MML_TOKEN_FILE") -> str:
    """The token in ``path``; ``ConfigError(key, ...)`` when it is unreadable or malformed."""
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(key, f"{path} does not exist; create it with "
                               f"`.venv/bin/ims-mml --create-token-file {path}` (scripts/setup.sh does)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {exc}") from None
    if not valid_token(token):
        raise ConfigError(key, f"{path} must hold one token of at least {MIN_LENGTH} characters without spaces")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by group/others (mode %o); chmod 600 it", path, stat.S_IMODE(mode))
    return token


def create_token_file(path: str, owner: str | None = None) -> bool:
    """Write a fresh random token to ``path`` (mode 0600) unless the file exists; True if created."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    os.chmod(path, 0o600)
    if owner:
        import pwd
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return True
