"""The observable situation (kd_env.situation) and the observations built on it: what a user can
compute from their own data and teacher, and nothing of the situation's true configuration."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import kd_env  # noqa: F401 - registers the env ids
from kd_env import Instance, InstanceSet
from kd_env.instances import FEATURE_FIELDS, get_instance_set
from kd_env.observations import PRIVILEGED_OBSERVATIONS, summary_features
from kd_env.situation import SITUATION_FEATURES, expected_calibration_error, observable_situation

SIT = InstanceSet(name="situation-test", base="quick",
                  instances=[Instance("clean", {}), Instance("few-labels", {"label_fraction": 0.1}),
                             Instance("noisy", {"label_noise": 0.4})],
                  held_out=["noisy"], description="three quick instances for the situation tests")
if SIT.name not in kd_env.instance_set_names():
    kd_env.register_instance_set(SIT)


def _env(**kwargs) -> gym.Env:
    return gym.make("kd_env/DigitsKD-Instances-v0", config="quick", instances=SIT.name, record_time=False,
                    **kwargs).unwrapped


def test_expected_calibration_error_is_zero_when_calibrated_and_the_gap_when_not():
    # 10 examples at confidence 0.8, 8 right: calibrated
    probs = np.tile([[0.8, 0.2]], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # confident (0.9) and always wrong: the gap is 0.9
    assert expected_calibration_error(np.tile([[0.9, 0.1]], (4, 1)), np.ones(4, int)) == pytest.approx(0.9)
    # two bins: 0.6 conf with 1/2 right (gap 0.1), 1.0 conf with 2/2 right (gap 0): weighted 0.05
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [1.0, 0.0], [1.0, 0.0]])
    assert expected_calibration_error(probs, np.array([0, 1, 0, 0])) == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"probs \(N, C\)"):
        expected_calibration_error(np.ones(3), np.ones(3))


def test_observable_holds_the_summary_then_the_situation_and_no_privileged_field():
    env = _env(observation="observable")
    try:
        obs, _ = env.reset(seed=0, options={"instance": "few-labels"})
        n_summary = len(summary_features(env.state_spec))
        assert env.observation_space.shape == (n_summary + len(SITUATION_FEATURES),)
        assert env.observation_space.contains(obs)
        situation = obs[n_summary:]
        np.testing.assert_array_equal(situation, observable_situation(env.distiller))
        # what the user counts: 10% of the distillation set is labelled
        assert situation[SITUATION_FEATURES.index("labelled_share")] == pytest.approx(0.1, abs=0.002)
        # no true-configuration field is read: rewrite the privileged config fields of the built
        # distiller (its data, labels and teacher unchanged) and compute again from scratch
        d = env.distiller
        d.config = d.config.replace(label_noise=0.45, label_fraction=0.9, teacher_train_fraction=0.05,
                                    teacher_epochs=999.0, student_hidden=7)
        d.situation_cache.clear()
        np.testing.assert_array_equal(observable_situation(d), situation)
        # ...but it moves with the data: flip a third of the labelled examples the student sees
        labelled = np.flatnonzero(d.label_mask)
        d.student_labels = d.train_data.labels.copy()
        flip = labelled[: len(labelled) // 3]
        d.student_labels[flip] = (d.student_labels[flip] + 1) % d.task.num_labels
        d.situation_cache.clear()
        moved = observable_situation(d)
        k = SITUATION_FEATURES.index("teacher_gold_disagreement")
        assert moved[k] >= situation[k] + 0.25
    finally:
        env.close()
    assert not set(SITUATION_FEATURES) & set(FEATURE_FIELDS)
    assert set(PRIVILEGED_OBSERVATIONS) == {"oracle_situation", "oracle_situation_only"}


def test_observable_estimates_noise_and_teacher_quality_from_data():
    env = _env(observation="observable_only")
    try:
        values = {}
        for inst in SIT.names:
            obs, _ = env.reset(seed=0, options={"instance": inst})
            assert obs.shape == (1 + len(SITUATION_FEATURES),) and obs[0] == 0.0
            values[inst] = dict(zip(SITUATION_FEATURES, obs[1:]))
        k = "teacher_gold_disagreement"
        # 40% flipped labels: the teacher disagrees with about 40% of them (its own errors on top)
        assert values["noisy"][k] == pytest.approx(0.4 + values["clean"][k], abs=0.06)
        assert values["clean"][k] < 0.15
        for inst in SIT.names:  # the same teacher in all three: the same dev accuracy and ECE
            assert values[inst]["teacher_dev_accuracy"] == values["clean"]["teacher_dev_accuracy"]
        acc = values["clean"]["teacher_dev_accuracy"]
        assert values["clean"]["teacher_dev_skill"] == pytest.approx((acc - 0.1) / 0.9, abs=1e-5)
        assert 0 < values["clean"]["student_teacher_param_ratio"] < 1
        assert values["few-labels"]["labelled_count"] < values["clean"]["labelled_count"]
    finally:
        env.close()


def test_the_batched_copies_share_the_observable_situation_of_the_single_env():
    single = _env(observation="observable")
    venv = gym.make_vec("kd_env/DigitsKD-Instances-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        config="quick", instances=SIT.name, record_time=False, observation="observable")
    try:
        obs, _ = venv.reset(seed=[3, 4], options=[{"instance": "noisy"}, {"instance": "clean"}])
        n = len(SITUATION_FEATURES)
        want, _ = single.reset(seed=3, options={"instance": "noisy"})
        np.testing.assert_array_equal(obs[0, -n:], want[-n:])
        assert not np.array_equal(obs[0, -n:], obs[1, -n:])
    finally:
        venv.close()
        single.close()


def test_the_switch_set_holds_fresh_situations_that_share_no_seed_with_train():
    iset = get_instance_set("digits-switch")
    assert len(iset.train_names) == 18 and len(iset.test_names) == 12
    train_seeds = {iset.config(n).seed for n in iset.train_names}
    test_seeds = [iset.config(n).seed for n in iset.test_names]
    assert train_seeds == {0} and len(set(test_seeds)) == 12 and not set(test_seeds) & train_seeds
    dev = get_instance_set("digits-switch-dev")
    assert sorted(dev.names) == sorted(iset.train_names) and len(dev.test_names) == 6
    spec = gym.spec("kd_env/DigitsKD-Switch-v0")
    assert spec.kwargs["observation"] == "observable" and spec.kwargs["observation"] not in PRIVILEGED_OBSERVATIONS
