"""What a headroom run found: the policy table, the headroom and the reward alignment."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ..stats import mean_std, paired_difference
from .settings import all_masks


def analyse(run: Any, scored, best_fixed, oracle, best_schedule, sched_dev, dev_train, dynamic, rand,
            rewards) -> dict[str, Any]:
    """``results.json``: every policy's held-out test metric and its paired difference against the
    best fixed mask, the best mask per held-out instance, the headroom and the reward alignment of
    the :class:`~experiments.headroom.run.HeadroomRun` ``run``."""

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
    if run.test_instances != [None]:  # one instance: the oracle is the best fixed mask itself
        add("per-instance oracle", "per instance: " + ", ".join(f"{i}={oracle[i]}" for i in run.test_instances),
            by_pair(lambda inst: f"fixed:{oracle[inst]}"), "instance-aware")
    if best_schedule:
        add(best_schedule, f"best of {len(sched_dev)} two-stage schedules by dev", by_pair(best_schedule),
            "dynamic")
    for b in dynamic:
        add(b, "literature baseline (no choice)", by_pair(f"agent:{b}"), "dynamic")
    for by in ("reward", "probe"):
        add(f"greedy:{by}", f"branches every phase, keeps the best by {by}", by_pair(f"greedy:{by}"), "oracle")
    candidates = [r for r in rows if r["kind"] in ("instance-aware", "dynamic", "oracle") and r["n"]]
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

