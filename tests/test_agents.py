"""Tests of the agents package: the protocol, our actor-critic, the SB3 adapters, baselines,
checkpoints.

Learning tests use :class:`SyntheticSelectionEnv`, a tiny env with a known best action (a
contextual bandit in the env's shape: K knowledge bits, a few phases per episode, a
summary-like Box observation).  Everything that needs the real environment uses QuickKD
(digits, 4 phases per episode).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import zipfile
from itertools import product
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import kd_env  # noqa: F401 - registers the env ids
from agents import Agent, CheckpointError, agent_names, load_agent, make_agent, run_episode
from agents.ac import ValueActorCritic
from agents.ac_base import ActorCriticAgent
from agents.ac_q import QActorCritic
from agents.base import selection_spec
from agents.sb3 import sb3_defaults
from kd_env.wrappers import MaskIndexWrapper, index_to_mask, mask_to_index

REPO_ROOT = Path(__file__).resolve().parents[1]
K = 4
BEST_MASK = (1, 0, 1, 1)
TARGET_WEIGHTS = (0.8, 0.2, 0.6, 0.3)


class SyntheticSelectionEnv(gym.Env):
    """K knowledge bits, ``phases`` steps per episode, a known best action.

    * mask mode: reward = number of bits equal to ``best`` (+ N(0, noise)); the best fixed mask
      earns ``K`` per phase.
    * weights mode: reward = ``-||w - target||`` (+ N(0, noise)).
    * observation: ``[budget fraction, last action (K), K decaying "losses"]`` in [0, 1].
    """

    def __init__(self, action_mode: str = "mask", k: int = K, phases: int = 5, noise: float = 0.1,
                 best: tuple = BEST_MASK, target: tuple = TARGET_WEIGHTS, knowledge_names: list[str] | None = None):
        self.k, self.num_phases, self.noise, self.action_mode = k, phases, noise, action_mode
        self.best = np.asarray(best, np.float64)[:k]
        self.target = np.asarray(target, np.float64)[:k]
        self.knowledge_names = knowledge_names or ["finetune", "response", "feature", "relation", "attention"][:k]
        self.action_space = spaces.MultiBinary(k) if action_mode == "mask" else spaces.Box(0, 1, (k,), np.float32)
        self.observation_space = spaces.Box(0, 1, (2 * k + 1,), np.float32)

    def _obs(self) -> np.ndarray:
        frac = self.t / self.num_phases
        losses = np.exp(-frac * (1 + np.arange(self.k))) + 0.01 * self.np_random.random(self.k)
        return np.clip(np.concatenate([[frac], self.last, losses]), 0, 1).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.last = np.zeros(self.k)
        return self._obs(), {}

    def step(self, action):
        if self.t >= self.num_phases:
            raise RuntimeError("step() after the episode ended; call reset()")
        a = np.asarray(action, np.float64)
        assert self.action_space.contains(np.asarray(action, self.action_space.dtype)), action
        if self.action_mode == "mask":
            reward = float(np.sum(a == self.best))
        else:
            reward = -float(np.linalg.norm(a - self.target))
        reward += self.noise * float(self.np_random.normal())
        self.t += 1
        self.last = a
        return self._obs(), reward, self.t >= self.num_phases, False, {"action": a.astype(np.float32)}


class TelescopingLossEnv(gym.Env):
    """A dev_loss_delta-like env: a "dev loss" decays each phase at a rate set by the mask, and
    the reward is its decrease (so rewards telescope: the return is initial - final loss, large
    early, tiny once the loss has converged).  Bit 0 ("finetune") is what drives the loss down;
    an agent that drops it is clearly worse.  Observation: budget fraction, the loss, the last
    action, two noise features."""

    RATES = np.array([0.2, 0.08, 0.0, -0.03])

    def __init__(self, phases: int = 15, noise: float = 0.03):
        self.num_phases, self.noise = phases, noise
        self.knowledge_names = ["finetune", "response", "feature", "relation"]
        self.action_space = spaces.MultiBinary(4)
        self.observation_space = spaces.Box(-10, 10, (8,), np.float32)

    def _obs(self) -> np.ndarray:
        noise = self.np_random.normal(size=2)
        return np.concatenate([[self.t / self.num_phases, self.loss], self.last, noise]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.loss, self.last = 0, 2.3 + 0.1 * float(self.np_random.normal()), np.zeros(4)
        return self._obs(), {}

    def step(self, action):
        a = np.asarray(action, np.float64)
        rate = float(np.clip(self.RATES @ a + self.noise * self.np_random.normal(), 0.0, 0.9))
        new_loss = self.loss - rate * (self.loss - 0.1)
        reward, self.loss = self.loss - new_loss, new_loss
        self.t += 1
        self.last = a
        return self._obs(), reward, self.t >= self.num_phases, False, {}


class SituationEnv(SyntheticSelectionEnv):
    """The synthetic mask env, plus a situation drawn at every reset that dominates the return:
    every phase adds ``offset`` ~ U(0, 10) (per episode, not observed), while the actions add at
    most ``K * scale``.  ``reset(options={"replay": True})`` restarts the previous situation and
    noise exactly, as kd_env's envs do."""

    def __init__(self, scale: float = 0.3, **kwargs):
        super().__init__("mask", **kwargs)
        self.scale = scale
        self._start = None

    def reset(self, *, seed=None, options=None):
        if options and options.get("replay"):
            self.np_random.bit_generator.state = self._start
            self.t, self.last = 0, np.zeros(self.k)
        else:
            super().reset(seed=seed)
            self._start = self.np_random.bit_generator.state
        self.offset = 10 * float(self.np_random.random())
        return self._obs(), {}

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, self.offset + self.scale * reward, terminated, truncated, info


