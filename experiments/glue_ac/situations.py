"""A study per situation (``--situations A,B``): the whole glue_ac pipeline once per situation of
an instance set, each in its own resumable run folder ``<out>/<name>/<situation>/``, then one
per-situation report: ``<name>/situations.md``, ``situations.json`` and
``situations-heatmap.png``.

Per situation the report gives every method's mean ± std of the held-out metric, the method with
the highest held-out mean (the winner: a description, not a choice), the best fixed mask (chosen
on the dev probe within the situation, as every run's report does) and, for each learned method
(the selector, trained on that situation's own episodes, and ``transfer``, a checkpoint acting
with no training), its paired difference over the shared seeds against the best fixed mask,
vanilla KD and Dynamic KD: the mean, a 95% interval and the seeds won, tied and lost; pooled over
situations, the same differences with an interval over situations, then seeds.  Every one is
:func:`experiments.stats.compare`'s, on the study's long-format scores (``scores.csv``).  The
figure has one knowledge x phase heatmap per situation (columns) and learned method (rows) of
what it chose.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kd_env.io import atomic_write_json, atomic_write_text

from ..logs import get_logger
from ..resources import package_file
from ..report import _figure, _save, draw_heatmap, json_safe, markdown_table
from .. import stats
from ..stats import Score, format_bounds
from .config import HEADROOM_THRESHOLD, LEARNED, ExperimentConfig
from .eta import RUN_CLOCK
from .pipeline import run_experiment
from .timing import sum_stage_times
from .report import (INTERVAL_TEXT, by_method_seed, choose_best_fixed, mean_actions, method_table, paired_seeds,
                     print_summary, scores)

LOGGER = get_logger("glue_ac")

__all__ = ["run_situations", "situation_report", "write_situations", "print_situations", "plot_heatmap_grid",
           "REFERENCES", "STUDY_FILES"]

#: what each learned method is compared with, per situation (``best_fixed``: chosen on dev there)
REFERENCES = ("best_fixed", "vanilla_kd", "dynamic_kd")
#: the study's own files in ``<out>/<name>/``
STUDY_FILES = ("situations.md", "situations.json", "situations-heatmap.png", "scores.csv")


def run_situations(config: ExperimentConfig) -> dict[str, Any]:
    """Run (or resume) one whole study per situation of ``config.situations``, in
    ``<out>/<name>/<situation>/``, then write and return the per-situation report."""
    c = config.resolved()
    folder = Path(c.out) / str(c.name)
    runs: dict[str, dict[str, Any]] = {}
    RUN_CLOCK.restart(len(c.situations or []))
    for i, situation in enumerate(c.situations or []):
        LOGGER.info(f"\n=== situation {i + 1}/{len(c.situations or [])}: {situation} ({RUN_CLOCK.line()}) ===")
        one = dataclasses.replace(config, situation=situation, situations=None, instance_set=c.instance_set,
                                  name=f"{c.name}/{situation}")
        summary = run_experiment(one, part_of_study=True)
        print_summary(summary)
        runs[situation] = summary
    study = write_situations(c, folder, runs)
    study["stage_seconds"] = sum_stage_times([s["stage_seconds"] for s in runs.values()])  # this invocation's
    return study


def situation_report(summary: dict[str, Any], methods: list[str], situation: str = "") -> dict[str, Any]:
    """One situation's entry of the study from its run's summary (results.json): the method table,
    the winner on the held-out mean, the best fixed mask (chosen on dev) and each learned method's
    paired differences (:data:`REFERENCES`)."""
    by_method = by_method_seed(summary["rows"])
    long = scores(summary["rows"], situation or str(summary.get("situation") or summary["task"]))
    table = method_table(methods, by_method)
    best_fixed = choose_best_fixed(table)
    ran = [t for t in table if t["n"]]
    winner = max(ran, key=lambda t: t["mean"])["method"] if ran else None
    comparisons: dict[str, dict[str, Any]] = {}
    for learned in (m for m in LEARNED if m in by_method):
        comparisons[learned] = {}
        for ref in REFERENCES:
            other = best_fixed if ref == "best_fixed" else ref
            if other and other in by_method:
                comparisons[learned][ref] = {"baseline": other, **paired_seeds(long, learned, other)}
    return {"task": summary["task"], "metric": summary["metric"], "teacher": summary["teacher"],
            "methods": [{k: t[k] for k in ("method", "mean", "std", "dev_mean", "n")} for t in table],
            "winner": winner, "best_fixed": best_fixed, "comparisons": comparisons,
            "heatmaps": {m: mean_actions(by_method[m]).tolist() for m in LEARNED if m in by_method}}


def write_situations(c: ExperimentConfig, folder: Path, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``situations.json``, ``situations.md`` and ``situations-heatmap.png`` in ``folder`` from
    each situation's run summary; returns what situations.json holds."""
    sset = c.situation_set()
    per = {name: {"overrides": dict(sset.instance(name).overrides), "run": f"{c.name}/{name}",
                  **situation_report(summary, list(c.methods or []), name)} for name, summary in runs.items()}
    long = [s for name, summary in runs.items() for s in scores(summary["rows"], name)]
    knowledge = next(iter(runs.values()))["knowledge"] if runs else []
    study = {"name": c.name, "instance_set": sset.name, "situations": list(runs), "methods": c.methods,
             "seeds": c.seeds, "agent": c.agent, "episodes": c.episodes, "observation": c.observation,
             "action_mode": c.action_mode, "transfer_checkpoint": c.transfer_checkpoint, "knowledge": knowledge,
             "winner_chosen_on": "held-out mean (a description, not a choice)",
             "best_fixed_chosen_on": "dev-probe mean, within each situation",
             "interval": INTERVAL_TEXT,
             "per_situation": per, "date": time.strftime("%Y-%m-%d")}
    study["headroom"] = dev_headroom(c.headroom, list(runs))
    study["pooled"] = pooled(per, long, study["headroom"])
    folder.mkdir(parents=True, exist_ok=True)
    stats.write_scores(folder / "scores.csv", long)
    atomic_write_json(folder / "situations.json", json_safe(study))
    atomic_write_text(folder / "situations.md", situations_markdown(study))
    panels = {learned: {name: np.asarray(p["heatmaps"][learned]) for name, p in per.items()
                        if learned in p["heatmaps"]} for learned in LEARNED}
    panels = {k: v for k, v in panels.items() if v}
    if panels:
        labels = {"selector": f"{c.agent} selector", "transfer": "transfer (no training)"}
        plot_heatmap_grid({labels[k]: v for k, v in panels.items()}, knowledge, folder / "situations-heatmap.png",
                          f"{c.name}: what the learned selectors chose, knowledge x phase (mean over seeds "
                          f"{c.seeds})")
    return study


