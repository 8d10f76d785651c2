"""What the situation selectors share (learned, not RL: one decision per episode, read from the
observable situation).

==========  ===================================================================================
name        training / acting
==========  ===================================================================================
lookup      plays every fixed mask (all ``2^K``) in turn within each situation it meets and keeps
            each situation's mean return per mask; acts with the best mask of the nearest train
            situation (Euclidean distance on standardised features; :mod:`agents.lookup`)
bandit      a linear contextual bandit (LinUCB), one arm per mask (:mod:`agents.bandit`)
==========  ===================================================================================

Both read the situation from the env's observation, which must be ``observable`` or
``observable_only`` (its last ``len(SITUATION_FEATURES)`` entries are
:data:`kd_env.situation.SITUATION_FEATURES`); building them on another observation is a
``ValueError`` naming those two.  An episode is one decision: the mask chosen from the episode's
first observation is played in every phase.  Acting is greedy whatever ``deterministic`` says, and
before any training the agents play every knowledge type.  ``learn`` takes one env or a Gymnasium
vector env (each sub-env its own mask; episodes of the last batch beyond the budget are discarded
unused); checkpoints hold the recorded episodes, so a loaded agent acts and learns on as the saved one.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from kd_env.checks import matches
from kd_env.situation import SITUATION_FEATURES
from kd_env.wrappers import index_to_mask

from .base import Agent, CheckpointError, EpisodeCallback
from .baselines import _check_seed
from .episode_log import selection_frequencies
from .rollout import episode_options

__all__ = ["SituationSelector", "VALID_OBSERVATIONS", "SAME_SITUATION", "NUM_FEATURES", "all_masks", "same_situation",
           "standardiser", "nearest"]

#: the observations whose last entries are the observable situation
VALID_OBSERVATIONS = ("observable", "observable_only")
NUM_FEATURES = len(SITUATION_FEATURES)
#: two situation vectors closer than this in every entry are the same situation
SAME_SITUATION = 1e-6
#: standard deviations below this count as zero (the column is dropped)
ZERO_STD = 1e-9


def all_masks(k: int) -> np.ndarray:
    """Every 0/1 mask of ``k`` bits, row ``i`` = :func:`kd_env.wrappers.index_to_mask` of ``i``."""
    return np.stack([index_to_mask(i, k) for i in range(2**k)]).astype(np.float64)


def standardiser(train: Sequence[Sequence[float]] | np.ndarray) -> Callable[[Any], np.ndarray]:
    """Scale vectors by the ``train`` situations' mean and std, dropping the columns that do not
    vary among them (the lookup agent and the headroom tool's ``lookup`` and ``bandit``)."""
    x = np.asarray(train, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    keep = std > ZERO_STD

    def scale(v: Any) -> np.ndarray:
        return (np.asarray(v, dtype=np.float64)[..., keep] - mean[keep]) / std[keep]

    return scale


def nearest(train: Sequence[Sequence[float]] | np.ndarray, x: Sequence[float] | np.ndarray) -> int:
    """The index of the ``train`` situation nearest ``x``: Euclidean distance on
    :func:`standardiser`-scaled vectors (the first on a tie; 0 when no column varies)."""
    scale = standardiser(train)
    return int(np.argmin(np.linalg.norm(scale(train) - scale(x), axis=-1)))


def same_situation(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(np.abs(np.asarray(a) - np.asarray(b)) <= SAME_SITUATION))


class SituationSelector(Agent):
    """What ``lookup`` and ``bandit`` share: the observation check, the situation of an
    observation, one mask per episode, the training loop and the checkpoint counters."""

    #: the observations this agent can read (runners check a configuration against it early)
    observations = VALID_OBSERVATIONS

    def __init__(self, env: Any, seed: int | None = 0):
        super().__init__(env)
        self.seed = _check_seed(seed)
        observation = self.spec.observation_name
        if observation not in VALID_OBSERVATIONS:
            raise ValueError(f"{self.name} reads the observable situation from the end of the observation and needs "
                             f"observation one of {list(VALID_OBSERVATIONS)}, got {observation!r} (e.g. "
                             f"gym.make(env_id, observation='observable'))")
        space = self.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1 or space.shape[0] < NUM_FEATURES:
            raise ValueError(f"{self.name} needs a flat Box observation ending with the {NUM_FEATURES} situation "
                             f"features, got {space}")
        self.masks = all_masks(len(self.knowledge_names))
        self.episodes_done = self.steps_done = self.discarded_episodes = 0
        self._episode: tuple[np.ndarray, int] | None = None  # (situation, arm) being played

    # ---- what each selector defines: the training choice of situation ``x`` (``pending``: the
    # (situation, arm) of this vector batch's episodes chosen, not yet finished), learning from an
    # episode, the greedy choice (``None``: nothing learnt yet), and their state for checkpoints
    def _choose(self, x: np.ndarray, pending: list[tuple[np.ndarray, int]]) -> int:
        raise NotImplementedError

    def _record(self, x: np.ndarray, arm: int, ret: float) -> None:
        raise NotImplementedError

    def _best(self, x: np.ndarray) -> int | None:
        raise NotImplementedError

    def _table(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _load_table(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # ---- acting ------------------------------------------------------------------------------
    def situation(self, obs: Any) -> np.ndarray:
        """The observable situation: the last ``len(SITUATION_FEATURES)`` entries of ``obs``."""
        flat = np.asarray(obs, np.float64).reshape(-1)
        if flat.size < NUM_FEATURES:
            raise ValueError(f"observation of {flat.size} entries has no {NUM_FEATURES} situation features")
        return flat[-NUM_FEATURES:].copy()

    def reset(self) -> None:
        self._episode = None

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        x = self.situation(obs)
        if self._episode is None or not same_situation(x, self._episode[0]):  # a new episode
            arm = self._best(x)
            self._episode = (x, len(self.masks) - 1 if arm is None else arm)
        return self._action(self._episode[1])

    def _action(self, arm: int) -> np.ndarray:
        return self._format_action(self.masks[arm])

    # ---- learning ----------------------------------------------------------------------------
    def learn(self, env: Any, total_episodes: int | None = None, total_steps: int | None = None,
              callback: EpisodeCallback | None = None) -> "SituationSelector":
        """Run whole episodes of ``env`` (or of every sub-env of a vector env) until
        ``total_episodes`` episodes or at least ``total_steps`` env steps are done, one mask per
        episode, learning from each episode's return.  The first reset is seeded with ``seed +
        episodes done so far`` (when ``seed`` is set).  ``callback(agent, record)`` after each
        episode; ``False`` stops.  Returns ``self``."""
        budget = {"total_episodes": total_episodes, "total_steps": total_steps}
        bad = [f"{k}={v!r}" for k, v in budget.items() if v is not None and not (matches(v, int) and v >= 0)]
        if bad or total_episodes is None and total_steps is None:
            raise ValueError("learn needs total_episodes or total_steps (non-negative integers)"
                             + (f", got {', '.join(bad)}" if bad else ""))
        vector = isinstance(env, gym.vector.VectorEnv)
        if (env.single_action_space if vector else env.action_space) != self.action_space:
            raise ValueError(f"the env's action space differs from the agent's {self.action_space}")
        episodes = steps = 0
        seed = self.seed + self.episodes_done if self.seed is not None else None
        batch: list[dict[str, Any]] = []
        while (total_episodes is None or episodes < total_episodes) and (total_steps is None or steps < total_steps):
            if not batch:
                batch = self._run_vector(env, seed) if vector else [self._run_single(env, seed)]
                seed = None
            done = batch.pop(0)
            self._record(done["x"], done["arm"], done["return"])
            episodes += 1
            steps += done["length"]
            record = self._log(done)
            if callback is not None and callback(self, record) is False:
                break
        self.discarded_episodes += len(batch)
        return self

    def _run_single(self, env: Any, seed: int | None) -> dict[str, Any]:
        start = time.perf_counter()
        obs, _ = env.reset(seed=seed, options=episode_options(self))
        x = self.situation(obs)
        arm = self._choose(x, [])
        action = self._action(arm)
        total, length, info, finished = 0.0, 0, {}, False
        while not finished:
            _, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            length += 1
            finished = bool(terminated or truncated)
        return {"x": x, "arm": arm, "return": total, "length": length,
                "probe": float(info.get("probe_metric", math.nan)), "seconds": time.perf_counter() - start}

    def _run_vector(self, venv: Any, seed: int | None) -> list[dict[str, Any]]:
        n = venv.num_envs
        start = time.perf_counter()
        obs, _ = venv.reset(seed=seed, options=episode_options(self))
        flats = np.asarray(obs, np.float64).reshape(n, -1)
        pending: list[tuple[np.ndarray, int]] = []
        for i in range(n):
            x = self.situation(flats[i])
            pending.append((x, self._choose(x, pending)))
        actions = np.stack([self._action(arm) for _, arm in pending])
        totals, lengths, probes, done = np.zeros(n), np.zeros(n, np.int64), np.full(n, math.nan), np.zeros(n, bool)
        while not done.all():
            _, rewards, terminated, truncated, info = venv.step(actions)
            for i in np.flatnonzero(~done):
                totals[i] += float(rewards[i])
                lengths[i] += 1
                if terminated[i] or truncated[i]:
                    done[i] = True
                    if "probe_metric" in info and info.get("_probe_metric", np.ones(n, bool))[i]:
                        probes[i] = float(info["probe_metric"][i])
        seconds = (time.perf_counter() - start) / n
        return [{"x": x, "arm": arm, "return": float(totals[i]), "length": int(lengths[i]), "probe": float(probes[i]),
                 "seconds": seconds} for i, (x, arm) in enumerate(pending)]

    def _log(self, done: dict[str, Any]) -> dict[str, Any]:
        self.episodes_done += 1
        self.steps_done += done["length"]
        mask = self.masks[done["arm"]]
        record = {"episode": self.episodes_done - 1, "steps": self.steps_done, "length": done["length"],
                  "return": done["return"], "arm": done["arm"], "mask": "".join(str(int(b)) for b in mask),
                  **selection_frequencies([mask] * done["length"], self.knowledge_names),
                  "final_probe_metric": done["probe"], "seconds": done["seconds"]}
        self.episode_log.append(record)
        return record

    # ---- persistence -------------------------------------------------------------------------
    def _state_dict(self) -> dict[str, Any]:
        return {**self._table(), "counters": {"episodes": self.episodes_done, "steps": self.steps_done,
                                              "arms": len(self.masks)}}

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        counters = state.get("counters", {})
        if counters.get("arms") != len(self.masks):
            raise CheckpointError(f"checkpoint holds {counters.get('arms')} masks; this env has {len(self.masks)}")
        try:
            self._load_table(state)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint does not fit this {self.name!r} agent: {exc}") from None
        self.episodes_done, self.steps_done = int(counters.get("episodes", 0)), int(counters.get("steps", 0))
