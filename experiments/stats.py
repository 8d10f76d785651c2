"""Reliable aggregate statistics for few-run RL results (after rliable, Agarwal et al. 2021).

Scores are given per *task* (here: per environment), one value per *run* (a training seed):

* a 1-D array: one task, its runs;
* a 2-D array ``(runs, tasks)``: rliable's score-matrix layout;
* a sequence of 1-D arrays: tasks with possibly different numbers of runs.

=============================  ===================================================================
function                       what it computes
=============================  ===================================================================
:func:`interquartile_mean`     mean of the middle 50% of all scores (``scipy.stats.trim_mean(x,
                               0.25)`` on the pooled runs: ``floor(n / 4)`` cut from each end)
:func:`aggregate_mean`         mean over tasks of each task's mean over runs
:func:`stratified_bootstrap`   bootstrap replicates of a statistic, resampling runs with
                               replacement *within each task* (stratified by task)
:func:`interval_estimate`      point estimate and percentile confidence interval of a statistic
:func:`probability_of_improvement`  ``P(X > Y) + 0.5 P(X = Y)`` for a random run of X and one of
                               Y, averaged over tasks (the Mann-Whitney U statistic / ``n m``)
:func:`poi_interval`           the same with a stratified-bootstrap CI (X and Y resampled
                               independently within each task)
=============================  ===================================================================

Only numpy; replicates come from a seeded ``numpy.random.Generator``, so the intervals are
reproducible.  The intervals are percentile intervals, as rliable's default.  A sample with a
single run (per task) has no interval: its bounds are NaN, written :data:`NO_INTERVAL` by
:func:`format_interval` / :func:`format_bounds` (and ``null`` in JSON).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import numpy as np

__all__ = [
    "Scores",
    "as_tasks",
    "interquartile_mean",
    "aggregate_mean",
    "aggregate_iqm",
    "STATISTICS",
    "stratified_bootstrap",
    "interval_estimate",
    "probability_of_improvement",
    "poi_interval",
    "format_interval",
    "format_bounds",
    "NO_INTERVAL",
]

#: how an interval that one run cannot give is written (terminal, markdown, plots)
NO_INTERVAL = "n/a (1 seed)"

Scores = Union[np.ndarray, Sequence[float], Sequence[Sequence[float]]]
#: a statistic of a list of per-task score arrays
Statistic = Callable[[list[np.ndarray]], float]


def as_tasks(scores: Scores) -> list[np.ndarray]:
    """Scores as a list of 1-D float arrays, one per task.

    Raises:
        ValueError: no tasks, a task without runs, a non-finite score, or more than 2 dimensions.
    """
    if isinstance(scores, np.ndarray) or (len(scores) and np.isscalar(scores[0])):
        arr = np.asarray(scores, dtype=np.float64)
        if arr.ndim == 1:
            tasks = [arr]
        elif arr.ndim == 2:
            tasks = [arr[:, j] for j in range(arr.shape[1])]
        else:
            raise ValueError(f"scores must be 1-D (runs) or 2-D (runs x tasks), got shape {arr.shape}")
    else:
        tasks = [np.asarray(t, dtype=np.float64).reshape(-1) for t in scores]
    if not tasks:
        raise ValueError("scores hold no task")
    for j, t in enumerate(tasks):
        if t.size == 0:
            raise ValueError(f"task {j} has no runs")
        if not np.all(np.isfinite(t)):
            raise ValueError(f"task {j} has non-finite scores {t.tolist()}")
    return tasks


def _trimmed_mean_sorted(sorted_values: np.ndarray) -> np.ndarray:
    """Interquartile mean along the last axis of already sorted values."""
    n = sorted_values.shape[-1]
    cut = int(0.25 * n)
    return sorted_values[..., cut:n - cut].mean(axis=-1)


def interquartile_mean(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean (IQM) of the pooled values: sort, drop ``floor(n / 4)`` values from
    each end, average the rest (``scipy.stats.trim_mean(values, 0.25)``; rliable's IQM).

    Examples: ``[1..8] -> mean(3, 4, 5, 6) = 4.5``; ``[0, 1, 2, 3, 100] -> mean(1, 2, 3) = 2``;
    fewer than 4 values -> the plain mean.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    if x.size == 0:
        raise ValueError("interquartile_mean of no values")
    return float(_trimmed_mean_sorted(x))


def aggregate_mean(tasks: list[np.ndarray]) -> float:
    """Mean over tasks of each task's mean over runs."""
    return float(np.mean([t.mean() for t in tasks]))


def aggregate_iqm(tasks: list[np.ndarray]) -> float:
    """IQM of all runs of all tasks pooled."""
    return interquartile_mean(np.concatenate(tasks))


