"""The ``portable`` observation (one space for every classification task, so that a policy trained
on digits can act on text), the second embedded text task (convention-party), the text3 situations,
and the benchmark's saved agents (the route a digits-trained selector takes to text)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import kd_env  # noqa: F401 - registers the env ids
from kd_env.data import load_task
from kd_env.instances import get_instance_set
from kd_env.observations import PORTABLE_STATE
from kd_env.situation import SITUATION_FEATURES


def _episode_observations(env: gym.Env, actions) -> list[np.ndarray]:
    base = env.unwrapped
    obs, _ = env.reset(seed=0)
    seen = [(obs, base.observation_fn.unclipped(base.state))]
    for a in actions:
        obs, *_ = env.step(np.asarray(a, np.float32))
        seen.append((obs, base.observation_fn.unclipped(base.state)))
    return seen


def _check_portable(env: gym.Env, actions) -> list[np.ndarray]:
    base = env.unwrapped
    k = len(base.knowledge_names)
    space = env.observation_space
    assert space.shape == (len(PORTABLE_STATE) + k + len(SITUATION_FEATURES),)
    out = []
    for obs, raw in _episode_observations(env, actions):
        assert space.contains(obs)
        # clipping is a guard: the real values already lie inside the declared bounds
        assert np.all(raw >= space.low - 1e-6) and np.all(raw <= space.high + 1e-6), raw
        out.append(obs)
    last = out[-1]
    c = max(2, base.distiller.task.num_labels)
    phase = base.last_phase
    assert last[2] == pytest.approx((phase.student_accuracy - 1 / c) / (1 - 1 / c), abs=1e-5)
    assert last[1] == pytest.approx(phase.student_ce / math.log(c), abs=1e-4)
    np.testing.assert_array_equal(last[len(PORTABLE_STATE):len(PORTABLE_STATE) + k], np.asarray(actions[-1]))
    return out


def test_portable_is_one_space_for_digits_and_text(tiny_bert_dir, text_csv):
    digits = gym.make("kd_env/QuickKD-v0", observation="portable", action_mode="weights", record_time=False)
    text = gym.make("kd_env/TextKD-v0", task=str(text_csv), teacher=str(tiny_bert_dir), max_len=24, batch_size=8,
                    total_steps=6, steps_per_action=2, teacher_max_steps=20, train_examples=None,
                    dev_probe_size=16, observation="portable", action_mode="weights", record_time=False)
    try:
        assert digits.unwrapped.distiller.task.num_labels == 10 and text.unwrapped.distiller.task.num_labels == 2
        assert digits.observation_space == text.observation_space  # the same shape and bounds
        d = _check_portable(digits, [[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 1, 1]])
        t = _check_portable(text, [[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]])
        # the same units: an untrained student guesses near uniformly on both tasks, so its
        # cross-entropy is about log(C) on both (1 in portable units) where the raw values differ
        # by log(10) / log(2) = 3.3x
        for first in (d[1], t[1]):
            assert 0.5 < first[1] < 1.6
    finally:
        digits.close()
        text.close()


def test_a_policy_network_trained_on_digits_loads_on_text_only_through_portable(tiny_bert_dir, text_csv, tmp_path):
    from agents import load_agent, make_agent
    from agents.checkpoints import CheckpointError

    kwargs = dict(task=str(text_csv), teacher=str(tiny_bert_dir), max_len=24, batch_size=8, total_steps=6,
                  steps_per_action=2, teacher_max_steps=20, train_examples=None, dev_probe_size=16,
                  action_mode="weights", record_time=False)
    digits = gym.make("kd_env/QuickKD-v0", observation="portable", action_mode="weights", record_time=False)
    agent = make_agent("ac", digits, seed=0)
    agent.save(tmp_path / "agent")
    text = gym.make("kd_env/TextKD-v0", observation="portable", **kwargs)
    loaded = load_agent(tmp_path / "agent", text)
    obs, _ = text.reset(seed=0)
    assert text.action_space.contains(np.asarray(loaded.act(obs, deterministic=True), np.float32))
    # the summary-based observable has per-knowledge losses in the models' own units and another size
    with pytest.raises(CheckpointError, match="does not fit"):
        load_agent(tmp_path / "agent", gym.make("kd_env/TextKD-v0", observation="observable", **kwargs))


# ---- convention-party: the second embedded text task ------------------------------------------


@pytest.fixture(scope="module")
def party():
    return load_task("convention-party", seed=0)


def test_convention_party_is_real_labelled_text_split_by_speaker(party):
    sizes = {k: len(v) for k, v in party.splits.items()}
    assert sum(sizes.values()) > 7000 and sizes["train"] > 5 * sizes["test"]
    assert party.num_labels == 2 and party.kind == "text" and party.label_names == ["democrat", "republican"]
    speakers = {k: set(v.groups) for k, v in party.splits.items()}
    assert not speakers["train"] & speakers["dev"] and not speakers["train"] & speakers["test"]
    assert not speakers["dev"] & speakers["test"]
    for split in party.splits.values():
        assert set(np.unique(split.labels)) == {0, 1}
        assert min(len(t.split()) for t in split.texts) >= 5
    again = load_task("convention-party", seed=0)
    assert again["test"].fingerprint() == party["test"].fingerprint()
    assert load_task("convention-party", seed=1)["test"].fingerprint() != party["test"].fingerprint()


def test_text3_situations_are_registered_on_the_demos_student():
    iset = get_instance_set("text3-situations")
    assert iset.base == "text3"
    assert iset.test_names == ["party-clean", "party-labels10-noisy30"]
    assert all(iset.config(n).task == "convention-party" for n in iset.test_names)
    assert iset.config("rt-labels10-noisy30").label_noise == 0.3
    assert iset.config("rt-labels10-weak").teacher_train_fraction == 0.05
    spec = gym.spec("kd_env/Text3KD-Situations-v0")
    assert spec.kwargs["instances"] == "text3-situations" and spec.kwargs["observation"] == "observable"
