"""The teacher recipe over training-set sizes (issue 39): is the default teacher above the majority
class on a small set, and is the full-data teacher as good and as fast as before?

For each train size (seeded subsets of rt-polarity's train split; ``full``: all of it) and seed, a
CSV folder (train subset, rt-polarity's whole dev and test splits; written to a temporary folder,
never to the repository) is the task, as a user's own data would be, and the teacher is fine-tuned
by :func:`kd_env.build.prepare_teacher` under each recipe:

* ``new``: the preset's recipe (text3: one epoch, a floor of ``teacher_min_steps`` optimizer steps,
  early stopping on dev with ``teacher_patience``);
* ``old``: one epoch alone (``teacher_min_steps=0``, ``teacher_patience=0``), the recipe before
  issue 39.

Each recipe has its own cache folder under ``--cache`` (a teacher fine-tuned before is loaded, not
timed again: pass a fresh ``--cache`` to time).  Prints a markdown table and writes every record
to ``--out`` (JSON)::

    python -m experiments.teacher_sweep --sizes 250,500,1000,2000,full --seeds 0,1 --recipes new,old \\
        --threads 1 --cache /tmp/sweep-cache --out /tmp/teacher-sweep.json
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from kd_env import get_preset
from kd_env.build import prepare_teacher, teacher_precision
from kd_env.data import load_task
from kd_env.models import load_tokenizer
from kd_env.runtime import resolve_device
from kd_env.teacher_check import majority_metric

from .cli import parse_seeds
from .logs import add_verbosity_flags, get_logger, setup_logging

LOGGER = get_logger("teacher_sweep")

#: the recipes compared: DistillConfig overrides over the preset
RECIPES = {"new": {}, "old": {"teacher_min_steps": 0, "teacher_patience": 0}}


def write_subset(folder: Path, size: int | None, seed: int) -> Path:
    """A CSV folder (``train.csv``, ``dev.csv``, ``test.csv``; ``text,label``) holding ``size``
    examples of rt-polarity's train split (a seeded subset; ``None``: all) and its whole dev and
    test splits."""
    task = load_task("rt-polarity", seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "dev", "test"):
        split = task[name]
        idx = np.arange(len(split))
        if name == "train" and size is not None and size < len(split):
            idx = np.sort(np.random.default_rng([seed, 39]).permutation(len(split))[:size])
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            for i in idx:
                writer.writerow([split.texts[i], int(split.labels[i])])
    return folder


def one_teacher(data: Path, recipe: str, seed: int, preset: str, cache: Path, threads: int) -> dict[str, Any]:
    """Fine-tune (or load) the teacher of the CSV folder ``data`` under ``recipe``; its record."""
    config = get_preset(preset, task=str(data), seed=seed, threads=threads, progress=False,
                        cache_dir=str(cache / recipe), **RECIPES[recipe])
    torch.set_num_threads(threads)
    device = resolve_device(config.device)
    task = load_task(config.task, seed=config.seed)
    tokenizer = load_tokenizer(config.teacher)
    start = time.perf_counter()
    _, summary = prepare_teacher(config, task, tokenizer, device, attentions=False)
    wall = time.perf_counter() - start
    fit = summary["fine_tune"]
    sanity = summary.get("sanity", {})
    return {"train": len(task["train"]), "recipe": recipe, "seed": seed, "precision": teacher_precision(config, task, device),
            "budget": fit.get("budget", {}).get("steps", fit["steps"]), "steps": fit["steps"],
            "best_step": fit.get("best_step"), "stopped_early": fit.get("stopped_early"),
            "fine_tune_seconds": fit["seconds"], "eval_seconds": fit.get("eval_seconds", 0.0), "wall_seconds": wall,
            "dev": summary["dev"]["main"], "test": summary["test"]["main"],
            "dev_majority": majority_metric(task, task["dev"].labels),
            "test_majority": majority_metric(task, task["test"].labels),
            "probe_dev": sanity.get("probe"), "ok": sanity.get("ok"), "sanity_seconds": sanity.get("seconds"),
            "history": fit.get("history"), "weights_id": summary.get("weights_id")}


def markdown(records: Sequence[dict[str, Any]]) -> str:
    head = ["train", "recipe", "seed", "budget", "steps run", "best step", "fine-tune s", "dev", "dev majority",
            "probe dev", "test", "test majority", "check"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        lines.append("| " + " | ".join([
            str(r["train"]), r["recipe"], str(r["seed"]), str(r["budget"]), str(r["steps"]),
            "-" if r["best_step"] is None else str(r["best_step"]), f"{r['fine_tune_seconds']:.0f}",
            f"{r['dev']:.4f}", f"{r['dev_majority']:.4f}",
            "-" if r["probe_dev"] is None else f"{r['probe_dev']:.4f}", f"{r['test']:.4f}",
            f"{r['test_majority']:.4f}", "ok" if r["ok"] else "WARNING"]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.teacher_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="250,500,1000,2000,full",
                   help="comma list of train sizes ('full': the whole train split)")
    p.add_argument("--seeds", type=parse_seeds, default=[0], help="seeds (subset and teacher)")
    p.add_argument("--full-seeds", type=parse_seeds, default=None, help="seeds of the full set (default --seeds)")
    p.add_argument("--recipes", default="new", help=f"comma list of {sorted(RECIPES)}")
    p.add_argument("--preset", default="text3")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", required=True, help="cache root (one folder per recipe under it)")
    p.add_argument("--out", help="JSON file of every record (appended to when it exists)")
    add_verbosity_flags(p)
    args = p.parse_args(argv)
    setup_logging(args)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    bad = [r for r in recipes if r not in RECIPES]
    if bad:
        raise SystemExit(f"error: unknown recipe(s) {bad}; valid: {sorted(RECIPES)}")
    out = Path(args.out) if args.out else None
    records: list[dict[str, Any]] = json.loads(out.read_text()) if out is not None and out.exists() else []
    cache = Path(args.cache)
    with tempfile.TemporaryDirectory(prefix="teacher-sweep-") as tmp:
        for size_text in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            size = None if size_text == "full" else int(size_text)
            for seed in (args.full_seeds or args.seeds) if size is None else args.seeds:
                data = write_subset(Path(tmp) / f"rt-{size_text}-seed{seed}", size, seed)
                for recipe in recipes:
                    record = one_teacher(data, recipe, seed, args.preset, cache, args.threads)
                    record["size"] = size_text
                    records.append(record)
                    LOGGER.info(markdown([record]).splitlines()[-1])  # the table's row, as each teacher ends
                    if out is not None:
                        out.write_text(json.dumps(records, indent=1))
    print(markdown(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