def test_ac_paired_rollouts_learn_the_best_mask_when_the_situation_dominates_the_return():
    """Each phase's reward is ~U(0, 10) from the situation plus at most 1.2 from the action; with
    groups of 4 episodes that start from the same situation, the leave-one-out baseline removes
    the situation and ``ac`` finds the best mask (3 bits better than chance on average)."""
    env = SituationEnv()
    kwargs = dict(seed=0, gamma=1.0, lr=3e-3, episodes_per_update=8, update_epochs=4)
    paired = make_agent("ac", env, group_size=4, **kwargs).learn(env, total_episodes=160)
    assert paired.updates_done == 20
    obs = episode_observations(env)

    def bits_right(agent) -> float:
        return float(np.mean([np.sum(agent.act(o, deterministic=True) == env.best) for o in obs]))

    unpaired = make_agent("ac", env, **kwargs).learn(env, total_episodes=160)
    print(f"\npaired rollouts: {bits_right(paired):.2f} of {env.k} bits right; critic baseline: {bits_right(unpaired):.2f}")
    assert bits_right(paired) == env.k


def test_ac_group_size_needs_the_value_critic_and_a_positive_integer():
    env = SyntheticSelectionEnv("mask")
    with pytest.raises(ValueError, match="group_size must be an integer >= 1"):
        make_agent("ac", env, group_size=0)
    with pytest.raises(ValueError, match="group_size applies to the value critic"):
        make_agent("ac_q", env, group_size=2)


def mean_return(env, agent, seeds=range(1000, 1010)) -> float:
    return float(np.mean([run_episode(env, agent, deterministic=True, seed=s)["return"] for s in seeds]))


def episode_observations(env, seed: int = 7, n: int | None = None) -> list:
    """Observations of one episode under a fixed mask (inputs to compare agents' actions)."""
    obs, _ = env.reset(seed=seed)
    out = [obs]
    action = np.ones(env.action_space.shape, dtype=env.action_space.dtype)
    while True:
        obs, _, terminated, truncated, _ = env.step(action)
        out.append(obs)
        if terminated or truncated or (n is not None and len(out) >= n):
            return out


# ---- QuickKD fixtures (the teacher is fine-tuned once per session into the session cache) ----

@pytest.fixture(scope="module")
def quick_mask():
    env = gym.make("kd_env/QuickKD-v0")
    yield env
    env.close()


@pytest.fixture(scope="module")
def quick_weights():
    env = gym.make("kd_env/QuickKD-v0", action_mode="weights")
    yield env
    env.close()


@pytest.fixture(scope="module")
def quick_cls():
    env = gym.make("kd_env/QuickKD-v0", observation="cls")
    yield env
    env.close()


@pytest.fixture(scope="module")
def quick_dict_weights():
    env = gym.make("kd_env/QuickKD-v0", observation="dict", action_mode="weights")
    yield env
    env.close()


# =============================================================================================
# (a), (b) learning
# =============================================================================================


def test_ac_reaches_90_percent_of_best_fixed_mask():
    """Budget: 300 training episodes (1500 phases), seed 0, under 60 s."""
    env = SyntheticSelectionEnv("mask")
    best = max(mean_return(env, make_agent("fixed:" + "".join(map(str, bits)), env))
               for bits in product((0, 1), repeat=K))
    start = time.perf_counter()
    agent = make_agent("ac", env, seed=0)
    reached = None

    def stop_when_good(agent, record):
        nonlocal reached
        if record["episode"] % 25 == 0 and mean_return(env, agent, range(2000, 2005)) >= 0.9 * best:
            reached = record["episode"]
            return False
        return None

    agent.learn(env, total_episodes=300, callback=stop_when_good)
    seconds = time.perf_counter() - start
    final = mean_return(env, agent)
    print(f"\nac on the synthetic mask env: {final:.2f} / best fixed mask {best:.2f} "
          f"({100 * final / best:.0f}%) after {reached or 300} episodes, {seconds:.1f} s")
    assert final >= 0.9 * best
    assert seconds < 60


def test_ac_q_weights_beats_random_soft():
    """The DDPG-style variant on the weights mode: 60 episodes (300 phases)."""
    env = SyntheticSelectionEnv("weights")
    random_soft = mean_return(env, make_agent("random_soft", env, seed=0))
    start = time.perf_counter()
    agent = make_agent("ac_q", env, seed=0).learn(env, total_episodes=60)
    seconds = time.perf_counter() - start
    learned = mean_return(env, agent)
    print(f"\nac_q on the synthetic weights env: {learned:.2f} vs random_soft {random_soft:.2f} "
          f"(noise-free optimum 0) in {seconds:.1f} s")
    assert learned > random_soft + 1.0
    assert seconds < 60


