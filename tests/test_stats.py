"""experiments.stats: IQM, stratified bootstrap intervals and probability of improvement,
checked against hand-computed values and against rliable's published formulas (rliable itself
cannot be used here: see test_agrees_with_rliables_formulas_on_fixed_data)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments.report import json_safe
from experiments.stats import paired_difference, t_interval
from experiments.stats import (
    NO_INTERVAL,
    aggregate_iqm,
    aggregate_mean,
    as_tasks,
    format_bounds,
    format_interval,
    interquartile_mean,
    interval_estimate,
    poi_interval,
    probability_of_improvement,
    stratified_bootstrap,
)


@pytest.mark.parametrize("values, expected", [
    (list(range(1, 9)), 4.5),                 # drop 1,2 and 7,8 -> mean(3,4,5,6)
    ([0, 1, 2, 3, 100], 2.0),                 # floor(5/4)=1 cut each end -> mean(1,2,3)
    ([5, 1, 3, 2, 4, 100, -50, 7], 3.5),      # unsorted: sorted -50,1,2,3,4,5,7,100 -> mean(2,3,4,5)
    ([2.0, 4.0], 3.0),                        # fewer than 4 values: the plain mean
    ([7.0], 7.0),
])
def test_interquartile_mean_hand_computed(values, expected):
    assert interquartile_mean(values) == pytest.approx(expected)


def test_iqm_matches_scipy_trim_mean():
    from scipy import stats

    rng = np.random.default_rng(0)
    for n in (4, 5, 6, 7, 13, 40):
        x = rng.normal(size=n)
        assert interquartile_mean(x) == pytest.approx(stats.trim_mean(x, 0.25))


def test_iqm_is_robust_to_one_outlier():
    assert interquartile_mean([1, 2, 3, 4, 5, 6, 7, 1e9]) == pytest.approx(4.5)


def test_score_layouts():
    matrix = np.array([[1.0, 10.0], [3.0, 30.0]])  # runs x tasks
    tasks = as_tasks(matrix)
    assert [t.tolist() for t in tasks] == [[1.0, 3.0], [10.0, 30.0]]
    assert aggregate_mean(tasks) == pytest.approx((2.0 + 20.0) / 2)
    ragged = as_tasks([[1.0, 2.0, 3.0], [4.0]])
    assert [t.size for t in ragged] == [3, 1]
    assert aggregate_iqm(ragged) == pytest.approx(2.5)  # pooled 1,2,3,4 -> mean(2,3)
    assert as_tasks([1.0, 2.0])[0].tolist() == [1.0, 2.0]


@pytest.mark.parametrize("bad, message", [
    ([], "no task"),
    ([[1.0], []], "no runs"),
    ([1.0, float("nan")], "non-finite"),
    (np.zeros((2, 2, 2)), "1-D"),
])
def test_bad_scores_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        as_tasks(bad)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown statistic"):
        interval_estimate([1.0, 2.0], statistic="median")
    with pytest.raises(ValueError, match="confidence"):
        interval_estimate([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="reps"):
        stratified_bootstrap([1.0, 2.0], reps=0)
    with pytest.raises(ValueError, match="tasks"):
        probability_of_improvement([[1.0], [2.0]], [[1.0]])


@pytest.mark.parametrize("statistic", ["mean", "iqm"])
def test_interval_contains_point_and_narrows_with_more_data(statistic):
    rng = np.random.default_rng(1)
    small = rng.normal(0.8, 0.05, size=6)
    large = rng.normal(0.8, 0.05, size=600)
    p_small, lo_small, hi_small = interval_estimate(small, statistic, reps=1000, seed=0)
    p_large, lo_large, hi_large = interval_estimate(large, statistic, reps=1000, seed=0)
    assert lo_small <= p_small <= hi_small
    assert lo_large <= p_large <= hi_large
    assert hi_large - lo_large < 0.3 * (hi_small - lo_small)
    assert lo_large < 0.8 < hi_large


def test_bootstrap_is_seeded_and_constant_data_collapses():
    x = [0.1, 0.5, 0.9, 0.3]
    a = stratified_bootstrap(x, "mean", reps=200, seed=3)
    b = stratified_bootstrap(x, "mean", reps=200, seed=3)
    assert a.shape == (200,) and np.array_equal(a, b)
    assert interval_estimate([0.7, 0.7, 0.7], "iqm") == pytest.approx((0.7, 0.7, 0.7))


def test_bootstrap_of_two_runs_spans_both():
    # mean of 2 resampled runs takes values a, (a+b)/2, b: the 95% interval spans [a, b]
    point, low, high = interval_estimate([1.0, 3.0], "mean", reps=4000)
    assert (point, low, high) == pytest.approx((2.0, 1.0, 3.0))


def test_stratified_bootstrap_resamples_within_tasks():
    # task 0 is constant 0, task 1 constant 1: any within-task resample keeps the mean at 0.5
    reps = stratified_bootstrap([[0.0, 0.0, 0.0], [1.0, 1.0]], "mean", reps=100)
    assert np.allclose(reps, 0.5)


def test_probability_of_improvement_hand_computed():
    assert probability_of_improvement([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(0.5)
    assert probability_of_improvement([5.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert probability_of_improvement([1.0, 2.0], [5.0, 6.0]) == pytest.approx(0.0)
    # pairs: (1 vs 1) tie, (1 vs 3) loss, (4 vs 1) win, (4 vs 3) win -> (2 + 0.5) / 4
    assert probability_of_improvement([1.0, 4.0], [1.0, 3.0]) == pytest.approx(0.625)
    # averaged over tasks: task 0 dominated (1.0), task 1 identical (0.5)
    assert probability_of_improvement([[9.0], [2.0]], [[1.0], [2.0]]) == pytest.approx(0.75)


def test_poi_interval():
    same = [0.2, 0.4, 0.6, 0.8]
    point, low, high = poi_interval(same, same, reps=500)
    assert point == pytest.approx(0.5) and low <= 0.5 <= high
    point, low, high = poi_interval([0.9, 0.95, 0.92], [0.1, 0.2, 0.15], reps=500)
    assert (point, low, high) == pytest.approx((1.0, 1.0, 1.0))


def test_format_interval():
    assert format_interval(0.5, 0.25, 0.75) == "0.500 [0.250, 0.750]"
    assert format_interval(float("nan"), 0, 0) == "nan"
    assert format_interval(0.5, float("nan"), float("nan")) == "0.500 [n/a (1 seed)]"
    assert format_bounds(-0.01, 0.02, "+.4f") == "[-0.0100, +0.0200]"
    assert format_bounds(float("nan"), float("nan"), "+.4f") == NO_INTERVAL == "n/a (1 seed)"


def test_one_run_has_no_interval():
    """Issue 13 item 5: one seed gives no interval (NaN bounds, written n/a), not a zero-width one."""
    for statistic in ("mean", "iqm"):
        point, low, high = interval_estimate([0.7], statistic)
        assert point == 0.7 and math.isnan(low) and math.isnan(high)
    point, low, high = interval_estimate([[0.7], [0.2]], "mean")  # 2 tasks of 1 run each
    assert point == pytest.approx(0.45) and math.isnan(low) and math.isnan(high)
    point, low, high = poi_interval([0.9], [0.1, 0.2, 0.3], reps=100)
    assert point == 1.0 and math.isnan(low) and math.isnan(high)
    m, low, high = t_interval([0.3])
    assert m == 0.3 and math.isnan(low) and math.isnan(high)
    assert paired_difference({0: 0.7}, {0: 0.6})["mean"] == pytest.approx(0.1)


def test_json_safe_writes_null_for_non_finite_values():
    value = {"a": float("nan"), "b": [1.0, float("inf"), np.float64("nan"), np.float32(2.5)], "c": (np.int64(3),),
             "d": np.array([0.5, np.nan])}
    assert json_safe(value) == {"a": None, "b": [1.0, None, None, 2.5], "c": [3], "d": [0.5, None]}
    assert "NaN" not in json.dumps(json_safe(value))


# ---- rliable's formulas (Agarwal et al., NeurIPS 2021; google-research/rliable 1.2.0) ----------
#
# rliable 1.2.0 installs here but does not import: it requires arch < 8, and arch 7.2 fails at
# import with pandas 3 (``deprecate_kwarg() missing ... 'new_arg_name'``); it would also pull
# statsmodels, seaborn, patsy and formulaic (~75 MB) for three formulas.  So experiments.stats is
# kept, and checked here against the definitions rliable documents, written independently with
# scipy on a fixed score matrix (runs x tasks, rliable's layout).

RLIABLE_X = np.array([[0.71, 0.52, 0.90],
                      [0.64, 0.55, 0.88],
                      [0.80, 0.47, 0.93],
                      [0.69, 0.60, 0.85],
                      [0.75, 0.52, 0.91]])
RLIABLE_Y = np.array([[0.70, 0.50, 0.90],
                      [0.62, 0.58, 0.80],
                      [0.66, 0.47, 0.86],
                      [0.73, 0.44, 0.87]])


def _rliable_poi(x: np.ndarray, y: np.ndarray) -> float:
    """rliable.metrics.probability_of_improvement's definition: per task the Mann-Whitney U
    statistic of X over Y divided by n_x * n_y (0.5 for identical samples), averaged over tasks."""
    from scipy.stats import mannwhitneyu

    per_task = []
    for j in range(x.shape[1]):
        if np.array_equal(x[:, j], y[:, j]):
            per_task.append(0.5)
        else:
            per_task.append(mannwhitneyu(x[:, j], y[:, j], alternative="greater").statistic / (len(x) * len(y)))
    return float(np.mean(per_task))


def _rliable_interval(matrix: np.ndarray, statistic, reps: int, confidence: float = 0.95) -> tuple[float, float]:
    """rliable.library.get_interval_estimates' definition: resample the runs of each task with
    replacement (a stratified bootstrap), compute the statistic on the resampled matrix, take the
    percentile interval of the replicates."""
    rng = np.random.RandomState(1234)
    n, tasks = matrix.shape
    replicates = [statistic(np.stack([matrix[rng.randint(0, n, n), j] for j in range(tasks)], axis=1))
                  for _ in range(reps)]
    return tuple(np.percentile(replicates, [50 * (1 - confidence), 50 * (1 + confidence)]))


def test_agrees_with_rliables_formulas_on_fixed_data():
    from scipy.stats import trim_mean

    # aggregate_mean: the mean over tasks of the per-task means; aggregate_iqm: the 25% trimmed
    # mean of all scores pooled (scipy.stats.trim_mean(scores, 0.25, axis=None))
    assert aggregate_mean(as_tasks(RLIABLE_X)) == pytest.approx(float(np.mean(RLIABLE_X.mean(axis=0))))
    assert aggregate_iqm(as_tasks(RLIABLE_X)) == pytest.approx(float(trim_mean(RLIABLE_X, 0.25, axis=None)))
    for x, y in ((RLIABLE_X, RLIABLE_Y), (RLIABLE_Y, RLIABLE_X), (RLIABLE_X, RLIABLE_X)):
        assert probability_of_improvement(x, y) == pytest.approx(_rliable_poi(x, y))
    # the percentile intervals of the two stratified bootstraps agree up to Monte-Carlo error
    for name, statistic in (("mean", lambda m: np.mean(m.mean(axis=0))),
                            ("iqm", lambda m: trim_mean(m, 0.25, axis=None))):
        point, low, high = interval_estimate(RLIABLE_X, name, reps=20000, seed=0)
        ref_low, ref_high = _rliable_interval(RLIABLE_X, statistic, reps=20000)
        assert (low, high) == pytest.approx((ref_low, ref_high), abs=0.004), name
        assert low < point < high


# ---- situations, then seeds -------------------------------------------------------------------


def test_sign_test_exact_values():
    from experiments.stats import sign_test

    assert sign_test([1.0] * 10) == pytest.approx(2 / 1024)
    assert sign_test([0.5, -0.5]) == 1.0
    assert sign_test([0.0, 0.0]) == 1.0  # ties are dropped: nothing left
    assert sign_test([1, 1, 1, 1, -1, 0]) == pytest.approx(2 * (1 + 5) / 32)


def test_hierarchical_bootstrap_resamples_situations_too():
    from experiments.stats import hierarchical_bootstrap, interval_estimate

    # seeds agree closely within each situation; situations differ a lot
    situations = [np.array([0.1, 0.11, 0.12]), np.array([0.5, 0.51, 0.52]), np.array([0.9, 0.91, 0.92])]
    point, low, high = hierarchical_bootstrap(situations, reps=4000)
    assert point == pytest.approx(np.mean([s.mean() for s in situations]))
    _, s_low, s_high = interval_estimate(situations, "mean", reps=4000)  # seeds only
    assert high - low > 10 * (s_high - s_low)  # the spread between situations is in the interval
    assert hierarchical_bootstrap(situations, reps=4000) == (point, low, high)  # seeded: reproducible
    one = [np.array([0.1, 0.3, 0.2])]
    assert hierarchical_bootstrap(one, reps=500) == interval_estimate(one, "mean", reps=500)


def test_paired_situations_counts_wins_per_situation():
    from experiments.stats import paired_situations

    a = {("s1", 0): 0.8, ("s1", 1): 0.7, ("s2", 0): 0.5, ("s2", 1): 0.5, ("s3", 0): 0.9, ("s4", 0): 1.0}
    b = {("s1", 0): 0.6, ("s1", 1): 0.6, ("s2", 0): 0.6, ("s2", 1): 0.7, ("s3", 0): 0.8}
    d = paired_situations(a, b, reps=500)
    assert d["situations"] == 3 and d["pairs"] == 5  # s4 has no pair
    assert d["per_situation"] == pytest.approx({"s1": 0.15, "s2": -0.15, "s3": 0.1})
    assert (d["wins"], d["losses"]) == (2, 1)
    assert d["mean"] == pytest.approx(0.1 / 3)
    assert d["low"] <= d["mean"] <= d["high"]
    assert d["sign_p"] == pytest.approx(1.0)
    assert paired_situations({}, b)["situations"] == 0
