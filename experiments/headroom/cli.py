"""``python -m experiments.headroom``: the command line."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Sequence

from kd_env.io import atomic_write_json, atomic_write_text
from kd_env.rewards import reward_names

from ..cli import add_plugin_flag, add_tensorboard_flag, load_plugins
from ..flags import add_config_flags, build_config, flag_name, given_flags
from ..logs import add_verbosity_flags, get_logger, setup_logging
from . import __doc__ as _PACKAGE_DOC
from .report import plot, render_markdown
from .run import HeadroomRun
from .settings import HeadroomSettings


def build_parser() -> argparse.ArgumentParser:
    """The flags: one per :class:`HeadroomSettings` field (:func:`experiments.flags.add_config_flags`),
    ``--quick``, and every runner's ``--plugin``, ``--no-tensorboard`` and ``-q``/``-v``."""
    p = argparse.ArgumentParser(prog="python -m experiments.headroom", description=_PACKAGE_DOC.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, HeadroomSettings)
    p.add_argument("--quick", action="store_true",
                   help="few seeds and schedules: minutes on digits (the defaults become HeadroomSettings.quick's: "
                        f"{_quick_defaults()}; the flags given override them)")
    add_plugin_flag(p)
    add_tensorboard_flag(p)
    add_verbosity_flags(p)
    return p


def _quick_defaults() -> str:
    quick, full = HeadroomSettings.quick(), HeadroomSettings()
    return ", ".join(f"{k} {v}" for k, v in vars(quick).items() if v != getattr(full, k) and k != "switch_points")


def _load_plugins(settings: HeadroomSettings) -> None:
    load_plugins(settings.plugins)  # first: a plug-in may register the rewards or the env's instance set


def _check_rewards(settings: HeadroomSettings) -> None:
    unknown = [r for r in settings.rewards if r not in reward_names()]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; valid: {reward_names()}")


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    setup_logging(args)
    names = [f.name for f in dataclasses.fields(HeadroomSettings)]
    flags = given_flags(args, [f.name for f in dataclasses.fields(HeadroomSettings) if flag_name(f) is not None])
    if "env_kwargs" in flags:
        flags["env_kwargs"] = dict(flags["env_kwargs"])
    if "rewards" in flags:
        flags["rewards"] = tuple(flags["rewards"])
    flags.update(plugins=list(args.plugin), tensorboard=args.tensorboard)
    make: Callable[..., HeadroomSettings] = HeadroomSettings.quick if args.quick else HeadroomSettings
    try:  # validated once; then the plug-ins load, and only then are the rewards looked up
        settings = build_config(make, flags=flags, keys=names, io=[_load_plugins, _check_rewards])
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))
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


