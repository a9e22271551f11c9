"""Stage 1/2 pieces: RTPProxy client, launcher and media backend, NAT helper wiring, Sippy.

The RTPProxy client modules run from the mypyc build when it is current (sipcore/compiled.py).
"""
from sipcore import compiled as _compiled

_compiled.activate(__path__, "refactored")
