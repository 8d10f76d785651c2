"""Command-line pieces shared by the experiment scripts (``glue_ac``, ``benchmark``), so that a
flag means the same in each."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["SEEDS_HELP", "parse_seeds", "load_plugins"]

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


_LOADED_PLUGINS: set[Path] = set()


def load_plugins(paths: Sequence[str]) -> None:
    """Import user plug-in files (explicitly named only; each file once per process)."""
    for i, p in enumerate(paths):
        path = Path(p)
        if not path.is_file() or path.suffix != ".py":
            raise FileNotFoundError(f"plugin {p!r} is not a .py file")
        if path.resolve() in _LOADED_PLUGINS:
            continue
        _LOADED_PLUGINS.add(path.resolve())
        spec = importlib.util.spec_from_file_location(f"kd_env_plugin_{i}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
