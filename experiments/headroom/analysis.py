"""What a headroom run found: the policy table, the headroom and the reward alignment."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from kd_env.situation import SITUATION_FEATURES

from ..stats import mean_std, paired_difference, paired_situations
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

    reference = by_pair(f"fixed:{best_fixed}")
    rows = []

    def add(name: str, how: str, pairs: dict[tuple, float], kind: str) -> None:
        vals = list(pairs.values())
        m, sd = mean_std(vals)
        diff = paired_difference(pairs, reference)
        rows.append({"policy": name, "kind": kind, "chosen": how, "n": len(vals), "test_mean": m, "test_std": sd,
                     "diff_vs_best_fixed": diff})

    for m in all_masks(len(run.knowledge)):
        add(f"fixed:{m}", f"dev {dev_train[m]:.4f} (train instances, selection seeds)",
            by_pair(f"fixed:{m}"), "best fixed" if m == best_fixed else "fixed")
    choices, pairs_of = selection["choices"], {}
    for name, chosen in choices.items():
        pairs_of[name] = by_pair(lambda inst, c=chosen: c[str(inst)])
        kind, how = SOURCES[name]
        add(name, f"{how}: " + ", ".join(f"{i}={p}" for i, p in chosen.items()), pairs_of[name], kind)
        rows[-1]["vs_best_fixed_situations"] = paired_situations(pairs_of[name], reference)
    switching = paired_situations(pairs_of["oracle_schedule"], pairs_of["oracle_constant"])
    switching["std"] = mean_std([v - pairs_of["oracle_constant"][k] for k, v in pairs_of["oracle_schedule"].items()
                                 if k in pairs_of["oracle_constant"]])[1]
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

