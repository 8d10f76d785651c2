"""The literature's dynamic baselines (agents/dynamic.py): their actions phase by phase on a
digits env, exact switch points, Dynamic KD's reset options reaching the env (through
run_episode, glue_ac and the benchmark), checkpoints, and errors."""

from __future__ import annotations

import json
from fractions import Fraction

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import kd_env  # noqa: F401 - registers the env ids
from agents import agent_names, load_agent, make_agent, run_episode
from agents.dynamic import first_stage_phases

DYNAMIC = ("dynamic_kd", "eskd", "two_stage", "anneal")
# the env's knowledge order: finetune, response, feature, relation
FT_RESP, FT, RESP, FEAT_REL = [1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]


class PhaseEnv(gym.Env):
    """``phases`` steps per episode, any knowledge names, a constant observation (the agents must
    not need one), and the reset options it was given, kept for inspection."""

    def __init__(self, action_mode: str = "mask", phases: int = 6,
                 knowledge_names: tuple[str, ...] = ("finetune", "response", "feature", "relation")):
        k = len(knowledge_names)
        self.knowledge_names, self.num_phases, self.t = list(knowledge_names), phases, 0
        self.action_space = spaces.MultiBinary(k) if action_mode == "mask" else spaces.Box(0, 1, (k,), np.float32)
        self.observation_space = spaces.Box(0, 1, (1,), np.float32)
        self.options_seen: list[dict | None] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.options_seen.append(options)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        assert self.action_space.contains(np.asarray(action, self.action_space.dtype)), action
        self.t += 1
        return np.zeros(1, np.float32), 0.0, self.t >= self.num_phases, False, {}


@pytest.fixture(scope="module")
def digits6():
    """QuickKD (digits) with 6 phases of 10 steps, in both action modes."""
    envs = {mode: gym.make("kd_env/QuickKD-v0", total_steps=60, action_mode=mode) for mode in ("mask", "weights")}
    yield envs
    for env in envs.values():
        env.close()


def applied(episode) -> list[list[float]]:
    """The actions the env applied, one per phase (from its infos)."""
    return [info["action"].tolist() for info in episode["infos"]]


# ---- actions per phase on a digits env ------------------------------------------------------------


def test_each_agent_acts_as_its_method_on_digits_in_mask_mode(digits6):
    env = digits6["mask"]
    assert env.unwrapped.config.num_phases == 6
    expected = {
        "dynamic_kd": [FT_RESP] * 6,
        "eskd": [FT_RESP] * 3 + [FT] * 3,  # p / 6 < 0.5: phases 0, 1, 2
        "two_stage": [FEAT_REL] * 3 + [FT_RESP] * 3,
        "anneal": [RESP] * 2 + [FT_RESP] * 2 + [FT] * 2,  # thirds
    }
    for name, rows in expected.items():
        agent = make_agent(name, env, seed=0)
        episode = run_episode(env, agent, seed=0)
        assert applied(episode) == [[float(v) for v in r] for r in rows], name
        assert agent.act(None).dtype == np.int8
    # a custom switch: p / 6 < 0.25 holds for phases 0 and 1 only
    assert applied(run_episode(env, make_agent("eskd", env, switch=0.25), seed=0)) == \
        [[float(v) for v in r] for r in [FT_RESP] * 2 + [FT] * 4]


