"""Instance sets and the instance envs: seeded sampling, the held-out split, the situation axes,
and the opt-in instance features."""

from __future__ import annotations

import pickle
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest

import kd_env  # noqa: F401 - registers the env ids
from kd_env import DistillConfig, Instance, InstanceSet, get_instance_set, get_preset
from kd_env.build import build_distiller
from kd_env.instances import FEATURE_FIELDS, register_folds, register_leave_one_out

TINY = InstanceSet(name="tiny-test", base="quick",
                   instances=[Instance("clean", {}), Instance("few-labels", {"label_fraction": 0.1}),
                              Instance("noisy", {"label_noise": 0.4})],
                   held_out=["noisy"], description="three quick instances for tests")
if "tiny-test" not in kd_env.instance_set_names():
    kd_env.register_instance_set(TINY)


def _env(**kwargs) -> gym.Env:
    return gym.make("kd_env/DigitsKD-Instances-v0", config="quick", instances="tiny-test", record_time=False,
                    **kwargs).unwrapped


def test_registered_instance_sets_have_disjoint_train_and_held_out_instances():
    for name in ("digits", "text"):
        iset = get_instance_set(name)
        assert set(iset.train_names).isdisjoint(iset.test_names)
        assert sorted(iset.train_names + iset.test_names) == sorted(iset.names)
    digits = get_instance_set("digits")
    assert len(digits.names) == 12 and len(digits.test_names) == 4
    for axis in ("label_fraction", "label_noise", "teacher_train_fraction"):  # every axis value is trained on
        train_values = {getattr(digits.config(n), axis) for n in digits.train_names}
        test_values = {getattr(digits.config(n), axis) for n in digits.test_names}
        assert test_values <= train_values, axis


@pytest.mark.parametrize("fold", ["digits-validation", "digits-validation-b"])
def test_the_validation_sets_hold_only_digits_train_instances_and_every_axis_value_on_both_sides(fold):
    digits, validation = get_instance_set("digits"), get_instance_set(fold)
    assert sorted(validation.names) == sorted(digits.train_names)
    assert len(validation.test_names) == 3
    for axis in ("label_fraction", "label_noise", "teacher_train_fraction"):
        values = [{getattr(validation.config(n), axis) for n in side}
                  for side in (validation.train_names, validation.test_names)]
        assert values[0] == {getattr(digits.config(n), axis) for n in digits.names}, axis
        assert values[1] == values[0] if axis != "label_fraction" else len(values[1]) == 3, axis
    name = validation.names[0]
    np.testing.assert_array_equal(validation.features(name), digits.features(name))


def test_leave_one_out_sets_set_aside_each_train_instance_once():
    digits = get_instance_set("digits")
    names = register_leave_one_out("digits")  # registered at import: asking again returns the same sets
    assert names == [f"digits-loo-{n}" for n in digits.train_names]
    held = []
    for name in names:
        fold = get_instance_set(name)
        assert sorted(fold.names) == sorted(digits.train_names) and len(fold.test_names) == 1
        held += fold.test_names
    assert held == digits.train_names


def test_the_dense_set_holds_out_the_digits_instances_unchanged_and_covers_every_axis_between():
    digits, dense = get_instance_set("digits"), get_instance_set("digits-dense")
    assert len(dense.names) == 45 and sorted(dense.test_names) == sorted(digits.test_names)
    for name in digits.test_names:  # the same situation, described by the same features
        assert dense.config(name) == digits.config(name)
        np.testing.assert_array_equal(dense.features(name), digits.features(name))
    for axis, n_values in (("label_fraction", 5), ("label_noise", 3), ("teacher_train_fraction", 3)):
        train_values = {getattr(dense.config(n), axis) for n in dense.train_names}
        assert len(train_values) == n_values, axis
        for name in dense.test_names:  # each held-out value is trained on
            value = getattr(dense.config(name), axis)
            assert value in train_values, (axis, name)
    digits_values = {digits.config(n).teacher_train_fraction for n in digits.names}
    assert {dense.config(n).teacher_train_fraction for n in dense.names} > digits_values


def test_the_between_set_trains_as_the_dense_set_and_holds_out_only_situations_between_its_values():
    dense, between = get_instance_set("digits-dense"), get_instance_set("digits-between")
    assert between.train_names == dense.train_names  # same instances, same order: the same training
    for name in dense.train_names:  # same configs and features (the set's maxima are unchanged)
        assert between.config(name) == dense.config(name)
        np.testing.assert_array_equal(between.features(name), dense.features(name))
    assert len(between.test_names) == 24 and not set(between.test_names) & set(dense.names)
    for axis in ("label_fraction", "label_noise"):
        grid = sorted({getattr(dense.config(n), axis) for n in dense.names})
        for name in between.test_names:  # strictly between two neighbouring grid values
            value = getattr(between.config(name), axis)
            assert value not in grid and grid[0] < value < grid[-1], (axis, name)
    teachers = {dense.config(n).teacher_train_fraction for n in dense.names}
    assert {between.config(n).teacher_train_fraction for n in between.test_names} == teachers


