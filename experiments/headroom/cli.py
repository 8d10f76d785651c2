"""``python -m experiments.headroom``: the command line."""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from kd_env.io import atomic_write_json, atomic_write_text
from kd_env.rewards import reward_names

from ..cli import SEEDS_HELP, add_plugin_flag, add_tensorboard_flag, load_plugins, parse_seeds
from ..executors import EXECUTORS, check_executor
from ..logs import add_verbosity_flags, get_logger, setup_logging
from . import __doc__ as _PACKAGE_DOC
from .report import plot, render_markdown
from .run import HeadroomRun
from .settings import HeadroomSettings

def _kwarg(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--env-kwarg takes key=value, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.headroom", description=_PACKAGE_DOC.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=HeadroomSettings.env, help="env id (default %(default)s)")
    p.add_argument("--env-kwarg", action="append", type=_kwarg, default=[], metavar="KEY=VALUE",
                   help="extra gym.make keyword (JSON value), repeatable, e.g. total_steps=60")
    p.add_argument("--quick", action="store_true", help="few seeds and schedules: minutes on digits")
    p.add_argument("--selection-seeds", type=parse_seeds, help="reset seeds for every choice; " + SEEDS_HELP)
    p.add_argument("--test-seeds", type=parse_seeds, help="reset seeds for scoring; " + SEEDS_HELP)
    p.add_argument("--greedy-seeds", type=int, help="test seeds the greedy oracles run on")
    p.add_argument("--top-masks", type=int, help="two-stage schedules combine this many best fixed masks")
    p.add_argument("--random-episodes", type=int, help="random-policy episodes for reward alignment")
    p.add_argument("--rewards", help="comma-separated rewards to check for alignment (default: the built-in "
                                     "ones; plug-in rewards load with --plugin)")
    add_plugin_flag(p)
    p.add_argument("--workers", type=int, default=1, help="processes (one torch thread each)")
    p.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="where the episodes run: local (this process, or --workers spawned processes) or ray "
                        "(a local Ray, or the cluster at --address) (default %(default)s)")
    p.add_argument("--address", help="an existing Ray cluster for --executor ray (default: start a local Ray)")
    p.add_argument("--batch", type=int, default=HeadroomSettings.batch,
                   help="open-loop episodes run side by side on the batched env, where the env has one "
                        "(the digits ids); 1: one at a time on the single env (default %(default)s)")
    p.add_argument("--out", help="output folder (default runs/headroom-<env name>)")
    add_tensorboard_flag(p)
    add_verbosity_flags(p)
    args = p.parse_args(argv)
    setup_logging(args)
    changes: dict[str, Any] = {"env": args.env, "env_kwargs": dict(args.env_kwarg), "workers": args.workers,
                               "batch": args.batch, "out": args.out, "executor": args.executor,
                               "address": args.address, "tensorboard": args.tensorboard}
    for name in ("selection_seeds", "test_seeds", "greedy_seeds", "random_episodes", "top_masks"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if args.address and args.executor != "ray":
        p.error(f"--address {args.address} needs --executor ray (got --executor {args.executor})")
    try:
        check_executor(args.executor, args.workers, 1)
    except ValueError as exc:
        p.error(str(exc))
    if args.batch < 1:
        p.error(f"--batch must be >= 1 (1: the single env), got {args.batch}")
    try:
        load_plugins(args.plugin)
    except FileNotFoundError as exc:
        p.error(str(exc))
    changes["plugins"] = list(args.plugin)
    if args.rewards:
        changes["rewards"] = tuple(r.strip() for r in args.rewards.split(",") if r.strip())
        unknown = [r for r in changes["rewards"] if r not in reward_names()]
        if unknown:
            p.error(f"unknown reward(s) {unknown}; valid: {reward_names()}")
    settings = HeadroomSettings.quick(**changes) if args.quick else HeadroomSettings(**changes)
    if set(settings.selection_seeds) & set(settings.test_seeds):
        p.error("selection and test seeds must not overlap")
    try:
        run = HeadroomRun(settings)
    except (ValueError, FileNotFoundError) as exc:
        get_logger("headroom").error(f"error: {exc}")
        return 2
    res = run.execute()
    run.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.out / "results.json", res)
    text = render_markdown(res)
    atomic_write_text(run.out / "results.md", text)
    plot(res, run.out / "headroom.png")
    print(text)
    get_logger("headroom").info(f"[headroom] wrote {run.out}/results.json, results.md, headroom.png")
    return 0


