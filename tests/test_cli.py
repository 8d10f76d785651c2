"""The command-line flags the experiment scripts share: ``--seeds`` means the same in each."""

from __future__ import annotations

import argparse

import pytest

from experiments import benchmark, glue_ac
from experiments.cli import parse_seeds


@pytest.mark.parametrize("text, seeds", [("7", [7]), ("0", [0]), ("0,3,7", [0, 3, 7]), ("0-4", [0, 1, 2, 3, 4]),
                                         ("0-2,10", [0, 1, 2, 10]), (" 3 , 5-6 ", [3, 5, 6]), ("4-4", [4])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["a,b", "", "1,", "-1", "4-2", "1,1", "0-3,2", "1.5", "2-"])
def test_parse_seeds_refuses_anything_else_naming_the_valid_forms(text):
    with pytest.raises(argparse.ArgumentTypeError) as err:
        parse_seeds(text)
    assert all(form in str(err.value) for form in ("--seeds takes integers", "'7'", "'0,1,2'", "'0-4'"))


@pytest.mark.parametrize("text", ["7", "0-4", "2,5"])
def test_seeds_mean_the_same_in_glue_ac_and_benchmark(text):
    """Issue 13 item 4: ``--seeds 7`` was seed 7 in glue_ac but seeds 0..6 in benchmark."""
    assert glue_ac.config_from_args(["--preset", "quick", "--seeds", text]).seeds == \
        benchmark.parse_args(["--seeds", text]).seeds == parse_seeds(text)


@pytest.mark.parametrize("parse", [lambda argv: glue_ac.build_parser().parse_args(argv), benchmark.parse_args],
                         ids=["glue_ac", "benchmark"])
def test_both_help_texts_say_what_seeds_means(parse, capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "one seed '7' (the seed 7, not 7 seeds)" in out and "a range '0-4'" in out
