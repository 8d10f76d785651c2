"""Agents that choose, phase by phase, which knowledge a student distils from.

All share one protocol (:class:`Agent`: ``act``, ``reset``, ``learn``, ``save``, ``load``) and
one registry::

    import gymnasium as gym
    import kd_env  # registers the envs
    from agents import make_agent, run_episode

    env = gym.make("kd_env/DigitsKD-v0", action_mode="weights")
    agent = make_agent("ac", env, seed=0).learn(env, total_episodes=20)
    print(run_episode(env, agent, seed=123)["final_probe_metric"])

Names: ``ac`` (:mod:`agents.ac`), ``ac_q`` (:mod:`agents.ac_q`), our actor-critic selectors; ``ppo``,
``a2c``, ``dqn``, ``sac``, ``td3``, ``ddpg`` (stable-baselines3, :mod:`agents.sb3`);
``finetune``, ``vanilla_kd``, ``pkd``, ``all``, ``random_hard``, ``random_soft``,
``fixed:<bits>``, ``schedule:<file>`` (:mod:`agents.baselines`); ``dynamic_kd``, ``eskd``,
``two_stage``, ``anneal`` (the literature's dynamic baselines, :mod:`agents.dynamic`);
``lookup``, ``bandit`` (learned one-decision selectors on the observable situation, not RL:
:mod:`agents.lookup`, :mod:`agents.bandit`).
"""

from __future__ import annotations

from . import ac, ac_q, bandit, baselines, dynamic, lookup, sb3  # noqa: F401 - register their agents
from .base import Agent, CheckpointError, SelectionSpec, agent_hyperparameters, agent_names, agent_table, \
    load_agent, make_agent, register_agent, selection_spec
from .rollout import make_vector_env, run_episode

__all__ = ["Agent", "CheckpointError", "SelectionSpec", "agent_hyperparameters", "agent_names", "agent_table",
           "load_agent", "make_agent", "make_vector_env", "register_agent", "run_episode", "selection_spec"]
