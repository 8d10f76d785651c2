"""Command-line pieces shared by the experiment scripts (``glue_ac``, ``benchmark``,
``headroom``), so that a flag means the same in each: ``--seeds``, ``--plugin`` and
``--no-tensorboard`` (``-q``/``-v`` are :mod:`experiments.logs`')."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["PLUGIN_HELP", "SEEDS_FORMS", "SEEDS_HELP", "TENSORBOARD_HELP", "add_plugin_flag", "add_tensorboard_flag", "load_plugins",
           "loaded_plugins", "parse_seeds"]

#: the forms a seeds flag takes (:func:`parse_seeds`), in every script's help
SEEDS_FORMS = "one seed '7' (the seed 7, not 7 seeds), a list '0,3,7', a range '0-4' (0 to 4 inclusive), or both '0-2,10'"
#: the ``--seeds`` help text of every script
SEEDS_HELP = f"seeds: {SEEDS_FORMS}"


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


#: the help of every runner's ``--plugin``
PLUGIN_HELP = ("a Python file to import first, registering rewards, observations, knowledge types, instance sets or "
               "agents (repeatable); every worker process (spawned or Ray) imports the same files before its "
               "first unit of work")

#: the plug-in files this process imported, resolved, in the order they were first loaded
_LOADED_PLUGINS: dict[Path, str] = {}


def add_plugin_flag(parser: argparse.ArgumentParser) -> None:
    """``--plugin FILE.py`` (repeatable; ``args.plugin``, a list) on ``parser``."""
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py", help=PLUGIN_HELP)


#: the help of every runner's ``--no-tensorboard``
TENSORBOARD_HELP = ("write no TensorBoard event files (by default every learner's training episodes and evaluations go "
                    "to <run folder>/tb/, one run folder per learner and seed, stable-baselines3's layout: "
                    "tensorboard --logdir <run folder>/tb)")


def add_tensorboard_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-tensorboard`` on ``parser`` (``args.tensorboard``: ``True`` unless it is given)."""
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=True,
                        help=TENSORBOARD_HELP)


def _module_name(path: Path) -> str:
    """``kd_env_plugin_<stem>_<hash of the path>``: the same file gets the same module name in
    every process (so that an object of a plug-in class pickles by reference between them)."""
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in path.stem)
    return f"kd_env_plugin_{stem}_{hashlib.sha256(str(path).encode('utf-8')).hexdigest()[:10]}"


def load_plugins(paths: Sequence[str | Path]) -> list[str]:
    """Import user plug-in files (explicitly named only; each file once per process).  The files
    stay recorded (:func:`loaded_plugins`): :func:`experiments.executors.execute` loads them in
    every worker before its first unit of work.  Returns their resolved paths.

    Raises:
        FileNotFoundError: a path that is not a ``.py`` file.
    """
    resolved = []
    for p in paths:
        path = Path(p)
        if not path.is_file() or path.suffix != ".py":
            raise FileNotFoundError(f"plugin {str(p)!r} is not a .py file")
        path = path.resolve()
        resolved.append(str(path))
        if path in _LOADED_PLUGINS:
            continue
        name = _module_name(path)
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise FileNotFoundError(f"plugin {str(p)!r} cannot be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        _LOADED_PLUGINS[path] = name
    return resolved


def loaded_plugins() -> list[str]:
    """The plug-in files this process imported with :func:`load_plugins` (resolved, in order)."""
    return [str(p) for p in _LOADED_PLUGINS]
