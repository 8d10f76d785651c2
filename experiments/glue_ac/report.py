"""The report of a glue_ac run: the table per method, the best fixed mask (chosen on dev), the
learned methods' (selector, transfer) paired differences, results.json/.csv/.md, plots and
TensorBoard logs; and the pieces the per-situation report (:mod:`.situations`) shares with it:
:func:`method_table`, :func:`choose_best_fixed`, :func:`mean_actions`, :func:`scores`, :func:`paired_seeds`.
Every paired difference is :func:`experiments.stats.compare`'s (one interval method in every
table)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kd_env import DistillConfig
from kd_env.io import atomic_write_json, atomic_write_text
from kd_env.teacher_check import SUSPECT_KNOWLEDGE, describe_fine_tune

from ..report import json_safe, markdown_table, plot_curves, plot_heatmap, plot_returns, write_csv
from .. import stats
from ..stats import Score, format_bounds, mean_std
from .config import BASELINES, LEARNED, NOT_FIXED, RESULT_COLUMNS, SELECTOR, TRANSFER

if TYPE_CHECKING:
    from .run import Run


#: how every glue_ac table names its interval (experiments.stats.compare's defaults)
INTERVAL_TEXT = f"95% {stats.INTERVAL} bootstrap CI over the seeds ({stats.REPS} resamples)"


def choose_best_fixed(table: list[dict[str, Any]]) -> str | None:
    """The fixed mask (a named baseline, ``only:<k>`` or ``fixed:<bits>``) with the highest mean
    dev-probe metric (``dev_mean``), or ``None`` when none ran.  Chosen on dev, never on test:
    the test split only scores the choice.  Ties go to the first in ``table``'s order."""
    fixed = [t for t in table if t["method"] not in NOT_FIXED and t["n"]
             and (t["method"] in BASELINES or t["method"].startswith(("fixed:", "only:")))]  # not a plug-in's agent
    return max(fixed, key=lambda t: t["dev_mean"])["method"] if fixed else None