#: the repository root: a relative headroom file is looked up here when it is not under the cwd (then
#: by its name in the package's data/, which an installed copy has)
_REPO = Path(__file__).resolve().parents[2]
#: the references of a design file, as the report names them
_DESIGN_REFERENCES = {"fixed:1100": "vanilla_kd", "agent:dynamic_kd": "dynamic_kd"}


def dev_headroom(path: str | None, situations: list[str]) -> dict[str, Any] | None:
    """Each situation's headroom measured on dev by ``python -m experiments.headroom.design``
    (its ``--out`` JSON): the per-situation oracle (the best constant, and the best constant or
    two-stage schedule, chosen on the choice seeds and scored on the check seeds, dev split) minus
    vanilla KD and Dynamic KD on the same check seeds, and the value of switching.  ``None``
    without a file; ``{"missing": path}`` when it is absent."""
    if not path:
        return None
    file = Path(path)
    if not file.is_absolute() and not file.exists():
        file = _REPO / path
    if not file.exists():  # an installed copy has no results/ folder: the committed measurement is package data
        file = package_file("experiments.glue_ac", "data", Path(path).name) or file
    if not file.exists():
        return {"file": str(path), "missing": True}
    import json

    design = json.loads(file.read_text(encoding="utf-8"))
    rows = {r["instance"]: r for r in design.get("rows", [])}
    out: dict[str, Any] = {"file": str(path), "missing": False, "threshold": HEADROOM_THRESHOLD,
                           "choice_seeds": design.get("choice_seeds"), "check_seeds": design.get("check_seeds"),
                           "situations": {}}
    for name in situations:
        r = rows.get(name)
        if r is None:
            continue
        entry = {"constant": r["constant"], "switching": r["switching"], "value_of_switching": r["value"],
                 "oracle": r["check"][r["switching"]]}
        for ref, label in _DESIGN_REFERENCES.items():
            if ref in r.get("check", {}):
                entry[f"oracle_minus_{label}"] = r["check"][r["switching"]] - r["check"][ref]
        entry["has_headroom"] = entry.get("oracle_minus_vanilla_kd", 0.0) >= HEADROOM_THRESHOLD
        out["situations"][name] = entry
    return out


