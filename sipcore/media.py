"""The interface every media backend implements (stage 0 Python relay, stage 1/2 RTPProxy).

See docs/DESIGN.md "Media backends" for the contract.
"""
from __future__ import annotations

import abc

from sipcore.sdp import SessionDescription


class MediaBackend(abc.ABC):
    name: str = "media"

    @abc.abstractmethod
    async def start(self) -> None:
        """Get ready; raise MediaBackendError saying how to start the relay if it cannot."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """End every session and release resources."""

    @abc.abstractmethod
    async def offer(self, call_id: str, from_tag: str, to_tag: str | None,
                    sdp: SessionDescription, source: tuple[str, int]) -> SessionDescription:
        """SDP offer from the request sender; returns the SDP to forward to the other party."""

    @abc.abstractmethod
    async def answer(self, call_id: str, from_tag: str, to_tag: str | None,
                     sdp: SessionDescription, source: tuple[str, int]) -> SessionDescription:
        """SDP answer (183/200) from the request's receiver; returns the SDP to forward back."""

    @abc.abstractmethod
    async def delete(self, call_id: str, from_tag: str | None = None, to_tag: str | None = None) -> None:
        """Release the media session(s) of a call."""

    async def session_alive(self, call_id: str, from_tag: str, to_tag: str | None) -> bool | None:
        """Does the relay still hold the call's session? None: this backend cannot tell."""
        return None

    def adopt(self, call_id: str, from_tag: str, to_tag: str | None) -> None:
        """A call taken over from a previous server process whose session the relay kept."""

    def sessions(self) -> list[dict]:
        """Active media sessions for MML (call_id, legs, ports, counters)."""
        return []
