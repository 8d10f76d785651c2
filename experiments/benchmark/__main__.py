"""The benchmark's command line: ``python -m experiments.benchmark --help``.

Every flag but the shared ones is a :class:`~.grid.BenchmarkConfig` field
(:func:`experiments.flags.add_config_flags`: name, type, default and help from the field and its
docstring); ``--plugin``, ``--no-tensorboard`` and ``-q``/``-v`` are every runner's
(:mod:`experiments.cli`, :mod:`experiments.logs`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

from experiments.cli import add_plugin_flag, add_tensorboard_flag
from experiments.flags import add_config_flags, build_config, flag_name, given_flags
from experiments.logs import add_verbosity_flags, get_logger, setup_logging

from .grid import BenchmarkConfig
from .runner import run_validated
from .settings import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark",
                                description="Benchmark RL algorithms on the knowledge-selection envs "
                                            "(algorithms x seeds x envs; resumable).")
    add_config_flags(p, BenchmarkConfig)
    add_plugin_flag(p)
    add_tensorboard_flag(p)
    add_verbosity_flags(p)
    return p


def parse_args(argv: Sequence[str] | None = None) -> BenchmarkConfig:
    """The run's config from the command line, validated (:meth:`BenchmarkConfig.validate`).

    Raises:
        ConfigError: a bad value (argparse exits for a flag it cannot parse).
    """
    return _config(build_parser().parse_args(argv))


def _config(a: argparse.Namespace) -> BenchmarkConfig:
    # the fields with a flag only: -v's count is args.verbose, not the field
    flags = given_flags(a, [f.name for f in dataclasses.fields(BenchmarkConfig) if flag_name(f) is not None])
    flags.update(plugins=list(a.plugin), tensorboard=a.tensorboard)
    return build_config(BenchmarkConfig, flags=flags)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    try:
        result = run_validated(_config(args))  # validated once, by build_config
    except ConfigError as exc:
        get_logger("benchmark").error(f"error: {exc}")
        return 2
    if result.failed:
        get_logger("benchmark").error(f"{len(result.failed)} cell(s) failed: {sorted(result.failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
