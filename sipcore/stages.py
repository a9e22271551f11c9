"""What each stage is: THE table. Every stage difference is a field here; code asks the table
(``STAGES[n].nat_helper``), never compares stage numbers.

A stage is chosen by its entrypoint, which passes its own literal number (run.py 0,
run_refactored.py 1, run_sippy.py 2); nothing infers it from a file name. The plug-ins a stage
names (its media backend, the Sippy signalling engine) are built by the assembly module
(``assembly``), above sipcore: sipcore itself never imports legacy/ or refactored/.

Adding a per-stage knob (legacy fidelity of stage 0, an edge-policy default, ...): add a field to
``Stage`` with a comment saying what it changes, set it in each row, read it where it applies
(usually through ``StagePolicy.spec``), and add it to docs/DESIGN.md "Stages".
"""
from __future__ import annotations

from dataclasses import dataclass

MEDIA_LEGACY_RELAY = "legacy-relay"     # legacy/rtp_relay.py: the original's Python relay
MEDIA_RTPPROXY = "rtpproxy"             # refactored/rtpproxy_media.py: RTPProxy (rtp-io or a binary)

ALLOW_LEGACY = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "PRACK", "UPDATE", "REFER", "NOTIFY",
                "SUBSCRIBE", "MESSAGE", "REGISTER")
ALLOW_ALL = ALLOW_LEGACY + ("INFO",)


@dataclass(frozen=True)
class Stage:
    number: int
    name: str                          # legacy / refactored / sippy (Server header, logs, MML)
    entrypoint: str                    # the file that runs it, relative to the repository root
    summary: str                       # one line for --help and the ready line
    media: str                         # MEDIA_LEGACY_RELAY or MEDIA_RTPPROXY
    nat_helper: bool                   # nat_uac_test, fix_contact, fix_nated_sdp, force_rport, keepalive
    signalling: tuple[str, ...]        # SIGNALLING values it can run (the first is the default)
    # --- policy knobs -------------------------------------------------------------------------
    caller_identity: bool              # From naming a local user must authenticate as that user
    #                                    (default; CALLER_IDENTITY overrides; sipcore.admission)
    legacy_media_positions: bool       # only INVITE offers / 2xx answers go to the relay (offer_answer)
    relay_targets_source_ip: bool      # relay's initial target = signalling source IP + SDP port
    strip_target_params: bool          # ;ob and ;transport dropped from the relayed Request-URI
    echo_registered_contact: bool      # REGISTER 200 lists each Contact as registered
    # --- what a client sees (stage 0 = the original, measured into tests/golden/legacy/) -----
    auth_invite: bool                  # INVITE/MESSAGE from our users challenged (AUTH_INVITE overrides)
    auth_algorithms: tuple[str, ...]   # digest algorithms offered (AUTH_ALGORITHMS overrides)
    auth_failure_status: int           # wrong REGISTER credentials: 401 (fresh challenge) or 403
    unknown_user_status: int           # INVITE/MESSAGE to a user nobody has: 480 or 404
    server_header: str                 # Server header text
    server_on_challenge: bool          # Server header on 401/407 (the original had none)
    allow: tuple[str, ...]             # methods handled (Allow header); the rest get 405
    allow_and_date: bool               # Allow and Date on every response the server makes itself
    route_on_invite_2xx: bool          # Route: <us> added to the 200 OK of an INVITE (the original)
    options_local: bool                # every OPTIONS answered by the server, never relayed
    punch_packets: int                 # legacy relay: packets sent to each UA at answer ("NAT punch")


STAGES: dict[int, Stage] = {
    0: Stage(0, "legacy", "run.py",
             "stage 0 (legacy): custom Python RTP relay, REGISTER Contact rewritten to the source",
             media=MEDIA_LEGACY_RELAY, nat_helper=False, signalling=("sipcore",),
             caller_identity=False, legacy_media_positions=True, relay_targets_source_ip=True,
             strip_target_params=True, echo_registered_contact=False,
             auth_invite=False, auth_algorithms=("MD5",), auth_failure_status=401, unknown_user_status=480,
             server_header="ims-sip-server/0.0.3", server_on_challenge=False, allow=ALLOW_LEGACY,
             allow_and_date=True, route_on_invite_2xx=True, options_local=True, punch_packets=20),
    1: Stage(1, "refactored", "run_refactored.py",
             "stage 1 (refactored): RTPProxy media relay, basic NAT handling",
             media=MEDIA_RTPPROXY, nat_helper=False, signalling=("sipcore",),
             caller_identity=True, legacy_media_positions=False, relay_targets_source_ip=False,
             strip_target_params=True, echo_registered_contact=True,
             auth_invite=True, auth_algorithms=("MD5",), auth_failure_status=403, unknown_user_status=404,
             server_header="ims-migrate", server_on_challenge=True, allow=ALLOW_ALL,
             allow_and_date=False, route_on_invite_2xx=False, options_local=False, punch_packets=0),
    2: Stage(2, "sippy", "run_sippy.py",
             "stage 2 (sippy): RTPProxy + NAT helper (fix_contact, fix_nated_sdp, force_rport, keepalive)",
             media=MEDIA_RTPPROXY, nat_helper=True, signalling=("sipcore", "sippy"),
             caller_identity=True, legacy_media_positions=False, relay_targets_source_ip=False,
             strip_target_params=False, echo_registered_contact=True,
             auth_invite=True, auth_algorithms=("MD5",), auth_failure_status=403, unknown_user_status=404,
             server_header="ims-migrate", server_on_challenge=True, allow=ALLOW_ALL,
             allow_and_date=False, route_on_invite_2xx=False, options_local=False, punch_packets=0),
}

ENTRYPOINTS: dict[int, str] = {n: s.entrypoint for n, s in STAGES.items()}


def stage_of(number: int) -> Stage:
    """The table row of a stage number (KeyError names the known stages)."""
    try:
        return STAGES[number]
    except KeyError:
        raise KeyError(f"unknown stage {number!r} (known: {', '.join(map(str, STAGES))})") from None