def _headroom_markdown(h: dict[str, Any] | None) -> list[str]:
    if h is None:
        return []
    if h["missing"]:
        return [f"\nNo dev headroom shown: `{h['file']}` is missing.\n"]
    rows = [[n, f"`{e['switching']}`", f"{e['oracle']:.4f}", f"{e.get('oracle_minus_vanilla_kd', math.nan):+.4f}",
             f"{e.get('oracle_minus_dynamic_kd', math.nan):+.4f}", f"{e['value_of_switching']:+.4f}",
             "yes" if e["has_headroom"] else "**no**"] for n, e in h["situations"].items()]
    md = [f"\nHeadroom measured on **dev** before this run (`{h['file']}`: the per-situation oracle, the best "
          f"constant or two-stage schedule chosen on choice seeds {h['choice_seeds']}, scored on check seeds "
          f"{h['check_seeds']}; dev split only):\n",
          markdown_table(["situation", "oracle policy", "oracle dev", "- vanilla KD", "- Dynamic KD",
                          "value of switching", f"headroom >= {h['threshold']:.2f}"], rows)]
    none = [n for n, e in h["situations"].items() if not e["has_headroom"]]
    if none:
        md.append(f"\nNo headroom on dev in {', '.join(f'`{n}`' for n in none)}: there, no choice of knowledge beats "
                  f"vanilla KD by {h['threshold']:.2f}, so a selector's result is not evidence of a learned choice.")
    if not any(e["value_of_switching"] > 0 for e in h["situations"].values()):
        md.append("\nSwitching knowledge between phases did not pay on dev in any of these situations (the best "
                  "schedule is a constant): a selector can gain here only by choosing the right constant mix.")
    return md


#: a learned method's heatmap is "flat" when in no phase two knowledge types' mean weights differ
#: by this much: it then plays one even mix, and its result is that constant's, not a learned choice
FLAT_SPREAD = 0.2


def weight_spread(heatmap: Any) -> float:
    """The largest difference between two knowledge types' mean weights in any one phase."""
    h = np.asarray(heatmap, dtype=np.float64)
    return float(np.max(h.max(axis=0) - h.min(axis=0))) if h.size else math.nan


