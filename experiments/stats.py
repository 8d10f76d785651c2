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
:func:`hierarchical_bootstrap` mean over situations with a CI that resamples situations, then
                               seeds within each (situations are a sample too)
:func:`paired_situations`      a paired difference over (situation, seed): hierarchical CI,
                               situations won and lost, sign test over situations
:func:`sign_test`              two-sided exact sign test of paired differences
:func:`paired_difference`      mean paired difference over seeds with a Student-t CI
=============================  ===================================================================

Only numpy; replicates come from a seeded ``numpy.random.Generator``, so the intervals are
reproducible.  The intervals are percentile intervals, as rliable's default.  A sample with a
single run (per task) has no interval: its bounds are NaN, written :data:`NO_INTERVAL` by
:func:`format_interval` / :func:`format_bounds` (and ``null`` in JSON).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence, Union

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
    "mean_std",
    "t_interval",
    "paired_difference",
    "hierarchical_bootstrap",
    "paired_situations",
    "sign_test",
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


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval of the mean (NaN bounds for a single
    value: see :data:`experiments.stats.NO_INTERVAL`)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half


def paired_difference(a: dict[int, float], b: dict[int, float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean of ``a[s] - b[s]`` over the seeds both have, with a t confidence interval."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if not diffs:
        return {"n": 0, "mean": math.nan, "low": math.nan, "high": math.nan, "wins": 0}
    m, lo, hi = t_interval(diffs, confidence)
    return {"n": len(diffs), "mean": m, "low": lo, "high": hi, "wins": int(sum(d > 0 for d in diffs))}


def hierarchical_bootstrap(scores: Scores, reps: int = 2000, confidence: float = 0.95,
                           seed: int = 0) -> tuple[float, float, float]:
    """Mean over situations of each situation's mean over seeds, with a two-level percentile
    bootstrap interval: each replicate resamples the situations with replacement, then the seeds
    within each drawn situation.  Use it when the situations are themselves a sample (held-out
    instances): the interval then covers a new draw of situations, not only of seeds.

    ``scores`` is one array of seed values per situation (see :func:`as_tasks`); a single
    situation gives the seed-level (stratified) interval, a single value NaN bounds.
    """
    _check_confidence(confidence)
    tasks = as_tasks(scores)
    point = aggregate_mean(tasks)
    if len(tasks) == 1:
        return interval_estimate(tasks, "mean", confidence, reps, seed)
    rng = np.random.default_rng(seed)
    n = len(tasks)
    replicates = np.empty(reps)
    picks = _resample_indices(rng, n, reps)
    for r in range(reps):
        total = 0.0
        for i in picks[r]:
            t = tasks[i]
            total += float(t[rng.integers(0, len(t), len(t))].mean())
        replicates[r] = total / n
    low, high = _percentile_interval(replicates, confidence)
    return point, low, high


def sign_test(differences: Sequence[float]) -> float:
    """Two-sided exact sign test: the probability, under "each nonzero difference is as likely
    positive as negative", of a split at least as lopsided as the one observed (ties dropped;
    1.0 when nothing is left)."""
    d = np.asarray(differences, dtype=np.float64)
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    n = pos + neg
    if n == 0:
        return 1.0
    k = min(pos, neg)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return float(min(1.0, 2.0 * tail))


def paired_situations(a: dict[tuple[str, int], float], b: dict[tuple[str, int], float], reps: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> dict[str, object]:
    """``a - b`` paired on (situation, seed), for two learners scored on the same situations and
    seeds: the mean over situations of the per-situation mean difference with a hierarchical
    bootstrap interval (:func:`hierarchical_bootstrap`), how many situations ``a`` wins (mean
    difference > 0) and loses, the sign test over situations and each situation's mean
    difference.  Pairs only one side has are left out."""
    by_situation: dict[str, list[float]] = {}
    for key in sorted(set(a) & set(b)):
        by_situation.setdefault(str(key[0]), []).append(a[key] - b[key])
    if not by_situation:
        return {"situations": 0, "pairs": 0, "mean": math.nan, "low": math.nan, "high": math.nan, "wins": 0,
                "losses": 0, "sign_p": 1.0, "per_situation": {}}
    per = {s: float(np.mean(v)) for s, v in by_situation.items()}
    mean, low, high = hierarchical_bootstrap([np.asarray(v) for v in by_situation.values()], reps, confidence, seed)
    return {"situations": len(per), "pairs": sum(len(v) for v in by_situation.values()), "mean": mean,
            "low": low, "high": high, "wins": sum(d > 0 for d in per.values()),
            "losses": sum(d < 0 for d in per.values()), "sign_p": sign_test(list(per.values())),
            "per_situation": per}