def test_k_folds_set_aside_every_train_instance_exactly_once_and_are_seeded():
    dense = get_instance_set("digits-dense")
    names = register_folds("digits-dense", 4)  # registered at import: asking again returns the same sets
    assert names == [f"digits-dense-fold{i}of4" for i in range(1, 5)]
    held = []
    for name in names:
        fold = get_instance_set(name)
        assert sorted(fold.names) == sorted(dense.train_names)
        assert len(fold.test_names) in (10, 11)  # 41 train instances in 4 near-equal parts
        held += fold.test_names
    assert sorted(held) == sorted(dense.train_names)
    other = register_folds("digits", 3, seed=5)  # any set, any k
    assert other == [f"digits-fold{i}of3" for i in range(1, 4)]
    assert sum(len(get_instance_set(n).test_names) for n in other) == 8
    with pytest.raises(ValueError, match=r"k must be in \[2, 8\].*got 9"):
        register_folds("digits", 9)
    with pytest.raises(ValueError, match="already registered with other instances set aside"):
        register_folds("digits", 3, seed=6)  # the same names, other folds: never silently the old ones


def test_the_two_validation_folds_set_aside_different_instances():
    a, b = get_instance_set("digits-validation"), get_instance_set("digits-validation-b")
    assert not set(a.test_names) & set(b.test_names)


def test_reset_draws_train_instances_only_seeded_and_reports_them():
    env = _env()
    try:
        drawn = []
        for seed in range(12):
            _, info = env.reset(seed=seed)
            drawn.append(info["instance"])
            assert env.distiller.config.label_noise == 0.0  # never the held-out 'noisy'
        assert set(drawn) == {"clean", "few-labels"}
        again = [env.reset(seed=seed)[1]["instance"] for seed in range(12)]
        assert again == drawn
        _, info = env.reset(seed=0, options={"instance": "noisy"})  # explicit choice, even held out
        assert info["instance"] == "noisy" and env.config.label_noise == 0.4
        _, _, _, _, info = env.step(np.array([1, 1, 0, 0]))
        assert info["instance"] == "noisy"
        with pytest.raises(ValueError, match="unknown instance 'nope'.*valid"):
            env.reset(seed=0, options={"instance": "nope"})
    finally:
        env.close()
    test_env = _env(instance_split="test")
    try:
        assert Counter(test_env.reset(seed=s)[1]["instance"] for s in range(5)) == Counter({"noisy": 5})
    finally:
        test_env.close()
    with pytest.raises(ValueError, match="instance split must be one of"):
        _env(instance_split="dev")


def test_instance_distillers_are_built_once_and_the_same_seed_gives_the_same_episode():
    env = _env()
    try:
        env.reset(seed=0, options={"instance": "few-labels"})
        first = env.distiller
        a = [env.step(np.array([0, 1, 0, 0]))[1] for _ in range(2)]
        env.reset(seed=0, options={"instance": "clean"})
        env.reset(seed=0, options={"instance": "few-labels"})
        assert env.distiller is first
        assert [env.step(np.array([0, 1, 0, 0]))[1] for _ in range(2)] == a
    finally:
        env.close()


def test_oracle_situation_observation_is_opt_in_and_survives_pickling():
    env = _env(observation="oracle_situation")
    try:
        obs, _ = env.reset(seed=0, options={"instance": "few-labels"})
        assert env.observation_space.contains(obs)
        features = obs[-len(FEATURE_FIELDS):]
        assert features[FEATURE_FIELDS.index("label_fraction")] == pytest.approx(0.1)
        env.step(np.array([1, 1, 0, 0]))
        twin = pickle.loads(pickle.dumps(env))
        a, b = env.step(np.array([1, 0, 0, 0])), twin.step(np.array([1, 0, 0, 0]))
        assert np.array_equal(a[0], b[0]) and a[1] == b[1] and b[4]["instance"] == "few-labels"
        twin.close()
    finally:
        env.close()
    plain = _env()
    try:
        assert plain.observation_space.shape == (2 * 4 + 9,)  # the default hides the instance
    finally:
        plain.close()
    with pytest.raises(ValueError, match="instances=<set name>"):
        gym.make("kd_env/QuickKD-v0", observation="oracle_situation")


