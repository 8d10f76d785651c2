"""The report of a glue_ac run: the table per method, the best fixed mask (chosen on dev), the
selector's paired differences, results.json/.csv/.md, plots and TensorBoard logs."""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from kd_env import DistillConfig
from kd_env.io import atomic_write_json, atomic_write_text

from ..report import json_safe, markdown_table, plot_curves, plot_heatmap, plot_returns, write_csv
from ..stats import format_bounds, mean_std, paired_difference
from .config import NOT_FIXED, RESULT_COLUMNS, SELECTOR

if TYPE_CHECKING:
    from .run import Run


def choose_best_fixed(table: list[dict[str, Any]]) -> str | None:
    """The fixed mask (a named baseline, ``only:<k>`` or ``fixed:<bits>``) with the highest mean
    dev-probe metric (``dev_mean``), or ``None`` when none ran.  Chosen on dev, never on test:
    the test split only scores the choice.  Ties go to the first in ``table``'s order."""
    fixed = [t for t in table if t["method"] not in NOT_FIXED and t["n"]]
    return max(fixed, key=lambda t: t["dev_mean"])["method"] if fixed else None


def write_report(run: Run, rows: list[dict[str, Any]], teacher: dict[str, Any], knowledge: list[str],
                 selector_returns: list[float], distill: DistillConfig,
                 label_mapping: dict[str, int] | None = None) -> dict[str, Any]:
    c = run.config
    metric_name = rows[0]["metric_name"] if rows else "metric"
    by_method: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], {})[r["seed"]] = r
    table = []
    for method in c.methods:
        seeds = by_method.get(method, {})
        m, s = mean_std([r["metric"] for r in seeds.values()])
        dm, ds = mean_std([r["dev_metric"] for r in seeds.values()])
        table.append({"method": method, "mean": m, "std": s, "dev_mean": dm, "dev_std": ds, "n": len(seeds),
                      "train_seconds": float(np.mean([r["train_seconds"] for r in seeds.values()])),
                      "parameters": next(iter(seeds.values()))["student_parameters"] if seeds else None})
    best_fixed = choose_best_fixed(table)
    comparisons = {}
    if SELECTOR in by_method:
        sel = {s: r["metric"] for s, r in by_method[SELECTOR].items()}
        for other in ("vanilla_kd", best_fixed):
            if other and other in by_method and other != SELECTOR:
                comparisons[other] = paired_difference(sel, {s: r["metric"] for s, r in by_method[other].items()})
    # files
    write_csv(run.dir / "results.csv", rows, RESULT_COLUMNS)
    summary = {"name": c.name, "task": distill.task, "metric": metric_name, "teacher": teacher,
               "methods": table, "best_fixed": best_fixed, "best_fixed_chosen_on": "dev-probe mean",
               "selector_vs": comparisons,
               "selector_returns": selector_returns, "rows": rows, "knowledge": knowledge,
               "label_mapping": label_mapping, "date": time.strftime("%Y-%m-%d")}
    atomic_write_json(run.dir / "results.json", json_safe(summary))  # null, not NaN, where undefined
    md = [f"# {c.name}\n", f"Task `{distill.task}`, teacher `{distill.teacher}`, {distill.student_layers}-layer "
          f"student, {distill.total_steps} optimizer steps per student in {distill.num_phases} phases, "
          f"seeds {c.seeds}; selector `{c.agent}` ({c.action_mode}) trained for {c.episodes} episodes "
          f"with reward `{c.reward}`. Metric: {metric_name} on the held-out split.\n"]
    md.append(markdown_table(
        ["method", f"test {metric_name} (mean ± std)", "dev-probe (mean ± std)", "seeds", "train s/student",
         "student params"],
        [[t["method"], f"{t['mean']:.4f} ± {t['std']:.4f}", f"{t['dev_mean']:.4f} ± {t['dev_std']:.4f}", t["n"],
          f"{t['train_seconds']:.1f}", t["parameters"]] for t in table]
        + [["teacher", f"{teacher['metric']:.4f}", f"{teacher['dev_metric']:.4f}", "-", "-", teacher["parameters"]]]))
    if best_fixed is not None:
        md.append(f"\nBest fixed subset: `{best_fixed}`, chosen on the dev-probe mean (the students' final dev-probe "
                  f"{metric_name}), never on the test split.\n")
    if comparisons:
        md.append("\nPaired difference, selector minus baseline (same seeds), 95% t-interval:\n")
        md.append(markdown_table(["baseline", "mean diff", "95% CI", "selector wins"],
                                 [[k + (" (best fixed subset)" if k == best_fixed else ""), f"{v['mean']:+.4f}",
                                   format_bounds(v["low"], v["high"], "+.4f"), f"{v['wins']}/{v['n']}"]
                                  for k, v in comparisons.items()]))
    atomic_write_text(run.dir / "results.md", "\n".join(md))
    # plots
    if SELECTOR in by_method:
        acts = [np.asarray(r["actions"]) for r in by_method[SELECTOR].values()]
        length = min(len(a) for a in acts)
        heat = np.mean([a[:length] for a in acts], axis=0).T
        plot_heatmap(heat, knowledge, run.dir / "selection_heatmap.png",
                     f"{c.agent} selector: knowledge x phase ({distill.task}, {len(acts)} seeds)")
    curves = {m: [r["curve"] for r in seeds.values()] for m, seeds in by_method.items()}
    if curves:
        plot_curves(curves, run.dir / "dev_curves.png", f"dev-probe {metric_name}",
                    f"dev probe during distillation ({distill.task})")
    if selector_returns:
        plot_returns(selector_returns, run.dir / "selector_returns.png", f"{c.agent} selector training")
    _tensorboard(run, rows)
    return summary


def _tensorboard(run: Run, rows: list[dict[str, Any]]) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return
    writer = SummaryWriter(str(run.dir / "tb" / "students"))
    for r in rows:
        for i, v in enumerate(r["curve"]):
            writer.add_scalar(f"{r['method']}/seed{r['seed']}/probe_metric", v, i)
        writer.add_scalar(f"{r['method']}/test_metric", r["metric"], r["seed"])
    writer.close()


def print_summary(summary: dict[str, Any], out=sys.stdout) -> None:
    metric = summary["metric"]
    print(f"\n{summary['name']}: test {metric} (mean ± std over seeds)", file=out)
    width = max(len(t["method"]) for t in summary["methods"]) + 2
    for t in sorted(summary["methods"], key=lambda t: -t["mean"] if t["n"] else math.inf):
        print(f"  {t['method']:<{width}} {t['mean']:.4f} ± {t['std']:.4f}   (n={t['n']})", file=out)
    print(f"  {'teacher':<{width}} {summary['teacher']['metric']:.4f}", file=out)
    if summary.get("best_fixed"):
        print(f"  best fixed subset (chosen on the dev probe): {summary['best_fixed']}", file=out)
    for k, v in summary["selector_vs"].items():
        print(f"  selector - {k}: {v['mean']:+.4f}  95% CI {format_bounds(v['low'], v['high'], '+.4f')}", file=out)
