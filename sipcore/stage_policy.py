"""The policy of one stage as the proxy and registrar apply it: the NAT handling plus the stage's
knobs from the stage table (sipcore.stages, where every per-stage difference is declared).

stage 0 (legacy)      REGISTER Contact host:port rewritten to the packet source; the relay's
                      initial target is the signalling source IP + the SDP port; nothing else.
stage 1 (refactored)  REGISTER Contact rewritten to the source (as stage 0); SDP goes to RTPProxy
                      with the addresses written in the SDP.
stage 2 (sippy)       NAT helper: nat_uac_test detection, fix_contact keeping URI params,
                      fix_nated_sdp (c=, o=, a=rtcp), force_rport (received/rport written into the
                      top Via) and NAT keepalive for NATed bindings.

Edge policy per stage (sipcore.admission): the caller-identity rule (a request whose From names a
local user must authenticate as that user) is on by default in stages 1 and 2 and off in stage 0,
which by default answers as the original; ``CALLER_IDENTITY=1|0`` overrides it in any stage. The
open-relay protection (route tokens, local destinations only) applies to every stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sipcore.message import SIPMessage, SIPRequest
from sipcore.nat_helper import NATHelper
from sipcore.sdp import SessionDescription
from sipcore.stages import Stage, stage_of
from sipcore.uri import NameAddr



@dataclass
class StagePolicy:
    stage: int
    nat: NATHelper | None = None
    identity_override: bool | None = None     # CALLER_IDENTITY; None: the stage's default

    spec: Stage = field(init=False, repr=False)     # this stage's row of the stage table

    def __post_init__(self) -> None:
        self.spec = stage_of(self.stage)

    @property
    def caller_identity(self) -> bool:
        if self.identity_override is not None:
            return self.identity_override
        return self.spec.caller_identity

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def profile(self) -> Stage:
        """The stage's row of the stage table (sipcore.stages): what a client sees of it."""
        return self.spec

    @property
    def force_rport(self) -> bool:
        return self.nat is not None

    @property
    def legacy_media_positions(self) -> bool:
        """Stage 0 relays only what the original rewrote: offers in INVITE bodies and answers in
        2xx-to-INVITE bodies, every one taken as the answer (so no late offer; no 183, PRACK, UPDATE
        or ACK SDP); see sipcore.offer_answer."""
        return self.spec.legacy_media_positions

    @property
    def keepalive(self) -> bool:
        return self.nat is not None

    # --- registrar ----------------------------------------------------------------------------
    def register_contact(self, contact: NameAddr, request: SIPRequest, source: tuple[str, int]):
        """The Contact URI the registrar stores: (uri string, nated, reasons)."""
        if contact.uri is None or not contact.uri.is_sip:
            return str(contact.uri), False, ()
        if self.nat is None:
            # legacy behaviour: host:port always replaced by the packet source, params kept
            uri = contact.uri.with_host_port(source[0], source[1])
            nated = (contact.uri.host, contact.uri.port or 5060) != source
            return str(uri), nated, ("source_rewrite",) if nated else ()
        reasons = self.nat.nat_uac_test(request, source)
        if not reasons:
            return str(contact.uri), False, ()
        return str(contact.uri.with_host_port(source[0], source[1])), True, reasons

    # --- requests and responses crossing the proxy -------------------------------------------
    def on_request(self, request: SIPRequest, source: tuple[str, int]) -> None:
        """NAT fix-ups applied to a request before it is relayed (stage 2 only)."""
        if self.nat is None:
            return
        if request.method in ("INVITE", "UPDATE", "ACK", "PRACK") or request.has_sdp():
            self.nat.process_invite_sdp(request, source)
        elif request.method in ("SUBSCRIBE", "NOTIFY", "REFER") and self.nat.nat_uac_test(request, source):
            self.nat.fix_contact(request, source)

    def on_response(self, response: SIPMessage, source: tuple[str, int]) -> None:
        if self.nat is None:
            return
        self.nat.process_response_sdp(response, source)

    def media_target_sdp(self, sd: SessionDescription, source: tuple[str, int]) -> SessionDescription:
        """The SDP handed to the media backend: its addresses are the relay's initial targets."""
        if self.spec.relay_targets_source_ip:
            # the original relay sends to the signalling source IP + the SDP port
            out = sd.copy()
            for i in range(len(out.media)):
                if out.media_address(i) not in ("0.0.0.0", "::"):
                    out.set_media_address(i, source[0])
            return out
        return sd    # stage 1: as written; stage 2: already fixed by the NAT helper
