"""The sources of gain of a headroom run: what knowing the situation is worth (``oracle_constant``,
the best fixed mask per held-out situation), what switching inside an episode adds
(``oracle_schedule``, the best fixed mask or two-stage schedule per held-out situation; the
difference is *the value of switching*), and two non-RL baselines that see only the observable
situation (:mod:`kd_env.situation`): ``lookup`` (the best mask of the nearest train situation) and
``bandit`` (a one-decision contextual bandit, per mask a ridge regression of the dev metric on the
situation).  Every choice is made on selection seeds by the dev metric; :func:`stability` says how
often a choice survives a bootstrap of those seeds.

The functions are pure: they take a dev table (:func:`dev_table`) and situation vectors and
return choices; :func:`select` makes every choice of a run.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from agents.one_decision import nearest, standardiser

from ..stats import resample_indices

#: ``{(situation, policy): {seed: dev metric}}``, the situation as ``str(instance)``
DevTable = dict[tuple[str, str], dict[int, float]]

#: resamples of the selection seeds behind each choice-stability share
STABILITY_REPS = 200
RIDGE_ALPHA = 1.0


def dev_table(records: Sequence[dict[str, Any]]) -> DevTable:
    """The dev metric of every selection record (one with a dev value) by situation, policy, seed."""
    out: DevTable = {}
    for r in records:
        if r.get("dev") is not None:
            out.setdefault((str(r["instance"]), r["policy"]), {})[int(r["seed"])] = float(r["dev"])
    return out


def situation_vectors(records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Each situation's observable vector, from the first of its records that carries one (runs
    made before the units recorded it have none)."""
    out: dict[str, list[float]] = {}
    for r in records:
        if r.get("situation") is not None:
            out.setdefault(str(r["instance"]), list(r["situation"]))
    return out


def _dev_matrix(table: DevTable, situation: str, candidates: Sequence[str]) -> np.ndarray:
    """``(candidates, seeds)`` dev metrics on the seeds every candidate has."""
    seeds = sorted(set.intersection(*(set(table[(situation, p)]) for p in candidates)))
    if not seeds:
        raise ValueError(f"situation {situation!r}: the candidates share no selection seed")
    return np.asarray([[table[(situation, p)][s] for s in seeds] for p in candidates])


def ranked(table: DevTable, situation: str, candidates: Sequence[str]) -> list[str]:
    """``candidates`` by their mean dev metric on ``situation``, best first (ties keep their order)."""
    means = _dev_matrix(table, situation, candidates).mean(axis=1)
    return [candidates[i] for i in np.argsort(-means, kind="stable")]


def choose(table: DevTable, situation: str, candidates: Sequence[str]) -> str:
    """The candidate with the best mean dev metric (the first of the best on a tie)."""
    return ranked(table, situation, candidates)[0]


def stability(table: DevTable, situation: str, candidates: Sequence[str], reps: int = STABILITY_REPS,
              seed: int = 0) -> float:
    """The share of ``reps`` resamples (with replacement) of the situation's selection seeds
    whose choice among ``candidates`` is the full sample's choice."""
    dev = _dev_matrix(table, situation, candidates)
    full = int(np.argmax(dev.mean(axis=1)))
    picks = resample_indices(dev.shape[1], reps, seed)
    chosen = np.argmax(dev[:, picks].mean(axis=2), axis=0)  # (reps,): the first best, as choose()
    return float(np.mean(chosen == full))


def lookup(train_vectors: Mapping[str, Sequence[float]], train_choice: Mapping[str, str],
           vector: Sequence[float]) -> tuple[str, str]:
    """The nearest train situation to ``vector`` (the lookup agent's rule,
    :func:`agents.one_decision.nearest`) and its own choice."""
    names = list(train_vectors)
    near = names[nearest([train_vectors[n] for n in names], vector)]
    return near, train_choice[near]


def ridge(x: np.ndarray, y: np.ndarray, alpha: float = RIDGE_ALPHA) -> np.ndarray:
    """Closed-form ridge regression with an unpenalised intercept: ``[intercept, *coefficients]``."""
    z = np.column_stack([np.ones(len(x)), x])
    penalty = alpha * np.eye(z.shape[1])
    penalty[0, 0] = 0.0
    return np.linalg.solve(z.T @ z + penalty, z.T @ y)


def bandit(train_vectors: Mapping[str, Sequence[float]], episodes: Sequence[tuple[str, str, float]],
           alpha: float = RIDGE_ALPHA) -> Callable[[Sequence[float]], dict[str, float]]:
    """A one-decision contextual bandit fitted with full exploration: per arm (mask), a ridge
    regression of the dev metric on the standardised situation vector over ``episodes``
    ``(train situation, arm, dev)``.  Returns ``predict(vector) -> {arm: predicted dev}``."""
    scale = standardiser(list(train_vectors.values()))
    weights = {}
    for arm in dict.fromkeys(a for _, a, _ in episodes):
        rows = [(train_vectors[s], d) for s, a, d in episodes if a == arm]
        weights[arm] = ridge(scale([v for v, _ in rows]), np.asarray([d for _, d in rows]), alpha)

    def predict(vector: Sequence[float]) -> dict[str, float]:
        z = scale(vector)
        return {arm: float(w[0] + z @ w[1:]) for arm, w in weights.items()}

    return predict


def select(table: DevTable, vectors: Mapping[str, Sequence[float]], train: Sequence[str], held_out: Sequence[str],
           fixed: Sequence[str], schedules: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Every choice of a run: ``choices`` (policy per held-out situation for ``oracle_constant``,
    ``oracle_schedule`` and, where every situation has its vector, ``lookup`` and ``bandit``),
    ``lookup_neighbour``, ``bandit_predictions``, ``situations`` (the vectors) and ``stability`` (per held-out situation, the
    share of selection-seed resamples that keep each oracle's choice; the schedule oracle's
    candidates stay the ones run)."""
    constant = {s: choose(table, s, fixed) for s in dict.fromkeys([*train, *held_out])}
    candidates = {s: [*fixed, *schedules.get(s, [])] for s in held_out}
    choices: dict[str, dict[str, str]] = {
        "oracle_constant": {s: constant[s] for s in held_out},
        "oracle_schedule": {s: choose(table, s, candidates[s]) for s in held_out}}
    out: dict[str, Any] = {"choices": choices, "lookup_neighbour": {}, "bandit_predictions": {},
                           "situations": {s: list(vectors[s]) for s in constant if s in vectors},
                           "stability": {s: {"oracle_constant": stability(table, s, fixed),
                                             "oracle_schedule": stability(table, s, candidates[s])}
                                         for s in held_out}}
    if all(s in vectors for s in [*train, *held_out]):
        train_vectors = {s: vectors[s] for s in train}
        episodes = [(s, p, d) for s in train for p in fixed for d in table[(s, p)].values()]
        predict = bandit(train_vectors, episodes)
        choices["lookup"], choices["bandit"] = {}, {}
        for s in held_out:
            out["lookup_neighbour"][s], choices["lookup"][s] = lookup(train_vectors, constant, vectors[s])
            pred = out["bandit_predictions"][s] = predict(vectors[s])
            choices["bandit"][s] = max(pred, key=pred.get)
    return out
