"""Running agents: one episode (:func:`run_episode`) and several envs at once (:func:`make_vector_env`)."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

import kd_env
from kd_env.checks import matches

from .base import Agent

__all__ = ["make_vector_env", "run_episode", "episode_options"]


def make_vector_env(env_id: str, num_envs: int, vectorization_mode: str = "async", **kwargs: Any) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``gym.make(env_id, **kwargs)`` as one Gymnasium vector env, for
    agents that learn from several episodes at once (``ac``, ``ac_q``).  ``"async"`` runs each copy
    in its own spawned process with one torch thread (``threads=1`` unless given), so N copies use
    N cores; ``"sync"`` steps them in turn in this process; ``"batched"`` (the digits ids,
    :data:`kd_env.BATCHED_ENV_IDS`) trains the N students as one batched model in this process
    (:class:`kd_env.batched.BatchedKDVectorEnv`: the same episodes as ``"sync"``, several times
    faster per core)."""
    if not matches(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    if vectorization_mode not in ("async", "sync", "batched"):
        raise ValueError(f"vectorization_mode must be 'async', 'sync' or 'batched', got {vectorization_mode!r}")
    if vectorization_mode == "batched":
        spec = gym.spec(env_id)
        if spec.vector_entry_point is None:
            raise ValueError(f"env {env_id!r} has no batched vector env (its students are not MLPs); use 'async' or "
                             f"'sync'.  Batched ids: {list(kd_env.BATCHED_ENV_IDS)}")
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    kwargs = {"threads": 1, **kwargs}
    vector_kwargs = {"context": "spawn"} if vectorization_mode == "async" else {}
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode,
                        vector_kwargs=vector_kwargs, **kwargs)


def run_episode(env: Any, agent: Agent, deterministic: bool = True, seed: int | None = None,
                options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one episode of ``agent`` in ``env`` (no learning).

    Args:
        env: the env (reset here with ``seed`` and the options below).
        agent: any :class:`Agent`; its :meth:`Agent.reset` is called first.
        deterministic: passed to ``agent.act``.
        seed: the env's reset seed.
        options: the env's reset options, merged over the agent's own
            (:meth:`Agent.reset_options`): a key given here wins.

    Returns:
        ``{"return", "length", "rewards", "actions" (one list per phase, as the agent chose
        them), "reset_info", "infos", "phase_seconds" (each step's wall time, from
        ``env.unwrapped.last_phase_seconds``; NaN for envs without it), "final_probe_metric",
        "final_probe_loss", "terminated", "truncated"}``; the probe values are NaN for envs
        without a dev probe.
    """
    agent.reset()
    obs, info = env.reset(seed=seed, options=episode_options(agent, options))
    reset_info = info
    rewards: list[float] = []
    actions: list[list[float]] = []
    infos: list[dict[str, Any]] = []
    seconds: list[float] = []
    terminated = truncated = False
    while not (terminated or truncated):
        action = agent.act(obs, deterministic=deterministic)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        actions.append([float(x) for x in np.asarray(action).reshape(-1)])
        infos.append(info)
        seconds.append(float(getattr(env.unwrapped, "last_phase_seconds", math.nan)))
    return {"return": float(sum(rewards)), "length": len(rewards), "rewards": rewards, "actions": actions,
            "reset_info": reset_info, "infos": infos, "phase_seconds": seconds,
            "final_probe_metric": float(info.get("probe_metric", math.nan)),
            "final_probe_loss": float(info.get("probe_loss", math.nan)),
            "terminated": bool(terminated), "truncated": bool(truncated)}


def episode_options(agent: Agent, options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The env reset options of one of ``agent``'s episodes: ``{**agent.reset_options(),
    **options}`` (``None`` when both are empty, i.e. a plain reset)."""
    merged = {**agent.reset_options(), **(options or {})}
    return merged or None
