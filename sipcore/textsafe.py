"""Header text that is not valid UTF-8, carried safely (issue 10, class 5).

The parser decodes header bytes with ``surrogateescape``, so every byte sequence survives as a
``str``; encoding with ``surrogateescape`` gives the original bytes back for forwarding and
hashing (``SIPMessage.to_bytes``, Via branch and tag hashes, rtpproxy tokens). Where text leaves
the process as UTF-8 (log files, CDR rows), the registered ``sip-escape`` error handler writes an
undecodable byte as ``\\xNN`` (and any other unencodable code point as ``\\uNNNN``) instead of
raising, so such a message is still logged, billed and relayed.
"""
from __future__ import annotations

import codecs

ERRORS = "sip-escape"


def _escape(exc: UnicodeError):
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for ch in exc.object[exc.start:exc.end]:
        code = ord(ch)
        out.append(f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}")
    return "".join(out), exc.end


codecs.register_error(ERRORS, _escape)


def printable(text: str) -> str:
    """``text`` with undecodable bytes spelled ``\\xNN``: safe to encode as strict UTF-8."""
    return text.encode("utf-8", ERRORS).decode("utf-8")
