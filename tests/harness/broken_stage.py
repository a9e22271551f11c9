#!/usr/bin/env python3
"""A deliberately broken stage-2 variant used only by tests: the media backend still creates
RTPProxy sessions but the SDP is forwarded unchanged (the original's "writes its own ports"
class of bug), so NATed parties send media to private addresses. `harness compare` must call
this a regression."""
import os
import sys

STAGE = 2

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    # the pure-Python modules: a compiled class takes no patched method
    os.environ["IMS_COMPILED"] = "0"
    from refactored import rtpproxy_media
    from assembly import main

    original = rtpproxy_media.RTPProxyBackend._rewrite

    async def leave_sdp_alone(self, letter, call_id, from_tag, to_tag, sdp):
        await original(self, letter, call_id, from_tag, to_tag, sdp)
        return sdp

    rtpproxy_media.RTPProxyBackend._rewrite = leave_sdp_alone
    sys.exit(main(STAGE, sys.argv[1:]))
