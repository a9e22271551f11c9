"""The original MML grammar: VERB OBJECT [SUBOBJECT] KEY=VALUE ... [;]."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from sipcore.mml.grammar import MAX_LINE, MMLCommand, MMLSyntaxError, parse_command


@pytest.mark.parametrize("line, verb, obj, sub, params", [
    ("DSP REG", "DSP", "REG", "", {}),
    ("dsp reg", "DSP", "REG", "", {}),
    ("  DSP   CDR   STAT  ", "DSP", "CDR", "STAT", {}),
    ("DSP CDR TODAY TYPE=call LIMIT=5;", "DSP", "CDR", "TODAY", {"TYPE": "call", "LIMIT": "5"}),
    ("ADD USER USERNAME=admin PASSWORD=PaSs", "ADD", "USER", "", {"USERNAME": "admin", "PASSWORD": "PaSs"}),
    ('ADD USR username=1005 name="Front desk" email=a@b.c', "ADD", "USR", "",
     {"USERNAME": "1005", "NAME": "Front desk", "EMAIL": "a@b.c"}),
    ("MOD USER USERNAME=x NAME='it''s'", None, None, None, None),   # adjacent quotes: an error
    (r'SET CFG KEY=LOG.LEVEL VALUE="a \"q\" \\ b"', "SET", "CFG", "", {"KEY": "LOG.LEVEL", "VALUE": 'a "q" \\ b'}),
    ("RMV CALL CALLID=abc@10.0.0.1;x=y CONFIRM=YES ;", "RMV", "CALL", "",
     {"CALLID": "abc@10.0.0.1;x=y", "CONFIRM": "YES"}),
    ("HELP", "HELP", "", "", {}),
    ("HELP DSP REG", "HELP", "DSP", "REG", {}),
    ("EXP CDR DATE=2026-02-16 PASSWORD=", "EXP", "CDR", "", {"DATE": "2026-02-16", "PASSWORD": ""}),
    ("STR CALL BATCH NUMBERS=1000-1005,1007", "STR", "CALL", "BATCH", {"NUMBERS": "1000-1005,1007"}),
    ('ADD USER NAME=""', "ADD", "USER", "", {"NAME": ""}),
])
def test_valid_lines(line, verb, obj, sub, params):
    if verb is None:
        with pytest.raises(MMLSyntaxError):
            parse_command(line)
        return
    cmd = parse_command(line)
    assert (cmd.verb, cmd.obj, cmd.sub, cmd.params) == (verb, obj, sub, params)


@pytest.mark.parametrize("line, reason", [
    ("", "empty"), ("   ;", "empty"), ("FOO BAR", "unknown verb"), ("USERNAME=1 DSP", "starts with a verb"),
    ("DSP REG URI=1 ALL", "before KEY=VALUE"), ("DSP A B C", "unexpected word"),
    ("DSP REG URI=1 URI=2", "twice"), ('DSP REG URI="open', "unterminated"),
    ('DSP REG URI="a"b', "space after"), ("DSP REG URI=a\"b", "whole value"), ("DSP REG =x", "parameter name"),
    ("DSP REG 1X=2", "parameter name"), ("DSP RE-G", "bad word"), ("DSP REG\x00", "control"),
    ("DSP REG\nRMV REG", "one command"), ("DSP REG; DSP CALL", "bad word"), ("DSP 'REG'", "quote"),
    ("DSP REG " + "X" * MAX_LINE, "longer"),
    ("DSP REG " + " ".join(f"K{i}=v" for i in range(40)), "parameters"),
])
def test_invalid_lines(line, reason):
    with pytest.raises(MMLSyntaxError) as exc:
        parse_command(line)
    assert reason in str(exc.value)


def test_not_text():
    with pytest.raises(MMLSyntaxError):
        parse_command(b"DSP REG")   # type: ignore[arg-type]


def test_error_position():
    with pytest.raises(MMLSyntaxError) as exc:
        parse_command("  DSP REG URI=1 ALL")
    assert exc.value.position == 16 and "column 17" in str(exc.value)


def test_str_round_trip():
    cmd = parse_command('ADD USER USERNAME=a NAME="x y" EMAIL=e')
    assert parse_command(str(cmd)) == cmd
    assert str(MMLCommand("DSP", "REG")) == "DSP REG"


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_the_typed_error(text):
    try:
        cmd = parse_command(text)
    except MMLSyntaxError:
        return
    assert cmd.verb and all(k == k.upper() for k in cmd.params)


words = st.sampled_from(["DSP", "ADD", "RMV", "REG", "USER", "CDR", "STAT", "X"])
values = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=20)


@settings(max_examples=1000, deadline=None)
@given(words, words, st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,5}", fullmatch=True), values, max_size=5))
def test_quoted_values_round_trip(verb, obj, params):
    cmd = MMLCommand(verb, obj, params=params)
    try:
        parsed = parse_command(str(cmd))
    except MMLSyntaxError:
        assert verb not in ("DSP", "ADD", "RMV")
        return
    assert parsed.params == params