def test_ac_keeps_the_essential_bit_on_a_telescoping_reward():
    """Regression (DigitsKD: ``ac`` got worse with training and dropped ``finetune``).  On a
    dev_loss_delta-like env, at the benchmark's budget (12 episodes), ``ac`` with its defaults
    must keep the bit that drives the loss down and beat random_hard on every seed.  With the old
    defaults (gamma 0.99, one-episode updates, an O(1) initial critic) the finetune bit was kept
    in ~73% of phases on average (21% on one seed) and 2 of 10 seeds fell below random_hard."""
    env = TelescopingLossEnv()

    def evaluate(agent):
        episodes = [run_episode(env, agent, deterministic=True, seed=s) for s in range(1000, 1005)]
        return (float(np.mean([np.asarray(e["actions"])[:, 0].mean() for e in episodes])),
                float(np.mean([e["return"] for e in episodes])))

    _, random_hard = evaluate(make_agent("random_hard", env, seed=0))
    finetune, returns = zip(*(evaluate(make_agent("ac", env, seed=seed).learn(env, total_episodes=12))
                              for seed in range(10)))
    print(f"\nac on the telescoping env: finetune kept in {np.mean(finetune):.2f} of phases "
          f"(per seed {np.round(finetune, 2).tolist()}), return min {min(returns):.3f} vs random_hard {random_hard:.3f}")
    assert np.mean(finetune) >= 0.85
    assert min(returns) > random_hard


def test_ac_default_gamma_depends_on_the_critic():
    env = SyntheticSelectionEnv("mask")
    assert make_agent("ac", env).config.gamma == 0.5
    assert make_agent("ac_q", env).config.gamma == 0.99
    assert make_agent("ac", env, gamma=0.9).config.gamma == 0.9
    assert make_agent("ac", env).hyperparameters()["gamma"] == 0.5  # saved resolved in headers


def test_ac_value_critic_weights_mode_learns():
    env = SyntheticSelectionEnv("weights")
    random_soft = mean_return(env, make_agent("random_soft", env, seed=0))
    agent = make_agent("ac", env, seed=0).learn(env, total_episodes=200)
    assert mean_return(env, agent) > random_soft + 1.0


