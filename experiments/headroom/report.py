"""The headroom report: ``results.md`` (:func:`render_markdown`) and ``headroom.png`` (:func:`plot`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..report import _figure, _save, markdown_table


def _ci(d: dict[str, Any]) -> str:
    if not d or d.get("n", 0) == 0 or d.get("mean") is None or not math.isfinite(d["mean"]):
        return "n/a"
    if d.get("low") is None or not math.isfinite(d["low"]):
        return f"{d['mean']:+.4f} (CI n/a: 1 pair)"
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def render_markdown(res: dict[str, Any]) -> str:
    lines = [f"# Headroom on `{res['env']}`", ""]
    one = res["held_out_instances"] == ["None"]
    where = ("One instance (the env as made): choices and scores differ in seeds and splits only. " if one else
             f"Train instances: {', '.join(res['train_instances'])}. Held-out instances: "
             f"{', '.join(res['held_out_instances'])}. ")
    lines.append(f"Knowledge (bit order): {', '.join(res['knowledge'])}. Env reward: `{res['env_reward']}`. "
                 f"{where}Choices on selection seeds {res['selection_seeds']} "
                 f"by the dev-split metric; scores on test seeds {res['test_seeds']} (greedy oracles: "
                 f"{res['greedy_seeds']}) by the test-split metric, on the held-out instances.")
    lines.append("")
    h = res["headroom"]
    if h:
        lines.append(f"**Headroom** (best instance-aware or dynamic policy minus the single best fixed mask "
                     f"`{res['best_fixed']}`): `{h['policy']}` {_ci(h)}, {h['wins']} of {h['n']} pairs won.")
        lines.append("")
    ordered = sorted(res["policies"], key=lambda r: -(r["test_mean"] if r["n"] else -1e9))
    lines.append(markdown_table(
        ["policy", "kind", "held-out test metric (mean ± std)", "n", "paired diff vs best fixed (95% CI)",
         "how chosen"],
        [[f"`{r['policy']}`", r["kind"], f"{r['test_mean']:.4f} ± {r['test_std']:.4f}" if r["n"] else "n/a",
          r["n"], _ci(r["diff_vs_best_fixed"]) if r["policy"] != f"fixed:{res['best_fixed']}" else "(reference)",
          r["chosen"]] for r in ordered]))
    lines.extend(sources_section(res))
    lines.append("## The best mask per held-out instance")
    lines.append("")
    lines.append(markdown_table(["instance", "chosen on dev (selection seeds)", "best on test (test seeds)"],
                                [[i, f"`{v['chosen_on_dev']}`", f"`{v['best_on_test']}`"]
                                 for i, v in res["per_instance"].items()]))
    lines.append("## Reward alignment (random-mask policies on the train instances)")
    lines.append("")
    lines.append(markdown_table(
        ["reward", "episodes", "Pearson (return, dev)", "Spearman (return, dev)", "within-instance Spearman (dev)",
         "Pearson (return, test)", "Spearman (return, test)", "within-instance Spearman (test)"],
        [[f"`{a['reward']}`", a["episodes"], _num(a["pearson_dev"]), _num(a["spearman_dev"]),
          _num(a["within_instance_spearman_dev"]), _num(a["pearson_test"]), _num(a["spearman_test"]),
          _num(a["within_instance_spearman_test"])] for a in res["reward_alignment"]]))
    lines.append(f"Wall time: {res['wall_seconds']:.0f} s (this invocation).")
    return "\n".join(lines) + "\n"


def _situations_ci(d: dict[str, Any] | None) -> str:
    if not d or not d.get("situations"):
        return "n/a"
    return _ci({"n": d["pairs"], **d})


def sources_section(res: dict[str, Any]) -> list[str]:
    """"Sources of gain": the oracles, the value of switching, the observable baselines and the
    best fixed mask, then the per-situation choices (absent from a run made before the section)."""
    if "switching" not in res:
        return []
    rows = {r["policy"]: r for r in res["policies"]}
    sw = res["switching"]
    lines = ["## Sources of gain", "",
             "Each held-out situation's choice is made on its own selection seeds by dev (the oracles) or from "
             "the train situations' selection episodes alone (the baselines); all are scored on the test seeds. "
             "Differences are paired on (situation, test seed); the CIs resample situations, then seeds "
             f"({sw.get('interval', 'percentile')} bootstrap, {sw.get('reps', 2000)} resamples; "
             "`experiments.stats.compare`). The *value of switching* is `oracle_schedule` − `oracle_constant`. "
             "`lookup` plays the best mask of the nearest train situation in the observable-feature space "
             "(standardised by the train situations' std); `bandit` is a one-decision contextual bandit (per mask a "
             "ridge regression of dev on the observable situation) fit with full exploration (every mask on every "
             "train situation)." + ("" if "lookup" in rows else " `lookup` and `bandit` are absent: the units hold "
                                    "no observable situation (a run made before it was recorded)."), ""]
    table = []
    for name in ("oracle_constant", "oracle_schedule", "value of switching", "lookup", "bandit", "best fixed"):
        if name == "value of switching":
            table.append([f"**{name}** (`oracle_schedule` − `oracle_constant`)", f"{sw['mean']:+.4f} ± {sw['std']:.4f}",
                          _situations_ci(sw), f"{sw['situation_wins']} of {sw['situations']} positive"])
            continue
        r = rows.get(f"fixed:{res['best_fixed']}" if name == "best fixed" else name)
        if r is None:
            continue
        d = None if name == "best fixed" else r.get("diff_vs_best_fixed")
        label = f"best fixed `{res['best_fixed']}`" if name == "best fixed" else f"`{name}`"
        table.append([label, f"{r['test_mean']:.4f} ± {r['test_std']:.4f}" if r["n"] else "n/a",
                      "(reference)" if d is None else _situations_ci(d),
                      "" if d is None else f"{d['situation_wins']} of {d['situations']}"])
    lines.append(markdown_table(["policy", "held-out test metric (mean ± std)",
                                 "paired diff vs best fixed (95% CI, situations then seeds)", "situations won"], table))
    stab, choices = res["stability"]["per_situation"], res["choices"]
    lines.append(markdown_table(
        ["situation", "oracle_constant (dev)", "oracle_schedule (dev)", "value of switching (test)",
         f"stability constant / schedule ({res['stability']['reps']} resamples)", "lookup (nearest)", "bandit"],
        [[s, f"`{choices['oracle_constant'][s]}`", f"`{choices['oracle_schedule'][s]}`",
          _num(sw["per_situation"].get(s)), f"{stab[s]['oracle_constant']:.0%} / {stab[s]['oracle_schedule']:.0%}",
          f"`{choices['lookup'][s]}` ({res['lookup_neighbour'][s]})" if "lookup" in choices else "n/a",
          f"`{choices['bandit'][s]}`" if "bandit" in choices else "n/a"] for s in choices["oracle_constant"]]))
    return lines


def plot(res: dict[str, Any], path: Path) -> None:

    plt = _figure()
    rows = [r for r in res["policies"] if r["n"]]
    fixed = sorted([r for r in rows if r["policy"].startswith("fixed:")], key=lambda r: -r["test_mean"])
    others = [r for r in rows if not r["policy"].startswith("fixed:")]
    show = others + fixed[:6]
    show.sort(key=lambda r: r["test_mean"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4, 0.35 * len(show) + 1)))
    colours = {"best fixed": "tab:blue", "fixed": "tab:gray", "instance-aware": "tab:green", "baseline": "tab:green",
               "dynamic": "tab:orange", "oracle": "tab:purple"}
    ax1.barh([r["policy"] for r in show], [r["test_mean"] for r in show],
             xerr=[r["test_std"] for r in show], color=[colours[r["kind"]] for r in show])
    lo = min(r["test_mean"] - r["test_std"] for r in show)
    ax1.set_xlim(max(0.0, lo - 0.05), 1.0)
    ax1.set_xlabel("held-out test metric (mean ± std)")
    ax1.set_title("policies (6 best fixed masks shown)")
    insts = list(res["per_instance"])
    masks = [r["policy"][6:] for r in sorted([r for r in rows if r["policy"].startswith("fixed:")],
                                            key=lambda r: r["policy"])]
    grid = np.asarray([[res["per_instance"][i]["test_by_mask"][m] for m in masks] for i in insts])
    im = ax2.imshow(grid, aspect="auto", cmap="viridis")
    ax2.set_xticks(range(len(masks)), masks, rotation=90, fontsize=7)
    ax2.set_yticks(range(len(insts)), insts, fontsize=8)
    ax2.set_title(f"test metric of each fixed mask ({''.join(k[0] for k in res['knowledge'])} bits)")
    fig.colorbar(im, ax=ax2)
    fig.suptitle(f"headroom on {res['env']}")
    _save(fig, path)
    plt.close(fig)

