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
:func:`compare`                the paired difference of two methods over long-format score rows
                               (:class:`Score`): the mean over situations, a bootstrap interval
                               that resamples training seeds jointly across situations (or
                               situations, then evaluation seeds), wins and losses, the sign test;
                               the one paired comparison of every report
:func:`estimate`               one method's level with :func:`compare`'s interval
:func:`ratio`                  the ratio of two comparisons sharing their draws (a share of a gain)
:func:`sign_test`              two-sided exact sign test (exact binomial test, p = 1/2)
:func:`t_interval`             mean with a Student-t CI (:func:`t_quantile`: no scipy)
=============================  ===================================================================

Only numpy and the standard library (scipy is not a dependency); replicates come from a seeded
``numpy.random.Generator``, so the intervals are reproducible.  The rliable-style aggregate
intervals (:func:`interval_estimate`, :func:`poi_interval`) are percentile intervals, as rliable's
default; :func:`compare`'s are BCa (:data:`INTERVAL`) with :data:`REPS` resamples in every report
(docs/benchmarking.md, "Paired comparisons").  A sample with a
single run (per task) has no interval: its bounds are NaN, written :data:`NO_INTERVAL` by
:func:`format_interval` / :func:`format_bounds` (and ``null`` in JSON).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

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
    "t_quantile",
    "sign_test",
    "resample_indices",
    "REPS",
    "INTERVAL",
    "INTERVALS",
    "Score",
    "SCORE_FIELDS",
    "as_score",
    "Comparison",
    "compare",
    "estimate",
    "ratio",
    "score_rows",
    "write_scores",
    "read_scores",
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