def test_a_resumed_episode_log_shows_one_tensorboard_curve(tmp_path):
    """A killed attempt's TensorBoard scalars from the resumed episode on are hidden (purge_step):
    episodes 1-3, killed, resumed after episode 1: one curve, the second attempt's from step 8 on."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agents.episode_log import EpisodeLogger

    def attempt(episodes, offset):
        logger = EpisodeLogger(tmp_path, [])
        for n in episodes:
            logger.log({"episode": n, "steps": 4 * n, "length": 4, "return": n + offset, "freq_a": 0.5})
        logger.close()
        time.sleep(1.1)  # event files are named by the second they are opened in

    attempt([1, 2, 3], 0.0)
    attempt([2, 3], 10.0)
    board = EventAccumulator(str(tmp_path))
    board.Reload()
    assert [(e.step, e.value) for e in board.Scalars("rollout/weight_a")] == [(4, 0.5), (8, 0.5), (12, 0.5)]
    assert [e.step for e in board.Scalars("rollout/ep_len_mean")] == [4, 8, 12]
    assert len((tmp_path / "episodes.csv").read_text().strip().splitlines()) == 4


def test_ac_trains_on_quickkd_and_logs_every_episode(quick_mask, tmp_path):
    """The real env end to end: 3 episodes train, update and log (whether ``ac`` learns is
    tested on the synthetic envs above, where the best action is known)."""
    agent = make_agent("ac", quick_mask, seed=0, log_dir=str(tmp_path / "log"))
    assert agent.learn(quick_mask, total_episodes=3) is agent
    log = agent.episode_log
    assert [r["episode"] for r in log] == [1, 2, 3]
    names = quick_mask.unwrapped.knowledge_names
    assert agent.config.episodes_per_update == 2 and agent.updates_done == 2  # after episodes 2 and 3 (the last)
    for r in log:
        assert r["length"] == quick_mask.unwrapped.config.num_phases
        assert all(0 <= r[f"freq_{n}"] <= 1 for n in names)
        assert np.isfinite(r["return"])
        # losses are those of the update that ended the episode; NaN when it made none
        updated = r["episode"] in (2, 3)
        assert np.isfinite(r["actor_loss"]) == updated and np.isfinite(r["critic_loss"]) == updated
        assert 0 <= r["final_probe_metric"] <= 1
    rows = (tmp_path / "log" / "episodes.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and "freq_finetune" in rows[0] and "actor_loss" in rows[0]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "log").iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "log"))
    board.Reload()
    assert [e.step for e in board.Scalars("rollout/ep_rew_mean")] == [4, 8, 12]  # SB3's tags, x: env steps
    assert board.Scalars("rollout/ep_rew_mean")[-1].value == pytest.approx(np.mean([r["return"] for r in log]), abs=1e-6)
    result = run_episode(quick_mask, agent, seed=3)
    assert result["length"] == 4 and len(result["actions"]) == 4 and np.isfinite(result["final_probe_metric"])
    assert result["return"] == pytest.approx(sum(result["rewards"]))


def test_ac_total_steps_and_callback_stop(quick_weights):
    agent = make_agent("ac", quick_weights, seed=0)
    agent.learn(quick_weights, total_steps=5)  # rounded up to whole episodes of 4 phases
    assert len(agent.episode_log) == 2 and agent.steps_done == 8
    agent.learn(quick_weights, total_episodes=5, callback=lambda a, r: False)
    assert len(agent.episode_log) == 3
    action = agent.act(quick_weights.reset(seed=0)[0])
    assert action.dtype == np.float32 and quick_weights.action_space.contains(action)


def test_ac_cls_observation_uses_split_encoders(quick_cls):
    agent = make_agent("ac", quick_cls, seed=0)
    (kind, start, end, split), = agent.layout
    s, t = quick_cls.unwrapped.distiller.cls_embeddings()
    assert (kind, start, end, split) == ("cls", 0, len(s) + len(t), len(s))
    assert len(agent.actor.encoder.encoders) == 2  # student and teacher encoders
    first = agent.actor.encoder.encoders[0][0]
    assert first.in_features == len(s) and agent.actor.encoder.encoders[1][0].in_features == len(t)
    agent.learn(quick_cls, total_episodes=2)
    assert quick_cls.action_space.contains(agent.act(quick_cls.reset(seed=1)[0], deterministic=True))


def test_ac_q_dict_observation_on_quickkd(quick_dict_weights):
    agent = make_agent("ac_q", quick_dict_weights, seed=0, learning_starts=4, batch_size=4)
    assert [p[0] for p in agent.layout] == ["cls", "flat"]
    agent.learn(quick_dict_weights, total_episodes=2)
    assert np.isfinite(agent.episode_log[-1]["critic_loss"])
    assert quick_dict_weights.action_space.contains(agent.act(quick_dict_weights.reset(seed=0)[0]))


@pytest.mark.parametrize("name, extra", [("ac", {}), ("ac_q", {"learning_starts": 4, "batch_size": 4})])
def test_ac_same_seed_same_run_on_digits(name, extra, quick_mask):
    def run():
        agent = make_agent(name, quick_mask, seed=5, **extra).learn(quick_mask, total_episodes=2)
        evaluation = run_episode(quick_mask, agent, deterministic=False, seed=11)
        return [r["return"] for r in agent.episode_log], evaluation["actions"], evaluation["return"]

    assert run() == run()


def test_exploration_reward_changes_learning_return_only():
    agent = make_agent("ac", SyntheticSelectionEnv("mask"), seed=0, exploration_coef=0.5)
    assert agent.exploration == "hard"
    assert agent._exploration_term(np.array([1, 0, 1, 0]), None) == 0.0
    assert agent._exploration_term(np.array([1, 0, 1, 0]), np.array([1, 0, 1, 0])) == -0.5
    assert agent._exploration_term(np.array([1, 0, 1, 0]), np.array([1, 1, 1, 0])) == 0.0
    soft = make_agent("ac", SyntheticSelectionEnv("weights"), seed=0, exploration_coef=2.0)
    assert soft.exploration == "soft"
    assert soft._exploration_term(np.array([1.0, 0, 0, 0]), np.array([1.0, 1, 0, 0])) == pytest.approx(-2 / np.sqrt(2))
    # always the same action: every phase after the first is penalised, the env return is not
    env = SyntheticSelectionEnv("mask", noise=0.0)
    same = make_agent("ac", env, seed=0, exploration_coef=0.5, lr=1e-9)
    with torch.no_grad():
        same.actor.body[-1].bias.fill_(30.0)  # every bit 1 with probability ~1
    same.learn(env, total_episodes=3)
    for r in same.episode_log:
        assert r["return"] == pytest.approx(float(np.sum(BEST_MASK)) * env.num_phases)  # 3 bits right per phase
        assert r["learning_return"] == pytest.approx(r["return"] - 0.5 * (env.num_phases - 1))


# =============================================================================================
# (c) stable-baselines3
# =============================================================================================


@pytest.mark.parametrize("algo, mode", [("ppo", "mask"), ("a2c", "mask"), ("dqn", "mask"), ("sac", "weights"),
                                        ("td3", "weights"), ("ddpg", "weights"), ("ppo", "weights")])
def test_sb3_short_learn_on_quickkd(algo, mode, quick_mask, quick_weights):
    env = quick_mask if mode == "mask" else quick_weights
    agent = make_agent(algo, env, seed=0)
    agent.learn(env, total_episodes=2)
    n = env.unwrapped.config.num_phases
    assert agent.model.num_timesteps >= 2 * n
    assert len(agent.episode_log) >= 2 and all(r["length"] == n for r in agent.episode_log)
    obs, _ = env.reset(seed=0)
    for deterministic in (True, False):
        action = agent.act(obs, deterministic=deterministic)
        assert env.action_space.contains(action), action
        assert action.dtype == (np.int8 if mode == "mask" else np.float32)


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_sb3_learns_the_best_mask_on_the_synthetic_env(algo):
    """PPO and A2C through our adapter (defaults sized from the episode length) find the known
    best mask: from ~30% of the optimum to >= 90% in 60 episodes (300 phases, ~1 s)."""
    env = SyntheticSelectionEnv("mask")
    optimum = float(np.sum(np.ones(K)) * env.num_phases)  # every bit right in every phase
    agent = make_agent(algo, env, seed=0, tensorboard=False)
    before = mean_return(env, agent)
    agent.learn(env, total_episodes=60)
    after = mean_return(env, agent)
    print(f"\n{algo} on the synthetic mask env: {before:.2f} -> {after:.2f} (optimum {optimum:.0f})")
    assert before < 0.75 * optimum and after >= 0.9 * optimum


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_sb3_learn_again_after_evaluation(algo):
    env = SyntheticSelectionEnv("mask")
    agent = make_agent(algo, env, seed=0, learning_starts=2) if algo == "dqn" else make_agent(algo, env, seed=0)
    agent.learn(env, total_episodes=2)
    run_episode(env, agent, seed=0)  # leaves the env at the end of an episode
    before = agent.model.num_timesteps
    agent.learn(env, total_episodes=2)
    assert agent.model.num_timesteps >= before + 10


def test_sb3_defaults_follow_episode_length(quick_mask):
    n = quick_mask.unwrapped.config.num_phases
    ppo = make_agent("ppo", quick_mask, seed=0)
    assert ppo.model.n_steps == 4 * n and (4 * n) % ppo.model.batch_size == 0
    assert make_agent("a2c", quick_mask, seed=0).model.n_steps == n
    assert sb3_defaults("dqn", 15)["learning_starts"] == 30
    custom = make_agent("ppo", quick_mask, seed=0, n_steps=8, batch_size=4, learning_rate=1e-3)
    assert (custom.model.n_steps, custom.model.batch_size, custom.model.learning_rate) == (8, 4, 1e-3)


def test_sb3_dict_observation_uses_multi_input_policy(quick_dict_weights):
    agent = make_agent("sac", quick_dict_weights, seed=0, learning_starts=2)
    assert agent.policy == "MultiInputPolicy"
    agent.learn(quick_dict_weights, total_episodes=1)
    assert quick_dict_weights.action_space.contains(agent.act(quick_dict_weights.reset(seed=0)[0]))


@pytest.mark.parametrize("k", [1, 4, 5])
def test_dqn_wrapper_round_trips_every_mask(k):
    env = SyntheticSelectionEnv("mask", k=k, best=(1,) * k, target=(0.5,) * k)
    wrapped = MaskIndexWrapper(env)
    assert wrapped.action_space == spaces.Discrete(2**k)
    seen = set()
    for index in range(2**k):
        mask = wrapped.action(index)
        assert env.action_space.contains(mask)
        assert mask_to_index(mask) == index == wrapped.reverse_action(mask)
        assert [int(b) for b in mask] == [(index >> j) & 1 for j in range(k)]
        seen.add(tuple(mask))
    assert len(seen) == 2**k
    for bits in product((0, 1), repeat=k):
        assert tuple(index_to_mask(mask_to_index(bits), k)) == bits
    weights = MaskIndexWrapper(SyntheticSelectionEnv("weights", k=k, best=(1,) * k, target=(0.5,) * k))
    assert weights.action(2**k - 1).dtype == np.float32
    with pytest.raises(ValueError):
        index_to_mask(2**k, k)


def test_sb3_continuous_algorithms_refuse_a_mask_env(quick_mask):
    for algo in ("sac", "td3", "ddpg"):
        with pytest.raises(ValueError, match="action_mode='weights'"):
            make_agent(algo, quick_mask)


# =============================================================================================
# (d) checkpoints
# =============================================================================================


@pytest.mark.parametrize("name, mode", [("ac", "mask"), ("ac", "weights"), ("ac_q", "mask"), ("ac_q", "weights"),
                                        ("ppo", "mask"), ("ppo", "weights"), ("a2c", "mask"), ("dqn", "mask"),
                                        ("sac", "weights"), ("td3", "weights")])
def test_save_load_gives_identical_actions(name, mode, tmp_path):
    env = SyntheticSelectionEnv(mode)
    extra = {"learning_starts": 5} if name in ("ac_q", "dqn", "sac", "td3") else {}
    agent = make_agent(name, env, seed=3, **extra).learn(env, total_episodes=4)
    agent.save(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "agent.json").read_text())["agent"] == name
    restored = load_agent(tmp_path / "ckpt", env)
    assert type(restored) is type(agent) and restored.hyperparameters() == agent.hyperparameters()
    observations = episode_observations(env)
    for obs in observations:
        np.testing.assert_array_equal(agent.act(obs, deterministic=True), restored.act(obs, deterministic=True))
    if name.startswith("ac"):  # every tensor restored, the normaliser's statistics included
        for mine, theirs in ((agent.actor, restored.actor), (agent.critic, restored.critic),
                             (agent.obs_norm, restored.obs_norm)):
            for (key, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
                assert torch.equal(a, b), key
        assert restored.episodes_done == agent.episodes_done == 4


def test_saved_agents_load_in_a_new_process(quick_mask, tmp_path):
    ac = make_agent("ac", quick_mask, seed=0).learn(quick_mask, total_episodes=2)
    ppo = make_agent("ppo", quick_mask, seed=0)
    ac.save(tmp_path / "ac")
    ppo.save(tmp_path / "ppo")
    observations = np.stack(episode_observations(quick_mask))
    np.save(tmp_path / "obs.npy", observations)
    script = tmp_path / "act.py"
    script.write_text(
        "import json, sys\n"
        "import gymnasium as gym, numpy as np\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "import kd_env\n"
        "from agents import load_agent\n"
        "env = gym.make('kd_env/QuickKD-v0')\n"
        f"obs = np.load({str(tmp_path / 'obs.npy')!r})\n"
        "out = {n: [load_agent(sys.argv[1] + '/' + n, env).act(o, deterministic=True).tolist() for o in obs]\n"
        "       for n in ('ac', 'ppo')}\n"
        "print(json.dumps(out))\n")
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["ac"] == [ac.act(o, deterministic=True).tolist() for o in observations]
    assert out["ppo"] == [ppo.act(o, deterministic=True).tolist() for o in observations]


class _Payload:
    """Unpickling this would create ``marker`` (it must never run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_pickle_checkpoint_is_refused(tmp_path):
    env = SyntheticSelectionEnv("mask")
    make_agent("ac", env, seed=0).save(tmp_path / "ac")
    marker = tmp_path / "pwned"
    with open(tmp_path / "ac" / "weights.pt", "wb") as fh:
        pickle.dump({"actor": _Payload(marker)}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_agent(tmp_path / "ac", env)
    assert not marker.exists()
    # the same payload inside an SB3 archive
    make_agent("ppo", env, seed=0).save(tmp_path / "ppo")
    with zipfile.ZipFile(tmp_path / "ppo" / "model.zip", "w") as zf:
        zf.writestr("policy.pth", pickle.dumps({"x": _Payload(marker)}, protocol=2))
        zf.writestr("data", "{}")
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_agent(tmp_path / "ppo", env)
    assert not marker.exists()


def test_checkpoint_errors(tmp_path):
    env = SyntheticSelectionEnv("mask")
    with pytest.raises(CheckpointError, match="no agent checkpoint"):
        load_agent(tmp_path / "missing", env)
    make_agent("ac", env, seed=0).save(tmp_path / "ac")
    other = SyntheticSelectionEnv("mask", knowledge_names=["response", "finetune", "feature", "relation"])
    with pytest.raises(CheckpointError, match="knowledge"):
        load_agent(tmp_path / "ac", other)
    with pytest.raises(CheckpointError, match="action_mode"):
        load_agent(tmp_path / "ac", SyntheticSelectionEnv("weights"))
    (tmp_path / "ac" / "agent.json").write_text("not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_agent(tmp_path / "ac", env)


# =============================================================================================
# (e) construction errors
# =============================================================================================


@pytest.mark.parametrize("params, field", [
    ({"lr": -1e-3}, "lr"), ({"lr": 0}, "lr"), ({"gamma": 1.5}, "gamma"), ({"gamma": -0.1}, "gamma"),
    ({"gae_lambda": 2}, "gae_lambda"), ({"ent_coef": -0.1}, "ent_coef"), ({"tau": 0}, "tau"),
    ({"hidden_sizes": ()}, "hidden_sizes"), ({"hidden_sizes": (64, -1)}, "hidden_sizes"),
    ({"batch_size": 128, "buffer_size": 64}, "batch_size"), ({"critic": "v"}, "critic"),
    ({"exploration": "often"}, "exploration"), ({"exploration_coef": -1}, "exploration_coef"),
    ({"encoder_sizes": (64,)}, "encoder_sizes"), ({"seed": -1}, "seed"), ({"activation": "gelu"}, "activation"),
    ({"learning_rate": 1e-3}, "learning_rate"),
])
def test_bad_actor_critic_hyperparameters_raise(params, field):
    env = SyntheticSelectionEnv("mask")
    with pytest.raises(ValueError, match=field):
        make_agent("ac_q" if "tau" in params else "ac", env, **params)


def test_bad_agent_construction_raises(quick_mask):
    with pytest.raises(ValueError) as info:
        make_agent("reinforce", quick_mask)
    for name in ("ac", "ac_q", "ppo", "dqn", "sac", "vanilla_kd", "fixed:<bits>", "schedule:<file>"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="critic"):
        make_agent("ac", quick_mask, critic="q")
    with pytest.raises(ValueError, match="action_mode='weights'"):
        make_agent("random_soft", quick_mask)
    with pytest.raises(ValueError, match="4 knowledge types"):
        make_agent("fixed:101", quick_mask)
    with pytest.raises(ValueError, match="0s and 1s"):
        make_agent("fixed:10a1", quick_mask)
    with pytest.raises(ValueError, match="bad arguments for PPO"):
        make_agent("ppo", quick_mask, not_an_sb3_argument=1)
    with pytest.raises(ValueError, match="state_encoder"):
        make_agent("ac", quick_mask, state_encoder="cnn")
    with pytest.raises(ValueError, match="Box"):
        make_agent("ac", _DiscreteObsEnv())


class _DiscreteObsEnv(SyntheticSelectionEnv):
    def __init__(self):
        super().__init__("mask")
        self.observation_space = spaces.Discrete(3)


def test_ac_and_ac_q_are_two_algorithms_over_one_base():
    env = SyntheticSelectionEnv("mask")
    ac, ac_q = make_agent("ac", env), make_agent("ac_q", env)
    assert type(ac) is ValueActorCritic and type(ac_q) is QActorCritic
    assert isinstance(ac, ActorCriticAgent) and isinstance(ac_q, ActorCriticAgent)
    assert (ac.name, ac.hyperparameters()["critic"]) == ("ac", "value")
    assert (ac_q.name, ac_q.hyperparameters()["critic"]) == ("ac_q", "q")
    assert hasattr(ac_q, "buffer") and hasattr(ac_q, "critic_target") and not hasattr(ac, "buffer")
    assert ac.critic.action_size == 0 and ac_q.critic.action_size == env.k
    with pytest.raises(ValueError, match="use 'ac'"):
        QActorCritic(env, critic="value")
    with pytest.raises(TypeError, match="shared base"):
        ActorCriticAgent(env)
    # the base runs both: one training loop, whose log records (episode numbers, lengths, the
    # selection frequencies of the actions taken) and checkpoints are the same for either critic
    seen = {}
    for agent in (ac, ac_q):
        agent.learn(env, total_episodes=3)
        log = agent.episode_log
        assert agent.episodes_done == 3 and [r["episode"] for r in log] == [1, 2, 3]
        assert all(r["length"] == env.num_phases for r in log) and log[-1]["steps"] == 3 * env.num_phases
        for r in log:
            assert all(0.0 <= r[f"freq_{n}"] <= 1.0 for n in env.knowledge_names)
        seen[agent.name] = [sorted(r) for r in log]
    assert seen["ac"] == seen["ac_q"]


def test_registry_lists_every_agent():
    names = agent_names()
    expected = ["ac", "ac_q", "ppo", "a2c", "dqn", "sac", "td3", "ddpg", "finetune", "vanilla_kd", "pkd", "all",
                "random_hard", "random_soft", "fixed:<bits>", "schedule:<file>", "dynamic_kd", "eskd", "two_stage",
                "anneal", "lookup", "bandit"]
    assert sorted(names) == sorted(expected)
    env = SyntheticSelectionEnv("mask")
    for name in names:
        if name in ("sac", "td3", "ddpg", "random_soft", "schedule:<file>", "lookup", "bandit"):
            continue  # lookup and bandit need the observable observation: tests/test_lookup_bandit.py
        agent = make_agent(name.replace("<bits>", "1010"), env)
        assert isinstance(agent, Agent)
        assert env.action_space.contains(agent.act(env.reset(seed=0)[0], deterministic=True))


# =============================================================================================
# (f) baselines
# =============================================================================================


def test_named_baselines_follow_knowledge_names(quick_mask, quick_weights):
    assert quick_mask.unwrapped.knowledge_names == ["finetune", "response", "feature", "relation"]
    expected = {"finetune": [1, 0, 0, 0], "vanilla_kd": [1, 1, 0, 0], "pkd": [1, 1, 1, 0], "all": [1, 1, 1, 1],
                "fixed:1010": [1, 0, 1, 0]}
    obs, _ = quick_mask.reset(seed=0)
    for name, mask in expected.items():
        action = make_agent(name, quick_mask).act(obs)
        assert action.dtype == np.int8 and action.tolist() == mask
        weights = make_agent(name, quick_weights).act(obs)
        assert weights.dtype == np.float32 and weights.tolist() == [float(b) for b in mask]
        assert make_agent(name, quick_mask).learn(quick_mask, total_episodes=1).episode_log == []
    # another order plus attention: masks follow the names
    env = SyntheticSelectionEnv("mask", k=5, best=(1,) * 5, target=(0.5,) * 5,
                                knowledge_names=["response", "attention", "finetune", "relation", "feature"])
    obs, _ = env.reset(seed=0)
    assert make_agent("vanilla_kd", env).act(obs).tolist() == [1, 0, 1, 0, 0]
    assert make_agent("pkd", env).act(obs).tolist() == [1, 0, 1, 0, 1]
    assert make_agent("all", env).act(obs).tolist() == [1] * 5
    without = SyntheticSelectionEnv("mask", knowledge_names=["finetune", "response", "relation", "attention"])
    with pytest.raises(ValueError, match="feature"):
        make_agent("pkd", without)


def test_fixed_mask_drives_quickkd(quick_mask):
    result = run_episode(quick_mask, make_agent("fixed:1100", quick_mask), seed=0)
    assert result["actions"] == [[1.0, 1.0, 0.0, 0.0]] * 4
    assert all(info["action"].tolist() == [1, 1, 0, 0] for info in result["infos"])
    assert result["final_probe_metric"] > 0.1  # better than chance on 10 digits


def _schedule_rows():
    return [[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]


def test_schedule_from_yaml_honours_phases_and_reset(tmp_path):
    import yaml

    path = tmp_path / "curriculum.yaml"
    path.write_text(yaml.safe_dump(_schedule_rows()))
    env = SyntheticSelectionEnv("mask", phases=5)
    agent = make_agent(f"schedule:{path}", env)
    expected = _schedule_rows() + [_schedule_rows()[-1]] * 2  # the last row repeats
    first = run_episode(env, agent, seed=0)["actions"]
    assert first == [[float(v) for v in row] for row in expected]
    assert run_episode(env, agent, seed=1)["actions"] == first  # run_episode calls reset()
    agent.act(env.reset(seed=0)[0])
    agent.reset()
    assert agent.act(env.reset(seed=0)[0]).tolist() == _schedule_rows()[0]
    # checkpoints hold the rows, not the path
    agent.save(tmp_path / "ckpt")
    path.unlink()
    assert run_episode(env, load_agent(tmp_path / "ckpt", env), seed=0)["actions"] == first


def test_schedule_from_csv_with_header_and_errors(tmp_path):
    env = SyntheticSelectionEnv("weights", phases=3)
    path = tmp_path / "curriculum.csv"
    # header in another order: columns are mapped to the env's knowledge order
    path.write_text("response,finetune,relation,feature\n1,0.5,0,0\n0,1,0.25,1\n")
    actions = run_episode(env, make_agent(f"schedule:{path}", env), seed=0)["actions"]
    assert actions == [[0.5, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.25], [1.0, 0.0, 1.0, 0.25]]
    plain = tmp_path / "plain.csv"
    plain.write_text("1,0,0,0\n1,1,0,0\n")
    assert run_episode(SyntheticSelectionEnv("mask", phases=2), make_agent(f"schedule:{plain}",
                                                                          SyntheticSelectionEnv("mask")),
                       seed=0)["actions"] == [[1, 0, 0, 0], [1, 1, 0, 0]]
    bad_files = [("bad.csv", "1,0,0\n", env, "3 entries"),
                 ("ragged.yaml", "[[1, 0, 0, 0], [1, 0]]\n", env, "row 2"),
                 ("notlist.yaml", "phase1: [1, 0, 0, 0]\n", env, "list of lists"),
                 ("soft.csv", "0.5,0,0,0\n", SyntheticSelectionEnv("mask"), "0 or 1")]
    for file_name, text, target_env, message in bad_files:
        (tmp_path / file_name).write_text(text)
        with pytest.raises(ValueError, match=message):
            make_agent(f"schedule:{tmp_path / file_name}", target_env)
    with pytest.raises(ValueError, match="not found"):
        make_agent(f"schedule:{tmp_path / 'none.yaml'}", env)


def test_random_baselines_are_seeded(tmp_path):
    env = SyntheticSelectionEnv("mask", phases=8)
    a = run_episode(env, make_agent("random_hard", env, seed=7), seed=0)["actions"]
    b = run_episode(env, make_agent("random_hard", env, seed=7), seed=0)["actions"]
    c = run_episode(env, make_agent("random_hard", env, seed=8), seed=0)["actions"]
    assert a == b and a != c
    assert len({tuple(x) for x in a}) > 1 and all(v in (0.0, 1.0) for row in a for v in row)
    mean = np.mean([make_agent("random_hard", env, seed=1).act(None) for _ in range(1)] +
                   [make_agent("random_hard", env, seed=s).act(None) for s in range(200)])
    assert 0.4 < mean < 0.6
    weights_env = SyntheticSelectionEnv("weights", phases=8)
    soft = run_episode(weights_env, make_agent("random_soft", weights_env, seed=7), seed=0)["actions"]
    assert soft == run_episode(weights_env, make_agent("random_soft", weights_env, seed=7), seed=0)["actions"]
    assert all(0 <= v <= 1 for row in soft for v in row) and len({v for row in soft for v in row}) > 8
    # a saved random agent continues its sequence
    agent = make_agent("random_hard", env, seed=3)
    agent.act(None)
    agent.save(tmp_path / "rh")
    assert load_agent(tmp_path / "rh", env).act(None).tolist() == agent.act(None).tolist()


def test_selection_spec_reads_kd_env(quick_mask):
    spec = selection_spec(quick_mask)
    assert spec.action_mode == "mask" and spec.num_phases == 4 and spec.observation_name == "summary"
    assert spec.knowledge_names == ["finetune", "response", "feature", "relation"]
    assert isinstance(make_agent("ac", quick_mask), ActorCriticAgent)
