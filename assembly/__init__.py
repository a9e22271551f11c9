"""Wires each stage's plug-ins into sipcore's server: the one module that imports sipcore,
legacy/ and refactored/ together (sipcore never imports the latter two).

The stage table (sipcore.stages) says what a stage is; this builds it: the media backend the row
names (legacy Python relay or RTPProxy), the SIGNALLING engine it allows (sipcore, or the Sippy
B2BUA bridge in stage 2), the user store, CDR writer and location store. run.py,
run_refactored.py and run_sippy.py call ``main(STAGE, argv)`` with their own literal stage.
"""
from __future__ import annotations

from sipcore import app
from sipcore.stages import MEDIA_LEGACY_RELAY, stage_of


def build_media(stage: int, config):
    """The media backend the stage table names for ``stage``."""
    if stage_of(stage).media == MEDIA_LEGACY_RELAY:
        from legacy.rtp_relay import LegacyRelay
        return LegacyRelay(advertised_ip=config.advertised_host, bind_ip=config.bind_ip,
                           port_min=config.rtp_port_min, port_max=config.rtp_port_max,
                           inactivity_timeout=config.rtp_inactivity_timeout,
                           punch_packets=stage_of(stage).punch_packets)
    from refactored.rtpproxy_media import build_rtpproxy_backend
    return build_rtpproxy_backend(config)


def check_signalling(stage: int, config) -> None:
    """ConfigError naming SIGNALLING unless the stage can run the configured engine."""
    from refactored.sippy_signalling import require_signalling
    require_signalling(config.signalling, stage)


def build_server(stage: int, config):
    from refactored.sippy_signalling import build_signalling
    from sipcore.cdr import CDRWriter
    from sipcore.location_store import open_location_store
    from sipcore.server import SIPServer
    from sipcore.users import UserStore
    check_signalling(stage, config)
    users = UserStore(config.users_file, realm=config.realm)
    cdr = CDRWriter(config.cdr_dir)
    location = open_location_store(config.location_store)      # ConfigError naming LOCATION_STORE
    server = SIPServer(stage, config, build_media(stage, config), users=users, cdr=cdr, location=location)
    build_signalling(server)
    return server


PLUGINS = app.Plugins(build_media=build_media, build_server=build_server, check_signalling=check_signalling)


def main(stage: int, argv: list[str] | None = None) -> int:
    """What the entrypoints run: the server of ``stage`` (their literal) with its plug-ins."""
    return app.main(stage, argv, PLUGINS)
