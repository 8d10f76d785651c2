"""The benchmark's tables and plots, from the cell files alone.

    python -m experiments.benchmark.summary runs/benchmark-<name>   # regenerate the summary files

writes ``runs.csv``, ``summary.csv``, ``summary.md``, ``summary.json`` and ``plots/`` of a run
folder from its ``benchmark.json`` and the finished cells' ``result.json`` and
``evaluations.npz`` (what ``python -m experiments.benchmark`` writes at its end, too).  Per env
and algorithm: mean and IQM with stratified-bootstrap CIs of the test metric and the return,
probability of improvement over ``random_hard``, the paired difference with the baseline
(:func:`experiments.stats.compare`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments import stats
from experiments.stats import Score
from experiments.flags import add_config_flags, given_flags
from experiments.logs import add_verbosity_flags, get_logger, setup_logging
from experiments.report import (
    json_safe,
    plot_heatmap,
    plot_learning_curves,
    plot_selection_bars,
    write_csv,
)
from kd_env.io import atomic_write_json, atomic_write_text

from .cell import read_cell
from .tables import _summary_markdown
from .grid import REFERENCE_ALGO, BenchmarkConfig, Cell, _slug, env_slug
from .settings import AlgoSettings

RUN_COLUMNS = ["env", "algorithm", "seed", "action_mode", "train_episodes", "train_steps", "metric_name",
               "test_metric", "return", "probe_metric", "train_seconds", "eval_seconds", "total_seconds"]
SUMMARY_COLUMNS = [
    "env", "algorithm", "action_mode", "runs", "train_episodes", "metric_name",
    "test_mean", "test_mean_low", "test_mean_high", "test_iqm", "test_iqm_low", "test_iqm_high",
    "return_mean", "return_mean_low", "return_mean_high", "return_iqm", "return_iqm_low", "return_iqm_high",
    "poi_vs_random_hard", "poi_low", "poi_high", "diff_vs_baseline", "diff_low", "diff_high", "diff_wins",
    "seconds_per_run",
]


def _interval(values: Sequence[float] | list[np.ndarray], statistic: str, config: BenchmarkConfig) -> tuple[float, float, float]:
    return stats.interval_estimate(values, statistic, config.confidence, config.bootstrap_reps, seed=0)


def summarize(run_dir: Path, cells: Sequence[Cell], payloads: dict[Cell, dict[str, Any]],
              config: BenchmarkConfig) -> list[dict[str, Any]]:
    """Write runs.csv, summary.csv, summary.md and the plots; return the summary rows."""
    by_env: dict[str, dict[str, list[Cell]]] = {}
    for cell in cells:
        by_env.setdefault(cell.env_id, {}).setdefault(cell.algo, []).append(cell)
    run_rows = []
    for cell in cells:
        r = payloads[cell]["result"]
        run_rows.append({"env": cell.env_id, "algorithm": cell.algo, "seed": cell.seed,
                         "action_mode": cell.settings.action_mode, "train_episodes": r["train_episodes"],
                         "train_steps": r["train_steps"], "metric_name": r["metric_name"],
                         "test_metric": r["test_metric"], "return": r["return"], "probe_metric": r["probe_metric"],
                         "train_seconds": r["seconds"]["train"], "eval_seconds": r["seconds"]["eval"],
                         "total_seconds": r["seconds"]["total"],
                         **{f"freq_{k}": r["selection"][k] for k in r["knowledge"]}})
    knowledge_columns = list(dict.fromkeys(k for row in run_rows for k in row if k.startswith("freq_")))
    write_csv(run_dir / "runs.csv", run_rows, RUN_COLUMNS + knowledge_columns)

    rows: list[dict[str, Any]] = []
    for env_id, algos in by_env.items():
        reference = algos.get(REFERENCE_ALGO)
        reference_scores = [payloads[c]["result"]["test_metric"] for c in reference] if reference else None
        for algo, algo_cells in algos.items():
            results = [payloads[c]["result"] for c in algo_cells]
            test = [r["test_metric"] for r in results]
            returns = [r["return"] for r in results]
            row: dict[str, Any] = {"env": env_id, "algorithm": algo, "action_mode": algo_cells[0].settings.action_mode,
                                   "runs": len(results), "train_episodes": algo_cells[0].settings.episodes,
                                   "metric_name": results[0]["metric_name"],
                                   "seconds_per_run": float(np.mean([r["seconds"]["total"] for r in results]))}
            for prefix, values in (("test", test), ("return", returns)):
                for statistic in ("mean", "iqm"):
                    point, low, high = _interval(values, statistic, config)
                    row.update({f"{prefix}_{statistic}": point, f"{prefix}_{statistic}_low": low,
                                f"{prefix}_{statistic}_high": high})
            if reference_scores is not None and algo != REFERENCE_ALGO:
                point, low, high = stats.poi_interval(test, reference_scores, config.confidence, config.bootstrap_reps)
                row.update({"poi_vs_random_hard": point, "poi_low": low, "poi_high": high})
            else:
                row.update({"poi_vs_random_hard": math.nan, "poi_low": math.nan, "poi_high": math.nan})
            row.update(_paired_with_baseline(algo, algo_cells, algos.get(config.baseline), payloads, config))
            rows.append(row)
    aggregate = _aggregate_rows(by_env, payloads, config) if len(by_env) > 1 else []
    write_csv(run_dir / "summary.csv", rows + aggregate, SUMMARY_COLUMNS)
    atomic_write_json(run_dir / "summary.json", json_safe(rows + aggregate))  # null where no interval
    payloads_by_algo = {env_id: {algo: [payloads[c] for c in algo_cells] for algo, algo_cells in algos.items()}
                        for env_id, algos in by_env.items()}
    atomic_write_text(run_dir / "summary.md", _summary_markdown(rows, aggregate, config, payloads_by_algo))
    if config.plots:
        _plots(run_dir, by_env, payloads)
    return rows + aggregate


def _paired_with_baseline(algo: str, cells: Sequence[Cell], baseline: Sequence[Cell] | None,
                          payloads: dict[Cell, dict[str, Any]], config: BenchmarkConfig) -> dict[str, Any]:
    """Mean over seeds of (algorithm - baseline) test metric with :func:`experiments.stats.compare`'s
    interval over the training seeds; a cell and the baseline's cell of the same seed are scored
    on the same held-out episodes, so they pair (seeds only one side has are left out)."""
    empty = {"diff_vs_baseline": math.nan, "diff_low": math.nan, "diff_high": math.nan, "diff_wins": math.nan}
    if baseline is None or algo == config.baseline:
        return empty
    rows = [Score(name, "all episodes", c.seed, None, payloads[c]["result"]["test_metric"])
            for name, group in (("algo", cells), ("baseline", baseline)) for c in group]
    if not {c.seed for c in cells} & {c.seed for c in baseline}:
        return empty
    d = stats.compare(rows, "algo", "baseline", confidence=config.confidence, unpaired="drop")
    return {"diff_vs_baseline": d.mean, "diff_low": d.low, "diff_high": d.high, "diff_wins": d.wins}


def _aggregate_rows(by_env: dict[str, dict[str, list[Cell]]], payloads: dict[Cell, dict[str, Any]],
                    config: BenchmarkConfig) -> list[dict[str, Any]]:
    """Test metric over all envs (stratified by env) for the algorithms run on every env."""
    common = [a for a in next(iter(by_env.values())) if all(a in algos for algos in by_env.values())]
    rows = []
    for algo in common:
        tasks = [np.asarray([payloads[c]["result"]["test_metric"] for c in algos[algo]]) for algos in by_env.values()]
        row: dict[str, Any] = {"env": "all", "algorithm": algo, "action_mode": "", "runs": sum(t.size for t in tasks),
                               "train_episodes": "", "metric_name": "main"}
        for statistic in ("mean", "iqm"):
            point, low, high = _interval(tasks, statistic, config)
            row.update({f"test_{statistic}": point, f"test_{statistic}_low": low, f"test_{statistic}_high": high})
        if REFERENCE_ALGO in common and algo != REFERENCE_ALGO:
            ref = [np.asarray([payloads[c]["result"]["test_metric"] for c in algos[REFERENCE_ALGO]])
                   for algos in by_env.values()]
            point, low, high = stats.poi_interval(tasks, ref, config.confidence, config.bootstrap_reps)
            row.update({"poi_vs_random_hard": point, "poi_low": low, "poi_high": high})
        rows.append(row)
    return rows


def _plots(run_dir: Path, by_env: dict[str, dict[str, list[Cell]]], payloads: dict[Cell, dict[str, Any]]) -> None:
    folder = run_dir / "plots"
    for env_id, algos in by_env.items():
        slug = env_slug(env_id)
        curves: dict[str, dict[str, Any]] = {}
        frequencies: dict[str, dict[str, float]] = {}
        knowledge: list[str] = []  # every knowledge type of the env's runs (their env_kwargs may differ)
        for algo, algo_cells in algos.items():
            arrays = [payloads[c]["arrays"] for c in algo_cells]
            algo_knowledge = payloads[algo_cells[0]]["result"]["knowledge"]
            knowledge += [k for k in algo_knowledge if k not in knowledge]
            curves[algo] = {
                "timesteps": arrays[0]["timesteps"],
                "return": [a["results"].mean(axis=1) for a in arrays if len(a["timesteps"]) == len(arrays[0]["timesteps"])],
                "test": [a["test_metrics"].mean(axis=1) for a in arrays if len(a["timesteps"]) == len(arrays[0]["timesteps"])],
                "learns": algo_cells[0].learns,
            }
            actions = np.concatenate([a["final_actions"] for a in arrays])  # (runs * episodes, phases, K)
            heat = np.nanmean(actions, axis=0).T  # (K, phases)
            frequencies[algo] = dict(zip(algo_knowledge, np.nanmean(heat, axis=1)))
            plot_heatmap(np.nan_to_num(heat), algo_knowledge, folder / f"{slug}-selection-{_slug(algo)}.png",
                         f"{algo} on {env_id}: final policy's knowledge selection per phase "
                         f"({len(algo_cells)} seeds x {actions.shape[0] // len(algo_cells)} held-out episodes)")
        plot_learning_curves(curves, folder / f"{slug}-learning_curves.png", f"{env_id}: held-out evaluation")
        aligned = {a: np.array([f.get(k, np.nan) for k in knowledge]) for a, f in frequencies.items()}
        plot_selection_bars(aligned, knowledge, folder / f"{slug}-selection.png",
                            f"{env_id}: how often each knowledge type is selected (final policy, held-out)")


# ---- regenerating from a run folder -----------------------------------------------------------


def load_run(run_dir: str | Path) -> tuple[list[Cell], dict[Cell, dict[str, Any]], dict[str, Any]]:
    """The cells a run folder's ``benchmark.json`` names, the payloads of those that finished
    (read back from their files), and ``benchmark.json`` itself.

    Raises:
        FileNotFoundError: no ``benchmark.json`` in ``run_dir``.
    """
    run_dir = Path(run_dir)
    path = run_dir / "benchmark.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no benchmark.json: not a benchmark run folder")
    saved = json.loads(path.read_text(encoding="utf-8"))
    cells = [Cell(settings=AlgoSettings(**d["settings"]), seed=d["seed"], eval_every=d["eval_every"],
                  eval_episodes=d["eval_episodes"], eval_split=d.get("eval_split", "test"))
             for d in saved["cells"].values()]
    payloads = {cell: payload for cell in cells if (payload := read_cell(run_dir, cell)) is not None}
    return cells, payloads, saved


#: the :class:`~.grid.BenchmarkConfig` fields that are flags of the summary tool too
SUMMARY_FLAGS = ("baseline", "bootstrap_reps", "plots")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark.summary",
                                description="Regenerate a benchmark run folder's summary files (runs.csv, summary.*, "
                                            "plots/) from its cell files.")
    p.add_argument("run_dir", help="a run folder, runs/benchmark-<name>")
    add_config_flags(p, BenchmarkConfig, only=SUMMARY_FLAGS)  # the benchmark's own flags, declared once
    add_verbosity_flags(p)
    a = p.parse_args(argv)
    setup_logging(a)
    run_dir = Path(a.run_dir)
    try:
        cells, payloads, saved = load_run(run_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        get_logger("benchmark").error(f"error: {exc}")
        return 2
    finished = [c for c in cells if c in payloads]
    if not finished:
        get_logger("benchmark").error(f"error: {run_dir} holds no finished cell")
        return 1
    name = run_dir.name.removeprefix("benchmark-")
    fields = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    config = BenchmarkConfig(**{k: v for k, v in saved.items() if k in fields and k != "cells"}, name=name,
                             out=str(run_dir.parent), verbose=False, **given_flags(a, SUMMARY_FLAGS))
    summarize(run_dir, finished, payloads, config)
    print(f"wrote the summary of {len(finished)} of {len(cells)} cells to {run_dir} (summary.md, summary.csv, "
          f"summary.json, runs.csv{', plots/' if config.plots else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
