"""``python -m experiments.benchmark.situations``: per-situation comparison of a benchmark run,
intervals over situations then seeds, the sign test, the oracles of a headroom run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.benchmark import situations


def _cell(run, algo, seed, by_situation):
    """One cell: 2 evaluation seeds x the situations, seed-major, final row = ``by_situation``."""
    folder = run / algo.replace(":", "_") / f"kd_env__X-v0__seed{seed}"
    folder.mkdir(parents=True)
    names = list(by_situation)
    metrics = [by_situation[n][k] for k in range(2) for n in names]
    np.savez(folder / "evaluations.npz", test_metrics=np.array([[0.0] * len(metrics), metrics]),
             eval_instances=np.array(names * 2), eval_seeds=np.array([100, 101]) + 10 * seed)
    (folder / "result.json").write_text(json.dumps({"algo": algo}))


def test_scores_pair_by_situation_and_seed_and_the_sign_test_counts_situations(tmp_path):
    # ac beats vanilla_kd by 0.1 on a, b, c and loses 0.05 on d, on both seeds of both runs
    base = {"a": (0.5, 0.6), "b": (0.4, 0.5), "c": (0.7, 0.7), "d": (0.8, 0.9)}
    for seed in (0, 1):
        _cell(tmp_path, "vanilla_kd", seed, base)
        _cell(tmp_path, "ac", seed, {k: tuple(v + (0.1 if k != "d" else -0.05) for v in vs) for k, vs in base.items()})
    scores = situations.learner_scores(tmp_path)
    assert sorted({r.method for r in scores}) == ["ac", "vanilla_kd"]
    ac = {(r.situation, r.train_seed, r.eval_seed): r.value for r in scores if r.method == "ac"}
    assert ac[("b", 1, 111)] == pytest.approx(0.6) and len(ac) == 16  # long-format: training seed 1
    res = situations.tables(scores, "ac", best_fixed="vanilla_kd")
    vs = next(r for r in res["rows"] if r["learner"] == "vanilla_kd")["vs_reference"]
    assert vs["mean"] == pytest.approx((0.1 * 3 - 0.05) / 4)
    assert (vs["situation_wins"], vs["situation_losses"]) == (3, 1)
    # the training seeds are the seed-level units (each agent acts in all 4 situations): both win
    assert vs["seeds"] == [0, 1] and (vs["wins"], vs["losses"]) == (2, 0)
    assert vs["per_train_seed"] == pytest.approx({"0": 0.0625, "1": 0.0625})
    assert vs["sign_p"] == pytest.approx(0.625)  # 3 of 4: two-sided exact p = 2 * 5/16
    assert vs["low"] <= vs["mean"] <= vs["high"]
    assert res["per_situation"]["d"]["ac"] == pytest.approx(0.8)
    text = situations.render(res)
    assert "| a | **0.6500** | 0.5500 |" in text  # ac best on a, in bold


def test_oracles_come_from_the_headroom_units_of_each_situations_choice(tmp_path):
    run, head = tmp_path / "run", tmp_path / "head"
    base = {"a": (0.5, 0.5), "b": (0.6, 0.6)}
    _cell(run, "vanilla_kd", 0, base)
    _cell(run, "ac", 0, {"a": (0.6, 0.6), "b": (0.6, 0.6)})
    (head / "units").mkdir(parents=True)
    choices = {"oracle_constant": {"a": "fixed:1000", "b": "fixed:1100"},
               "oracle_schedule": {"a": "schedule:1100>1000@8", "b": "fixed:1100"}}
    (head / "results.json").write_text(json.dumps({"choices": choices}))
    units = [("fixed:1000", "a", 0.7), ("schedule:1100>1000@8", "a", 0.9), ("fixed:1100", "b", 0.6),
             ("fixed:0100", "a", 0.99)]  # the last one was not chosen: never read
    for i, (policy, inst, value) in enumerate(units):
        for seed in (100, 101):
            (head / "units" / f"{i}-{seed}.json").write_text(json.dumps(
                {"policy": policy, "instance": inst, "seed": seed, "test": value}))
    scores = situations.learner_scores(run)
    scores += situations.oracle_scores(head, scores)
    by = {(r.method, r.situation, r.train_seed, r.eval_seed): r.value for r in scores}
    assert by[("oracle_schedule", "a", 0, 100)] == 0.9 and by[("oracle_constant", "a", 0, 101)] == 0.7
    res = situations.tables(scores, "ac", best_fixed="vanilla_kd")
    # oracle_schedule gains (0.4 + 0) / 2 = 0.2 over vanilla_kd, ac (0.1 + 0) / 2 = 0.05: a quarter
    assert res["share_of_schedule_headroom"]["ac"] == pytest.approx(0.25)
    assert situations.main([str(run), "--reference", "nobody"]) == 2
