#!/usr/bin/env python3
"""ims-migrate SIP server, stage 1.

Stage 1 (refactored): media through RTPProxy (control protocol U/L/D); basic NAT handling (REGISTER Contact rewrite).

This file is a complete server that knows its own stage: copying it over run.py
(`cp run_refactored.py run.py && pm2 restart ims-server`) switches production to stage 1.
Configuration comes from the original environment variables; see `python run_refactored.py --help`.
"""
import os
import sys

STAGE = 1

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from assembly import main

    sys.exit(main(STAGE, sys.argv[1:]))
