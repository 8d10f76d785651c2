"""The actor-critic's maths against values computed by hand, and its budget checks."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import kd_env  # noqa: F401
from agents import make_agent
from agents.ac import bernoulli_log_prob_entropy, clipped_surrogate, gae, gaussian_log_prob_entropy, \
    group_baselines, leave_one_out_baselines, returns_to_go
from agents.ac_q import td_target
from agents.networks import RunningNorm


def test_gae_by_hand():
    r, v = np.array([1.0, 0.0, 2.0]), np.array([0.5, 1.0, 1.5])
    gamma, lam = 0.9, 0.8
    d2 = 2.0 + 0.9 * 0.0 - 1.5           # terminated: V(s_3) = 0      -> 0.5
    d1 = 0.0 + 0.9 * 1.5 - 1.0           # 0.35
    d0 = 1.0 + 0.9 * 1.0 - 0.5           # 1.4
    a2 = d2
    a1 = d1 + 0.72 * a2                  # 0.35 + 0.36 = 0.71
    a0 = d0 + 0.72 * a1                  # 1.4 + 0.5112 = 1.9112
    assert np.allclose(gae(r, v, 0.0, gamma, lam), [a0, a1, a2])
    # lambda = 1, gamma = 1: the advantage is the return-to-go minus V(s_t)
    assert np.allclose(gae(r, v, 0.0, 1.0, 1.0), [3.0 - 0.5, 2.0 - 1.0, 2.0 - 1.5])
    # a truncated episode bootstraps from the last value
    assert np.allclose(gae(np.array([0.0]), np.array([0.0]), 2.0, 0.5, 1.0), [1.0])


def test_returns_to_go_by_hand():
    # gamma 0.5: G_2 = 3, G_1 = 2 + 0.5 * 3 = 3.5, G_0 = 1 + 0.5 * 3.5 = 2.75; bootstrap 4 adds 0.5^(3-t) * 4
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2.0, 3.0]), 0.5), [2.75, 3.5, 3.0])
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2.0, 3.0]), 0.5, last_value=4.0), [3.25, 4.5, 5.0])


def test_leave_one_out_baselines_by_hand():
    a, b, c = np.array([3.0, 1.0]), np.array([5.0, 2.0]), np.array([10.0])  # c stopped after one phase
    base = leave_one_out_baselines([a, b, c])
    np.testing.assert_allclose(base[0], [7.5, 2.0])  # mean(5, 10); at t=1 only b reached it
    np.testing.assert_allclose(base[1], [6.5, 1.0])
    np.testing.assert_allclose(base[2], [4.0])
    assert leave_one_out_baselines([a]) == [None]  # no partner
    shorter = leave_one_out_baselines([np.array([1.0, 2.0]), np.array([4.0])])[1]
    np.testing.assert_allclose(shorter, [1.0])  # the partner's return-to-go at phase 0
    lone = leave_one_out_baselines([np.array([1.0]), np.array([4.0, 5.0])])[1]
    assert lone[0] == 1.0 and np.isnan(lone[1])  # no partner reached phase 1: the caller uses the critic
    # grouped by the rollouts' group key, rewards turned into returns-to-go first (gamma 1)
    rollouts = [{"group": (0, 0), "rewards": np.array([1.0, 2.0])}, {"group": (0, 1), "rewards": np.array([3.0, 0.0])},
                {"group": (0, 0), "rewards": np.array([0.0, 1.0])}]
    out = group_baselines(rollouts, 1.0)
    np.testing.assert_allclose(out[0], [1.0, 1.0])  # partner: rollouts[2] with returns-to-go [1, 1]
    np.testing.assert_allclose(out[2], [3.0, 2.0])
    assert out[1] is None


def test_bernoulli_log_prob_and_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])         # p = 0.5, 0.75
    mask = torch.tensor([[1.0, 0.0]])
    logp, ent = bernoulli_log_prob_entropy(logits, mask)
    assert float(logp) == pytest.approx(math.log(0.5) + math.log(0.25))
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert float(ent) == pytest.approx(h(0.5) + h(0.75))


def test_gaussian_log_prob_and_entropy_by_hand():
    mean, log_std, x = torch.tensor([[0.0, 1.0]]), torch.tensor([0.0, math.log(2.0)]), torch.tensor([[1.0, 1.0]])
    logp, ent = gaussian_log_prob_entropy(mean, log_std, x)
    expected = (-0.5 - 0.5 * math.log(2 * math.pi)) + (0.0 - math.log(2.0) - 0.5 * math.log(2 * math.pi))
    assert float(logp) == pytest.approx(expected)
    assert float(ent) == pytest.approx(0.5 * math.log(2 * math.pi * math.e) * 2 + math.log(2.0))


def test_td_target_by_hand():
    out = td_target(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]), torch.tensor([0.0, 1.0]), 0.9)
    assert torch.allclose(out, torch.tensor([2.8, 1.0]))


def test_clipped_surrogate_by_hand():
    adv = torch.tensor([1.0, -1.0])
    old = torch.zeros(2)
    new = torch.log(torch.tensor([1.5, 0.5]))  # ratios 1.5 and 0.5, clip 0.2
    # min(1.5*1, 1.2*1) = 1.2 ; min(0.5*-1, 0.8*-1) = -0.8  -> mean 0.2
    assert float(clipped_surrogate(new, old, adv, 0.2)) == pytest.approx(0.2)


def test_running_norm_by_hand():
    norm = RunningNorm(2)
    a = torch.tensor([[1.0, 10.0], [3.0, 10.0]])
    b = torch.tensor([[5.0, 20.0], [7.0, 20.0], [9.0, 20.0]])
    norm.update(a)
    norm.update(b)
    data = torch.cat([a, b]).double()
    assert torch.allclose(norm.mean, data.mean(0))
    assert torch.allclose(norm.var, data.var(0, unbiased=False))
    x = torch.tensor([[5.0, 16.0]])
    expected = (x.double() - data.mean(0)) / torch.sqrt(data.var(0, unbiased=False) + 1e-8)
    assert torch.allclose(norm(x).double(), expected.clamp(-10, 10), atol=1e-6)


def test_ac_q_budget_without_an_update_is_an_error_naming_the_numbers():
    env = gym.make("kd_env/QuickKD-v0", action_mode="weights")
    try:
        agent = make_agent("ac_q", env, seed=0, learning_starts=50)
        with pytest.raises(ValueError, match=r"never update: this learn call runs 12 env steps \(3 episodes x 4 "
                                             r"phases\), but learning_starts=50"):
            agent.learn(env, total_episodes=3)
        sized = make_agent("ac_q", env, seed=0, batch_size=4)  # learning_starts=None: a fifth of the budget
        sized.learn(env, total_episodes=3)
        assert sized.updates_done > 0
    finally:
        env.close()
