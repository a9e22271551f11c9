"""harness.stacks: stack names for --stage/--baseline/--stages and expectations per stack."""
import click
import pytest

from harness.stacks import StackType, expectation, stack


def test_stack_names_and_variants():
    assert stack(2).entry == stack("2").entry == stack("2-sippy").entry == "run_sippy.py"
    assert stack("2-sippy").env == {"SIGNALLING": "sippy"} and stack(2).env == {}
    assert StackType().convert("2", None, None) == 2
    assert StackType().convert("2-sippy", None, None) == "2-sippy"
    with pytest.raises(click.BadParameter, match="known: 0, 1, 2, 2-sippy"):
        StackType().convert("3", None, None)


def test_expectation_falls_back_to_the_stage():
    expect = {2: {"audio": "two-way"}, 0: {"audio": "none"}}
    assert expectation(expect, "2-sippy") == {"audio": "two-way"}
    assert expectation({**expect, "2-sippy": {"audio": "A->B only"}}, "2-sippy") == {"audio": "A->B only"}
    assert expectation(expect, 1) is None
