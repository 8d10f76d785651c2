"""Compare distillation settings (pooling, student depth and initialisation, budget, learning
rate, teacher fine-tuning): which set-up makes a student worth distilling?

    python -m experiments.student_settings                       # the text grid below, seeds 0-2
    python -m experiments.student_settings --grid my_grid.yml --seeds 0-4 --methods all,vanilla_kd,finetune
    python -m experiments.student_settings --only mean,mean-teacher-init   # some settings of the grid

A grid is a YAML file: ``preset`` (a kd_env preset) and ``settings``, a mapping of setting name
to DistillConfig overrides (``{}`` is the preset itself)::

    preset: text
    settings:
      cls: {}
      mean: {pooling: mean}
      mean-3-layers: {pooling: mean, student_layers: 3}

Every setting is one ``experiments.glue_ac`` run (no selector: the fixed methods only) in
``runs/<name>/<setting>/``, resumable like any glue_ac run.  The comparison,
``runs/<name>/comparison.md`` and ``.json``, gives per setting: the teacher's test and dev-probe
metric, each method's test mean ± std over the seeds, the method with the best dev-probe mean
(chosen on dev; the test split only scores it) and its share of the teacher's test metric,
vanilla KD minus finetune (paired over seeds, 95% interval of :func:`experiments.stats.compare`), and
the mean seconds of training per student.  The setting to keep is the one with the best dev-probe score of its best method;
its test numbers are reported, never used to choose.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from experiments.cli import SEEDS_HELP, parse_seeds
from experiments.glue_ac import ExperimentConfig, Run, run_experiment
from experiments.logs import add_verbosity_flags, get_logger, setup_logging
from experiments.report import markdown_table
from experiments import stats
from experiments.stats import Score, format_bounds
from kd_env.config import get_preset
from kd_env.io import atomic_write_json, atomic_write_text

from experiments.resources import package_dir

__all__ = ["DEFAULT_GRID", "load_grid", "compare", "main"]

DEFAULT_GRID = package_dir("experiments", "configs") / "text_students.yml"
DEFAULT_METHODS = ("finetune", "vanilla_kd", "all")


def load_grid(path: str | Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """``(preset, {setting: overrides})`` from a grid file; a bad file is a ``ValueError`` naming
    what is wrong (every setting's overrides are checked as a DistillConfig before anything runs)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read grid {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict) or not data["settings"]:
        raise ValueError(f"grid {path} must be a mapping with 'preset' and a non-empty 'settings' mapping "
                         f"(setting name -> DistillConfig overrides)")
    unknown = sorted(set(data) - {"preset", "settings"})
    if unknown:
        raise ValueError(f"grid {path}: unknown key(s) {unknown}; valid: ['preset', 'settings']")
    preset = data.get("preset", "text")
    settings = {}
    for name, overrides in data["settings"].items():
        overrides = {} if overrides is None else overrides
        if not isinstance(name, str) or not name or "/" in name or not isinstance(overrides, dict):
            raise ValueError(f"grid {path}: setting {name!r} must be a name (no '/') mapping to DistillConfig "
                             f"overrides, got {overrides!r}")
        try:
            get_preset(preset, **overrides)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"grid {path}, setting {name!r}: {exc}") from None
        settings[name] = overrides
    return preset, settings


