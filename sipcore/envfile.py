"""``ims.env``: KEY=VALUE lines next to ecosystem.config.js (systemd ``EnvironmentFile=`` format).

Read by the pm2 file (JavaScript, same rules) and by ``ims-mml`` for its defaults, so one file
holds an installation's addresses and ports. Lines: ``KEY=VALUE``, optional ``export ``, values
optionally in matching single or double quotes; blank lines and ``#``/``;`` comments skipped.
"""
from __future__ import annotations

import os
import re

from sipcore.errors import ConfigError

DEFAULT_ENV_FILE = "ims.env"
_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def parse_env_text(text: str, name: str = DEFAULT_ENV_FILE) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = _LINE.match(line)
        if not m:
            raise ConfigError("IMS_ENV_FILE", f"{name} line {number} is not KEY=VALUE: {line[:60]!r}")
        value = m.group(2)
        if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
            value = value[1:-1]
        out[m.group(1)] = value
    return out


def read_env_file(path: str | None = None) -> dict[str, str]:
    """The variables in ``path`` (default ``$IMS_ENV_FILE`` or ``./ims.env``); {} when absent."""
    path = path or os.environ.get("IMS_ENV_FILE") or DEFAULT_ENV_FILE
    try:
        with open(path, encoding="utf-8") as fh:
            return parse_env_text(fh.read(), path)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("IMS_ENV_FILE", f"cannot read {path}: {exc}") from None
