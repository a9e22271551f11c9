"""Calls in progress handed from a stopping server process to the next one (restart, cutover).

When the media relay outlives the process (RTPProxy run by pm2/systemd), a graceful stop keeps
the answered calls' relay sessions and, instead of closing their CDR rows as SERVER_SHUTDOWN,
writes what their rows need to a hand-over file next to the CDR (``.calls-in-progress.json``).
The next process loads it; when a call's BYE arrives (routed by the Record-Route token, with no
dialog in memory) it writes the call's row as a normal end and deletes the relay session.
Sans-IO apart from reading/writing that one small file.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

FILE_NAME = ".calls-in-progress.json"


@dataclass
class HandedOverCall:
    """The attributes of a call the CDR row is built from (``CDREvents._call_row``)."""
    call_id: str
    caller_tag: str
    caller_from: str
    callee_to: str
    caller_flow: tuple
    started: float
    callee_tag: str | None = None
    callee_flow: tuple | None = None
    answered_at: float | None = None
    ringing_at: float | None = None
    invite_cseq: int = 0
    media_kinds: list = field(default_factory=list)
    codecs: list = field(default_factory=list)
    user_agent: str = ""
    auth_user: str | None = None

    @classmethod
    def of(cls, call) -> "HandedOverCall":
        return cls(**{k: getattr(call, k, None) for k in cls.__dataclass_fields__})


def handover_path(cdr_dir: str) -> str:
    return os.path.join(cdr_dir, FILE_NAME)


def save(path: str, calls) -> int:
    items = [asdict(HandedOverCall.of(c)) for c in calls]
    if not items:
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(items, fh)
    os.replace(tmp, path)
    log.info("%d calls in progress handed over to the next server process (%s)", len(items), path)
    return len(items)


def load(path: str) -> dict[str, HandedOverCall]:
    """The handed-over calls by Call-ID; the file is consumed (removed)."""
    try:
        with open(path, encoding="utf-8") as fh:
            items = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("hand-over file %s unreadable, ignored: %s", path, exc)
        items = []
    try:
        os.unlink(path)
    except OSError:
        pass
    out: dict[str, HandedOverCall] = {}
    for d in items if isinstance(items, list) else []:
        try:
            c = HandedOverCall(**{k: v for k, v in d.items() if k in HandedOverCall.__dataclass_fields__})
        except TypeError:
            continue
        c.caller_flow = tuple(c.caller_flow)
        c.callee_flow = tuple(c.callee_flow) if c.callee_flow else None
        out[c.call_id] = c
    if out:
        log.info("%d calls in progress taken over from the previous server process", len(out))
    return out
