"""The benchmark's command line: ``python -m experiments.benchmark --help``."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from experiments.cli import SEEDS_HELP, add_plugin_flag, add_tensorboard_flag, parse_seeds
from experiments.logs import add_verbosity_flags, get_logger, setup_logging

from .grid import DEFAULT_ALGOS, DEFAULT_ENVS, DEFAULT_EVAL_EPISODES, DEFAULT_EVAL_EVERY, DEFAULT_SEEDS, \
    DEFAULT_WORKERS, EVAL_SPLITS, EXECUTORS, BenchmarkConfig
from .settings import CONFIG_DIR, ConfigError
from .runner import run_benchmark


def _csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark",
                                description="Benchmark RL algorithms on the knowledge-selection envs "
                                            "(algorithms x seeds x envs; resumable).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--name", default="default", help="run folder: <out>/benchmark-<name>")
    p.add_argument("--algos", type=_csv_list, default=list(DEFAULT_ALGOS),
                   help="comma-separated agent names: any registered agent (a --plugin's too), fixed:<bits>, "
                        "schedule:<file>; one with no <algo>.yml in --config-dir gets the defaults (a mask, 0 "
                        "episodes: evaluated, never trained; --set ALGO.episodes=N trains it)")
    p.add_argument("--envs", type=_csv_list, default=list(DEFAULT_ENVS), help="comma-separated env ids")
    p.add_argument("--seeds", type=parse_seeds, default=list(range(DEFAULT_SEEDS)),
                   help=f"training {SEEDS_HELP}")
    p.add_argument("--episodes", type=int, default=None,
                   help="training episodes of every learner (default: each config's 'episodes')")
    p.add_argument("--eval-every", type=int, default=DEFAULT_EVAL_EVERY, help="evaluate every N training episodes")
    p.add_argument("--eval-episodes", type=int, default=DEFAULT_EVAL_EPISODES,
                   help="held-out episodes per evaluation")
    p.add_argument("--eval-split", choices=EVAL_SPLITS, default="test",
                   help="what evaluations score: test = the held-out instances' test split (report this); dev = "
                        "the train instances' dev split, held-out-dev = the held-out instances' dev split, both "
                        "on selection seeds (choose settings on these, e.g. with --set ac.env_kwargs.instances="
                        "digits-validation, then run once on test)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="ALGO.KEY=VALUE",
                   help="override a config value, e.g. ppo.learning_rate=1.0e-3, ac.episodes=30, "
                        "sac.env_kwargs.reward=dev_metric_delta (repeatable)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="parallel processes (spawned)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--out", default="runs", help="parent folder of the run folder")
    p.add_argument("--baseline", default="vanilla_kd",
                   help="fixed policy the summary compares every algorithm with, paired by seed (default %(default)s)")
    p.add_argument("--config-dir", default=str(CONFIG_DIR), help="folder of <algo>.yml configs")
    p.add_argument("--fresh", action="store_true", help="rerun finished cells too")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.add_argument("--bootstrap-reps", type=int, default=2000)
    add_plugin_flag(p)
    add_tensorboard_flag(p)
    add_verbosity_flags(p)
    return p


def parse_args(argv: Sequence[str] | None = None) -> BenchmarkConfig:
    return _config(build_parser().parse_args(argv))


def _config(a: argparse.Namespace) -> BenchmarkConfig:
    return BenchmarkConfig(name=a.name, algos=a.algos, envs=a.envs, seeds=a.seeds, episodes=a.episodes,
                           eval_every=a.eval_every, eval_episodes=a.eval_episodes, eval_split=a.eval_split,
                           overrides=a.overrides,
                           workers=a.workers, threads=a.threads, executor=a.executor, address=a.address, out=a.out,
                           config_dir=a.config_dir, fresh=a.fresh, plots=a.plots, bootstrap_reps=a.bootstrap_reps,
                           baseline=a.baseline, plugins=a.plugin, tensorboard=a.tensorboard)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    config = _config(args)
    try:
        result = run_benchmark(config)
    except ConfigError as exc:
        get_logger("benchmark").error(f"error: {exc}")
        return 2
    if result.failed:
        get_logger("benchmark").error(f"{len(result.failed)} cell(s) failed: {sorted(result.failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
