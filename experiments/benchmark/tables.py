"""The benchmark's markdown: the summary table per env, the per-instance tables of held-out
situations and what each learner selected there (written to ``summary.md`` by
:func:`~experiments.benchmark.summary.summarize`)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from experiments import stats
from experiments.report import markdown_table

from .grid import REFERENCE_ALGO, BenchmarkConfig


def _fmt(row: dict[str, Any], key: str, digits: int = 3) -> str:
    """``point [low, high]`` of ``key`` (its bounds are ``key_low``/``key_high``; for the
    probability of improvement ``poi_low``/``poi_high``), or a dash when absent."""
    low_key, high_key = {"poi": ("poi_low", "poi_high"), "diff": ("diff_low", "diff_high")}.get(
        key.split("_")[0], (f"{key}_low", f"{key}_high"))
    value = row.get(key)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "—"
    return stats.format_interval(value, row[low_key], row[high_key], digits)


def _per_instance_markdown(rows: list[dict[str, Any]],
                           payloads_by_algo: dict[str, dict[str, list[dict[str, Any]]]],
                           eval_split: str = "test") -> list[str]:
    """For instance envs: each algorithm's final test metric on each held-out situation (mean over
    its runs' evaluation episodes there); for a selection run (``eval_split="dev"``) its dev
    metric on each train situation."""
    lines: list[str] = []
    for env_id, algos in payloads_by_algo.items():
        per: dict[str, dict[str, float]] = {}
        for algo, payloads in algos.items():
            values: dict[str, list[float]] = {}
            for payload in payloads:
                arrays = payload["arrays"]
                if "eval_instances" not in arrays or not len(arrays["eval_instances"]):
                    continue
                for inst, metric in zip(arrays["eval_instances"], arrays["test_metrics"][-1]):
                    if str(inst) != "None":
                        values.setdefault(str(inst), []).append(float(metric))
            if values:
                per[algo] = {inst: float(np.mean(v)) for inst, v in values.items()}
        if not per:
            continue
        instances = sorted({i for v in per.values() for i in v})
        order = [r["algorithm"] for r in sorted((r for r in rows if r["env"] == env_id), key=lambda r: -r["test_iqm"])]
        what = {"dev": "dev metric per train", "held-out-dev": "dev metric per held-out"}.get(
            eval_split, "test metric per held-out")
        lines += [f"### {env_id}: {what} instance (mean over runs and evaluation seeds)", ""]
        lines.append(markdown_table(["algorithm", *instances],
                                    [[a, *(f"{per[a].get(i, math.nan):.3f}" for i in instances)]
                                     for a in order if a in per]))
    return lines


def _selection_per_instance_markdown(rows: list[dict[str, Any]],
                                     payloads_by_algo: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    """For instance envs: what each *learner*'s final policy played on each evaluation situation
    -- the mean selection frequency (mask) or weight of every knowledge type over phases and
    episodes, and for a one-decision mask policy its masks with counts (where the per-phase
    heatmap is a single column and cannot show that it picks per situation)."""
    lines: list[str] = []
    learners = {(r["env"], r["algorithm"]) for r in rows if isinstance(r.get("train_episodes"), (int, float))
                and r["train_episodes"] > 0}
    for env_id, algos in payloads_by_algo.items():
        for algo, payloads in algos.items():
            if (env_id, algo) not in learners:
                continue
            actions: dict[str, list[np.ndarray]] = {}
            knowledge: list[str] = []
            for payload in payloads:
                arrays = payload["arrays"]
                if "eval_instances" not in arrays or "final_actions" not in arrays:
                    continue
                knowledge = list(payload["result"]["knowledge"])
                for inst, act in zip(arrays["eval_instances"], arrays["final_actions"]):
                    if str(inst) != "None":
                        actions.setdefault(str(inst), []).append(np.asarray(act, dtype=float))
            if not actions:
                continue
            one_mask = all(a.shape[0] == 1 and np.isin(a, (0.0, 1.0)).all() for v in actions.values() for a in v)
            header = ["instance", "episodes", *knowledge] + (["masks played"] if one_mask else [])
            table = []
            for inst in sorted(actions):
                stacked = np.stack(actions[inst])  # (episodes, phases, K)
                row = [inst, len(stacked), *(f"{x:.2f}" for x in np.nanmean(stacked, axis=(0, 1)))]
                if one_mask:
                    counts = Counter("".join(str(int(x)) for x in a[0]) for a in stacked)
                    row.append(", ".join(f"`{m}` x{n}" for m, n in counts.most_common()))
                table.append(row)
            lines += [f"### {env_id}: what `{algo}`'s final policy selected per evaluation instance (mean over "
                      f"phases and episodes)", "", markdown_table(header, table)]
    return lines


def _summary_markdown(rows: list[dict[str, Any]], aggregate: list[dict[str, Any]], config: BenchmarkConfig,
                      payloads_by_algo: dict[str, dict[str, list[dict[str, Any]]]] | None = None) -> str:
    payloads_by_algo = payloads_by_algo or {}
    pct = f"{config.confidence:.0%}"
    split = getattr(config, "eval_split", "test")
    where = "train" if split == "dev" else "held-out"
    lines = [f"# Benchmark `{config.name}`", "",
             f"Held-out evaluation of the final policy (deterministic; {config.eval_episodes} evaluation seed(s) "
             f"per run, each on every {where} instance of an instance env; students unseen in training). "
             f"Point estimates with {pct} stratified-bootstrap percentile CIs "
             f"({config.bootstrap_reps} resamples) over runs (seeds); IQM = interquartile mean. "
             f"P(> {REFERENCE_ALGO}) = probability that a run of the algorithm has a higher test metric than a "
             f"run of {REFERENCE_ALGO} (ties count half).", ""]
    if split != "test":
        which = "*train*" if split == "dev" else "held-out"
        lines += [f"**Selection run (`--eval-split {split}`): every \"test\" column below is the dev-split metric "
                  f"of the {which} instances on selection seeds. Choose settings on it; report only a run on "
                  f"test.**", ""]
    lines += [f"Paired diff = mean over seeds of (algorithm - {config.baseline}) test metric, each seed's runs "
              f"scored on the same held-out episodes, with a {pct} {stats.INTERVAL} bootstrap interval over the "
              f"training seeds ({stats.REPS} resamples, `experiments.stats.compare`); wins = seeds won.", ""]
    header = ["algorithm", "mode", "runs", "train eps", "test mean", "test IQM", f"paired diff vs {config.baseline}",
              "wins", "return mean", "return IQM", f"P(> {REFERENCE_ALGO})", "s/run"]
    envs = list(dict.fromkeys(r["env"] for r in rows))
    for env_id in envs:
        env_rows = sorted((r for r in rows if r["env"] == env_id), key=lambda r: -r["test_iqm"])
        metric = env_rows[0]["metric_name"]
        lines += [f"## {env_id} (test metric: {metric})", ""]
        table = [[r["algorithm"], r["action_mode"], r["runs"], r["train_episodes"], _fmt(r, "test_mean"),
                  _fmt(r, "test_iqm"), _fmt(r, "diff_vs_baseline", 4),
                  "—" if not math.isfinite(r["diff_wins"]) else f"{int(r['diff_wins'])}/{r['runs']}",
                  _fmt(r, "return_mean"), _fmt(r, "return_iqm"), _fmt(r, "poi_vs_random_hard", 2),
                  f"{r['seconds_per_run']:.1f}"] for r in env_rows]
        lines.append(markdown_table(header, table))
    lines += _per_instance_markdown(rows, payloads_by_algo, getattr(config, "eval_split", "test"))
    lines += _selection_per_instance_markdown(rows, payloads_by_algo)
    if aggregate:
        lines += ["## All envs (test metric, stratified by env)", ""]
        table = [[r["algorithm"], r["runs"], _fmt(r, "test_mean"), _fmt(r, "test_iqm"), _fmt(r, "poi_vs_random_hard", 2)]
                 for r in sorted(aggregate, key=lambda r: -r["test_iqm"])]
        lines.append(markdown_table(["algorithm", "runs", "test mean", "test IQM", f"P(> {REFERENCE_ALGO})"], table))
    return "\n".join(lines)


