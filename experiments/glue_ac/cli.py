"""glue_ac's command line: flags and a YAML config file to an :class:`ExperimentConfig`, then the run."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any, Sequence

from kd_env import DistillConfig
from kd_env.checks import matches
from kd_env.runtime import PRECISIONS

from ..cli import add_plugin_flag, load_plugins
from ..flags import add_config_file_flags, add_config_flags, build_config, given_flags
from ..logs import add_verbosity_flags, get_logger, setup_logging
from .config import DEFAULT_INSTANCE_SET, EXPERIMENT_PRESETS, SITUATION_KEYS, ExperimentConfig, experiment_preset_of
from .pipeline import run_experiment
from .report import print_summary
from .situations import print_situations, run_situations
from .timing import print_timing
from .transfer import check_inputs


#: the DistillConfig fields that are flags of glue_ac (``--task`` ...): each sets ``distill.<field>``
DISTILL_FLAGS = ("task", "data_dir", "teacher", "labels", "student_layers", "label_fraction", "label_noise",
                 "teacher_train_fraction", "teacher_epochs", "teacher_min_steps", "teacher_max_steps",
                 "teacher_patience", "device")
#: where glue_ac's flag means more than the field's docstring says
_DISTILL_HELP = {
    "teacher_epochs": "epochs of teacher fine-tuning, the whole budget: turns the floor --teacher-min-steps off "
                      "unless it is given too (text presets: 1 epoch, at least 150 steps)",
    "device": "cpu, cuda, cuda:N or auto",
}


def build_parser() -> argparse.ArgumentParser:
    """The flags: one per :class:`ExperimentConfig` field and per DistillConfig field of
    :data:`DISTILL_FLAGS` (:func:`experiments.flags.add_config_flags`: names, types, defaults and
    help from the dataclasses), ``--precision``, ``--config``/``--set``, ``--plugin``, ``-q``/``-v``."""
    # the package's docstring (its usage) is the help's description
    p = argparse.ArgumentParser(prog="python -m experiments.glue_ac",
                                description=importlib.import_module(__package__).__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_file_flags(p, "ExperimentConfig")
    add_config_flags(p, ExperimentConfig)
    group = p.add_argument_group("distillation settings (over the preset's; DistillConfig fields, "
                                 "distill.<key> in --config and --set)")
    add_config_flags(group, DistillConfig, only=DISTILL_FLAGS, prefix="distill.", default_note="the preset's",
                     help=_DISTILL_HELP)
    group.add_argument("--precision", choices=PRECISIONS,
                       help="numeric precision of the teacher (fine-tune, cache) and the students' training steps: "
                            "sets distill.precision and distill.student_precision, recorded in config.yaml. auto "
                            "(the presets' choice): bf16 where the CPU has bf16 instructions (AMX, AVX512-BF16) or "
                            "the GPU supports it, else fp32; fp32 forces fp32, e.g. to time the demo as on a CPU "
                            "without bf16")
    add_plugin_flag(p)
    add_verbosity_flags(p)
    return p


def config_from_args(argv: Sequence[str] | None = None) -> ExperimentConfig:
    """The run's config from the command line: ``ExperimentConfig`` defaults < ``--config`` file <
    ``--set`` < flags, validated once, then its input files checked
    (:func:`experiments.flags.build_config`).  ``SystemExit`` with one ``error: ...`` line,
    before anything is written."""
    args = build_parser().parse_args(argv)
    setup_logging(args)
    flags = given_flags(args, ExperimentConfig.field_names())
    distill = given_flags(args, DistillConfig.field_names(), prefix="distill.")
    if "teacher_epochs" in distill and "teacher_min_steps" not in distill:
        distill["teacher_min_steps"] = 0  # the epochs asked for are the budget: no floor over them
    if args.precision is not None:  # one setting for both: teacher and students
        distill["precision"] = distill["student_precision"] = args.precision
    if distill:
        flags["distill"] = distill
    if flags.get("situations") == ["none"]:
        flags["situations"] = []

    def prepare(data: dict[str, Any]) -> None:
        for key in ("distill", "agent_params", "reward_params"):
            if data.get(key) is None:  # `distill:` with no value in a file: none
                data.pop(key, None)
        plugins = data.get("plugins") or []
        if not matches(plugins, list[str]):
            raise ValueError(f"config key 'plugins' must be a list of strings, got {plugins!r}")
        data["plugins"] = [*plugins, *args.plugin]
        # first: a plug-in may register the instance set, agents or rewards the config names
        load_plugins(data["plugins"])
        _default_situations(data)

    try:
        return build_config(ExperimentConfig, file=args.config, sets=args.sets, flags=flags, prepare=prepare,
                            io=[check_inputs])
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None


def _default_situations(data: dict[str, Any]) -> None:
    """The situations a run gets when it names none: with an instance set or situation but no
    preset, the set's own preset; with no situation at all, the preset's default list (text3:
    :data:`~experiments.glue_ac.config.DEMO_SITUATIONS`), unless the user describes a situation of
    their own (a distill setting of :data:`SITUATION_KEYS` or one a default situation sets)."""
    from kd_env import get_instance_set

    named = data.get("situation") is not None or data.get("situations")
    if (named or data.get("instance_set")) and "preset" not in data:
        try:
            base = get_instance_set(data.get("instance_set") or DEFAULT_INSTANCE_SET).base
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        preset = experiment_preset_of(base)
        if preset is not None:
            data["preset"] = preset
    if named or "situations" in data or data.get("instance_set"):
        return
    experiment = EXPERIMENT_PRESETS.get(data.get("preset", ExperimentConfig.preset))
    defaults = None if experiment is None else experiment.situations
    if not defaults:
        return
    sset = get_instance_set(DEFAULT_INSTANCE_SET)  # the presets' lists are of the default set
    own = set(SITUATION_KEYS).union(*(sset.instance(n).overrides for n in defaults)) & set(data.get("distill") or {})
    if own:
        get_logger("glue_ac").info(f"note: one run for your own situation ({', '.join(sorted(own))} given); the "
                                   f"preset's default situations {defaults} run with --situations "
                                   f"{','.join(defaults)}")
        return
    data["situations"] = list(defaults)


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from_args(argv)
    if config.situations:
        study = run_situations(config)
        folder = Path(config.out) / str(config.resolved().name)
        print_situations(study)
        print_timing(study["stage_seconds"])
        print(f"\nwrote {folder}/ (situations.md, situations.json, situations-heatmap.png; one run folder per "
              f"situation: {', '.join(study['situations'])})")
        return 0
    summary = run_experiment(config)
    print_summary(summary)
    print_timing(summary["stage_seconds"])
    print(f"\nwrote {Path(config.out) / str(config.resolved().name)}/ (results.md, results.csv, results.json, plots)")
    return 0
