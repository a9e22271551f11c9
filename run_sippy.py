#!/usr/bin/env python3
"""ims-migrate SIP server, stage 2.

Stage 2 (sippy): media through RTPProxy plus the NAT helper (nat detection, fix_contact,
fix_nated_sdp, force_rport, keepalive). SIGNALLING=sippy selects Sippy B2BUA signalling.

This file is a complete server that knows its own stage: copying it over run.py
(`cp run_sippy.py run.py && pm2 restart ims-server`) switches production to stage 2.
Configuration comes from the original environment variables; see `python run_sippy.py --help`.
"""
import os
import sys

STAGE = 2

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from assembly import main

    sys.exit(main(STAGE, sys.argv[1:]))
