"""The reward and observation registries of the environment: user-defined rewards and
observations through ``gym.make``, and the exact meaning of each built-in reward."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from kd_env import Reward, observation_names, register_observation, register_reward, reward_names
from kd_env.observations import OBSERVATION_REGISTRY, summary_features
from kd_env.rewards import REWARD_REGISTRY

QUICK = "kd_env/QuickKD-v0"
BUILT_IN_REWARDS = ["cost_penalized", "dev_loss_delta", "dev_metric_delta", "final_metric", "train_loss_delta"]
ACTIONS = [np.array(a, np.int8) for a in ([1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 1])]



# ---- user-defined rewards and observations (registered at import, as users do) -------------------


@register_reward("test_scaled_probe_metric")
def scaled_probe_metric(previous, state, factor=1.0):
    """``factor`` x the dev-probe metric after the phase."""
    return factor * state.probe["main"]


@register_reward("test_metric_minus_loss")
class MetricMinusLoss(Reward):
    """Dev-probe metric minus ``alpha`` x dev-probe loss, both reported as parts."""

    range = (-math.inf, 1.0)
    crash_value = -7.0

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha

    def __call__(self, previous, state):
        self.parts = {"metric": state.probe["main"], "loss": state.probe["loss"]}
        return state.probe["main"] - self.alpha * state.probe["loss"]


@register_reward("test_phase_weight_sum", needs_probe=False)
def phase_weight_sum(previous, state):
    """Sum of the applied weights; records whether the probe was evaluated this phase."""
    phase_weight_sum.probes.append(state.probe_fresh)
    return float(state.action.sum())


phase_weight_sum.probes = []


@register_reward("test_nan_reward")
def nan_reward(previous, state):
    return float("nan")


@register_observation("test_progress", space=lambda spec: spaces.Box(0.0, 1.0, (2,), np.float32))
def progress(state):
    """Budget used and phases done, as fractions."""
    return np.array([state.budget_used, state.phase_index / 4], np.float32)


@register_observation("test_old_style", space=lambda spec: spaces.Box(0.0, 1.0, (1,), np.float32))
def old_style(env):
    """An observation written against the env, as before issue 37."""
    d = env.distiller
    return np.array([d.step / d.total_steps], np.float32)


def episode(env, seed=0, actions=ACTIONS):
    """The reset info and the list of (reward, terminated, info) of one episode."""
    _, info0 = env.reset(seed=seed)
    steps = []
    for a in actions:
        _, r, term, _, info = env.step(a)
        steps.append((r, term, info))
        if term:
            break
    return info0, steps


# ---- user-defined rewards --------------------------------------------------------------------------


def test_function_reward_by_name_drives_the_reward_and_info_with_params():
    env = gym.make(QUICK, reward="test_scaled_probe_metric", reward_params={"factor": 3.0})
    _, steps = episode(env)
    assert len(steps) == 4
    for r, _, info in steps:
        assert r == pytest.approx(3.0 * info["probe_metric"], abs=1e-12) and r > 0
        assert info["rewards"] == {"test_scaled_probe_metric": r}
    assert "test_scaled_probe_metric" in reward_names()


def test_class_reward_by_name_reports_its_parts():
    env = gym.make(QUICK, reward="test_metric_minus_loss", reward_params={"alpha": 0.5})
    _, steps = episode(env)
    for r, _, info in steps:
        assert r == pytest.approx(info["probe_metric"] - 0.5 * info["probe_loss"], abs=1e-12)
        assert info["rewards"] == {"test_metric_minus_loss": r, "metric": info["probe_metric"],
                                   "loss": info["probe_loss"]}


def test_user_reward_crash_value_is_the_default_crash_penalty():
    env = gym.make(QUICK, reward="test_metric_minus_loss", lr=1e30)
    env.reset(seed=0)
    _, r, term, _, info = env.step(np.ones(4, np.int8))
    assert info["crashed"] and term and r == -7.0 and info["rewards"] == {"crash_penalty": -7.0}


def test_reset_option_switches_the_reward_and_its_params():
    env = gym.make(QUICK)
    _, steps = episode(env, actions=ACTIONS[:1])
    assert set(steps[0][2]["rewards"]) == {"dev_loss_delta", "probe_loss"}
    env.reset(seed=0, options={"reward": "test_scaled_probe_metric", "reward_params": {"factor": 2.0}})
    _, r, _, _, info = env.step(ACTIONS[0])
    assert info["rewards"] == {"test_scaled_probe_metric": r} and r == pytest.approx(2 * info["probe_metric"])
    env.reset(seed=0)  # the switched reward stays for later episodes
    _, r, _, _, info = env.step(ACTIONS[0])
    assert r == pytest.approx(2 * info["probe_metric"])
    env.reset(seed=0, options={"reward": "dev_loss_delta"})
    _, r, _, _, info = env.step(ACTIONS[0])
    assert set(info["rewards"]) == {"dev_loss_delta", "probe_loss"}


def test_unknown_reward_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="no_such_reward") as excinfo:
        gym.make(QUICK, reward="no_such_reward")
    for name in BUILT_IN_REWARDS + ["test_scaled_probe_metric"]:
        assert name in str(excinfo.value)
    env = gym.make(QUICK)
    with pytest.raises(ValueError, match="dev_metric_delta"):
        env.reset(options={"reward": "no_such_reward"})


@pytest.mark.parametrize("reward, params", [("test_scaled_probe_metric", {"scale": 2}),
                                            ("dev_loss_delta", {"lam": 1}), ("final_metric", {"x": 1})])
def test_unknown_reward_params_are_a_value_error(reward, params):
    with pytest.raises(ValueError, match=reward):
        gym.make(QUICK, reward=reward, reward_params=params)


def test_registering_a_different_reward_under_a_taken_name_needs_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        @register_reward("dev_loss_delta")
        def impostor(previous, state):
            return 0.0

    try:
        @register_reward("test_replaceable")
        def first(previous, state):
            return 1.0

        @register_reward("test_replaceable", overwrite=True)
        def second(previous, state):
            return 2.0

        env = gym.make(QUICK, reward="test_replaceable")
        env.reset(seed=0)
        assert env.step(ACTIONS[0])[1] == 2.0
    finally:
        REWARD_REGISTRY.pop("test_replaceable", None)


def test_non_finite_reward_is_an_error_not_a_silent_nan():
    env = gym.make(QUICK, reward="test_nan_reward")
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match="test_nan_reward"):
        env.step(ACTIONS[0])


def test_reward_without_probe_is_evaluated_every_probe_every_phases():
    phase_weight_sum.probes.clear()
    env = gym.make(QUICK, reward="test_phase_weight_sum", probe_every=2, total_steps=60)
    info0, steps = episode(env, actions=ACTIONS + ACTIONS[:2])
    assert [r for r, _, _ in steps] == [1.0, 2.0, 3.0, 3.0, 1.0, 2.0]
    assert phase_weight_sum.probes == [False, True, False, True, False, True]
    probe_losses = [info0["probe_loss"]] + [info["probe_loss"] for _, _, info in steps]
    assert probe_losses[1] == probe_losses[0] and probe_losses[2] != probe_losses[1]  # stale between probes
    with pytest.raises(ValueError, match="probe_every"):
        gym.make(QUICK, probe_every=0)


# ---- built-in rewards ----------------------------------------------------------------------------


def test_builtin_reward_registry():
    assert set(BUILT_IN_REWARDS) <= set(reward_names())
    assert gym.make(QUICK).unwrapped.reward_fn.name == "dev_loss_delta"  # the paper's is the default


def test_dev_loss_delta_is_the_decrease_of_the_probe_loss_since_the_previous_phase():
    env = gym.make(QUICK)
    info0, steps = episode(env)
    assert steps[0][0] == pytest.approx(info0["probe_loss"] - env.unwrapped.history[0]["probe_loss"], abs=1e-12)
    previous = info0["probe_loss"]
    assert math.isfinite(previous) and previous > 0
    for r, _, info in steps:
        assert r == pytest.approx(previous - info["probe_loss"], abs=1e-12)
        assert info["rewards"]["dev_loss_delta"] == r and info["rewards"]["probe_loss"] == info["probe_loss"]
        previous = info["probe_loss"]
    assert sum(r for r, _, _ in steps) == pytest.approx(info0["probe_loss"] - steps[-1][2]["probe_loss"])
    assert sum(r for r, _, _ in steps) > 0  # distillation lowers the dev loss


def test_dev_loss_delta_first_step_compares_with_the_probe_at_reset():
    env = gym.make(QUICK)
    env.reset(seed=3)
    at_reset = env.unwrapped.last_probe["loss"]
    assert at_reset == env.unwrapped.distiller.evaluate("probe")["loss"]  # the fresh student's probe
    _, r, _, _, info = env.step(ACTIONS[1])
    assert r == pytest.approx(at_reset - info["probe_loss"], abs=1e-12)


def test_dev_loss_delta_scale():
    _, plain = episode(gym.make(QUICK))
    _, scaled = episode(gym.make(QUICK, reward_params={"scale": 10.0}))
    for (r1, _, _), (r10, _, _) in zip(plain, scaled):
        assert r10 == pytest.approx(10 * r1, rel=1e-9)


def test_dev_metric_delta_is_the_increase_of_the_probe_metric():
    env = gym.make(QUICK, reward="dev_metric_delta")
    info0, steps = episode(env)
    previous = info0["probe_metric"]
    for r, _, info in steps:
        assert r == pytest.approx(info["probe_metric"] - previous, abs=1e-12)
        assert info["rewards"] == {"dev_metric_delta": r, "probe_metric": info["probe_metric"]}
        previous = info["probe_metric"]
    assert any(r != 0 for r, _, _ in steps)


def test_final_metric_is_sparse():
    env = gym.make(QUICK, reward="final_metric")
    _, steps = episode(env)
    assert [term for _, term, _ in steps] == [False, False, False, True]
    assert [r for r, _, _ in steps[:-1]] == [0.0, 0.0, 0.0]
    r, _, info = steps[-1]
    assert r == info["probe_metric"] and 0 < r <= 1


def test_train_loss_delta_never_evaluates_the_probe_before_the_end(monkeypatch):
    env = gym.make(QUICK, reward="train_loss_delta", probe_every=1000)
    env.reset(seed=0)
    distiller = env.unwrapped.distiller
    ce_at_reset = env.unwrapped.last_phase.student_ce
    calls = []
    original = distiller.evaluate
    monkeypatch.setattr(distiller, "evaluate", lambda *a, **k: calls.append(a) or original(*a, **k))
    previous = ce_at_reset
    for i, a in enumerate(ACTIONS):
        _, r, term, _, info = env.step(a)
        ce = info["rewards"]["train_ce"]
        assert r == pytest.approx(previous - ce, abs=1e-12)
        assert set(info["rewards"]) == {"train_loss_delta", "train_ce"}
        assert ce == env.unwrapped.last_phase.student_ce
        assert len(calls) == (1 if term else 0), f"phase {i}: {len(calls)} probe evaluations"
        previous = ce


def test_dev_rewards_evaluate_the_probe_every_phase(monkeypatch):
    env = gym.make(QUICK, probe_every=1000)
    env.reset(seed=0)
    calls = []
    original = env.unwrapped.distiller.evaluate
    monkeypatch.setattr(env.unwrapped.distiller, "evaluate", lambda *a, **k: calls.append(a) or original(*a, **k))
    for a in ACTIONS[:2]:
        env.step(a)
    assert len(calls) == 2


def test_cost_penalized_subtracts_lambda_times_the_compute():
    lam = 0.5
    env = gym.make(QUICK, reward="cost_penalized", reward_params={"base": "dev_loss_delta", "lam": lam})
    costs = np.array([k.cost for k in env.unwrapped.distiller.knowledge])
    assert costs.tolist() == [1.0, 1.0, 1.0, 1.5]  # relation costs more (FSP matrices)
    info0, steps = episode(env)
    previous = info0["probe_loss"]
    for (r, _, info), a in zip(steps, ACTIONS):
        parts = info["rewards"]
        compute = float(a @ costs / costs.sum())
        assert parts["compute"] == pytest.approx(compute)
        assert parts["dev_loss_delta"] == pytest.approx(previous - info["probe_loss"], abs=1e-12)
        assert r == pytest.approx(parts["dev_loss_delta"] - lam * compute, abs=1e-12)
        assert parts["cost_penalized"] == r and parts["probe_loss"] == info["probe_loss"]
        previous = info["probe_loss"]


def test_cost_penalized_wraps_other_rewards_with_their_params():
    env = gym.make(QUICK, reward="cost_penalized", reward_params={
        "base": "test_scaled_probe_metric", "lam": 0.2, "base_params": {"factor": 2.0}})
    _, steps = episode(env)
    costs = np.array([k.cost for k in env.unwrapped.distiller.knowledge])
    for (r, _, info), a in zip(steps, ACTIONS):
        assert info["rewards"]["compute"] == pytest.approx(float(a @ costs / costs.sum()))
        assert r == pytest.approx(2.0 * info["probe_metric"] - 0.2 * info["rewards"]["compute"], abs=1e-12)
    with pytest.raises(ValueError, match="lam"):
        gym.make(QUICK, reward="cost_penalized", reward_params={"lam": -1.0})
    with pytest.raises(ValueError, match="itself"):
        gym.make(QUICK, reward="cost_penalized", reward_params={"base": "cost_penalized"})


def test_cost_penalized_on_train_loss_needs_no_probe():
    env = gym.make(QUICK, reward="cost_penalized", reward_params={"base": "train_loss_delta"})
    assert env.unwrapped.reward_fn.needs_probe is False


# ---- observations --------------------------------------------------------------------------------


def test_custom_function_observation_through_gym_make():
    env = gym.make(QUICK, observation="test_progress")
    assert env.observation_space == spaces.Box(0.0, 1.0, (2,), np.float32)
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0]
    seen = []
    for a in ACTIONS:
        obs, *_ = env.step(a)
        assert env.observation_space.contains(obs)
        seen.append(obs.tolist())
    assert seen == [[0.25, 0.25], [0.5, 0.5], [0.75, 0.75], [1.0, 1.0]]
    assert "test_progress" in observation_names()


def test_an_observation_written_against_the_env_gets_an_error_naming_the_change():
    env = gym.make(QUICK, observation="test_old_style")
    with pytest.raises(AttributeError, match=r"no 'distiller'.*issue 37.*state\.step"):
        env.reset(seed=0)


def test_observation_registry_errors():
    with pytest.raises(ValueError, match="summary"):
        gym.make(QUICK, observation="no_such_observation")
    with pytest.raises(TypeError, match="space"):
        register_observation("test_no_space")(lambda env: np.zeros(1))
    assert "test_no_space" not in OBSERVATION_REGISTRY


@pytest.mark.parametrize("knowledge", [("finetune", "response"), ("finetune", "response", "feature", "relation")])
def test_summary_features_describe_the_summary_vector(knowledge):
    env = gym.make(QUICK, knowledge=knowledge)
    k = len(knowledge)
    rows = summary_features(env.unwrapped.state_spec)
    assert len(rows) == 2 * k + 9 == env.observation_space.shape[0]
    assert np.array_equal(env.observation_space.low, [r[1] for r in rows])
    assert np.array_equal(env.observation_space.high, [r[2] for r in rows])
    assert np.all(np.isfinite(env.observation_space.low)) and np.all(np.isfinite(env.observation_space.high))
    assert rows[k + 7][0] == "dev-probe metric (latest)"  # the docstring table's K+7


def test_cls_observation_is_student_then_teacher_cls():
    env = gym.make(QUICK, observation="cls")
    env.reset(seed=0)
    obs, *_ = env.step(ACTIONS[1])
    s, t = env.unwrapped.distiller.cls_embeddings()
    assert obs.shape == (len(s) + len(t),) == env.observation_space.shape
    np.testing.assert_allclose(obs, np.concatenate([s, t]), rtol=1e-6)


def test_dict_observation_holds_summary_and_cls():
    env = gym.make(QUICK, observation="dict")
    twin = gym.make(QUICK)
    obs, _ = env.reset(seed=2)
    twin_obs, _ = twin.reset(seed=2)
    assert set(obs) == {"summary", "cls"} and isinstance(env.observation_space, spaces.Dict)
    assert np.array_equal(obs["summary"], twin_obs)
    obs, *_ = env.step(ACTIONS[2])
    twin_obs, *_ = twin.step(ACTIONS[2])
    assert np.array_equal(obs["summary"], twin_obs)
    assert env.observation_space.contains(obs)