def _flatness_markdown(per: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, p in per.items():
        for learned, h in p["heatmaps"].items():
            spread = weight_spread(h)
            mean = float(np.mean(h))
            if spread < FLAT_SPREAD:
                lines.append(f"- `{name}`, `{learned}`: **flat** (largest gap between two knowledge types in a phase "
                             f"{spread:.2f} < {FLAT_SPREAD}): it plays every type at about {mean:.2f}, a constant "
                             f"mix, not a learned choice")
            else:
                lines.append(f"- `{name}`, `{learned}`: not flat (largest gap between two knowledge types in a phase "
                             f"{spread:.2f})")
    return ["\nWhat the learned methods chose (`situations-heatmap.png`):\n", *lines] if lines else []


def pooled(per: dict[str, dict[str, Any]], long: list[Score], headroom: dict[str, Any] | None) -> dict[str, Any]:
    """Each learned method's difference from each reference over situations
    (:func:`experiments.stats.compare` on the study's scores ``long``, the reference being each
    situation's own best fixed mask for ``best_fixed``): the mean of the situations' mean paired
    differences with an interval over situations, then seeds, and the situations it wins (mean
    difference above 0), over all situations and, with a headroom file, over those with dev
    headroom.  Needs 2 situations."""
    groups = {"all situations": list(per)}
    if headroom and not headroom.get("missing"):
        groups["situations with dev headroom"] = [n for n in per if headroom["situations"].get(n, {}).get("has_headroom")]
    out: dict[str, Any] = {}
    for group, names in groups.items():
        if len(names) < 2:
            continue
        for learned in LEARNED:
            for ref in REFERENCES:
                if not all(ref in per[n]["comparisons"].get(learned, {}) for n in names):
                    continue
                rows = [Score("reference" if s.method == per[s.situation]["comparisons"][learned][ref]["baseline"]
                              else s.method, s.situation, s.train_seed, s.eval_seed, s.value, s.split, s.metric)
                        for s in long if s.situation in names and s.method in
                        (learned, per[s.situation]["comparisons"][learned][ref]["baseline"])]
                d = stats.compare(rows, learned, "reference", split="test", unpaired="drop")
                out.setdefault(group, {"situations": names, "rows": [], "interval": d.interval,
                                       "resampling": d.resampling, "reps": d.reps})["rows"].append(
                    {"method": learned, "minus": ref, "mean": d.mean, "low": d.low, "high": d.high,
                     "situations_won": d.situation_wins, "situations": d.situations, "sign_p": d.sign_p})
    return out


def _pooled_markdown(p: dict[str, Any]) -> list[str]:
    md = []
    for group, g in p.items():
        md.append(f"\nOver {group} ({', '.join(f'`{n}`' for n in g['situations'])}): the mean of the situations' "
                  f"mean paired differences, 95% {g['interval']} bootstrap resampling {g['resampling']} "
                  f"({g['reps']} resamples), and the situations won:\n")
        md.append(markdown_table(["method", "minus", "mean diff", "95% CI", "situations won", "sign test p"],
                                 [[r["method"], f"`{r['minus']}`", f"{r['mean']:+.4f}",
                                   format_bounds(r["low"], r["high"], "+.4f"), f"{r['situations_won']}/{r['situations']}",
                                   f"{r['sign_p']:.3f}"] for r in g["rows"]]))
    return md


def _diff(v: dict[str, Any]) -> list[str]:
    return [f"{v['mean']:+.4f}", format_bounds(v["low"], v["high"], "+.4f"), f"{v['wins']}/{v['ties']}/{v['losses']}"]


def situations_markdown(study: dict[str, Any]) -> str:
    """situations.md: the methods x situations table, then the paired differences."""
    per = study["per_situation"]
    names = list(per)
    metric = next(iter(per.values()))["metric"] if per else "metric"
    md = [f"# {study['name']}: one study per situation\n",
          f"Situations of `{study['instance_set']}`; seeds {study['seeds']}; selector `{study['agent']}` "
          f"({study['action_mode']}, observation `{study['observation']}`) trained for {study['episodes']} episodes "
          f"in each situation on its own episodes"
          + (f"; `transfer`: the agent of `{study['transfer_checkpoint']}`, no training" if study["transfer_checkpoint"]
             else "") + f". Test {metric} on the held-out split, mean ± std over seeds; **bold**: the highest mean "
          f"(the winner). Each run's own report: `<situation>/results.md`.\n"]
    for name in names:  # a teacher no better than the majority class or the linear probe, said first
        warning = (per[name].get("teacher") or {}).get("warning")
        if warning:
            md.append(f"**Situation `{name}`: {warning}**\n")
    cells: dict[str, list[str]] = {}
    for name in names:
        for t in per[name]["methods"]:
            text = f"{t['mean']:.4f} ± {t['std']:.4f}" if t["n"] else "-"
            cells.setdefault(t["method"], []).append(f"**{text}**" if t["method"] == per[name]["winner"] else text)
    md.append(markdown_table(["method", *names], [[m, *v] for m, v in cells.items()]
                             + [["teacher", *(f"{per[n]['teacher']['metric']:.4f}" for n in names)],
                                ["winner", *(f"`{per[n]['winner']}`" for n in names)],
                                ["best fixed (chosen on dev)", *(f"`{per[n]['best_fixed']}`" for n in names)]]))
    md.append(f"\nPaired difference over the shared seeds, learned method minus baseline: mean, {INTERVAL_TEXT}, "
              "seeds won/tied/lost. The best fixed mask is chosen on the dev probe within the situation.\n")
    rows = []
    for name in names:
        for learned, vs in per[name]["comparisons"].items():
            for ref, v in vs.items():
                label = f"best fixed (`{v['baseline']}`)" if ref == "best_fixed" else f"`{ref}`"
                rows.append([name, learned, label, *_diff(v)])
    md.append(markdown_table(["situation", "method", "minus", "mean diff", "95% CI", "W/T/L"], rows))
    md.extend(_flatness_markdown(per))
    md.extend(_pooled_markdown(study.get("pooled") or {}))
    md.extend(_headroom_markdown(study.get("headroom")))
    md.append("\nSituations (DistillConfig overrides over the preset):\n")
    md.append(markdown_table(["situation", "overrides", "task", "run folder"],
                             [[n, per[n]["overrides"] or "{}", per[n]["task"], f"`{per[n]['run']}`"] for n in names]))
    return "\n".join(md)


def print_situations(study: dict[str, Any], out=None) -> None:
    """The per-situation table (situations.md) on ``out`` (stdout)."""
    print("\n" + situations_markdown(study), file=sys.stdout if out is None else out)


def plot_heatmap_grid(panels: dict[str, dict[str, np.ndarray]], knowledge: list[str], path: str | Path,
                      title: str) -> None:
    """One knowledge x phase heatmap per row label (a learned method) and column (a situation),
    drawn as :func:`experiments.report.plot_heatmap` draws one; an empty panel where a method did
    not run in a situation."""
    plt = _figure()
    rows = list(panels)
    cols = list(dict.fromkeys(name for row in panels.values() for name in row))
    k = len(knowledge)
    p = max(m.shape[1] for row in panels.values() for m in row.values())
    fig, axes = plt.subplots(len(rows), len(cols), squeeze=False,
                             figsize=(len(cols) * max(4.0, 0.5 * p + 2.5), len(rows) * (0.55 * k + 2.0)))
    fig.subplots_adjust(hspace=0.55, wspace=0.15)  # room for each row's phase label and the next row's titles
    im = None
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            if col not in panels[row]:
                ax.axis("off")
                continue
            labelled = j == 0 or cols[j - 1] not in panels[row]  # knowledge names once per row
            im = draw_heatmap(ax, panels[row][col], knowledge if labelled else None, f"{col}: {row}")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), label="mean weight / selection frequency")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    plt.close(fig)
