"""Reliability, determinism: same seed, same machine -> identical results on DigitsKD for the
engine, the env and every agent, across fresh builds; ``DistillConfig(threads=..,
deterministic=True)`` set the global torch switches that remove the remaining sources.

The digits envs run here with a 40-step budget (4 phases per episode, 10 optimizer steps each) so
that every learner updates a few times within seconds.
"""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from tests.helpers import assert_same

import kd_env  # noqa: F401 - registers the env ids
from agents import make_agent
from kd_env import get_preset
from kd_env.build import build_distiller

DIGITS = "kd_env/DigitsKD-v0"
BUDGET = {"total_steps": 40}



# ---- the engine ------------------------------------------------------------------------------------

WEIGHTS = [[1, 1, 0, 0], [0.3, 0.9, 0.5, 0.0], [0, 0, 0, 0], [1, 0, 1, 1], [0.2, 0.2, 0.2, 0.2]]


def engine_trajectory(reset_seed: int) -> tuple[list, dict]:
    """Fresh distiller; phases with fixed weights; every phase's result (wall time aside) and dev
    probe, the test metrics and the final training state."""
    distiller = build_distiller(get_preset("digits", total_steps=50))
    distiller.reset(reset_seed)
    phases = []
    for w in WEIGHTS:
        result = distiller.train_phase(w).to_dict()
        result.pop("seconds")
        phases.append((result, distiller.evaluate("probe")))
    phases.append(distiller.evaluate("test"))
    state = distiller.state_dict()
    distiller.close()
    return phases, state


def test_engine_same_seed_same_trajectory_across_fresh_builds():
    first, state = engine_trajectory(5)
    second, state_again = engine_trajectory(5)
    assert_same(first, second)
    assert_same(state, state_again)  # student, optimizer moments, schedule, data order, RNGs
    other, _ = engine_trajectory(6)
    assert first[0][0]["losses"] != other[0][0]["losses"]  # the seed matters: another student and order
    assert first[-1] != other[-1]


# ---- the env and every agent -----------------------------------------------------------------------

AGENTS = [("ac", "mask", {}), ("ac_q", "weights", {"learning_starts": 8, "batch_size": 8}), ("ppo", "mask", {}),
          ("a2c", "mask", {}), ("dqn", "mask", {}), ("sac", "weights", {}), ("td3", "weights", {}),
          ("random_hard", "mask", {}), ("random_soft", "weights", {})]
TRAIN_EPISODES = 4  # PPO's first rollout (4 episodes of 4 phases), DQN/SAC/TD3 updates from episode 3
EVAL_SEEDS = (100, 101)


def agent_trajectory(name: str, mode: str, hyperparams: dict, seed: int) -> dict:
    """A fresh env and agent: a short training run, then deterministic episodes on two instances,
    with every observation, action, reward and info."""
    env = gym.make(DIGITS, action_mode=mode, record_time=False, **BUDGET)
    agent = make_agent(name, env, seed=seed, **hyperparams)
    agent.learn(env, total_episodes=TRAIN_EPISODES)
    training = [{k: v for k, v in r.items() if k != "seconds"} for r in agent.episode_log]
    episodes = []
    for eval_seed in EVAL_SEEDS:
        agent.reset()
        obs, info = env.reset(seed=eval_seed)
        steps = [(obs, info)]
        terminated = False
        while not terminated:
            action = agent.act(obs, deterministic=True)
            obs, reward, terminated, truncated, info = env.step(action)
            steps.append((np.asarray(action), obs, reward, terminated, truncated, info))
        episodes.append(steps)
    env.close()
    return {"training": training, "episodes": episodes}


@pytest.mark.parametrize("name, mode, hyperparams", AGENTS, ids=[a[0] for a in AGENTS])
def test_every_agent_same_seed_same_results_across_fresh_builds(name, mode, hyperparams):
    first = agent_trajectory(name, mode, hyperparams, seed=0)
    second = agent_trajectory(name, mode, hyperparams, seed=0)
    assert_same(first, second)
    learns = name not in ("random_hard", "random_soft")
    assert len(first["training"]) >= (TRAIN_EPISODES if learns else 0)
    assert all(len(e) == 5 for e in first["episodes"])  # reset + 4 phases
    # the seed is used: another seed gives another run
    other = agent_trajectory(name, mode, hyperparams, seed=1)
    actions = [[s[0].tolist() for s in e[1:]] for e in first["episodes"]]
    other_actions = [[s[0].tolist() for s in e[1:]] for e in other["episodes"]]
    returns = [r["return"] for r in first["training"]]
    assert actions != other_actions or returns != [r["return"] for r in other["training"]]


# ---- the switches that remove the other sources of nondeterminism ----------------------------------


def test_deterministic_flag_turns_on_torch_deterministic_algorithms(monkeypatch):
    before = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    calls = []
    real = torch.use_deterministic_algorithms
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda *a, **k: (calls.append((a, k)), real(*a, **k)))
    try:
        torch.use_deterministic_algorithms(False)
        calls.clear()
        build_distiller(get_preset("quick", deterministic=False)).close()
        assert calls == [] and not torch.are_deterministic_algorithms_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        build_distiller(get_preset("quick", deterministic=True, threads=2)).close()
        assert calls == [((True,), {})]
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # what cuBLAS needs to be repeatable
        assert torch.get_num_threads() == 2  # threads= sets torch's intra-op threads
    finally:
        real(before)
        torch.set_num_threads(threads)
    assert torch.are_deterministic_algorithms_enabled() == before
