"""experiments.stats: IQM, stratified bootstrap intervals and probability of improvement,
checked against hand-computed values and against rliable's published formulas (rliable itself
cannot be used here: see test_agrees_with_rliables_formulas_on_fixed_data)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments.report import json_safe
from experiments.stats import t_interval
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
from experiments.stats import Score, compare


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
    one = compare([Score("a", "s", 0, None, 0.7), Score("b", "s", 0, None, 0.6)], "a", "b")
    assert one.mean == pytest.approx(0.1) and math.isnan(one.low) and math.isnan(one.high)


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


# ---- one comparison engine: experiments.stats.compare ---------------------------------------------


def test_sign_test_is_the_exact_binomial_test():
    from experiments.stats import sign_test

    assert sign_test([1.0] * 10) == pytest.approx(2 / 1024)
    assert sign_test([0.5, -0.5]) == 1.0
    assert sign_test([0.0, 0.0]) == 1.0  # ties are dropped: nothing left
    assert sign_test([1, 1, 1, 1, -1, 0]) == pytest.approx(2 * (1 + 5) / 32)
    assert sign_test([1] * 5 + [-1]) == pytest.approx(0.21875)  # 2 (1 + 6) / 64
    # 5 of 20: 2 (1 + 20 + 190 + 1140 + 4845 + 15504) / 2^20, scipy.stats.binomtest(5, 20).pvalue
    assert sign_test([1] * 5 + [-1] * 15) == pytest.approx(0.041389465332031, abs=1e-12)
    assert sign_test([1] * 10 + [-1] * 10) == 1.0


def test_sign_test_agrees_with_scipy_binomtest():
    from scipy.stats import binomtest

    from experiments.stats import sign_test

    for n in range(1, 26):
        for k in range(n + 1):
            assert sign_test([1] * k + [-1] * (n - k)) == pytest.approx(binomtest(k, n).pvalue, abs=1e-12)


@pytest.mark.parametrize("df, expected", [(1, 12.7062047), (2, 4.3026527), (3, 3.1824463), (4, 2.7764451),
                                          (9, 2.2621572), (30, 2.0422725)])
def test_t_quantile_without_scipy(df, expected):
    from experiments.stats import t_quantile

    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-6)
    m, low, high = t_interval([0.05, -0.02, 0.10])
    half = 4.302652729911275 * np.std([0.05, -0.02, 0.10], ddof=1) / math.sqrt(3)
    assert (low, high) == pytest.approx((m - half, m + half))


def _rows(method, values, train_seed=False):
    """Rows from ``{(situation, seed): value}``."""
    from experiments.stats import score_rows

    return score_rows(values, method, train_seed=train_seed)


def test_compare_pairs_situations_then_seeds_by_hand():
    a = {("s1", 0): 0.8, ("s1", 1): 0.7, ("s2", 0): 0.5, ("s2", 1): 0.5, ("s3", 0): 0.9}
    b = {("s1", 0): 0.6, ("s1", 1): 0.6, ("s2", 0): 0.6, ("s2", 1): 0.7, ("s3", 0): 0.8}
    d = compare(_rows("a", a) + _rows("b", b), "a", "b", reps=2000)
    assert d.situations == 3 and d.pairs == 5 and d.dropped == 0
    assert d.per_situation == pytest.approx({"s1": 0.15, "s2": -0.15, "s3": 0.1})
    assert (d.situation_wins, d.situation_losses) == (2, 1)
    assert d.mean == pytest.approx(0.1 / 3)  # mean over situations of each one's mean difference
    assert d.low <= d.mean <= d.high
    assert d.sign_p == pytest.approx(1.0) and d.sign_test_over == "situations"
    assert d.resampling == "situations, then evaluation seeds within each" and d.interval == "bca"
    assert d.seeds == ["s1:0", "s1:1", "s2:0", "s2:1", "s3:0"] and (d.wins, d.ties, d.losses) == (3, 0, 2)
    assert compare(_rows("a", a) + _rows("b", b), "a", "b", reps=2000) == d  # seeded: reproducible
    # a pair one side lacks is an error unless asked to be left out
    a4 = {**a, ("s4", 0): 1.0}
    with pytest.raises(ValueError, match=r"1 score row\(s\) of 'a' or 'b' have no partner.*\('s4', None, 0\).*"
                                         r"unpaired='drop'"):
        compare(_rows("a", a4) + _rows("b", b), "a", "b")
    dropped = compare(_rows("a", a4) + _rows("b", b), "a", "b", reps=2000, unpaired="drop")
    assert dropped.dropped == 1 and dropped.mean == d.mean and dropped.low == d.low


def test_compare_one_situation_two_seeds_by_hand():
    # differences 0 and 1: the bootstrap means are 0 (1/4), 0.5 (1/2), 1 (1/4)
    rows = _rows("a", {("s", 0): 1.0, ("s", 1): 2.0}) + _rows("b", {("s", 0): 1.0, ("s", 1): 1.0})
    p = compare(rows, "a", "b", interval="percentile", reps=4000)
    assert (p.mean, p.low, p.high) == (0.5, 0.0, 1.0)
    assert sorted(set(np.round(p.replicates, 12))) == [0.0, 0.5, 1.0]
    assert np.mean(p.replicates == 0.5) == pytest.approx(0.5, abs=0.03)
    bca = compare(rows, "a", "b", reps=4000)  # symmetric: no bias, no acceleration -> the percentile interval
    assert (bca.low, bca.high) == (0.0, 1.0)
    t = compare(rows, "a", "b", interval="t")
    half = 12.706204736 * math.sqrt(0.5) / math.sqrt(2)  # t(0.975, 1) s / sqrt(n)
    assert (t.low, t.high) == pytest.approx((0.5 - half, 0.5 + half))
    assert t.resampling == "none: Student t over evaluation seeds"
    assert (t.seeds, t.diffs, t.wins, t.ties, t.losses) == ([0, 1], [0.0, 1.0], 1, 1, 0)
    assert t.sign_test_over == "seeds" and t.sign_p == 1.0


def test_compare_bca_matches_scipy_on_one_sample():
    from scipy.stats import bootstrap

    x = np.array([0.3, 0.1, 2.5, 0.4, 0.2, 1.1, 0.05, 0.7, 0.35, 3.0, 0.6, 0.15])  # skewed
    rows = _rows("a", {("s", i): v for i, v in enumerate(x)}) + _rows("b", {("s", i): 0.0 for i in range(len(x))})
    ours = compare(rows, "a", "b", reps=20000)
    ref = bootstrap((x,), np.mean, method="BCa", n_resamples=20000, random_state=1).confidence_interval
    width = ref.high - ref.low
    assert ours.low == pytest.approx(ref.low, abs=0.03 * width) and ours.high == pytest.approx(ref.high, abs=0.03 * width)
    pct = compare(rows, "a", "b", reps=20000, interval="percentile")
    assert ours.high > pct.high and ours.low > pct.low  # right skew: BCa moves the interval up


def test_compare_resamples_a_training_seed_jointly_across_situations():
    # each training seed's agent is as much better in every situation: 0, 1, 10, 100
    effect = {0: 0.0, 1: 1.0, 2: 10.0, 3: 100.0}
    a = {(sit, t, 7 * t + e): effect[t] + 0.5 for sit in ("x", "y", "z") for t in effect for e in (0, 1)}
    b = {(sit, t, 7 * t + e): 0.5 for sit in ("x", "y", "z") for t in effect for e in (0, 1)}
    d = compare(_rows("a", a) + _rows("b", b), "a", "b", reps=3000)
    assert d.mean == pytest.approx(27.75) and d.per_train_seed == pytest.approx(effect)
    assert d.seeds == [0, 1, 2, 3] and d.diffs == pytest.approx([0.0, 1.0, 10.0, 100.0])
    assert d.resampling == "training seeds, jointly across situations and, independently, situations"
    # a replicate draws 4 training seeds, the same in every situation: its mean is the mean of
    # 4 of the effects drawn with replacement, never a mix of different draws per situation
    import itertools

    possible = {round(sum(c) / 4, 9) for c in itertools.combinations_with_replacement(effect.values(), 4)}
    assert {round(v, 9) for v in d.replicates} <= possible
    # drawn per situation (no training seed on the rows) the same numbers look 3x more certain
    apart = compare(_rows("a", {(s, e): v for (s, _, e), v in a.items()})
                    + _rows("b", {(s, e): v for (s, _, e), v in b.items()}), "a", "b", reps=3000)
    assert apart.mean == pytest.approx(d.mean)
    assert {round(v, 9) for v in apart.replicates} - possible
    assert (d.high - d.low) > 1.3 * (apart.high - apart.low)


def test_compare_joint_grid_and_estimate():
    from experiments.stats import estimate

    a = {("x", 0): 0.7, ("x", 1): 0.6, ("y", 0): 0.5, ("y", 1): 0.3}
    b = {("x", 0): 0.6, ("x", 1): 0.6, ("y", 0): 0.4, ("y", 1): 0.4}
    rows = _rows("a", a, train_seed=True) + _rows("b", b, train_seed=True)
    d = compare(rows, "a", "b", interval="t")
    # per training seed (mean over situations): seed 0 +0.1, seed 1 -0.05; t over the 2 seeds
    assert d.per_train_seed == pytest.approx({0: 0.1, 1: -0.05}) and (d.wins, d.losses) == (1, 1)
    half = 12.706204736 * np.std([0.1, -0.05], ddof=1) / math.sqrt(2)
    assert (d.low, d.high) == pytest.approx((0.025 - half, 0.025 + half))
    assert d.to_dict()["per_train_seed"] == pytest.approx({"0": 0.1, "1": -0.05})
    level = estimate(rows, "a")
    assert level.mean == pytest.approx(0.525) and level.per_situation == pytest.approx({"x": 0.65, "y": 0.4})
    assert level.low <= level.mean <= level.high
    with pytest.raises(ValueError, match=r"missing \(situation, train_seed\): \[\('y', 1\)\]"):
        compare([r for r in rows if not (r.situation == "y" and r.train_seed == 1)], "a", "b")


def test_ratio_shares_the_draws_of_both_comparisons():
    from experiments.stats import ratio

    base = {("s", t): 0.5 for t in range(4)}
    rows = (_rows("base", base, True) + _rows("oracle", {k: v + 0.3 for k, v in base.items()}, True)
            + _rows("ac", {("s", t): 0.6 + 0.01 * t for t in range(4)}, True))
    gain, mine = compare(rows, "oracle", "base", reps=500), compare(rows, "ac", "base", reps=500)
    share, low, high = ratio(mine, gain)
    assert share == pytest.approx(0.115 / 0.3) and low < share < high
    assert ratio(gain, gain) == pytest.approx((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"differ in \['reps'\]"):
        ratio(compare(rows, "ac", "base", reps=400), gain)


@pytest.mark.parametrize("kwargs, message", [
    ({"interval": "boot"}, r"unknown interval method 'boot'; valid: \['bca', 'percentile', 't'\]"),
    ({"unpaired": "skip"}, r"unknown unpaired='skip'; valid: \['error', 'drop'\]"),
    ({"b": "nobody"}, r"method 'nobody' has no score rows; methods in the rows: \['a', 'b'\]"),
    ({"b": "a"}, r"compare 'a' with another method"),
    ({"metric": "f1"}, r"method 'a' has no score rows with metric='f1', split=None; its rows hold metrics \['main'\]"),
    ({"reps": 0}, r"reps must be a positive integer"),
    ({"confidence": 95}, r"confidence must be in \(0, 1\)"),
])
def test_compare_bad_input_names_what_is_wrong_and_what_is_valid(kwargs, message):
    rows = _rows("a", {("s", 0): 1.0, ("s", 1): 2.0}) + _rows("b", {("s", 0): 1.0, ("s", 1): 1.0})
    args = {"b": "b", **kwargs}
    b = args.pop("b")
    with pytest.raises(ValueError, match=message):
        compare(rows, "a", b, **args)


def test_compare_refuses_malformed_rows():
    good = _rows("a", {("s", 0): 1.0}) + _rows("b", {("s", 0): 1.0})
    with pytest.raises(ValueError, match=r"two score rows for \(situation, train_seed, eval_seed\) = \('s', None, 0\)"):
        compare(good + _rows("a", {("s", 0): 3.0}), "a", "b")
    with pytest.raises(ValueError, match="some rows carry a train_seed and some do not"):
        compare(good + [Score("a", "t", 1, None, 2.0), Score("b", "t", 1, None, 1.0)], "a", "b")
    with pytest.raises(ValueError, match=r"non-finite value nan"):
        compare(good + _rows("a", {("s", 1): float("nan")}) + _rows("b", {("s", 1): 0.0}), "a", "b")
    with pytest.raises(ValueError, match=r"unknown keys \['seed'\], missing keys \[\]; valid keys"):
        compare([{"method": "a", "situation": "s", "seed": 0, "value": 1.0}], "a", "b")
    with pytest.raises(ValueError, match=r"several splits \['dev', 'test'\]; pass split= one of them"):
        compare(good + [Score("a", "s", None, 0, 0.5, "dev"), Score("b", "s", None, 0, 0.5, "dev")], "a", "b")
    assert compare(good + [Score("a", "s", None, 0, 0.5, "dev"), Score("b", "s", None, 0, 0.5, "dev")], "a", "b",
                   split="dev").split == "dev"


def test_scores_round_trip_through_csv(tmp_path):
    from experiments.stats import read_scores, write_scores

    rows = [Score("ac", "a", 0, 1000, 0.5), Score("kd", "b", None, 3, 0.25, "dev", "accuracy")]
    write_scores(tmp_path / "scores.csv", rows)
    assert read_scores(tmp_path / "scores.csv") == rows
    assert (tmp_path / "scores.csv").read_text().splitlines()[0] == \
        "method,situation,train_seed,eval_seed,value,split,metric"
