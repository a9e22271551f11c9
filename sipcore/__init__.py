"""Shared SIP protocol core and server of every stage.

The hot modules run from a mypyc build when one matching these sources exists (see compiled.py).
"""
from sipcore import compiled as _compiled

_compiled.activate(__path__)
