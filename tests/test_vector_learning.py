"""Selector training on several envs at once (a Gymnasium vector env)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import kd_env  # noqa: F401
from agents import make_agent, make_vector_env


@pytest.mark.parametrize("name, mode, extra", [("ac", "mask", {"episodes_per_update": 2}),
                                               ("ac_q", "weights", {"batch_size": 4})])
def test_ac_learns_from_a_vector_env_and_counts_episodes(name, mode, extra):
    venv = make_vector_env("kd_env/QuickKD-v0", 2, vectorization_mode="sync", action_mode=mode)
    single = gym.make("kd_env/QuickKD-v0", action_mode=mode)
    try:
        agent = make_agent(name, single, seed=0, **extra)
        records = []
        agent.learn(venv, total_episodes=5, callback=lambda a, r: records.append(r) or True)
        assert [r["episode"] for r in records] == [1, 2, 3, 4, 5]
        assert all(r["length"] == 4 for r in records)  # QuickKD: 4 phases
        assert agent.episodes_done == 6 and agent.discarded_episodes == 1  # the 3rd batch's 2nd episode
        assert agent.updates_done > 0
        assert all(np.isfinite(r["final_probe_metric"]) for r in records)
    finally:
        venv.close()
        single.close()


def test_async_and_sync_vector_envs_train_the_same_agent():
    runs = []
    for mode in ("sync", "async"):
        venv = make_vector_env("kd_env/QuickKD-v0", 2, vectorization_mode=mode)
        try:
            agent = make_agent("ac", gym.make("kd_env/QuickKD-v0"), seed=3)
            agent.learn(venv, total_episodes=4)
            runs.append([p.detach().clone() for p in agent.actor.parameters()])
        finally:
            venv.close()
    assert all(np.allclose(a.numpy(), b.numpy()) for a, b in zip(*runs))


def test_make_vector_env_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_envs"):
        make_vector_env("kd_env/QuickKD-v0", 0)
    with pytest.raises(ValueError, match="vectorization_mode must be .async., .sync. or .batched."):
        make_vector_env("kd_env/QuickKD-v0", 2, vectorization_mode="threads")


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_sb3_agents_run_parallel_episodes_with_n_envs(algo):
    env = gym.make("kd_env/QuickKD-v0", action_mode="mask")
    agent = make_agent(algo, env, seed=0, n_envs=2)
    try:
        assert agent.model.get_env().num_envs == 2
        records = []
        agent.learn(env, total_episodes=4, callback=lambda a, r: records.append(r) or True)
        assert [r["episode"] for r in records] == [1, 2, 3, 4]  # both copies' episodes, each counted once
        assert all(r["length"] == 4 for r in records)  # QuickKD: 4 phases, whole episodes
        assert agent.model.num_timesteps == 16  # the budget over all copies (PPO: 2 copies x n_steps 8)
        assert agent.hyperparameters()["n_envs"] == 2
        action = agent.act(env.reset(seed=1)[0], deterministic=True)
        assert env.action_space.contains(action)
    finally:
        agent.close()
        env.close()


def test_sb3_n_envs_needs_a_positive_integer_and_a_made_env():
    env = gym.make("kd_env/QuickKD-v0", action_mode="mask")
    with pytest.raises(ValueError, match="n_envs must be an integer >= 1"):
        make_agent("ppo", env, n_envs=0)
    bare = kd_env.KnowledgeSelectionEnv(preset="quick")  # made directly: no spec to copy from
    with pytest.raises(ValueError, match="needs an env made with gym.make"):
        make_agent("ppo", bare, n_envs=2)


def test_ac_on_the_batched_env_learns_what_it_learns_on_sync_copies():
    """The batched env's episodes are the sync vector env's (up to float rounding), so the same
    agent, seed and budget end with the same policy."""
    runs = []
    for mode in ("sync", "batched"):
        venv = make_vector_env("kd_env/QuickKD-v0", 3, vectorization_mode=mode)
        try:
            agent = make_agent("ac", gym.make("kd_env/QuickKD-v0"), seed=5, episodes_per_update=3)
            records: list[dict] = []
            agent.learn(venv, total_episodes=6, callback=lambda a, r, out=records: out.append(r) or True)
            chosen = [{k: r[f"freq_{k}"] for k in agent.knowledge_names} for r in records]  # masks chosen
            runs.append(([p.detach().clone() for p in agent.actor.parameters()], [r["return"] for r in records],
                         chosen))
        finally:
            venv.close()
    (actor_sync, returns_sync, chosen_sync), (actor_batched, returns_batched, chosen_batched) = runs
    assert chosen_batched == chosen_sync  # the same masks sampled in every phase of every episode
    np.testing.assert_allclose(returns_batched, returns_sync, atol=1e-5)
    # Adam's first steps are about lr * sign(gradient): float noise in a near-zero gradient moves a
    # weight by up to 2 lr, so the actors agree to a few learning rates, not to float precision
    assert all(np.allclose(a.numpy(), b.numpy(), atol=0.02) for a, b in zip(actor_sync, actor_batched))


def test_make_vector_env_batched_needs_an_mlp_env():
    with pytest.raises(ValueError, match="has no batched vector env"):
        make_vector_env("kd_env/TextKD-v0", 2, vectorization_mode="batched")


def test_sb3_n_envs_on_a_digits_id_trains_the_copies_as_one_batch():
    from agents.sb3 import BatchedVecEnv  # noqa: F401 - the adapter the digits ids get

    env = gym.make("kd_env/QuickKD-v0", action_mode="mask")
    agent = make_agent("ppo", env, seed=0, n_envs=2)
    try:
        vec = agent.model.get_env()
        assert type(vec).__name__ == "_BatchedVecEnv" and vec.venv.num_envs == 2
    finally:
        agent.close()
        env.close()