STATISTICS: dict[str, Statistic] = {"mean": aggregate_mean, "iqm": aggregate_iqm}


def _resample_indices(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    return rng.integers(0, n, size=(reps, n))


def stratified_bootstrap(scores: Scores, statistic: str = "mean", reps: int = 2000, seed: int = 0) -> np.ndarray:
    """``reps`` bootstrap replicates of ``statistic`` (``"mean"`` or ``"iqm"``): each replicate
    resamples, for every task separately, as many runs as it has, with replacement.

    Returns:
        float64 array of shape ``(reps,)``.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; valid: {sorted(STATISTICS)}")
    if not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps must be a positive integer, got {reps!r}")
    tasks = as_tasks(scores)
    rng = np.random.default_rng(seed)
    resampled = [t[_resample_indices(rng, t.size, reps)] for t in tasks]  # each (reps, n_task)
    if statistic == "mean":
        return np.mean([r.mean(axis=1) for r in resampled], axis=0)
    pooled = np.sort(np.concatenate(resampled, axis=1), axis=1)
    return _trimmed_mean_sorted(pooled)


def _percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _check_confidence(confidence: float) -> None:
    if not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def interval_estimate(scores: Scores, statistic: str = "mean", confidence: float = 0.95, reps: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and stratified-bootstrap percentile interval of ``statistic``.

    Returns:
        ``(point, low, high)``; with a single run per task there is no interval: ``low`` and
        ``high`` are NaN (resampling one run would give a zero-width interval, a false certainty).
    """
    _check_confidence(confidence)
    tasks = as_tasks(scores)
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; valid: {sorted(STATISTICS)}")
    point = STATISTICS[statistic](tasks)
    if _single_run(tasks):
        return point, math.nan, math.nan
    low, high = _percentile_interval(stratified_bootstrap(tasks, statistic, reps, seed), confidence)
    return point, low, high


def _single_run(tasks: list[np.ndarray]) -> bool:
    """Whether every task has a single run (then no interval can be estimated)."""
    return all(t.size < 2 for t in tasks)


def _poi_task(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + 0.5 P(X = Y) over all pairs, along the last axes: x (..., n), y (..., m)."""
    gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return gt + 0.5 * eq


def probability_of_improvement(x: Scores, y: Scores) -> float:
    """Probability that a random run of X scores above a random run of Y (ties count half),
    averaged over tasks: 0.5 for identical samples, 1.0 when every X beats every Y.

    ``x`` and ``y`` must hold the same tasks (the number of runs may differ).
    """
    tx, ty = as_tasks(x), as_tasks(y)
    if len(tx) != len(ty):
        raise ValueError(f"x has {len(tx)} tasks, y has {len(ty)}; they must match")
    return float(np.mean([_poi_task(a, b) for a, b in zip(tx, ty)]))


def poi_interval(x: Scores, y: Scores, confidence: float = 0.95, reps: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """:func:`probability_of_improvement` with a stratified-bootstrap percentile interval (the
    runs of X and of Y are resampled independently within each task).

    Returns:
        ``(point, low, high)``; ``low`` and ``high`` are NaN when X or Y has a single run per
        task.
    """
    _check_confidence(confidence)
    tx, ty = as_tasks(x), as_tasks(y)
    point = probability_of_improvement(tx, ty)
    if _single_run(tx) or _single_run(ty):
        return point, math.nan, math.nan
    rng = np.random.default_rng(seed)
    per_task = []
    for a, b in zip(tx, ty):
        ra = a[_resample_indices(rng, a.size, reps)]
        rb = b[_resample_indices(rng, b.size, reps)]
        # chunk the (reps, n, m) comparison to bound memory
        chunk = max(1, 4_000_000 // max(1, a.size * b.size))
        per_task.append(np.concatenate([_poi_task(ra[i:i + chunk], rb[i:i + chunk]) for i in range(0, reps, chunk)]))
    low, high = _percentile_interval(np.mean(per_task, axis=0), confidence)
    return point, low, high


def format_bounds(low: float, high: float, spec: str = ".3f") -> str:
    """``"[0.901, 0.925]"`` with the format ``spec`` (e.g. ``"+.4f"``), or :data:`NO_INTERVAL`
    when a bound is not finite (one seed)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return NO_INTERVAL
    return f"[{low:{spec}}, {high:{spec}}]"


def format_interval(point: float, low: float, high: float, digits: int = 3) -> str:
    """``"0.912 [0.901, 0.925]"``; ``"0.912 [n/a (1 seed)]"`` without an interval; ``"nan"``
    when the point is not finite."""
    if not math.isfinite(point):
        return "nan"
    bounds = format_bounds(low, high, f".{digits}f")
    return f"{point:.{digits}f} {bounds if bounds.startswith('[') else f'[{bounds}]'}"
