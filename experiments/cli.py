"""Command-line pieces shared by the experiment scripts (``glue_ac``, ``benchmark``), so that a
flag means the same in each."""

from __future__ import annotations

import argparse

__all__ = ["SEEDS_HELP", "parse_seeds"]

#: the ``--seeds`` help text of every script
SEEDS_HELP = ("seeds: one seed '7' (the seed 7, not 7 seeds), a list '0,3,7', a range '0-4' (0 to 4 inclusive), "
              "or both '0-2,10'")


def parse_seeds(text: str) -> list[int]:
    """The seeds a ``--seeds`` value names, in order: ``"7"`` -> ``[7]``; ``"0,3,7"`` ->
    ``[0, 3, 7]``; ``"0-4"`` -> ``[0, 1, 2, 3, 4]``; ``"0-2,10"`` -> ``[0, 1, 2, 10]``.

    Raises:
        argparse.ArgumentTypeError: anything else (not integers, a negative seed, a range that
            runs backwards, a seed named twice, nothing at all), naming the valid forms.
    """

    def bad(why: str) -> argparse.ArgumentTypeError:
        return argparse.ArgumentTypeError(f"--seeds takes integers >= 0: one seed '7', a list '0,1,2', a range "
                                          f"'0-4' or both '0-2,10'; got {text!r} ({why})")

    seeds: list[int] = []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            raise bad("an empty item")
        first, dash, last = item.partition("-")
        try:
            lo = int(first)
            hi = int(last) if dash else lo
        except ValueError:
            raise bad(f"{item!r} is not an integer or a range") from None
        if not first.strip().isdigit() or hi < lo:
            raise bad(f"{item!r} is negative or runs backwards")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise bad("a seed is named twice")
    return seeds