def _summarise(name: str, overrides: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    methods = {t["method"]: t for t in summary["methods"] if t["n"]}
    best = max(methods.values(), key=lambda t: t["dev_mean"]) if methods else None
    teacher = summary["teacher"]
    scores = [Score(r["method"], name, None, int(r["seed"]), float(r["metric"])) for r in summary["rows"]
              if r["metric"] is not None and math.isfinite(r["metric"])]
    seconds = [r["train_seconds"] for r in summary["rows"]]
    kd_vs_ft = None
    if {"vanilla_kd", "finetune"} <= {s.method for s in scores}:
        kd_vs_ft = stats.compare(scores, "vanilla_kd", "finetune", unpaired="drop").to_dict()
    return {"setting": name, "overrides": overrides, "teacher": teacher,
            "methods": {m: {k: t[k] for k in ("mean", "std", "dev_mean", "dev_std", "n")} for m, t in methods.items()},
            "best_on_dev": None if best is None else best["method"],
            "best_test": None if best is None else best["mean"], "best_std": None if best is None else best["std"],
            "best_dev": None if best is None else best["dev_mean"],
            "share_of_teacher": None if best is None else best["mean"] / teacher["metric"],
            "vanilla_kd_minus_finetune": kd_vs_ft,
            "train_seconds_per_student": float(sum(seconds) / len(seconds)) if seconds else None}


def compare(results: list[dict[str, Any]], methods: list[str]) -> str:
    """The comparison table (markdown) of :func:`_summarise` results."""
    header = ["setting", "overrides", "teacher test", *[f"{m} test" for m in methods], "best on dev",
              "its dev", "its test", "share of teacher", "vanilla_kd - finetune [95% CI]", "train s/student"]
    rows = []
    for r in results:
        cells = [r["setting"], ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(preset)",
                 f"{r['teacher']['metric']:.4f}"]
        for m in methods:
            t = r["methods"].get(m)
            cells.append("-" if t is None else f"{t['mean']:.4f} ± {t['std']:.4f}")
        d = r["vanilla_kd_minus_finetune"]
        cells += [r["best_on_dev"] or "-", "-" if r["best_dev"] is None else f"{r['best_dev']:.4f}",
                  "-" if r["best_test"] is None else f"{r['best_test']:.4f} ± {r['best_std']:.4f}",
                  "-" if r["share_of_teacher"] is None else f"{100 * r['share_of_teacher']:.1f}%",
                  "-" if d is None else f"{d['mean']:+.4f} {format_bounds(d['low'], d['high'], '+.4f')}",
                  "-" if r["train_seconds_per_student"] is None else f"{r['train_seconds_per_student']:.1f}"]
        rows.append(cells)
    chosen = max((r for r in results if r["best_dev"] is not None), key=lambda r: r["best_dev"], default=None)
    text = [markdown_table(header, rows)]
    if chosen is not None:
        text.append(f"\nBest setting on dev: `{chosen['setting']}` (its best method `{chosen['best_on_dev']}`, dev-probe "
                    f"{chosen['best_dev']:.4f}); its test score is reported, not used to choose.\n")
    return "\n".join(text)


def _finished(config: ExperimentConfig) -> dict[str, Any] | None:
    """The summary of a finished run of ``config`` with every method and seed (read back, no env
    built), or ``None`` when the run must (re)run: no results, other settings, a unit missing."""
    import json

    c = config.resolved()
    run = Run(c)
    try:
        run.check()
        summary = json.loads((run.dir / "results.json").read_text())
    except (SystemExit, OSError, ValueError):
        return None
    done = {(r["method"], r["seed"]) for r in summary.get("rows", [])}
    if not all((m, s) in done for m in c.methods for s in c.seeds):
        return None
    summary["rows"] = [r for r in summary["rows"] if r["method"] in c.methods and r["seed"] in c.seeds]
    summary["methods"] = [t for t in summary["methods"] if t["method"] in c.methods]
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.student_settings",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default=str(DEFAULT_GRID), help="YAML grid file (default: %(default)s)")
    p.add_argument("--only", default=None, help="comma-separated setting names of the grid to run")
    p.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2], help=SEEDS_HELP + " (default: 0-2)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="fixed methods of glue_ac (default: %(default)s)")
    p.add_argument("--name", default="student-settings", help="run folder under --out (default: %(default)s)")
    p.add_argument("--out", default="runs")
    p.add_argument("--threads", type=int, default=None, help="torch threads per student (default: the preset's)")
    add_verbosity_flags(p)
    args = p.parse_args(argv)
    setup_logging(args)
    try:
        preset, settings = load_grid(args.grid)
    except ValueError as exc:
        p.error(str(exc))
    if args.only:
        names = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [n for n in names if n not in settings]
        if unknown:
            p.error(f"--only: unknown setting(s) {unknown}; the grid has {list(settings)}")
        settings = {n: settings[n] for n in names}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "selector" in methods:
        p.error("--methods: the settings comparison runs fixed methods only (no 'selector')")
    results = []
    for name, overrides in settings.items():
        distill = dict(overrides)
        if args.threads is not None:
            distill["threads"] = args.threads
        get_logger("student_settings").info(f"== setting {name}: {overrides or '(preset)'}")
        config = ExperimentConfig(preset=preset, distill=distill, methods=methods, seeds=list(args.seeds),
                                  episodes=0, name=f"{args.name}/{name}", out=args.out)
        results.append(_summarise(name, overrides, _finished(config) or run_experiment(config)))
    out = Path(args.out) / args.name
    table = compare(results, methods)
    atomic_write_json(out / "comparison.json", {"preset": preset, "seeds": list(args.seeds), "methods": methods,
                                                "settings": results})
    atomic_write_text(out / "comparison.md", f"# {args.name}: distillation settings, preset `{preset}`, seeds "
                                             f"{list(args.seeds)}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
