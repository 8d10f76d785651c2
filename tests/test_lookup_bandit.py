"""The situation selectors ``lookup`` and ``bandit`` (agents/lookup.py, agents/bandit.py): one mask
per episode, chosen from the observable situation; learned without RL."""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import kd_env  # noqa: F401 - registers the env ids
from agents import load_agent, make_agent, run_episode
from agents.one_decision import all_masks
from kd_env import Instance, InstanceSet
from kd_env.situation import SITUATION_FEATURES
from kd_env.wrappers import mask_to_index

F = len(SITUATION_FEATURES)
#: the fake env's situations (7 features each) and the best mask of each
CONTEXTS = np.array([[0.2, 0.1, 0.9, 0.8, 0.1, 0.1, 0.3],
                     [0.6, 0.9, 0.7, 0.5, 0.2, 0.0, 0.3],
                     [0.4, 0.5, 0.3, 0.1, 0.4, 0.5, 0.3]])
BEST = [(1, 1, 0), (0, 1, 1), (1, 0, 1)]


class ContextEnv(gym.Env):
    """A tiny one-decision env: a situation drawn at reset (observed as ``[budget fraction] +
    situation``, the ``observable_only`` layout), 3 phases, reward per phase ``1 - 0.3 * (bits
    away from the situation's best mask)`` plus noise, so a mask's return depends on mask x
    situation and no mask is best everywhere."""

    def __init__(self, observation: str = "observable_only", noise: float = 0.05, phases: int = 3,
                 contexts: np.ndarray = CONTEXTS, best=BEST):
        self.contexts, self.best = np.asarray(contexts, float), np.asarray(best, float)
        self.noise, self.num_phases = noise, phases
        self.knowledge_names = ["finetune", "response", "feature"]
        self.observation_fn = SimpleNamespace(name=observation)  # what selection_spec reads
        self.action_space = spaces.MultiBinary(3)
        self.observation_space = spaces.Box(0, 1, (1 + F,), np.float32)

    def _obs(self) -> np.ndarray:
        return np.concatenate([[self.t / self.num_phases], self.contexts[self.c]]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.c = int((options or {}).get("context", self.np_random.integers(len(self.contexts))))
        return self._obs(), {"context": self.c}

    def step(self, action):
        away = float(np.abs(np.asarray(action, float) - self.best[self.c]).sum())
        reward = 1.0 - 0.3 * away + self.noise * float(self.np_random.normal())
        self.t += 1
        return self._obs(), reward, self.t >= self.num_phases, False, {}


def context_obs(env: ContextEnv, c: int) -> np.ndarray:
    return env.reset(seed=0, options={"context": c})[0]


def test_every_mask_once_in_index_order():
    masks = all_masks(3)
    assert masks.shape == (8, 3) and [mask_to_index(m) for m in masks] == list(range(8))


def test_lookup_plays_every_mask_in_each_situation_and_learns_the_best_one():
    env = ContextEnv()
    agent = make_agent("lookup", env, seed=0).learn(env, total_episodes=3 * 8 * 3)
    # one group per situation, each mask played about equally often there (round-robin)
    assert len(agent.situations) == 3
    assert (agent.counts.max(axis=1) - agent.counts.min(axis=1) <= 1).all() and agent.counts.min() >= 2
    for c, best in enumerate(BEST):
        agent.reset()
        assert tuple(agent.act(context_obs(env, c), deterministic=True)) == best
        # an unseen situation nearer c than any other: c's mask, all episode long
        near = context_obs(env, c)
        near[1:] += 0.02
        agent.reset()
        assert tuple(agent.act(near)) == best
        episode = run_episode(env, agent, seed=1, options={"context": c})
        assert all(tuple(a) == best for a in episode["actions"]) and episode["length"] == env.num_phases


def test_lookup_acts_from_the_nearest_standardised_situation():
    # feature 0 spreads 100 times wider than feature 1: unscaled, feature 0 alone would decide
    contexts = np.zeros((2, F))
    contexts[:, 0], contexts[:, 1] = [0.0, 1.0], [0.0, 0.01]
    env = ContextEnv(contexts=contexts, best=[(1, 0, 0), (0, 0, 1)], noise=0.0)
    agent = make_agent("lookup", env).learn(env, total_episodes=40)
    probe = np.zeros(1 + F, np.float32)
    probe[1], probe[2] = 0.4, 0.011  # in sds: 0.8 and 2.2 from situation 0, 1.2 and 0.2 from situation 1
    assert agent.nearest(probe[1:].astype(float)) == agent.group(contexts[1])
    assert tuple(agent.act(probe)) == (0, 0, 1)


def test_bandit_learns_the_best_mask_per_situation_and_exploits_it():
    env = ContextEnv()
    agent = make_agent("bandit", env, seed=0, alpha=1.0).learn(env, total_episodes=150)
    for c, best in enumerate(BEST):
        agent.reset()
        assert tuple(agent.act(context_obs(env, c))) == best
    late = agent.episode_log[-50:]
    situation = [int(np.argmin(np.abs(CONTEXTS - x).sum(axis=1))) for x in agent.contexts[-50:]]
    hits = [r["arm"] == mask_to_index(BEST[c]) for r, c in zip(late, situation)]
    assert np.mean(hits) >= 0.6, np.mean(hits)  # exploits: mostly the best arm late in training
    assert np.mean([r["return"] for r in late]) > np.mean([r["return"] for r in agent.episode_log[:24]])


def test_bandit_is_seeded_and_deterministic():
    runs = []
    for seed in (3, 3, 4):
        env = ContextEnv()
        agent = make_agent("bandit", env, seed=seed).learn(env, total_episodes=40)
        runs.append([r["arm"] for r in agent.episode_log])
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.mark.parametrize("name", ["lookup", "bandit"])
def test_vector_env_training_and_checkpoints(name, tmp_path):
    venv = gym.vector.SyncVectorEnv([lambda: ContextEnv() for _ in range(4)])
    env = ContextEnv()
    records = []
    agent = make_agent(name, env, seed=1).learn(venv, total_episodes=150, callback=lambda _a, r: records.append(r))
    venv.close()
    assert len(records) == agent.episodes_done == 150 and agent.discarded_episodes == 2
    assert agent.steps_done == 150 * env.num_phases
    for c, best in enumerate(BEST):
        agent.reset()
        assert tuple(agent.act(context_obs(env, c))) == best
    agent.save(tmp_path / "ckpt")
    restored = load_agent(tmp_path / "ckpt", env)
    assert type(restored) is type(agent) and restored.hyperparameters() == agent.hyperparameters()
    assert restored.episodes_done == 150
    for c in range(3):
        agent.reset(), restored.reset()
        obs = context_obs(env, c)
        np.testing.assert_array_equal(agent.act(obs), restored.act(obs))
    # it learns on where it stopped: the same choices as the original from here
    agent.learn(ContextEnv(), total_episodes=10)  # two equal envs: the first reset is seeded alike
    restored.learn(ContextEnv(), total_episodes=10)
    assert [r["arm"] for r in agent.episode_log[-10:]] == [r["arm"] for r in restored.episode_log[-10:]]


@pytest.mark.parametrize("name", ["lookup", "bandit"])
def test_a_step_budget_and_a_stopping_callback(name):
    env = ContextEnv()
    agent = make_agent(name, env).learn(env, total_steps=10)
    assert agent.episodes_done == 4 and agent.steps_done == 12  # rounded up to whole episodes
    agent.learn(env, total_episodes=50, callback=lambda _a, r: r["episode"] < 6)
    assert agent.episodes_done == 7
    with pytest.raises(ValueError, match="total_episodes or total_steps"):
        agent.learn(env)
    with pytest.raises(ValueError, match="got total_episodes=-1"):
        agent.learn(env, total_episodes=-1)


@pytest.mark.parametrize("name", ["lookup", "bandit"])
def test_a_wrong_observation_is_a_clear_error(name):
    with pytest.raises(ValueError, match=r"needs observation one of \['observable', 'observable_only'\], got 'summary'"):
        make_agent(name, ContextEnv(observation="summary"))
    env = gym.make("kd_env/DigitsKD-Instances-v0", config="quick", record_time=False, observation="oracle_situation")
    try:
        with pytest.raises(ValueError, match=r"\['observable', 'observable_only'\], got 'oracle_situation'"):
            make_agent(name, env)
    finally:
        env.close()


def test_bad_bandit_hyperparameters_raise():
    with pytest.raises(ValueError, match="alpha"):
        make_agent("bandit", ContextEnv(), alpha=-1.0)
    with pytest.raises(ValueError, match="ridge"):
        make_agent("bandit", ContextEnv(), ridge=0.0)


SAME = InstanceSet(name="lookup-test", base="quick",
                   instances=[Instance("clean", {}), Instance("few-labels", {"label_fraction": 0.1}),
                              Instance("clean-again", {})],
                   held_out=["clean-again"], description="a held-out situation made as a train one")
if SAME.name not in kd_env.instance_set_names():
    kd_env.register_instance_set(SAME)


def test_lookup_plays_the_best_mask_of_the_equal_train_situation_on_the_instance_env():
    env = gym.make("kd_env/DigitsKD-Instances-v0", config="quick", instances=SAME.name, record_time=False,
                   observation="observable")
    try:
        returns: dict[str, dict[str, list[float]]] = {}

        def tally(_agent, record):  # an independent record of (train situation, mask) -> returns
            returns.setdefault(env.unwrapped.instance, {}).setdefault(record["mask"], []).append(record["return"])

        agent = make_agent("lookup", env, seed=0).learn(env, total_episodes=48, callback=tally)
        assert set(returns) == {"clean", "few-labels"} and len(agent.situations) == 2
        held_out = env.reset(seed=7, options={"instance": "clean-again"})[0]
        clean = env.reset(seed=8, options={"instance": "clean"})[0]
        np.testing.assert_allclose(held_out[-F:], clean[-F:], atol=1e-6)  # the premise: the same situation
        for instance, obs in (("clean", held_out), ("few-labels", env.reset(options={"instance": "few-labels"})[0])):
            means = {mask: float(np.mean(v)) for mask, v in returns[instance].items()}
            top = max(means.values())
            agent.reset()
            chosen = "".join(str(int(b)) for b in agent.act(obs))
            assert means.get(chosen) == top, (instance, chosen, means)
    finally:
        env.close()


def test_benchmark_configs_use_the_observable_observation_and_build():
    from experiments.benchmark.grid import build_grid
    from experiments.benchmark.settings import check_grid

    envs = ["kd_env/QuickKD-v0", "kd_env/DigitsKD-Instances-v0", "kd_env/DigitsKD-BetweenOracle-v0"]
    cells = build_grid(["lookup", "bandit", "ac"], envs, [0], eval_every=5, eval_episodes=1)
    by = {(c.algo, c.env_id): c.settings for c in cells}
    for algo in ("lookup", "bandit"):
        for env_id in envs:
            assert by[algo, env_id].env_kwargs["observation"] == "observable"
        # equal env steps: the learners' episodes, each of the env's phases
        for env_id in envs[1:]:
            assert by[algo, env_id].episodes == by["ac", env_id].episodes
    check_grid([c for c in cells if c.env_id == "kd_env/QuickKD-v0" and c.algo != "ac"], log=lambda _m: None)