def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` (a positive integer) degrees of freedom, from
    the exact finite series of its CDF (Abramowitz & Stegun 26.7.3-4) inverted by bisection; no
    scipy.  ``t_quantile(0.975, 2) = 4.3027``."""
    if not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df!r}")
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    if q == 0.5:
        return 0.0
    target = abs(2 * q - 1)  # P(|T| <= t)
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, int(df)) < target:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_two_sided(mid, int(df)) < target else (lo, mid)
    return math.copysign(0.5 * (lo + hi), q - 0.5)


def _t_two_sided(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's t with integer ``df``."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2/pi)(theta + sin cos (1 + 2/3 cos^2 + ... ))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1.3/2.4 cos^4 + ...)
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval of the mean (NaN bounds for a single
    value: see :data:`experiments.stats.NO_INTERVAL`)."""
    _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64)
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    half = t_quantile(0.5 + confidence / 2, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return m, m - half, m + half


def sign_test(differences: Sequence[float]) -> float:
    """Two-sided exact sign test (the exact binomial test of ``k`` positive among ``n`` nonzero
    differences against ``p = 1/2``, as ``scipy.stats.binomtest(k, n).pvalue``): the probability,
    under "each nonzero difference is as likely positive as negative", of a split at least as
    lopsided as the one observed, ``min(1, 2 P(X <= min(k, n - k)))`` for ``X ~ Bin(n, 1/2)``
    (ties dropped; 1.0 when nothing is left)."""
    d = np.asarray(differences, dtype=np.float64)
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    n = pos + neg
    if n == 0:
        return 1.0
    k = min(pos, neg)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return float(min(1.0, 2.0 * tail))


def resample_indices(n: int, reps: int, seed: int = 0) -> np.ndarray:
    """``(reps, n)`` indices drawn with replacement from ``range(n)`` by a seeded generator: the
    draws of a plain bootstrap of ``n`` units (the one place a runner gets them)."""
    return _resample_indices(np.random.default_rng(seed), n, reps)


# ---- paired comparisons: one engine ---------------------------------------------------------------

#: resamples of every comparison's bootstrap, in every report
REPS = 10_000
#: interval methods of :func:`compare`; :data:`INTERVAL` is the one every report uses
INTERVALS = ("bca", "percentile", "t")
INTERVAL = "bca"
#: what the unpaired rows of :func:`compare` do
UNPAIRED = ("error", "drop")


@dataclasses.dataclass(frozen=True)
class Score:
    """One long-format score row: ``method`` scored ``value`` on ``metric`` of ``split``, in
    ``situation``, by the agent trained with ``train_seed``, on the episode of ``eval_seed``.

    ``train_seed`` names a *trained agent that acts in several situations* (a benchmark cell's
    seed): :func:`compare` then resamples it jointly across situations.  Where each (situation,
    seed) is its own run, or nothing is trained (fixed masks, oracles, a study per situation),
    ``train_seed`` is ``None`` and the seed goes in ``eval_seed``.  Rows given as mappings take
    the same keys (``split`` and ``metric`` default to ``"test"`` and ``"main"``, the seeds to
    ``None``)."""

    method: str
    situation: str
    train_seed: int | None
    eval_seed: int | None
    value: float
    split: str = "test"
    metric: str = "main"


SCORE_FIELDS = tuple(f.name for f in dataclasses.fields(Score))


def as_score(row: Score | Mapping[str, Any]) -> Score:
    """A :class:`Score` from a :class:`Score` or a mapping with its keys."""
    if isinstance(row, Score):
        return row
    try:
        extra = sorted(set(row) - set(SCORE_FIELDS))
    except TypeError:
        raise ValueError(f"a score row is a Score or a mapping with keys {list(SCORE_FIELDS)}, got {row!r}") from None
    missing = [k for k in ("method", "situation", "value") if k not in row]
    if extra or missing:
        raise ValueError(f"score row {dict(row)!r}: unknown keys {extra}, missing keys {missing}; "
                         f"valid keys: {list(SCORE_FIELDS)}")
    return Score(**row)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What :func:`compare` finds for ``a - b`` (``b`` is ``None`` for :func:`estimate`, the
    level of ``a``).  :meth:`to_dict` gives it as JSON-ready data; ``replicates`` and
    ``jackknife`` (the bootstrap and leave-one-unit-out statistics) stay out of it."""

    a: str
    b: str | None
    metric: str
    split: str
    mean: float                 #: mean over situations of each situation's mean difference
    low: float                  #: interval bounds; NaN where no interval exists (one unit)
    high: float
    confidence: float
    interval: str               #: the interval method (:data:`INTERVALS`)
    resampling: str             #: what the bootstrap resamples, in words
    reps: int
    seed: int
    pairs: int                  #: paired rows
    dropped: int                #: rows left out as unpaired (``unpaired="drop"``)
    per_situation: dict[str, float]
    situation_wins: int         #: situations whose mean difference is above 0
    situation_ties: int
    situation_losses: int
    per_train_seed: dict[int, float]  #: mean difference over situations per training seed (joint rows)
    seeds: list[Any]            #: the seed-level units: training seeds, else eval seeds (one situation),
    diffs: list[float]          #: else "situation:seed"; and their mean differences
    wins: int                   #: seed-level units above 0, tied, below
    ties: int
    losses: int
    sign_p: float               #: exact two-sided sign test over situations (over seeds with one situation)
    sign_test_over: str         #: "situations" or "seeds"
    replicates: np.ndarray = dataclasses.field(repr=False, compare=False)
    jackknife: np.ndarray = dataclasses.field(repr=False, compare=False)

    @property
    def situations(self) -> int:
        return len(self.per_situation)

    @property
    def n(self) -> int:
        """The number of seed-level units (:attr:`seeds`)."""
        return len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("replicates", "jackknife")}
        out["per_train_seed"] = {str(k): v for k, v in self.per_train_seed.items()}
        out.update(situations=self.situations, n=self.n)
        return out


def _select(rows: list[Score], method: str, metric: str | None, split: str | None) -> list[Score]:
    """``method``'s rows with ``metric`` and ``split`` (``None``: any)."""
    mine = [s for s in rows if s.method == method]
    out = [s for s in mine if (metric is None or s.metric == metric) and (split is None or s.split == split)]
    if not out:
        raise ValueError(f"method {method!r} has no score rows with metric={metric!r}, split={split!r}; its rows "
                         f"hold metrics {sorted({s.metric for s in mine})}, splits {sorted({s.split for s in mine})}")
    return out


def _keyed(rows: list[Score], method: str) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    for s in rows:
        key = (str(s.situation), s.train_seed, s.eval_seed)
        if key in out:
            raise ValueError(f"method {method!r} has two score rows for (situation, train_seed, eval_seed) = {key} "
                             f"(metric {s.metric!r}, split {s.split!r}); each key must be scored once")
        if not math.isfinite(float(s.value)):
            raise ValueError(f"method {method!r} scored a non-finite value {s.value!r} at {key}")
        out[key] = float(s.value)
    return out


def _check_reps(reps: int) -> None:
    if not isinstance(reps, (int, np.integer)) or isinstance(reps, bool) or reps < 1:
        raise ValueError(f"reps must be a positive integer, got {reps!r}")


def compare(rows: Iterable[Score | Mapping[str, Any]], a: str, b: str, *, metric: str | None = None,
            split: str | None = None, reps: int = REPS, confidence: float = 0.95, seed: int = 0,
            interval: str = INTERVAL, unpaired: str = "error") -> Comparison:
    """``a - b`` over long-format score rows (:class:`Score`), paired on (situation, training
    seed, evaluation seed): the one paired comparison of every report.

    The point is the mean over situations of each situation's mean difference.  The interval
    resamples what was sampled (``reps`` bootstrap replicates from a generator seeded ``seed``):

    * rows with a **training seed** (one trained agent acts in every situation): the training
      seeds are drawn with replacement *jointly across situations* (a drawn seed brings its
      differences in every situation), and, independently, the situations; each (situation,
      training seed) cell is the mean over its evaluation seeds.  The grid must be complete.
    * rows without one: the situations are drawn, then the evaluation seeds within each drawn
      situation (a two-stage bootstrap); with one situation, its seeds.

    ``interval`` is ``"bca"`` (bias-corrected and accelerated; the acceleration from the
    jackknife over the resampled units), ``"percentile"`` or ``"t"`` (Student t over the
    outermost unit's differences: training seeds, else situations, else seeds).  One unit (one
    seed in one situation) gives NaN bounds.

    ``metric``/``split`` select rows (``None``: the rows must hold one).  ``unpaired``:
    ``"error"`` (a row of ``a`` or ``b`` with no partner raises) or ``"drop"`` (left out, counted
    in :attr:`Comparison.dropped`).

    Raises:
        ValueError: an unknown method, interval or ``unpaired``; no rows or no pairs; unpaired
            rows (with ``unpaired="error"``); duplicated or non-finite rows; several metrics or
            splits; an incomplete (situation, training seed) grid.
    """
    return _compare(rows, a, b, metric=metric, split=split, reps=reps, confidence=confidence, seed=seed,
                    interval=interval, unpaired=unpaired)


def estimate(rows: Iterable[Score | Mapping[str, Any]], a: str, *, metric: str | None = None,
             split: str | None = None, reps: int = REPS, confidence: float = 0.95, seed: int = 0,
             interval: str = INTERVAL) -> Comparison:
    """The level of ``a`` alone (its mean over situations of per-situation means) with the
    interval :func:`compare` gives a difference: the same resampling and interval method."""
    return _compare(rows, a, None, metric=metric, split=split, reps=reps, confidence=confidence, seed=seed,
                    interval=interval, unpaired="error")


def _compare(rows, a, b, *, metric, split, reps, confidence, seed, interval, unpaired) -> Comparison:
    if interval not in INTERVALS:
        raise ValueError(f"unknown interval method {interval!r}; valid: {list(INTERVALS)}")
    if unpaired not in UNPAIRED:
        raise ValueError(f"unknown unpaired={unpaired!r}; valid: {list(UNPAIRED)}")
    _check_confidence(confidence)
    _check_reps(reps)
    rows = list(map(as_score, rows))
    methods = sorted({s.method for s in rows})
    for name in (a, b) if b is not None else (a,):
        if name not in methods:
            raise ValueError(f"method {name!r} has no score rows; methods in the rows: {methods}")
    if a == b:
        raise ValueError(f"compare {a!r} with another method, not with itself")
    sel_a = _select(rows, a, metric, split)
    sel_b = _select(rows, b, metric, split) if b is not None else []
    for name, want in (("metric", metric), ("split", split)):
        found = sorted({getattr(s, name) for s in sel_a + sel_b})
        if want is None and len(found) > 1:
            raise ValueError(f"the rows of {a!r}{'' if b is None else f' and {b!r}'} hold several {name}s {found}; "
                             f"pass {name}= one of them")
    metric = metric if metric is not None else sel_a[0].metric
    split = split if split is not None else sel_a[0].split
    ka = _keyed(sel_a, a)
    if b is None:
        pairs = ka
        dropped = 0
    else:
        kb = _keyed(sel_b, b)
        only = sorted(set(ka) ^ set(kb), key=repr)
        if only and unpaired == "error":
            raise ValueError(f"{len(only)} score row(s) of {a!r} or {b!r} have no partner in the other, e.g. "
                             f"(situation, train_seed, eval_seed) = {only[0]}; compare pairs rows on that key "
                             f"(pass unpaired='drop' to leave them out)")
        pairs = {k: ka[k] - kb[k] for k in ka if k in kb}
        dropped = len(only)
        if not pairs:
            raise ValueError(f"{a!r} and {b!r} share no (situation, train_seed, eval_seed); nothing to pair")
    with_seed = {r.train_seed is not None for r in sel_a + sel_b}
    if len(with_seed) > 1:
        raise ValueError("some rows carry a train_seed and some do not; give every row one (the trained agent) "
                         "or none (then the seed is eval_seed)")
    design = _Joint(pairs) if with_seed == {True} else _TwoStage(pairs)
    replicates, jackknife = design.bootstrap(reps, seed)
    low, high = _interval(design, replicates, jackknife, confidence, interval)
    per_situation = design.per_situation()
    sit = np.asarray(list(per_situation.values()))
    labels, diffs = design.per_seed()
    d = np.asarray(diffs)
    over_situations = len(per_situation) > 1
    return Comparison(
        a=a, b=b, metric=metric, split=split, mean=design.point, low=low, high=high, confidence=confidence,
        interval=interval, resampling=design.describe() if interval != "t" else f"none: Student t over {design.outer_name()}",
        reps=int(reps), seed=seed, pairs=len(pairs),
        dropped=dropped, per_situation=per_situation, situation_wins=int((sit > 0).sum()),
        situation_ties=int((sit == 0).sum()), situation_losses=int((sit < 0).sum()),
        per_train_seed=design.per_train_seed(), seeds=labels, diffs=[float(x) for x in diffs],
        wins=int((d > 0).sum()), ties=int((d == 0).sum()), losses=int((d < 0).sum()),
        sign_p=sign_test(sit if over_situations else d), sign_test_over="situations" if over_situations else "seeds",
        replicates=replicates, jackknife=jackknife)


def _counts(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    """``(reps, n)`` bootstrap counts: how often each of ``n`` units is drawn in each replicate."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float64)


class _Joint:
    """Rows with a training seed: a (situation x training seed) grid of cell means."""

    def __init__(self, pairs: dict[tuple, float]):
        cells: dict[tuple[str, int], list[float]] = {}
        for (sit, ts, _), v in sorted(pairs.items(), key=lambda kv: repr(kv[0])):
            cells.setdefault((sit, ts), []).append(v)
        self.situations = sorted({s for s, _ in cells})
        self.train_seeds = sorted({t for _, t in cells})
        missing = [(s, t) for s in self.situations for t in self.train_seeds if (s, t) not in cells]
        if missing:
            raise ValueError(f"training seeds are resampled jointly across situations, so every situation needs "
                             f"every training seed; missing (situation, train_seed): {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}")
        self.m = np.asarray([[np.mean(cells[(s, t)]) for t in self.train_seeds] for s in self.situations])
        self.point = float(self.m.mean())

    def bootstrap(self, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        s, t = self.m.shape
        if s == 1 and t == 1:
            return np.full(0, math.nan), np.full(0, math.nan)
        rng = np.random.default_rng(seed)
        cs = _counts(rng, s, reps) if s > 1 else np.ones((reps, 1))
        ct = _counts(rng, t, reps) if t > 1 else np.ones((reps, 1))
        replicates = ((cs @ self.m) * ct).sum(axis=1) / (s * t)
        total = self.m.sum()
        jack = []
        if s > 1:
            jack += [(total - row) / ((s - 1) * t) for row in self.m.sum(axis=1)]
        if t > 1:
            jack += [(total - col) / (s * (t - 1)) for col in self.m.sum(axis=0)]
        return replicates, np.asarray(jack)

    def outer(self) -> np.ndarray:
        return self.m.mean(axis=0) if self.m.shape[1] > 1 else self.m.mean(axis=1)

    def outer_name(self) -> str:
        return "training seeds (situations fixed)" if self.m.shape[1] > 1 else "situations"

    def per_situation(self) -> dict[str, float]:
        return {s: float(v) for s, v in zip(self.situations, self.m.mean(axis=1))}

    def per_train_seed(self) -> dict[int, float]:
        return {int(t): float(v) for t, v in zip(self.train_seeds, self.m.mean(axis=0))}

    def per_seed(self) -> tuple[list[Any], list[float]]:
        return [int(t) for t in self.train_seeds], [float(v) for v in self.m.mean(axis=0)]

    def describe(self) -> str:
        s, t = self.m.shape
        parts = (["training seeds, jointly across situations"] if t > 1 else []) + (["situations"] if s > 1 else [])
        return " and, independently, ".join(parts) or "nothing (one training seed in one situation)"


class _TwoStage:
    """Rows without a training seed: situations, then the evaluation seeds within each."""

    def __init__(self, pairs: dict[tuple, float]):
        groups: dict[str, dict[Any, float]] = {}
        for (sit, _, es), v in pairs.items():
            groups.setdefault(sit, {})[es] = v
        self.situations = sorted(groups)
        self.seed_keys = [sorted(groups[s], key=repr) for s in self.situations]
        self.groups = [np.asarray([groups[s][k] for k in keys]) for s, keys in zip(self.situations, self.seed_keys)]
        self.means = np.asarray([g.mean() for g in self.groups])
        self.point = float(self.means.mean())

    def bootstrap(self, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        if len(self.groups) == 1:
            g = self.groups[0]
            if g.size < 2:
                return np.full(0, math.nan), np.full(0, math.nan)
            replicates = _counts(rng, g.size, reps) @ g / g.size
            return replicates, (g.sum() - g) / (g.size - 1)
        s = len(self.groups)
        picks = _resample_indices(rng, s, reps)
        means = np.empty((reps, s))
        for i, g in enumerate(self.groups):
            drawn = picks == i
            count = int(drawn.sum())
            if count:
                means[drawn] = _counts(rng, g.size, count) @ g / g.size if g.size > 1 else g[0]
        total = self.means.sum()
        return means.mean(axis=1), (total - self.means) / (s - 1)

    def outer(self) -> np.ndarray:
        return self.means if len(self.groups) > 1 else self.groups[0]

    def outer_name(self) -> str:
        return "situations (their mean over seeds)" if len(self.groups) > 1 else "evaluation seeds"

    def per_situation(self) -> dict[str, float]:
        return {s: float(v) for s, v in zip(self.situations, self.means)}

    def per_train_seed(self) -> dict[int, float]:
        return {}

    def per_seed(self) -> tuple[list[Any], list[float]]:
        if len(self.groups) == 1:
            return list(self.seed_keys[0]), [float(v) for v in self.groups[0]]
        labels = [f"{s}:{k}" for s, keys in zip(self.situations, self.seed_keys) for k in keys]
        return labels, [float(v) for g in self.groups for v in g]

    def describe(self) -> str:
        if len(self.groups) > 1:
            return "situations, then evaluation seeds within each"
        return "evaluation seeds" if self.groups[0].size > 1 else "nothing (one seed in one situation)"


def _interval(design, replicates: np.ndarray, jackknife: np.ndarray, confidence: float,
              method: str) -> tuple[float, float]:
    if method == "t":
        outer = design.outer()
        if outer.size < 2:
            return math.nan, math.nan
        _, low, high = t_interval(outer, confidence)
        return low, high
    return _bootstrap_interval(design.point, replicates, jackknife, confidence, method)


def _bootstrap_interval(point: float, replicates: np.ndarray, jackknife: np.ndarray, confidence: float,
                        method: str) -> tuple[float, float]:
    """Percentile or BCa interval of ``replicates`` (Efron & Tibshirani 1993, ch. 14): the bias
    correction ``z0`` from the share of replicates below the point (ties count half), the
    acceleration from the jackknife values; NaN bounds without replicates."""
    replicates = replicates[np.isfinite(replicates)]
    if replicates.size == 0 or not math.isfinite(point):
        return math.nan, math.nan
    alpha = 1.0 - confidence
    if method == "percentile":
        return _percentile_interval(replicates, confidence)
    tol = 1e-12 * max(1.0, abs(point))
    if np.ptp(replicates) <= tol:
        return float(replicates.min()), float(replicates.max())
    below = float(np.sum(replicates < point - tol)) + 0.5 * float(np.sum(np.abs(replicates - point) <= tol))
    share = min(max(below / replicates.size, 0.5 / replicates.size), 1 - 0.5 / replicates.size)
    normal = statistics.NormalDist()
    z0 = normal.inv_cdf(share)
    u = jackknife[np.isfinite(jackknife)]
    u = u.mean() - u
    ss = float((u ** 2).sum())
    accel = float((u ** 3).sum()) / (6.0 * ss ** 1.5) if ss > 0 else 0.0
    levels = []
    for z in (normal.inv_cdf(alpha / 2), normal.inv_cdf(1 - alpha / 2)):
        w = z0 + z
        levels.append(normal.cdf(z0 + w / (1 - accel * w)) if accel * w < 1 else (0.0 if z < 0 else 1.0))
    low, high = np.quantile(replicates, levels)
    return float(low), float(high)


def ratio(numerator: Comparison, denominator: Comparison) -> tuple[float, float, float]:
    """``numerator.mean / denominator.mean`` (e.g. a learner's share of an oracle's gain) with the
    interval of both comparisons' method, from the ratios of their replicates: both must come
    from :func:`compare` on the same units with the same ``reps`` and ``seed`` (then they share
    every bootstrap draw).  NaN bounds without replicates or where a replicate divides by 0."""
    same = ("seeds", "per_situation", "reps", "seed", "interval", "confidence", "resampling")
    differ = [k for k in same if (getattr(numerator, k) if k != "per_situation" else list(numerator.per_situation))
              != (getattr(denominator, k) if k != "per_situation" else list(denominator.per_situation))]
    if differ:
        raise ValueError(f"a ratio needs two comparisons of the same units and draws; they differ in {differ}")
    if numerator.interval == "t":
        raise ValueError("a ratio's interval is a bootstrap one: compare with interval='bca' or 'percentile'")
    point = numerator.mean / denominator.mean if denominator.mean != 0 else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = numerator.replicates / denominator.replicates
        jack = numerator.jackknife / denominator.jackknife
    if reps.size and not np.all(np.isfinite(reps)):
        return point, math.nan, math.nan
    low, high = _bootstrap_interval(point, reps, jack, numerator.confidence, numerator.interval)
    return point, low, high


def score_rows(values: Mapping[tuple, float], method: str, *, split: str = "test", metric: str = "main",
               train_seed: bool = False) -> list[Score]:
    """Long-format rows from ``{(situation, seed): value}`` (``train_seed``: the seed is a
    training seed shared across situations; else an evaluation seed) or
    ``{(situation, train_seed, eval_seed): value}``."""
    out = []
    for key, value in values.items():
        if len(key) == 3:
            sit, ts, es = key
        elif len(key) == 2:
            sit, s = key
            ts, es = (s, None) if train_seed else (None, s)
        else:
            raise ValueError(f"a score key is (situation, seed) or (situation, train_seed, eval_seed), got {key!r}")
        out.append(Score(method, str(sit), ts, es, float(value), split, metric))
    return out


def write_scores(path: str | Path, rows: Iterable[Score | Mapping[str, Any]]) -> None:
    """The rows as a long-format CSV (columns :data:`SCORE_FIELDS`; an empty seed is ``None``)."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(SCORE_FIELDS)
        for r in map(as_score, rows):
            w.writerow(["" if v is None else v for v in dataclasses.astuple(r)])


def read_scores(path: str | Path) -> list[Score]:
    """The rows of a :func:`write_scores` file."""
    import csv

    def seed(x: str) -> int | None:
        return None if x == "" else int(x)

    with Path(path).open(encoding="utf-8", newline="") as f:
        return [Score(r["method"], r["situation"], seed(r["train_seed"]), seed(r["eval_seed"]), float(r["value"]),
                      r["split"], r["metric"]) for r in csv.DictReader(f)]
