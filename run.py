#!/usr/bin/env python3
"""ims-migrate SIP server, stage 0.

Stage 0 (legacy): custom Python RTP relay; NAT handling = REGISTER Contact rewritten to the packet source only.

This file is a complete server that knows its own stage: copying it over run.py
(`cp run.py run.py && pm2 restart ims-server`) switches production to stage 0.
Configuration comes from the original environment variables; see `python run.py --help`.
"""
import os
import sys

STAGE = 0

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from assembly import main

    sys.exit(main(STAGE, sys.argv[1:]))