def test_each_agent_emits_float_weights_on_digits_in_weights_mode(digits6):
    env = digits6["weights"]
    t = [p / 5 for p in range(6)]
    expected = {
        "dynamic_kd": [FT_RESP] * 6,
        "eskd": [FT_RESP] * 3 + [FT] * 3,
        "two_stage": [FEAT_REL] * 3 + [FT_RESP] * 3,
        "anneal": [[t[p], 1 - t[p], 0, 0] for p in range(6)],  # response 1 - t, finetune t, t = p / (N - 1)
    }
    for name, rows in expected.items():
        agent = make_agent(name, env, seed=0)
        agent.reset()
        actions = [agent.act(None) for _ in range(6)]
        assert all(a.dtype == np.float32 for a in actions), name
        np.testing.assert_allclose(np.stack(actions), np.asarray(rows, np.float32), atol=1e-7, err_msg=name)
        np.testing.assert_allclose(applied(run_episode(env, agent, seed=0)), rows, atol=1e-7, err_msg=name)
    anneal = np.asarray(make_agent("anneal", env).rows)
    assert anneal[0].tolist() == [0.0, 1.0, 0.0, 0.0] and anneal[-1].tolist() == [1.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(anneal[:, 0] + anneal[:, 1], 1.0)  # the weight moves, it is not lost


@pytest.mark.parametrize("num_phases", range(1, 21))
def test_switch_points_are_exact(num_phases):
    """Phase p is in the first stage when p / N < switch: ceil(switch * N) phases, in exact arithmetic."""
    for switch in ("0", "0.25", "0.3", "0.5", "0.7", "1"):
        first = int(np.ceil(Fraction(switch) * num_phases))
        assert first_stage_phases(num_phases, float(switch)) == first
        env = PhaseEnv(phases=num_phases)
        eskd = make_agent("eskd", env, switch=float(switch))
        assert eskd.rows.tolist() == [FT_RESP] * first + [FT] * (num_phases - first), (switch, num_phases)
        two_stage = make_agent("two_stage", env, switch=float(switch))
        assert two_stage.rows.tolist() == [FEAT_REL] * first + [FT_RESP] * (num_phases - first)
    third, two_thirds = (int(np.ceil(Fraction(k, 3) * num_phases)) for k in (1, 2))
    assert make_agent("anneal", PhaseEnv(phases=num_phases)).rows.tolist() == \
        [RESP] * third + [FT_RESP] * (two_thirds - third) + [FT] * (num_phases - two_thirds)


def test_agents_count_their_own_phases_and_restart_at_reset():
    env = PhaseEnv(phases=4)
    agent = make_agent("eskd", env)
    assert [agent.act(None).tolist() for _ in range(6)] == [FT_RESP] * 2 + [FT] * 4  # the last row repeats
    agent.reset()
    assert agent.act(None).tolist() == FT_RESP
    first = run_episode(env, agent, seed=0)["actions"]
    assert run_episode(env, agent, seed=1)["actions"] == first  # run_episode calls reset()


def test_knowledge_is_resolved_by_name():
    names = ("response", "attention", "finetune", "relation", "feature")
    env = PhaseEnv(phases=2, knowledge_names=names)
    assert make_agent("dynamic_kd", env).rows.tolist() == [[1, 0, 1, 0, 0]]
    assert make_agent("two_stage", env).rows.tolist() == [[0, 0, 0, 1, 1], [1, 0, 1, 0, 0]]
    assert make_agent("anneal", env).rows.tolist() == [[1, 0, 0, 0, 0], [1, 0, 1, 0, 0]]
    # only one of feature / relation: the first stage uses that one
    feature_only = PhaseEnv(phases=2, knowledge_names=("finetune", "response", "feature"))
    assert make_agent("two_stage", feature_only).rows.tolist() == [[0, 0, 1], [1, 1, 0]]


@pytest.mark.parametrize("name", DYNAMIC)
def test_missing_knowledge_is_a_clear_error(name):
    without_response = PhaseEnv(knowledge_names=("finetune", "feature", "relation"))
    with pytest.raises(ValueError, match=r"response.*\['finetune', 'feature', 'relation'\]"):
        make_agent(name, without_response)


def test_two_stage_needs_an_intermediate_knowledge_and_switch_is_checked():
    logits_only = PhaseEnv(knowledge_names=("finetune", "response", "attention"))
    with pytest.raises(ValueError, match=r"feature.*relation.*\['finetune', 'response', 'attention'\]"):
        make_agent("two_stage", logits_only)
    for bad in (-0.1, 1.5, "half", True, None):
        with pytest.raises(ValueError, match="switch"):
            make_agent("eskd", PhaseEnv(), switch=bad)
    with pytest.raises(TypeError):
        make_agent("anneal", PhaseEnv(), switch=0.5)  # anneal has no switch


# ---- registry, learning, checkpoints --------------------------------------------------------------


def test_registered_and_learn_does_nothing():
    assert set(DYNAMIC) <= set(agent_names())
    env = PhaseEnv()
    for name in DYNAMIC:
        agent = make_agent(name, env, seed=4)
        rows = agent.rows.copy()
        assert agent.learn(env, total_episodes=2) is agent
        assert agent.episode_log == [] and np.array_equal(agent.rows, rows)
        assert agent.reset_options() == ({"example_weighting": "uncertainty"} if name == "dynamic_kd" else {})


@pytest.mark.parametrize("mode", ["mask", "weights"])
@pytest.mark.parametrize("name, params", [("dynamic_kd", {}), ("eskd", {"switch": 0.3}),
                                          ("two_stage", {"switch": 0.7}), ("anneal", {})])
def test_save_load_round_trips(name, params, mode, tmp_path):
    env = PhaseEnv(mode, phases=7)
    agent = make_agent(name, env, seed=5, **params)
    agent.save(tmp_path / "ckpt")
    header = json.loads((tmp_path / "ckpt" / "agent.json").read_text())
    assert header["agent"] == name and header["hyperparameters"] == {**params, "seed": 5}
    restored = load_agent(tmp_path / "ckpt", env)
    assert type(restored) is type(agent) and restored.hyperparameters() == agent.hyperparameters()
    assert restored.reset_options() == agent.reset_options()
    assert run_episode(env, restored, seed=0)["actions"] == run_episode(env, agent, seed=0)["actions"]


# ---- Dynamic KD's reset options reach the env -----------------------------------------------------


class WeightingSpy:
    """Wraps an agent; records the env's example weighting every time the agent acts."""

    def __init__(self, agent, env):
        self.agent, self.env, self.seen = agent, env, []

    def __getattr__(self, name):
        return getattr(self.agent, name)

    def act(self, obs, deterministic=False):
        self.seen.append(self.env.unwrapped.distiller.example_weighting)
        return self.agent.act(obs, deterministic=deterministic)


def test_dynamic_kd_reset_options_reach_the_env_through_run_episode(digits6):
    env = digits6["mask"]
    dynamic = WeightingSpy(make_agent("dynamic_kd", env), env)
    run_episode(env, dynamic, seed=0)
    assert dynamic.seen == ["uncertainty"] * 6
    vanilla = WeightingSpy(make_agent("vanilla_kd", env), env)
    vanilla_episode = run_episode(env, vanilla, seed=0)
    assert vanilla.seen == [None] * 6  # the next episode without the option has no weighting
    # same actions, different training: the weighting changed what the student learnt
    again = run_episode(env, make_agent("dynamic_kd", env), seed=0)
    assert again["actions"] == vanilla_episode["actions"]
    assert [i["losses"] for i in again["infos"]] != [i["losses"] for i in vanilla_episode["infos"]]
    # the caller's options win over the agent's
    run_episode(env, dynamic, seed=0, options={"example_weighting": None})
    assert dynamic.seen[-6:] == [None] * 6


def test_run_episode_merges_options_under_the_callers():
    env = PhaseEnv()
    run_episode(env, make_agent("dynamic_kd", env), seed=0, options={"reward": "x"})
    run_episode(env, make_agent("eskd", env), seed=0)
    run_episode(env, make_agent("eskd", env), seed=0, options={"reward": "x"})
    assert env.options_seen == [{"example_weighting": "uncertainty", "reward": "x"}, None, {"reward": "x"}]


def test_glue_ac_and_benchmark_episodes_use_the_agents_options(digits6):
    from experiments import benchmark
    from experiments.toolkit import distil_and_test

    env = digits6["mask"]
    dynamic = WeightingSpy(make_agent("dynamic_kd", env), env)
    row = distil_and_test(env.unwrapped, dynamic, seed=3)
    assert dynamic.seen == ["uncertainty"] * 6 and row["actions"] == [[1.0, 1.0, 0.0, 0.0]] * 6
    vanilla = WeightingSpy(make_agent("vanilla_kd", env), env)
    distil_and_test(env.unwrapped, vanilla, seed=3)
    assert vanilla.seen == [None] * 6
    benchmark._evaluate(env, dynamic, seeds=[11], num_phases=6, k=4)
    assert dynamic.seen[-6:] == ["uncertainty"] * 6


# ---- the learned selectors on top of an example weighting ------------------------------------------


@pytest.mark.parametrize("algo", ["ac", "ac_q"])
def test_selectors_ask_for_their_example_weighting_in_every_episode(algo):
    env = PhaseEnv("mask" if algo == "ac" else "weights", phases=3)
    extra = {"group_size": 2, "episodes_per_update": 2} if algo == "ac" else {"learning_starts": 2}
    agent = make_agent(algo, env, seed=0, example_weighting="uncertainty", **extra)
    assert agent.reset_options() == {"example_weighting": "uncertainty"}
    agent.learn(env, total_episodes=4)
    expected = {"example_weighting": "uncertainty"}
    if algo == "ac":  # paired rollouts: every second reset replays the first, with the weighting kept
        assert env.options_seen == [expected, {**expected, "replay": True}] * 2
    else:
        assert env.options_seen == [expected] * 4
    run_episode(env, agent, deterministic=True, seed=9)  # evaluation episodes too
    assert env.options_seen[-1] == expected
    plain = make_agent(algo, env, seed=0)
    assert plain.reset_options() == {}


def test_selector_example_weighting_reaches_the_student_and_bad_names_are_refused(digits6, tmp_path):
    env = digits6["mask"]
    spy = WeightingSpy(make_agent("ac", env, seed=0, example_weighting="uncertainty"), env)
    run_episode(env, spy, seed=0)
    assert spy.seen == ["uncertainty"] * 6
    with pytest.raises(ValueError, match="unknown example weighting 'nope'; valid: .*uncertainty"):
        make_agent("ac", env, example_weighting="nope")
    with pytest.raises(ValueError, match="example_weighting must be"):
        make_agent("ac", env, example_weighting=3)
    spy.agent.save(tmp_path / "ac")
    assert load_agent(tmp_path / "ac", env).reset_options() == {"example_weighting": "uncertainty"}


def test_fixed_mask_with_the_uncertainty_weighting_is_dynamic_kd(digits6, tmp_path):
    env = digits6["mask"]
    fixed = make_agent("fixed:1100", env, example_weighting="uncertainty")
    assert fixed.reset_options() == {"example_weighting": "uncertainty"}
    ours, theirs = run_episode(env, fixed, seed=3), run_episode(env, make_agent("dynamic_kd", env), seed=3)
    assert [i["losses"] for i in ours["infos"]] == [i["losses"] for i in theirs["infos"]]
    assert ours["final_probe_metric"] == theirs["final_probe_metric"]
    plain = run_episode(env, make_agent("fixed:1100", env), seed=3)
    assert [i["losses"] for i in plain["infos"]] != [i["losses"] for i in ours["infos"]]
    fixed.save(tmp_path / "fixed")
    restored = load_agent(tmp_path / "fixed", env)
    assert restored.reset_options() == {"example_weighting": "uncertainty"} and restored.mask.tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="unknown example weighting 'nope'"):
        make_agent("fixed:1100", env, example_weighting="nope")
