"""``lookup``: the best mask of the nearest train situation in observable-feature space (see
:mod:`agents.one_decision` for what it shares with ``bandit``: the observation it needs, one mask
per episode, the training loop, checkpoints)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import register_agent
from .one_decision import NUM_FEATURES, SAME_SITUATION, SituationSelector, nearest, same_situation

__all__ = ["LookupAgent"]


class LookupAgent(SituationSelector):
    """The best mask of the nearest train situation.

    Training: every episode is recorded with its situation (the first observation's situation
    features) and return; episodes whose situations agree within :data:`SAME_SITUATION` form one
    group, and a group's next training episode plays the mask it has played least (mask index =
    its episodes so far modulo ``2^K``: round-robin, each situation meets every mask equally
    often).  Acting: the nearest group by Euclidean distance on the features standardised over
    the groups (columns of zero spread dropped; ties: the group met first), and that group's mask
    of highest mean return (ties: the lowest mask index).

    Args:
        env: the env (observation ``observable`` or ``observable_only``; mask or weights mode).
        seed: seeds the first training reset (no other randomness).
    """

    name = "lookup"

    def __init__(self, env: Any, seed: int | None = 0):
        super().__init__(env, seed)
        self.situations = np.zeros((0, NUM_FEATURES))
        self.sums = np.zeros((0, len(self.masks)))
        self.counts = np.zeros((0, len(self.masks)), np.int64)

    def group(self, x: np.ndarray, add: bool = False) -> int | None:
        """The index of ``x``'s situation among those recorded (``add``: recorded when new)."""
        hits = np.flatnonzero(np.all(np.abs(self.situations - x) <= SAME_SITUATION, axis=1))
        if hits.size:
            return int(hits[0])
        if not add:
            return None
        self.situations = np.vstack([self.situations, x])
        self.sums = np.vstack([self.sums, np.zeros(len(self.masks))])
        self.counts = np.vstack([self.counts, np.zeros(len(self.masks), np.int64)])
        return len(self.situations) - 1

    def best_arms(self) -> np.ndarray:
        """Each recorded situation's mask index of highest mean return (among the masks played)."""
        means = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), -np.inf)
        return np.argmax(means, axis=1)

    def nearest(self, x: np.ndarray) -> int:
        """The recorded situation nearest ``x`` (standardised Euclidean distance)."""
        return nearest(self.situations, x)

    def _choose(self, x: np.ndarray, pending: list[tuple[np.ndarray, int]]) -> int:
        g = self.group(x)
        played = 0 if g is None else int(self.counts[g].sum())
        played += sum(1 for y, _ in pending if same_situation(x, y))
        return played % len(self.masks)

    def _record(self, x: np.ndarray, arm: int, ret: float) -> None:
        g = self.group(x, add=True)
        self.sums[g, arm] += ret
        self.counts[g, arm] += 1

    def _best(self, x: np.ndarray) -> int | None:
        return int(self.best_arms()[self.nearest(x)]) if len(self.situations) else None

    def hyperparameters(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def _table(self) -> dict[str, torch.Tensor]:
        return {"situations": torch.as_tensor(self.situations), "sums": torch.as_tensor(self.sums),
                "counts": torch.as_tensor(self.counts)}

    def _load_table(self, state: dict[str, Any]) -> None:
        situations, sums, counts = (state[k].numpy() for k in ("situations", "sums", "counts"))
        m = len(self.masks)
        if situations.shape[1:] != (NUM_FEATURES,) or sums.shape != (len(situations), m) or counts.shape != sums.shape:
            raise ValueError(f"table shapes {situations.shape}, {sums.shape}, {counts.shape}")
        self.situations, self.sums, self.counts = situations.astype(np.float64), sums.astype(np.float64), \
            counts.astype(np.int64)


register_agent("lookup", description="best mask of the nearest train situation (observable features); trained by "
               "playing every mask", hyperparameters={"seed": int | None})(LookupAgent)
