"""``bandit``: a one-decision linear contextual bandit (LinUCB) over the observable situation.

One arm per fixed mask (all ``2^K``), pulled for a whole episode; the reward is the episode's
return.  Each arm has a ridge regression of the return on ``[1, standardised situation]``
(features standardised over the training episodes so far, columns of zero spread dropped; the
returns centred on their mean, so the ridge shrinks an arm towards the mean return).  Training
plays the arm of highest upper confidence bound ``mean + theta_a . z + alpha * sigma *
sqrt(z' A_a^-1 z)`` (``sigma``: the returns' standard deviation, so ``alpha`` does not depend on
their scale), refitting after every episode; ties are broken by the seeded generator, so a run is
deterministic given its seed and the env's.  In a vector batch, the arms already chosen count in
``A`` (not yet in the fit), so the batch's episodes spread over the arms.  Acting is greedy: the
highest predicted return among the arms played in training.  See :mod:`agents.one_decision` for
what both situation selectors share.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kd_env.checks import matches

from .base import register_agent
from .one_decision import NUM_FEATURES, ZERO_STD, SituationSelector

__all__ = ["BanditAgent"]


def _check_positive(name: str, value: Any, allow_zero: bool) -> float:
    if not matches(value, float) or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


class BanditAgent(SituationSelector):
    """LinUCB with one ridge regression per mask on the situation features (with an intercept).

    Args:
        env: the env (observation ``observable`` or ``observable_only``; mask or weights mode).
        seed: seeds the tie-breaking generator and the first training reset.
        alpha: the width of the confidence bound, in standard deviations of the returns (0: greedy).
        ridge: the ridge penalty of every arm's regression (> 0).
    """

    name = "bandit"

    def __init__(self, env: Any, seed: int | None = 0, alpha: float = 1.0, ridge: float = 1.0):
        super().__init__(env, seed)
        self.alpha = _check_positive("alpha", alpha, allow_zero=True)
        self.ridge = _check_positive("ridge", ridge, allow_zero=False)
        self.rng = np.random.default_rng(self.seed)
        self.contexts = np.zeros((0, NUM_FEATURES))
        self.arms = np.zeros(0, np.int64)
        self.rewards = np.zeros(0)
        self._model: dict[str, Any] | None = None

    def _z(self, x: np.ndarray, model: dict[str, Any]) -> np.ndarray:
        """``[1, standardised x]`` (rows of ``x``), dropped columns set to 0."""
        x = np.atleast_2d(x)
        scaled = np.where(model["keep"], (x - model["mean"]) / model["std"], 0.0)
        return np.concatenate([np.ones((len(x), 1)), scaled], axis=1)

    def fit(self) -> dict[str, Any]:
        """The per-arm ridge regressions on the episodes so far (cached until the next one)."""
        if self._model is not None:
            return self._model
        n, arms = len(self.rewards), len(self.masks)
        mean = self.contexts.mean(axis=0) if n else np.zeros(NUM_FEATURES)
        std = self.contexts.std(axis=0) if n else np.ones(NUM_FEATURES)
        model = {"mean": mean, "keep": std > ZERO_STD, "std": np.where(std > ZERO_STD, std, 1.0)}
        z = self._z(self.contexts, model)
        offset = float(self.rewards.mean()) if n else 0.0
        spread = float(self.rewards.std()) if n >= 2 else 0.0
        d = z.shape[1]
        a = np.repeat(self.ridge * np.eye(d)[None], arms, axis=0)
        b = np.zeros((arms, d))
        for arm in range(arms):
            rows = self.arms == arm
            a[arm] += z[rows].T @ z[rows]
            b[arm] = z[rows].T @ (self.rewards[rows] - offset)
        model.update(a=a, theta=np.linalg.solve(a, b[..., None])[..., 0], offset=offset,
                     sigma=spread if spread > 0 else 1.0, played=np.bincount(self.arms, minlength=arms) > 0)
        self._model = model
        return model

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Each arm's predicted return in situation ``x``."""
        model = self.fit()
        return model["offset"] + model["theta"] @ self._z(x, model)[0]

    def upper_bounds(self, x: np.ndarray, pending: list[tuple[np.ndarray, int]] = ()) -> np.ndarray:
        """Each arm's upper confidence bound in situation ``x`` (``pending``: (situation, arm) of
        episodes chosen but not finished, counted in the arms' ``A``)."""
        model = self.fit()
        z = self._z(x, model)[0]
        a = model["a"].copy()
        for y, arm in pending:
            zy = self._z(y, model)[0]
            a[arm] += np.outer(zy, zy)
        solved = np.linalg.solve(a, np.broadcast_to(z, (len(a), len(z)))[..., None])[..., 0]
        width = np.sqrt(np.maximum(solved @ z, 0.0))
        return self.predict(x) + self.alpha * model["sigma"] * width

    def _choose(self, x: np.ndarray, pending: list[tuple[np.ndarray, int]]) -> int:
        scores = self.upper_bounds(x, pending)
        ties = np.flatnonzero(scores >= scores.max() - 1e-12)
        return int(self.rng.choice(ties))

    def _record(self, x: np.ndarray, arm: int, ret: float) -> None:
        self.contexts = np.vstack([self.contexts, x])
        self.arms = np.append(self.arms, np.int64(arm))
        self.rewards = np.append(self.rewards, float(ret))
        self._model = None

    def _best(self, x: np.ndarray) -> int | None:
        if not len(self.rewards):
            return None
        predicted = np.where(self.fit()["played"], self.predict(x), -np.inf)
        return int(np.argmax(predicted))

    def hyperparameters(self) -> dict[str, Any]:
        return {"seed": self.seed, "alpha": self.alpha, "ridge": self.ridge}

    def _table(self) -> dict[str, torch.Tensor]:
        return {"contexts": torch.as_tensor(self.contexts), "arms": torch.as_tensor(self.arms),
                "rewards": torch.as_tensor(self.rewards)}

    def _load_table(self, state: dict[str, Any]) -> None:
        contexts, arms, rewards = (state[k].numpy() for k in ("contexts", "arms", "rewards"))
        n = len(rewards)
        if contexts.shape != (n, NUM_FEATURES) or arms.shape != (n,) or (n and not 0 <= arms.min() <= arms.max()
                                                                          < len(self.masks)):
            raise ValueError(f"table shapes {contexts.shape}, {arms.shape}, {rewards.shape}")
        self.contexts, self.arms, self.rewards = contexts.astype(np.float64), arms.astype(np.int64), \
            rewards.astype(np.float64)
        self._model = None

    def _extra_header(self) -> dict[str, Any]:
        return {"rng_state": self.rng.bit_generator.state}

    def _load_extra_header(self, extra: dict[str, Any]) -> None:
        if "rng_state" in extra:
            self.rng.bit_generator.state = extra["rng_state"]


register_agent("bandit", description="LinUCB contextual bandit, one arm per mask for the whole episode, on the "
               "observable situation", hyperparameters={"seed": int | None, "alpha": float, "ridge": float})(BanditAgent)