def test_oracle_situation_only_is_the_budget_spent_and_the_features_alone():
    env = _env(observation="oracle_situation_only")
    try:
        obs, _ = env.reset(seed=0, options={"instance": "few-labels"})
        features = env.instance_set.features("few-labels", env._base_config)
        assert env.observation_space.shape == (1 + len(FEATURE_FIELDS),)
        np.testing.assert_allclose(obs, np.concatenate([[0.0], features]), rtol=0, atol=1e-7)
        obs, *_ = env.step(np.array([1, 1, 0, 0]))
        assert env.observation_space.contains(obs)
        assert obs[0] == pytest.approx(env.distiller.step / env.distiller.total_steps) and obs[0] > 0
        np.testing.assert_allclose(obs[1:], features, rtol=0, atol=1e-7)
        other, _ = env.reset(seed=0, options={"instance": "noisy"})
        assert not np.array_equal(other[1:], obs[1:])  # it tells the situations apart
    finally:
        env.close()
    with pytest.raises(ValueError, match="'oracle_situation_only' needs an env made with instances=<set name>"):
        gym.make("kd_env/QuickKD-v0", observation="oracle_situation_only")


def test_instance_set_validation_names_what_is_wrong():
    with pytest.raises(ValueError, match="unknown config key"):
        InstanceSet("bad", "quick", [Instance("a", {"label_fracton": 0.1}), Instance("b", {})], held_out=["b"])
    with pytest.raises(ValueError, match="held-out names"):
        InstanceSet("bad", "quick", [Instance("a", {}), Instance("b", {})], held_out=["c"])
    with pytest.raises(ValueError, match="knowledge types"):
        InstanceSet("bad", "quick", [Instance("a", {"knowledge": ["finetune"]}), Instance("b", {})], held_out=["b"])
    with pytest.raises(ValueError, match="unknown instance set"):
        gym.make("kd_env/QuickKD-v0", instances="nope")
    for field, bad in (("label_fraction", 0.0), ("label_fraction", 1.5), ("label_noise", 1.0),
                       ("teacher_train_fraction", 0.0)):
        with pytest.raises(ValueError, match=f"config.{field}"):
            DistillConfig(task="digits", teacher="mlp", **{field: bad})


def test_teacher_train_fraction_makes_a_weaker_teacher():
    strong = build_distiller(get_preset("quick"))
    weak = build_distiller(get_preset("quick", teacher_train_fraction=0.05, teacher_epochs=100))
    try:
        assert weak.teacher_metrics["test"]["accuracy"] < strong.teacher_metrics["test"]["accuracy"] - 0.05
    finally:
        strong.close()
        weak.close()


def test_benchmark_evaluates_every_held_out_instance_for_every_seed():
    from experiments.benchmark import evaluation_episodes

    env = _env()
    try:
        assert evaluation_episodes(env, [7, 8]) == [(7, "noisy"), (8, "noisy")]
    finally:
        env.close()
    plain = gym.make("kd_env/QuickKD-v0")
    try:
        assert evaluation_episodes(plain, [7, 8]) == [(7, None), (8, None)]
    finally:
        plain.close()


def _run(env, actions, **reset):
    obs, info = env.reset(**reset)
    rewards = []
    for action in actions:
        obs, reward, terminated, _, info = env.step(np.array(action))
        rewards.append(reward)
        if terminated:
            break
    return info["instance"], rewards, env.distiller.evaluate("dev")["main"]


def test_replay_restarts_the_previous_situation_exactly():
    env = _env()
    try:
        a, b = [[1, 1, 0, 0]] * 20, [[0, 1, 0, 0]] * 20
        first = _run(env, a, seed=5)
        assert _run(env, a, options={"replay": True}) == first  # same instance, init and data order
        other_actions = _run(env, b, options={"replay": True})
        assert other_actions[0] == first[0] and other_actions[1] != first[1]  # only the actions differ
        fresh = [_run(env, a)[1:] for _ in range(3)]  # without replay the env moves on
        assert all(f != first[1:] for f in fresh)
        _run(env, a, seed=1)
        replayed = _run(env, a, options={"replay": True, "instance": env.instance})  # naming it is allowed
        assert replayed == _run(env, a, seed=1)
        with pytest.raises(ValueError, match="replays instance"):
            env.reset(options={"replay": True, "instance": "noisy" if env.instance != "noisy" else "clean"})
        with pytest.raises(ValueError, match="'replay' must be True or False"):
            env.reset(options={"replay": "yes"})
    finally:
        env.close()
    fresh_env = _env()
    try:
        with pytest.raises(ValueError, match="needs a previous reset"):
            fresh_env.reset(options={"replay": True})
    finally:
        fresh_env.close()
