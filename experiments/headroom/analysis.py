"""What a headroom run found: the policy table, the headroom and the reward alignment."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from kd_env.situation import SITUATION_FEATURES

from .. import stats
from ..stats import Score, mean_std
from .settings import all_masks
from .sources import STABILITY_REPS

#: how each source of gain chose (``results.json`` and the report)
SOURCES = {
    "oracle_constant": ("oracle", "the best fixed mask per held-out situation, by dev on its selection seeds"),
    "oracle_schedule": ("oracle", "the best fixed mask or two-stage schedule of its best masks per held-out "
                                  "situation, by dev on its selection seeds"),
    "lookup": ("baseline", "the best mask of the nearest train situation (observable situation, standardised)"),
    "bandit": ("baseline", "per mask a ridge regression of dev on the observable situation, fit with full "
                           "exploration (every mask on every train situation)"),
}


def analyse(run: Any, scored, best_fixed, oracle, best_schedule, sched_dev, dev_train, dynamic, rand,
            rewards, selection) -> dict[str, Any]:
    """``results.json``: every policy's held-out test metric and its paired difference against the
    best fixed mask, the best mask per held-out instance, the sources of gain (the oracles, the
    value of switching, the observable baselines, the choices' stability), the headroom and the
    reward alignment of the :class:`~experiments.headroom.run.HeadroomRun` ``run``."""

    def by_pair(policy_of: Any) -> dict[tuple, float]:
        out = {}
        for r in scored:
            want = policy_of(r["instance"]) if callable(policy_of) else policy_of
            if r["policy"] == want:
                out[(str(r["instance"]), r["seed"])] = r["test"]
        return out

    reference_name = f"fixed:{best_fixed}"
    scores: list[Score] = []  # every row's held-out test scores, long-format (scores.csv)
    rows = []

    def add(name: str, how: str, pairs: dict[tuple, float], kind: str) -> None:
        vals = list(pairs.values())
        m, sd = mean_std(vals)
        scores.extend(stats.score_rows(pairs, name))
        rows.append({"policy": name, "kind": kind, "chosen": how, "n": len(vals), "test_mean": m, "test_std": sd})

    for m in all_masks(len(run.knowledge)):
        add(f"fixed:{m}", f"dev {dev_train[m]:.4f} (train instances, selection seeds)",
            by_pair(f"fixed:{m}"), "best fixed" if m == best_fixed else "fixed")
    choices = selection["choices"]
    for name, chosen in choices.items():
        kind, how = SOURCES[name]
        add(name, f"{how}: " + ", ".join(f"{i}={p}" for i, p in chosen.items()),
            by_pair(lambda inst, c=chosen: c[str(inst)]), kind)
    stab = selection["stability"]
    stability = {"reps": STABILITY_REPS, "per_situation": stab,
                 "mean": {o: float(np.mean([v[o] for v in stab.values()])) for o in ("oracle_constant", "oracle_schedule")}}
    if best_schedule:
        add(best_schedule, f"best of {len(sched_dev)} two-stage schedules by dev", by_pair(best_schedule),
            "dynamic")
    for b in dynamic:
        add(b, "literature baseline (no choice)", by_pair(f"agent:{b}"), "dynamic")
    for by in ("reward", "probe"):
        add(f"greedy:{by}", f"branches every phase, keeps the best by {by}", by_pair(f"greedy:{by}"), "oracle")
    # paired on (situation, test seed) with the best fixed mask; the greedy oracles ran on fewer seeds
    for r in rows:
        r["diff_vs_best_fixed"] = _versus(scores, r["policy"], reference_name) if r["n"] else dict(_NO_PAIRS)
    switching = stats.compare(scores, "oracle_schedule", "oracle_constant").to_dict()
    switching["std"] = mean_std(switching["diffs"])[1]
    candidates = [r for r in rows if r["kind"] in ("baseline", "dynamic", "oracle") and r["n"]]
    best_candidate = max(candidates, key=lambda r: r["diff_vs_best_fixed"]["mean"]) if candidates else None
    # which mask wins each held-out instance on test (to show that the best mask moves)
    per_instance = {}
    for inst in run.test_instances:
        means = {m: np.mean([r["test"] for r in scored if r["policy"] == f"fixed:{m}" and r["instance"] == inst])
                 for m in all_masks(len(run.knowledge))}
        per_instance[str(inst)] = {"best_on_test": max(means, key=means.get), "chosen_on_dev": oracle[inst],
                                   "test_by_mask": means}
    alignment = reward_alignment(rand, rewards)
    stats.write_scores(run.out / "scores.csv", scores)
    return {"env": run.settings.env, "env_kwargs": run.settings.env_kwargs, "knowledge": run.knowledge,
            "env_reward": run.reward, "train_instances": [str(i) for i in run.train_instances],
            "held_out_instances": [str(i) for i in run.test_instances],
            "selection_seeds": run.settings.selection_seeds, "test_seeds": run.settings.test_seeds,
            "greedy_seeds": run.settings.test_seeds[: run.settings.greedy_seeds],
            "best_fixed": best_fixed, "per_instance_oracle": {str(k): v for k, v in oracle.items()},
            "best_schedule": best_schedule, "policies": rows, "per_instance": per_instance,
            "choices": choices, "switching": switching, "stability": stability,
            "lookup_neighbour": selection["lookup_neighbour"], "bandit_predictions": selection["bandit_predictions"],
            "situation_features": list(SITUATION_FEATURES), "situations": selection["situations"],
            "headroom": None if best_candidate is None else {"policy": best_candidate["policy"],
                                                             **best_candidate["diff_vs_best_fixed"]},
            "reward_alignment": alignment, "wall_seconds": time.perf_counter() - run.started}


#: the difference of a policy with no score on a paired (situation, seed)
_NO_PAIRS = {"n": 0, "pairs": 0, "situations": 0, "mean": float("nan"), "low": float("nan"), "high": float("nan"),
             "wins": 0, "ties": 0, "losses": 0, "situation_wins": 0, "situation_losses": 0}


def _versus(scores: list[Score], name: str, reference: str) -> dict[str, Any]:
    """``name - reference`` (:func:`experiments.stats.compare`, rows one side lacks left out);
    the reference against itself is 0 on every pair."""
    if name == reference:
        n = sum(s.method == name for s in scores)
        return {**_NO_PAIRS, "n": n, "pairs": n, "mean": 0.0, "ties": n}
    if not {(s.situation, s.eval_seed) for s in scores if s.method == name} & \
            {(s.situation, s.eval_seed) for s in scores if s.method == reference}:
        return dict(_NO_PAIRS)
    return stats.compare(scores, name, reference, unpaired="drop").to_dict()


def reward_alignment(rand: list[dict[str, Any]], rewards: Sequence[str]) -> list[dict[str, Any]]:
    from scipy import stats

    out = []
    for rw in rewards:
        recs = [r for r in rand if r["reward"] == rw]
        ret = np.asarray([r["return"] for r in recs])
        row: dict[str, Any] = {"reward": rw, "episodes": len(recs)}
        for split in ("dev", "test"):
            y = np.asarray([r[split] for r in recs])
            ok = len(recs) > 2 and ret.std() > 0 and y.std() > 0
            row[f"pearson_{split}"] = float(stats.pearsonr(ret, y)[0]) if ok else None
            row[f"spearman_{split}"] = float(stats.spearmanr(ret, y)[0]) if ok else None
            within = []
            for inst in sorted({str(r["instance"]) for r in recs}):
                sub = [r for r in recs if str(r["instance"]) == inst]
                a, b = np.asarray([r["return"] for r in sub]), np.asarray([r[split] for r in sub])
                if len(sub) > 2 and a.std() > 0 and b.std() > 0:
                    within.append(float(stats.spearmanr(a, b)[0]))
            row[f"within_instance_spearman_{split}"] = float(np.mean(within)) if within else None
        out.append(row)
    return out

