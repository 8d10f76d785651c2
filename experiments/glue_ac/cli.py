"""glue_ac's command line: flags and a YAML config file to an :class:`ExperimentConfig`, then the run."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any, Sequence

import yaml

from agents import agent_names
from kd_env import DistillConfig, get_preset, preset_names
from kd_env.runtime import PRECISIONS

from ..cli import PLUGIN_HELP, SEEDS_HELP, add_tensorboard_flag, load_plugins, parse_seeds
from ..executors import EXECUTORS
from ..logs import add_verbosity_flags, get_logger, setup_logging
from .config import DEFAULT_INSTANCE_SET, DYNAMIC_BASELINES, EXPERIMENT_PRESETS, SITUATION_KEYS, ExperimentConfig, \
    default_methods
from .pipeline import run_experiment
from .report import print_summary
from .situations import print_situations, run_situations
from .timing import print_timing


def build_parser() -> argparse.ArgumentParser:
    # the package's docstring (its usage) is the help's description
    p = argparse.ArgumentParser(prog="python -m experiments.glue_ac",
                                description=importlib.import_module(__package__).__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(EXPERIMENT_PRESETS), help="default: text3 (embedded offline rt-polarity, 6 -> 3 layers)")
    p.add_argument("--config", help="YAML file of ExperimentConfig keys (CLI flags override it)")
    p.add_argument("--task", help="rt-polarity, digits, a GLUE task, or a CSV/TSV path")
    p.add_argument("--data-dir", help="local GLUE folder (<TASK>/train.tsv, dev.tsv)")
    p.add_argument("--teacher", help="HF model name or local folder (default: bundled MiniLM-L6)")
    p.add_argument("--labels", help="class names of a CSV/TSV task in class-id order, e.g. 'neg,pos' (default: "
                                    "integer labels are the ids; class names get ids in sorted order)")
    p.add_argument("--student-layers", type=int)
    p.add_argument("--label-fraction", type=float, help="your situation: share of the distillation set with gold "
                                                        "labels, in (0, 1] (default 1: all)")
    p.add_argument("--label-noise", type=float, help="your situation: share of the gold labels flipped to another "
                                                     "class, in [0, 1) (default 0)")
    p.add_argument("--teacher-train-fraction", type=float, help="share of train the teacher is fine-tuned on, in "
                                                                "(0, 1] (default 1; less: a weaker teacher)")
    p.add_argument("--teacher-epochs", type=float, help="epochs of teacher fine-tuning, the whole budget: turns the "
                                                        "floor --teacher-min-steps off unless it is given too "
                                                        "(default: the preset's; text: 1 epoch, at least 150 steps)")
    p.add_argument("--teacher-min-steps", type=int, help="floor of the teacher's optimizer steps (text presets: 150; 0: "
                                                         "off); where it raises the budget above the epochs' the "
                                                         "fine-tune stops early on dev (--teacher-patience)")
    p.add_argument("--teacher-max-steps", type=int, help="cap of the teacher's optimizer steps (over the epochs and the "
                                                         "floor)")
    p.add_argument("--teacher-patience", type=int, help="dev evaluations without a better teacher before its "
                                                        "fine-tune stops (text presets: 3; 0: the whole budget)")
    p.add_argument("--situation", help=f"run one situation of --instance-set (default set {DEFAULT_INSTANCE_SET}): its "
                                       f"settings over the preset's; a --label-fraction, --label-noise, "
                                       f"--teacher-train-fraction, --task or --teacher that contradicts it is an error")
    p.add_argument("--situations", help="comma list of situations of --instance-set: the whole study (selector and every "
                                        "method x seed) once per situation in <name>/<situation>/, then "
                                        "<name>/situations.md, situations.json and situations-heatmap.png; 'none': "
                                        "one run (default: the preset's list -- text3: "
                                        f"{','.join(EXPERIMENT_PRESETS['text3'].get('situations', []))} -- unless you "
                                        "describe your own situation with the flags above)")
    p.add_argument("--instance-set", help=f"the instance set of --situation(s) (default {DEFAULT_INSTANCE_SET}; also "
                                          f"every set of kd_env.instances, e.g. digits-switch with --preset quick)")
    p.add_argument("--transfer-checkpoint", help="an agent checkpoint folder (e.g. <run>/selector/agent): adds the "
                                                 "method 'transfer', that agent acting with no training on this task; "
                                                 "pass the --observation and --action-mode it was trained with")
    p.add_argument("--headroom", help="a `python -m experiments.headroom.design --out` JSON measured on dev for the "
                                      "situations: the per-situation report shows each one's dev headroom (default "
                                      "for text3's situations: the committed measurement; '' for none)")
    p.add_argument("--seeds", type=parse_seeds, help=f"evaluation {SEEDS_HELP} (default: per preset)")
    p.add_argument("--agent", help=f"selector agent; one of {agent_names()}")
    p.add_argument("--episodes", type=int, help="selector training episodes")
    p.add_argument("--methods", help=f"comma list; default: {','.join(default_methods(('finetune', 'response', 'feature', 'relation')))}; "
                                     f"also: {','.join(DYNAMIC_BASELINES)} (dynamic baselines), fixed:<bits>, "
                                     f"schedule:<file>, any registered agent (a --plugin's too)")
    p.add_argument("--action-mode", choices=["weights", "mask"])
    p.add_argument("--reward", help="registered reward name (default dev_loss_delta)")
    p.add_argument("--observation", help="registered observation the selector reads (default summary; lookup and "
                                         "bandit read observable)")
    p.add_argument("--plugin", action="append", default=None, metavar="FILE.py", help=PLUGIN_HELP)
    p.add_argument("--name", help="run folder name")
    p.add_argument("--out", help="output root (default runs)")
    p.add_argument("--device", help="cpu, cuda, auto")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="numeric precision of the teacher (fine-tune, cache) and the students' training steps: "
                        "sets distill.precision and distill.student_precision, recorded in config.yaml. auto "
                        "(the presets' choice): bf16 where the CPU has bf16 instructions (AMX, AVX512-BF16) or "
                        "the GPU supports it, else fp32; fp32 forces fp32, e.g. to time the demo as on a CPU "
                        "without bf16")
    p.add_argument("--workers", type=int, help="students distilled at once in spawned processes or Ray tasks (default: per "
                                               "preset: text 2, at most the usable CPUs)")
    p.add_argument("--executor", choices=EXECUTORS, help="where the students are distilled: local (this process, or "
                                                         "--workers spawned ones) or ray (one Ray task per student, "
                                                         "--workers at a time; a local Ray, or the cluster at "
                                                         "--address) (default local)")
    p.add_argument("--address", help="an existing Ray cluster for --executor ray (default: start a local Ray)")
    add_tensorboard_flag(p)
    add_verbosity_flags(p)
    return p


def config_from_args(argv: Sequence[str] | None = None) -> ExperimentConfig:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    data: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if path.is_dir():
            raise SystemExit(f"error: --config {args.config} is a folder; pass a YAML file of ExperimentConfig keys "
                             f"(e.g. a run's config.yaml)")
        if not path.is_file():
            raise SystemExit(f"error: --config {args.config}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}  # plain data only: no tags that build objects
        except yaml.YAMLError as exc:
            first = " ".join(str(exc).split())
            raise SystemExit(f"error: {args.config} is not a plain YAML mapping of keys "
                             f"{ExperimentConfig.field_names()} ({first})") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"error: {args.config}: expected a mapping of keys {ExperimentConfig.field_names()}")
        data.update(loaded)
    unknown = sorted(set(data) - set(ExperimentConfig.field_names()))
    if unknown:
        raise SystemExit(f"error: unknown config key(s) {unknown} in {args.config}; valid: {ExperimentConfig.field_names()}")
    try:
        ExperimentConfig.check_types(data)
    except ValueError as exc:
        raise SystemExit(f"error: {args.config}: {exc}") from None
    distill = dict(data.get("distill") or {})
    for flag, key in (("task", "task"), ("data_dir", "data_dir"), ("teacher", "teacher"),
                      ("student_layers", "student_layers"), ("device", "device"), ("label_fraction", "label_fraction"),
                      ("label_noise", "label_noise"), ("teacher_train_fraction", "teacher_train_fraction"),
                      ("teacher_epochs", "teacher_epochs"), ("teacher_min_steps", "teacher_min_steps"),
                      ("teacher_max_steps", "teacher_max_steps"), ("teacher_patience", "teacher_patience")):
        if getattr(args, flag) is not None:
            distill[key] = getattr(args, flag)
    if args.teacher_epochs is not None and args.teacher_min_steps is None:
        distill["teacher_min_steps"] = 0  # the epochs asked for are the budget: no floor over them
    if args.precision is not None:  # one setting for both: teacher and students
        distill["precision"] = distill["student_precision"] = args.precision
    if args.labels is not None:
        distill["labels"] = [x.strip() for x in args.labels.split(",") if x.strip()]
    data["distill"] = distill
    for flag in ("preset", "agent", "episodes", "seeds", "action_mode", "reward", "observation", "name", "out",
                 "workers", "executor", "address", "situation", "instance_set", "transfer_checkpoint", "headroom"):
        if getattr(args, flag) is not None:
            data[flag] = getattr(args, flag)
    if not args.tensorboard:
        data["tensorboard"] = False
    if args.situations is not None:
        names = [x.strip() for x in args.situations.split(",") if x.strip()]
        data["situations"] = [] if names == ["none"] else names
    if args.methods is not None:
        data["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.plugin:
        data["plugins"] = list(data.get("plugins") or []) + args.plugin
    try:  # first: a plug-in may register the instance set the situations are of
        load_plugins(data.get("plugins") or [])
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    _default_situations(data)
    try:
        config = ExperimentConfig(**data)
        DistillConfig.from_dict({**get_preset(config.preset if config.preset in preset_names() else "text3").to_dict(),
                                 **config.distill})
        config.resolved()
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    return config


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
        if base in EXPERIMENT_PRESETS:
            data["preset"] = base
    if named or "situations" in data or data.get("instance_set"):
        return
    defaults = EXPERIMENT_PRESETS.get(data.get("preset", ExperimentConfig.preset), {}).get("situations")
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
        folder = Path(config.out) / config.resolved().name
        print_situations(study)
        print_timing(study["stage_seconds"])
        print(f"\nwrote {folder}/ (situations.md, situations.json, situations-heatmap.png; one run folder per "
              f"situation: {', '.join(study['situations'])})")
        return 0
    summary = run_experiment(config)
    print_summary(summary)
    print_timing(summary["stage_seconds"])
    print(f"\nwrote {Path(config.out) / config.resolved().name}/ (results.md, results.csv, results.json, plots)")
    return 0
