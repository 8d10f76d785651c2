"""How a benchmark cell meets its students: the training resets (fixed by the run's seed), the
evaluation episodes (each seed on each held-out situation), and global RNG seeding that the
evaluation never disturbs.

Training resets of seed ``s`` use seeds ``s * TRAIN_SEED_STRIDE + k``, evaluation resets
``EVAL_SEED_BASE + s * MAX_EVAL_EPISODES + j``, so the two never meet.
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import numpy as np

from .grid import TRAIN_SEED_STRIDE, Cell


def _training_instances_wrapper(env: Any, cell: Cell) -> Any:
    import gymnasium as gym

    class TrainingInstances(gym.Wrapper):
        """Reset k of this run uses seed ``seed * TRAIN_SEED_STRIDE + k``, whatever seed the
        agent passes: training instances are fixed by the run's seed and never evaluation ones."""

        def __init__(self, inner: gym.Env):
            super().__init__(inner)
            self.resets = 0

        def reset(self, *, seed: int | None = None, options: dict | None = None):
            if self.resets >= TRAIN_SEED_STRIDE:
                raise RuntimeError(f"more than {TRAIN_SEED_STRIDE} training episodes in one run")
            instance = cell.seed * TRAIN_SEED_STRIDE + self.resets
            self.resets += 1
            return self.env.reset(seed=instance, options=options)

    return TrainingInstances(env)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _PreservedGlobalRandomness:
    """Save and restore the global RNG states (python, numpy, torch) around a block: the
    evaluation episodes (whose env reseeds torch) must not change the training streams."""

    def __enter__(self):
        import torch

        self._states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        return self

    def __exit__(self, *exc):
        import torch

        py, nps, ts = self._states
        random.setstate(py)
        np.random.set_state(nps)
        torch.set_rng_state(ts)
        return False


def evaluation_episodes(env: Any, seeds: Sequence[int], split: str = "test") -> list[tuple[int, str | None]]:
    """The episodes of an evaluation: each seed on each held-out instance of an instance env
    (paired across algorithms; ``split="dev"``: on each *train* instance instead, for selection),
    or each seed alone on a plain env.  ``split`` is one of :data:`~.grid.EVAL_SPLITS`."""
    iset = getattr(env.unwrapped, "instance_set", None)
    names = (iset.train_names if split == "dev" else iset.test_names) if iset is not None else None
    instances: list[str | None] = list(names) if names is not None else [None]
    return [(int(seed), inst) for seed in seeds for inst in instances]


def _evaluate(env: Any, agent: Any, seeds: Sequence[int], num_phases: int, k: int,
              split: str = "test") -> dict[str, np.ndarray]:
    """Deterministic episodes on unseen students (seeds, and the held-out situations of an
    instance env; see :func:`evaluation_episodes`), each scored on the test split, or on the dev
    split for the selection splits ``dev`` and ``held-out-dev`` (the arrays keep their ``test``
    names)."""
    from agents import run_episode

    episodes = evaluation_episodes(env, seeds, split)
    n = len(episodes)
    out = {"returns": np.zeros(n), "lengths": np.zeros(n, np.int64), "test": np.zeros(n), "test_loss": np.zeros(n),
           "probe": np.zeros(n), "actions": np.full((n, num_phases, k), np.nan, np.float32)}
    with _PreservedGlobalRandomness():
        for j, (seed, instance) in enumerate(episodes):
            options = {"instance": instance} if instance is not None else None
            episode = run_episode(env, agent, deterministic=True, seed=seed, options=options)
            test = env.unwrapped.distiller.evaluate("test" if split == "test" else "dev")
            out["returns"][j] = episode["return"]
            out["lengths"][j] = episode["length"]
            out["test"][j] = test["main"]
            out["test_loss"][j] = test.get("loss", math.nan)
            out["probe"][j] = episode["final_probe_metric"]
            acts = np.asarray(episode["actions"], np.float32).reshape(-1, k)[:num_phases]
            out["actions"][j, :len(acts)] = acts
    return out