def by_method_seed(rows: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """The rows as ``{method: {seed: row}}``."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["method"], {})[r["seed"]] = r
    return out


def method_table(methods: list[str], by_method: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per method (in ``methods``' order): test and dev-probe mean and std over its seeds, how many
    seeds, mean train seconds and the student's parameters."""
    table = []
    for method in methods:
        seeds = by_method.get(method, {})
        m, s = mean_std([r["metric"] for r in seeds.values()])
        dm, ds = mean_std([r["dev_metric"] for r in seeds.values()])
        table.append({"method": method, "mean": m, "std": s, "dev_mean": dm, "dev_std": ds, "n": len(seeds),
                      "train_seconds": float(np.mean([r["train_seconds"] for r in seeds.values()])) if seeds
                      else math.nan,
                      "parameters": next(iter(seeds.values()))["student_parameters"] if seeds else None})
    return table


def scores(rows: list[dict[str, Any]], situation: str) -> list[Score]:
    """A run's result rows as long-format scores: each method's test and dev-probe metric per
    seed in ``situation``.  A glue_ac seed trains its own selector and student in this situation
    alone, so it is the evaluation seed (``train_seed`` stays ``None``: nothing is shared across
    situations)."""
    out = []
    for r in rows:
        for split, key in (("test", "metric"), ("dev", "dev_metric")):
            if r.get(key) is not None and math.isfinite(r[key]):  # a crashed student's NaN is left out
                out.append(Score(r["method"], situation, None, int(r["seed"]), float(r[key]), split,
                                 r.get("metric_name", "metric")))
    return out


def paired_seeds(rows: list[Score], a: str, b: str) -> dict[str, Any]:
    """``a - b`` on the test split, paired over the seeds both have
    (:func:`experiments.stats.compare`, unpaired seeds left out): the mean difference, its 95%
    interval (NaN bounds for one seed), the seeds, their differences and the seeds ``a`` wins,
    ties and loses."""
    return stats.compare(rows, a, b, split="test", unpaired="drop").to_dict()


def mean_actions(seeds: dict[int, dict[str, Any]]) -> np.ndarray:
    """Knowledge (rows) x phase (columns): the mean over seeds of the weight (or mask bit) a
    method gave each knowledge type in each phase (the shortest episode's phases)."""
    acts = [np.asarray(r["actions"]) for r in seeds.values()]
    length = min(len(a) for a in acts)
    return np.mean([a[:length] for a in acts], axis=0).T


def write_report(run: Run, rows: list[dict[str, Any]], teacher: dict[str, Any], knowledge: list[str],
                 selector_returns: list[float], distill: DistillConfig,
                 label_mapping: dict[str, int] | None = None) -> dict[str, Any]:
    c = run.config
    metric_name = rows[0]["metric_name"] if rows else "metric"
    by_method = by_method_seed(rows)
    table = method_table(c.methods, by_method)
    best_fixed = choose_best_fixed(table)
    long = scores(rows, c.situation or distill.task)
    learned_vs: dict[str, dict[str, Any]] = {}
    for learned in (m for m in LEARNED if m in by_method):
        learned_vs[learned] = {other: paired_seeds(long, learned, other)
                               for other in dict.fromkeys(("vanilla_kd", best_fixed))
                               if other and other in by_method}
    comparisons = learned_vs.get(SELECTOR, {})
    # files
    write_csv(run.dir / "results.csv", rows, RESULT_COLUMNS)
    stats.write_scores(run.dir / "scores.csv", long)
    suspect = suspect_methods(table, by_method, knowledge) if teacher.get("warning") else []
    summary = {"name": c.name, "task": distill.task, "metric": metric_name, "teacher": teacher, "suspect": suspect,
               "methods": table, "best_fixed": best_fixed, "best_fixed_chosen_on": "dev-probe mean",
               "selector_vs": comparisons, **({"transfer_vs": learned_vs[TRANSFER],
                                                "transfer_checkpoint": c.transfer_checkpoint}
                                               if TRANSFER in learned_vs else {}),
               "situation": c.situation, "instance_set": c.instance_set,
               "selector_returns": selector_returns, "rows": rows, "knowledge": knowledge,
               "label_mapping": label_mapping, "date": time.strftime("%Y-%m-%d")}
    atomic_write_json(run.dir / "results.json", json_safe(summary))  # null, not NaN, where undefined
    md = [f"# {c.name}\n", f"Task `{distill.task}`, teacher `{distill.teacher}`, {distill.student_layers}-layer "
          f"student, {distill.total_steps} optimizer steps per student in {distill.num_phases} phases, "
          f"seeds {c.seeds}; selector `{c.agent}` ({c.action_mode}) trained for {c.episodes} episodes "
          f"with reward `{c.reward}`. Metric: {metric_name} on the held-out split.\n"]
    if teacher.get("warning"):  # the report's first lines: the teacher learned nothing its references did not
        md.insert(1, f"**{teacher['warning']}**\n")
        if suspect:
            md.insert(2, f"Suspect (they copy the teacher's outputs, knowledge "
                         f"{', '.join(f'`{k}`' for k in SUSPECT_KNOWLEDGE)} weighted above 0): "
                         f"{', '.join(f'`{m}`' for m in suspect)}; marked † below.\n")
    if teacher.get("fine_tune"):
        md.append(describe_fine_tune(teacher["fine_tune"]) + "\n")
    if c.situation is not None:
        md.append(f"Situation `{c.situation}` of `{c.instance_set}`: "
                  f"{dict(c.situation_overrides()) or 'the preset as it is'}.\n")
    if TRANSFER in learned_vs:
        md.append(f"`transfer`: the agent of `{c.transfer_checkpoint}`, acting deterministically with no training "
                  f"on this task.\n")
    md.append(markdown_table(
        ["method", f"test {metric_name} (mean ± std)", "dev-probe (mean ± std)", "seeds", "train s/student",
         "student params"],
        [[t["method"] + (" †" if t["method"] in suspect else ""), f"{t['mean']:.4f} ± {t['std']:.4f}",
          f"{t['dev_mean']:.4f} ± {t['dev_std']:.4f}", t["n"], f"{t['train_seconds']:.1f}", t["parameters"]]
         for t in table]
        + [["teacher", f"{teacher['metric']:.4f}", f"{teacher['dev_metric']:.4f}", "-", "-", teacher["parameters"]]]))
    if best_fixed is not None:
        md.append(f"\nBest fixed subset: `{best_fixed}`, chosen on the dev-probe mean (the students' final dev-probe "
                  f"{metric_name}), never on the test split.\n")
    for learned, vs in learned_vs.items():
        if vs:
            md.append(f"\nPaired difference, {learned} minus baseline (same seeds), {INTERVAL_TEXT}:\n")
            md.append(markdown_table(["baseline", "mean diff", "95% CI", f"{learned} wins"],
                                     [[k + (" (best fixed subset)" if k == best_fixed else ""), f"{v['mean']:+.4f}",
                                       format_bounds(v["low"], v["high"], "+.4f"), f"{v['wins']}/{v['n']}"]
                                      for k, v in vs.items()]))
    atomic_write_text(run.dir / "results.md", "\n".join(md))
    # plots
    if SELECTOR in by_method:
        plot_heatmap(mean_actions(by_method[SELECTOR]), knowledge, run.dir / "selection_heatmap.png",
                     f"{c.agent} selector: knowledge x phase ({distill.task}, {len(by_method[SELECTOR])} seeds)")
    if TRANSFER in by_method:
        plot_heatmap(mean_actions(by_method[TRANSFER]), knowledge, run.dir / "transfer_heatmap.png",
                     f"transfer ({Path(str(c.transfer_checkpoint)).name}, no training): knowledge x phase "
                     f"({distill.task}, {len(by_method[TRANSFER])} seeds)")
    curves = {m: [r["curve"] for r in seeds.values()] for m, seeds in by_method.items()}
    if curves:
        plot_curves(curves, run.dir / "dev_curves.png", f"dev-probe {metric_name}",
                    f"dev probe during distillation ({distill.task})")
    if selector_returns:
        plot_returns(selector_returns, run.dir / "selector_returns.png", f"{c.agent} selector training")
    if c.tensorboard:
        _tensorboard(run, rows, knowledge)
    return summary


def suspect_methods(table: list[dict[str, Any]], by_method: dict[str, dict[int, dict[str, Any]]],
                    knowledge: list[str]) -> list[str]:
    """The methods (in ``table``'s order) that copy the teacher's outputs: a mean weight above 0 on a
    knowledge type of :data:`~kd_env.teacher_check.SUSPECT_KNOWLEDGE` (response) over their seeds and
    phases -- suspect when the teacher is no better than the majority class or the linear probe."""
    cols = [knowledge.index(k) for k in SUSPECT_KNOWLEDGE if k in knowledge]
    out = []
    for t in table:
        weights = [r.get("mean_weights") for r in by_method.get(t["method"], {}).values()]
        weights = [w for w in weights if w is not None and len(w) == len(knowledge)]
        if weights and any(float(np.mean([w[j] for w in weights])) > 0 for j in cols):
            out.append(t["method"])
    return out


def _tensorboard(run: Run, rows: list[dict[str, Any]], knowledge: list[str]) -> None:
    """Every student as a TensorBoard run, ``tb/<method>_<seed>/`` (stable-baselines3's layout,
    :class:`agents.episode_log.TensorBoardRun`): its episode as an evaluation at step 0 (return,
    test metric, final dev probe, weights per phase) and its dev probe after each phase,
    ``student/probe_metric`` (x: the phase)."""
    from agents.episode_log import TENSORBOARD_DIR, TensorBoardRun, run_name

    for r in rows:
        with TensorBoardRun(run.dir / TENSORBOARD_DIR / run_name(r["method"], r["seed"]), knowledge,
                            fresh=True) as board:
            board.evaluation(0, [r["return"]], [len(r["actions"])], metrics={"test": [r["metric"]]},
                             probe=[r["dev_metric"]], actions=[r["actions"]])
            for phase, value in enumerate(r["curve"]):
                board.scalar("student/probe_metric", value, phase)


def print_summary(summary: dict[str, Any], out=sys.stdout) -> None:
    metric = summary["metric"]
    print(f"\n{summary['name']}: test {metric} (mean ± std over seeds)", file=out)
    width = max(len(t["method"]) for t in summary["methods"]) + 2
    for t in sorted(summary["methods"], key=lambda t: -t["mean"] if t["n"] else math.inf):
        print(f"  {t['method']:<{width}} {t['mean']:.4f} ± {t['std']:.4f}   (n={t['n']})", file=out)
    print(f"  {'teacher':<{width}} {summary['teacher']['metric']:.4f}", file=out)
    if summary.get("best_fixed"):
        print(f"  best fixed subset (chosen on the dev probe): {summary['best_fixed']}", file=out)
    for learned, key in ((SELECTOR, "selector_vs"), (TRANSFER, "transfer_vs")):
        for k, v in (summary.get(key) or {}).items():
            print(f"  {learned} - {k}: {v['mean']:+.4f}  95% CI {format_bounds(v['low'], v['high'], '+.4f')}",
                  file=out)
