"""The knowledge-selection environment (issue 3): the Gymnasium contract, determinism, pickling,
vector envs, bad actions, crashes, reset options, rendering, the episode's end, SB3 training.

Runs on the digits envs (``QuickKD``: 4 phases per episode; ``DigitsKD``: 15), whose teacher is
fine-tuned once per session into the conftest's temporary ``KD_ENV_CACHE``.
"""

from __future__ import annotations

import functools
import math
import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import kd_env
from kd_env import KnowledgeSelectionEnv, SymmetricWeights, register_knowledge
from kd_env.observations import LOG_CAP
from tests.helpers import assert_passes_env_checkers, assert_same, outside_bounds, unclipped_observation

QUICK = "kd_env/QuickKD-v0"
DIGITS = "kd_env/DigitsKD-v0"
OBSERVATIONS = ("summary", "cls", "dict")
ACTION_MODES = ("mask", "weights")



# ---- helpers -------------------------------------------------------------------------------------


@register_knowledge("nan_knowledge")
def nan_knowledge(student, teacher, batch):
    """A knowledge whose loss is always NaN (with a gradient path to the student)."""
    return student.logits.sum() * float("nan")


def make_quick_env():
    """A top-level (picklable) env factory for vector envs (one torch thread: in a spawned worker
    on a small box, two threads per worker oversubscribe the cores)."""
    torch.set_num_threads(1)
    return gym.make(QUICK)


def strip_time(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "phase_seconds"}


def student_params(env) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in env.unwrapped.distiller.student.state_dict().items()}


def run_episode(env, seed: int, actions) -> list[tuple]:
    """(obs, reward, terminated, truncated, info without phase_seconds) per step, reset included."""
    obs, info = env.reset(seed=seed)
    out = [(obs, 0.0, False, False, strip_time(info))]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, r, term, trunc, strip_time(info)))
        if term or trunc:
            break
    return out


def action_sequence(n: int, k: int = 4, seed: int = 0, mode: str = "mask") -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if mode == "mask":
        return [rng.integers(0, 2, size=k).astype(np.int8) for _ in range(n)]
    return [rng.random(k).astype(np.float32) for _ in range(n)]


# ---- the Gymnasium contract ----------------------------------------------------------------------


@pytest.mark.parametrize("env_id", [QUICK, DIGITS, "kd_env/DigitsKD-Instances-v0"])
def test_registered_ids_as_made_pass_both_checkers_without_warnings(env_id):
    """Issue 13 item 1: with default arguments (wall time used to be in info, so Gymnasium's
    checker found two runs' infos different)."""
    assert_passes_env_checkers(lambda: gym.make(env_id))


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("action_mode", ACTION_MODES)
def test_gymnasium_check_env_passes_without_warnings(action_mode, observation):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(QUICK, action_mode=action_mode, observation=observation).unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("observation", ("summary", "dict"))
def test_sb3_check_env_passes_without_warnings_in_mask_mode(observation):
    from stable_baselines3.common.env_checker import check_env

    env = gym.make(QUICK, observation=observation)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, warn=True)
    assert [str(w.message) for w in caught] == []


def test_weights_mode_passes_both_checkers_through_symmetric_weights():
    """Issue 13 item 2: SB3 warns on Box(0, 1); the documented wrapper gives Box(-1, 1)."""
    from stable_baselines3.common.env_checker import check_env

    with pytest.warns(UserWarning, match="symmetric"):
        check_env(gym.make(QUICK, action_mode="weights"), warn=True)
    assert_passes_env_checkers(lambda: SymmetricWeights(gym.make(QUICK, action_mode="weights")))


def test_symmetric_weights_maps_minus_one_one_onto_the_weights():
    env = SymmetricWeights(gym.make(QUICK, action_mode="weights", record_time=False))
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    twin = gym.make(QUICK, action_mode="weights", record_time=False)
    env.reset(seed=3)
    twin.reset(seed=3)
    a = np.array([-1.0, 0.0, 0.5, 1.0], np.float32)
    _, _, _, _, info = env.step(a)
    assert info["action"].tolist() == [0.0, 0.5, 0.75, 1.0]
    twin.step(np.array([0.0, 0.5, 0.75, 1.0], np.float32))
    assert_same(list(env.step(-a)), list(twin.step(np.array([1.0, 0.5, 0.25, 0.0], np.float32))))
    assert SymmetricWeights.to_weights([-3.0, 3.0]).tolist() == [0.0, 1.0]  # clipped
    for bad in (np.array([1.5, 0, 0, 0]), np.array([np.nan, 0, 0, 0]), np.zeros(3), "0000"):
        with pytest.raises(ValueError, match=r"Box\(-1, 1, \(4,\), float32\)"):
            env.step(bad)
    with pytest.raises(ValueError, match="needs no wrapper"):
        SymmetricWeights(gym.make(QUICK))


def test_wall_time_is_kept_out_of_info_unless_asked_for():
    env = gym.make(QUICK)
    _, info = env.reset(seed=0)
    assert "phase_seconds" not in info and env.unwrapped.last_phase_seconds == 0.0
    _, _, _, _, info = env.step(np.array([1, 0, 0, 0]))
    assert "phase_seconds" not in info and env.unwrapped.last_phase_seconds > 0.0
    timed = gym.make(QUICK, record_time=True)
    timed.reset(seed=0)
    _, _, _, _, info = timed.step(np.array([1, 0, 0, 0]))
    assert info["phase_seconds"] == timed.unwrapped.last_phase_seconds > 0.0


def test_spaces_follow_the_configured_knowledge():
    env = gym.make(QUICK, knowledge=("finetune", "response"))
    assert env.action_space == gym.spaces.MultiBinary(2)
    assert env.observation_space.shape == (2 * 2 + 9,)
    assert env.unwrapped.knowledge_names == ["finetune", "response"]
    env_w = gym.make(QUICK, action_mode="weights")
    assert env_w.action_space == gym.spaces.Box(0.0, 1.0, (4,), np.float32)
    with pytest.raises(ValueError, match="action_mode"):
        gym.make(QUICK, action_mode="soft")


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("action_mode", ACTION_MODES)
def test_every_observation_lies_in_the_space_over_a_random_episode(action_mode, observation):
    env = gym.make(QUICK, action_mode=action_mode, observation=observation, total_steps=60)
    env.action_space.seed(3)
    obs, _ = env.reset(seed=3)
    seen = [(obs, unclipped_observation(env))]
    done = False
    while not done:
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        seen.append((obs, unclipped_observation(env)))
        done = term or trunc
    assert len(seen) == 1 + 6
    for i, (o, raw) in enumerate(seen):
        assert env.observation_space.contains(o), f"observation {i} outside {env.observation_space}: {o}"
        # the returned observation is clipped, so test the statistics before clipping
        assert outside_bounds(env.observation_space, raw) == [], f"observation {i} needed clipping"


@pytest.mark.parametrize("action_mode", ACTION_MODES)
def test_clipping_is_rare_on_real_digits_runs(action_mode):
    """Clipping guards against diverged runs; on ordinary DigitsKD episodes (2 x 15 phases of
    random actions, summary and cls) it must change (almost) nothing."""
    changed, total = 0, 0
    for observation in ("summary", "cls"):
        env = gym.make(DIGITS, action_mode=action_mode, observation=observation)
        env.action_space.seed(0)
        for seed in (0, 1):
            obs, _ = env.reset(seed=seed)
            done = False
            while True:
                raw = unclipped_observation(env)
                changed += int(np.sum(np.abs(np.asarray(obs, np.float64) - raw) > 1e-5))
                total += raw.size
                if done:
                    break
                obs, _, term, trunc, _ = env.step(env.action_space.sample())
                done = term or trunc
        env.close()
    assert total > 1000 and changed / total <= 0.001, f"clipping changed {changed} of {total} values"


def test_summary_observation_tracks_the_budget_and_the_last_action():
    env = gym.make(QUICK)
    obs, _ = env.reset(seed=0)
    k = 4
    assert obs[0] == 0.0 and np.all(obs[-k:] == 0)
    obs, _, _, _, info = env.step(np.array([1, 0, 1, 0]))
    assert obs[0] == pytest.approx(10 / 40)
    assert obs[-k:].tolist() == [1, 0, 1, 0]
    assert obs[k + 7] == pytest.approx(info["probe_metric"], abs=1e-6)  # K+7: dev-probe metric
    assert obs[k + 6] == pytest.approx(math.log1p(info["probe_loss"]), abs=1e-5)  # K+6: dev-probe CE


# ---- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_identical_trajectories_and_different_seeds_differ():
    actions = action_sequence(15, seed=11)
    env_a, env_b = gym.make(DIGITS), gym.make(DIGITS)
    first = run_episode(env_a, 7, actions)
    second = run_episode(env_b, 7, actions)
    assert len(first) == 16 and first[-1][2] is True
    assert_same(first, second)
    again = run_episode(env_a, 7, actions)  # the same env, reset again with the same seed
    assert_same(first, again)
    other = run_episode(env_b, 8, actions)
    assert not np.allclose(np.stack([s[0] for s in first]), np.stack([s[0] for s in other]))
    assert [s[1] for s in first] != [s[1] for s in other]


def test_reset_without_seed_continues_the_generator():
    env = gym.make(QUICK)
    o1, _ = env.reset(seed=1)
    o2, _ = env.reset()
    env2 = gym.make(QUICK)
    p1, _ = env2.reset(seed=1)
    p2, _ = env2.reset()
    assert np.array_equal(o1, p1) and np.array_equal(o2, p2)
    assert not np.array_equal(o1, o2)  # a new episode draws a new student


# ---- pickling and vector envs --------------------------------------------------------------------


@pytest.mark.parametrize("reward", ["dev_loss_delta", "train_loss_delta", "final_metric", "cost_penalized"])
@pytest.mark.parametrize("action_mode", ACTION_MODES)
def test_pickle_round_trip_mid_episode_continues_identically(action_mode, reward):
    env = gym.make(QUICK, action_mode=action_mode, reward=reward, record_time=False)
    actions = action_sequence(4, seed=5, mode=action_mode)
    env.reset(seed=5)
    env.step(actions[0])
    clone = pickle.loads(pickle.dumps(env))
    assert clone is not env and clone.unwrapped.distiller is not env.unwrapped.distiller
    for a in actions[1:]:
        expected = env.step(a)
        got = clone.step(a)
        assert_same(list(got), list(expected))
    assert expected[2] is True
    with pytest.raises(RuntimeError):
        clone.step(actions[0])


def test_pickled_env_replays_the_episode_it_had_started():
    """``reset(options={"replay": True})`` after a pickle round trip restarts the same episode as
    on the original env (the last start travels with the state)."""

    def replay(e, actions, **reset):
        obs, info = e.reset(**reset)
        out = [(obs, 0.0, False, False, strip_time(info))]
        for a in actions:
            obs, r, term, trunc, info = e.step(a)
            out.append((obs, r, term, trunc, strip_time(info)))
        return out

    env = gym.make(QUICK, record_time=False)
    env.reset(seed=11)
    env.step(action_sequence(1, seed=3)[0])
    clone = pickle.loads(pickle.dumps(env))
    actions = action_sequence(4, seed=4)
    expected = replay(env, actions, options={"replay": True})
    assert_same(replay(clone, actions, options={"replay": True}), expected)
    assert_same(replay(gym.make(QUICK, record_time=False), actions, seed=11), expected)


def test_pickled_fresh_env_matches_a_fresh_env():
    env = gym.make(QUICK, record_time=False)
    clone = pickle.loads(pickle.dumps(env))
    actions = action_sequence(4, seed=2)
    assert_same(run_episode(clone, 4, actions), run_episode(env, 4, actions))


def test_sync_vector_env_matches_single_envs():
    envs = gym.vector.SyncVectorEnv([functools.partial(gym.make, QUICK, record_time=False)] * 2)
    obs, infos = envs.reset(seed=[21, 22])
    assert obs.shape == (2, 17) and envs.single_action_space == gym.spaces.MultiBinary(4)
    actions = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=np.int8)
    obs1, rew1, term1, _, _ = envs.step(actions)
    for i, seed in enumerate((21, 22)):
        single = gym.make(QUICK, record_time=False)
        o0, _ = single.reset(seed=seed)
        o1, r1, t1, _, _ = single.step(actions[i])
        assert np.array_equal(obs[i], o0) and np.array_equal(obs1[i], o1) and rew1[i] == r1 and not t1
    for _ in range(3):  # to the end of the 4-phase episodes
        _, _, term, _, _ = envs.step(actions)
    assert term.tolist() == [True, True]
    obs_reset, rew_reset, term_reset, _, _ = envs.step(actions)  # next-step autoreset
    assert term_reset.tolist() == [False, False] and np.all(obs_reset[:, 0] == 0.0)
    envs.close()


def test_async_vector_env_spawn_matches_sync():
    fns = [make_quick_env, functools.partial(gym.make, "kd_env:" + QUICK)]
    actions = np.array([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=np.int8)
    results = []
    for envs in (gym.vector.AsyncVectorEnv(fns, context="spawn"), gym.vector.SyncVectorEnv(fns)):
        try:
            obs, _ = envs.reset(seed=[3, 4])
            obs1, rew, term, trunc, info = envs.step(actions)
            results.append((obs, obs1, rew, term))
        finally:
            envs.close()
    (a_obs, a_obs1, a_rew, a_term), (s_obs, s_obs1, s_rew, s_term) = results
    assert a_obs.shape == (2, 17)
    np.testing.assert_allclose(a_obs, s_obs, atol=1e-5)
    np.testing.assert_allclose(a_obs1, s_obs1, atol=1e-5)
    np.testing.assert_allclose(a_rew, s_rew, atol=1e-5)
    assert a_term.tolist() == s_term.tolist() == [False, False]
    assert not np.allclose(a_obs[0], a_obs[1])  # the two envs got different seeds


# ---- bad actions ---------------------------------------------------------------------------------

BAD_MASK_ACTIONS = {
    "short": np.array([1, 0, 1]),
    "long": np.array([1, 0, 1, 0, 1]),
    "2d": np.array([[1, 0, 1, 0]]),
    "scalar": 1,
    "ragged": [[1, 0], [1]],
    "strings": np.array(["1", "0", "1", "0"]),
    "string": "1010",
    "complex": np.array([1, 0, 1, 0], dtype=complex),
    "object": np.array([1, 0, 1, 0], dtype=object),
    "none": None,
    "nan": np.array([np.nan, 0, 1, 0]),
    "inf": np.array([np.inf, 0, 1, 0]),
    "two": np.array([2, 0, 1, 0]),
    "negative": np.array([-1, 0, 1, 0]),
    "half": np.array([0.5, 0, 1, 0]),
}
BAD_WEIGHT_ACTIONS = {
    "short": np.array([0.1, 0.2, 0.3], np.float32),
    "2d": np.full((1, 4), 0.5, np.float32),
    "strings": np.array(["0.5"] * 4),
    "complex": np.full(4, 0.5, dtype=complex),
    "object": np.array([0.5] * 4, dtype=object),
    "nan": np.array([np.nan, 0.5, 0.5, 0.5], np.float32),
    "inf": np.array([np.inf, 0.5, 0.5, 0.5]),
    "above_one": np.array([1.5, 0.5, 0.5, 0.5], np.float32),
    "barely_above_one": np.array([1.0001, 0.5, 0.5, 0.5], np.float32),
    "negative": np.array([-0.1, 0.5, 0.5, 0.5], np.float32),
}
EXPECTED_SPACE = {"mask": "MultiBinary(4)", "weights": "Box(0, 1, (4,), float32)"}


@pytest.fixture(scope="module")
def stepped_envs():
    """One env per action mode, reset and one phase in (so the optimizer has state)."""
    envs = {}
    for mode in ACTION_MODES:
        env = gym.make(QUICK, action_mode=mode)
        env.reset(seed=9)
        env.step(np.array([1, 1, 0, 0], np.float32 if mode == "weights" else np.int8))
        envs[mode] = env
    yield envs
    for env in envs.values():
        env.close()


@pytest.mark.parametrize("action_mode, name", [("mask", n) for n in BAD_MASK_ACTIONS]
                         + [("weights", n) for n in BAD_WEIGHT_ACTIONS])
def test_bad_action_raises_naming_the_space_and_changes_nothing(stepped_envs, action_mode, name):
    env = stepped_envs[action_mode]
    bad = (BAD_MASK_ACTIONS if action_mode == "mask" else BAD_WEIGHT_ACTIONS)[name]
    before = env.unwrapped.state_dict()
    torch_rng = torch.get_rng_state()
    with pytest.raises(ValueError) as excinfo:
        env.step(bad)
    assert EXPECTED_SPACE[action_mode] in str(excinfo.value)
    assert "finetune" in str(excinfo.value)  # names the knowledge the bits stand for
    after = env.unwrapped.state_dict()
    assert_same(after, before)
    assert after["distiller"]["step"] == 10 and after["phase_index"] == 1
    assert torch.equal(torch.get_rng_state(), torch_rng)


@pytest.mark.parametrize("good", [np.array([1, 0, 1, 0], np.int64), np.array([True, False, True, False]),
                                  np.array([1.0, 0.0, 1.0, 0.0]), [1, 0, 1, 0], (1, 0, 1, 0)])
def test_mask_accepts_any_exactly_binary_array(good):
    env = gym.make(QUICK)
    env.reset(seed=0)
    _, _, _, _, info = env.step(good)
    assert info["action"].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_bad_action_then_good_action_matches_a_twin_that_never_saw_it():
    env, twin = gym.make(QUICK, record_time=False), gym.make(QUICK, record_time=False)
    for e in (env, twin):
        e.reset(seed=12)
    with pytest.raises(ValueError):
        env.step(np.array([0.5, 1, 0, 0]))
    assert_same(list(env.step(np.array([1, 0, 0, 1]))), list(twin.step(np.array([1, 0, 0, 1]))))


def test_all_zero_mask_trains_nothing_but_spends_the_budget():
    env = gym.make(QUICK)
    env.reset(seed=4)
    env.step(np.array([1, 1, 1, 1]))
    params = student_params(env)
    opt_state = env.unwrapped.state_dict()["distiller"]["optimizer"]
    probe_before = dict(env.unwrapped.last_probe)
    obs, reward, term, _, info = env.step(np.zeros(4, np.int8))
    assert_same(student_params(env), params)
    assert_same(env.unwrapped.state_dict()["distiller"]["optimizer"]["state"], opt_state["state"])
    assert info["optimizer_steps"] == 20 and obs[0] == pytest.approx(0.5) and not term
    assert info["probe_loss"] == probe_before["loss"] and reward == 0.0
    assert info["action"].tolist() == [0, 0, 0, 0]


def test_weights_mode_binary_weights_match_mask_mode_and_fractional_weights_differ():
    mask_env = gym.make(QUICK, record_time=False)
    weights_env = gym.make(QUICK, action_mode="weights", record_time=False)
    mask_actions = [np.array(a, np.int8) for a in ([1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 1], [0, 1, 0, 0])]
    fractional = [np.array(a, np.float32) for a in ([0.8, 0.3, 0.6, 0.2], [0.4, 0.7, 0.9, 0.1],
                                                     [0.6, 0.9, 0.2, 0.7], [0.1, 0.6, 0.3, 0.4])]
    assert all(np.array_equal(np.round(f), m) for f, m in zip(fractional, mask_actions))
    from_mask = run_episode(mask_env, 6, mask_actions)
    from_binary_weights = run_episode(weights_env, 6, [m.astype(np.float32) for m in mask_actions])
    assert_same(from_binary_weights, from_mask)
    from_fractional = run_episode(weights_env, 6, fractional)
    assert np.array_equal(from_fractional[0][0], from_mask[0][0])  # same start
    assert from_fractional[1][4]["probe_loss"] != from_mask[1][4]["probe_loss"]
    assert not np.allclose(from_fractional[-1][0][:-4], from_mask[-1][0][:-4])
    assert from_fractional[1][4]["action"] == pytest.approx(fractional[0])


# ---- crashes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("crash_penalty", [None, -5.0])
def test_nan_knowledge_crashes_with_the_penalty_and_restores_the_student(crash_penalty):
    env = gym.make(QUICK, knowledge=("finetune", "nan_knowledge"), crash_penalty=crash_penalty)
    assert env.action_space == gym.spaces.MultiBinary(2)
    env.reset(seed=0)
    obs, reward, term, _, info = env.step(np.array([1, 0]))  # unselected NaN term: reported, not trained
    assert not term and not info["crashed"] and math.isnan(info["losses"]["nan_knowledge"])
    assert env.observation_space.contains(obs)
    # a non-finite loss reads as the cap (the worst value), not as 0 (a perfect loss)
    assert obs[2] == LOG_CAP and 0.0 < obs[1] < LOG_CAP
    assert unclipped_observation(env)[2] == math.inf
    params = student_params(env)
    steps_before = info["optimizer_steps"]
    obs, reward, term, trunc, info = env.step(np.array([1, 1]))
    expected = -1.0 if crash_penalty is None else crash_penalty  # dev_loss_delta's crash_value
    assert term is True and trunc is False and info["crashed"] is True
    assert reward == expected and info["rewards"] == {"crash_penalty": expected}
    assert_same(student_params(env), params)
    assert all(torch.isfinite(p).all() for p in params.values())
    assert info["optimizer_steps"] == steps_before + 1  # the crashing step is spent
    assert env.observation_space.contains(obs)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([1, 0]))
    env.reset(seed=0)  # a new episode starts cleanly
    _, _, term, _, info = env.step(np.array([1, 0]))
    assert not term and not info["crashed"]


@pytest.mark.parametrize("at_step", [3, 10])  # mid-phase, and the phase's last optimizer step
def test_parameters_that_turn_inf_are_restored_to_the_state_before_the_phase(monkeypatch, at_step):
    env = gym.make(QUICK)
    env.reset(seed=1)
    env.step(np.array([1, 1, 0, 0]))
    params = student_params(env)
    optimizer = env.unwrapped.distiller.optimizer
    original_step = optimizer.step
    calls = {"n": 0}

    def corrupting_step(*args, **kwargs):
        out = original_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == at_step:
            with torch.no_grad():
                next(env.unwrapped.distiller.student.parameters()).fill_(float("inf"))
        return out

    monkeypatch.setattr(optimizer, "step", corrupting_step)
    obs, reward, term, _, info = env.step(np.array([1, 1, 0, 0]))
    assert info["crashed"] is True and term is True and reward == -1.0
    assert env.unwrapped.distiller.student_is_finite()
    assert_same(student_params(env), params)
    assert env.observation_space.contains(obs)


def test_huge_learning_rate_crashes_and_leaves_a_finite_student():
    env = gym.make(QUICK, lr=1e30, crash_penalty=-3.0)
    env.reset(seed=0)
    _, reward, term, _, info = env.step(np.array([1, 1, 1, 1]))
    assert info["crashed"] is True and term is True and reward == -3.0
    assert env.unwrapped.distiller.student_is_finite()
    assert 0 < info["optimizer_steps"] <= 10


# ---- reset options -------------------------------------------------------------------------------


def test_reset_config_option_changes_the_episode_length():
    env = gym.make(QUICK)
    env.reset(seed=0, options={"config": {"total_steps": 20}})
    assert env.unwrapped.config.total_steps == 20
    terms = [env.step(np.array([1, 0, 0, 0]))[2] for _ in range(2)]
    assert terms == [False, True]
    env.reset(seed=0, options={"config": {"total_steps": 40}})
    terms = [env.step(np.array([1, 0, 0, 0]))[2] for _ in range(4)]
    assert terms == [False, False, False, True]


def test_reset_options_cannot_change_the_knowledge_types():
    env = gym.make(QUICK)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="knowledge"):
        env.reset(options={"config": {"knowledge": ("finetune", "response")}})
    assert env.unwrapped.knowledge_names == ["finetune", "response", "feature", "relation"]
    env.reset(seed=0)  # still usable, with the old action space
    assert env.step(np.array([1, 1, 1, 1]))[4]["optimizer_steps"] == 10


@pytest.mark.parametrize("options, match", [({"rewards": "dev_loss_delta"}, "rewards"),
                                            ({"config": {"total_step": 5}}, "total_step")])
def test_reset_rejects_unknown_options(options, match):
    env = gym.make(QUICK)
    with pytest.raises(ValueError, match=match):
        env.reset(seed=0, options=options)


# ---- rendering, closing, the episode's end -------------------------------------------------------


def test_ansi_render_gives_one_line_per_phase():
    env = gym.make(QUICK, render_mode="ansi")
    env.reset(seed=0)
    actions = [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    lines = []
    for a in actions:
        _, _, _, _, info = env.step(np.array(a))
        text = env.render()
        assert text.endswith("\n") and text.count("\n") == 1
        lines.append((text, info))
    for i, (text, info) in enumerate(lines):
        assert text.startswith(f"phase {i + 1:3d}")
        chosen = text.split("knowledge ")[1].split(" |")[0]
        names = [n for n, bit in zip(["finetune", "response", "feature", "relation"], actions[i]) if bit]
        assert chosen == (",".join(f"{n}=1" for n in names) or "(none)")
        assert f"metric {info['probe_metric']:.4f}" in text


def test_render_mode_human_is_refused_at_construction():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gym.make warns first, then the env refuses
        with pytest.raises(ValueError, match="ansi"):
            gym.make(QUICK, render_mode="human")
    assert gym.make(QUICK).unwrapped.render() is None  # no render_mode: nothing


def test_close_twice_is_fine_and_step_after_close_raises():
    env = gym.make(QUICK)
    env.reset(seed=0)
    env.close()
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.unwrapped.step(np.array([1, 0, 0, 0]))


@pytest.mark.parametrize("total_steps, steps_per_action", [(40, 10), (25, 10), (30, 7), (5, 5)])
def test_terminated_exactly_after_ceil_budget_over_phase_steps(total_steps, steps_per_action):
    env = gym.make(QUICK, total_steps=total_steps, steps_per_action=steps_per_action)
    env.reset(seed=0)
    expected = math.ceil(total_steps / steps_per_action)
    terms, steps = [], []
    for _ in range(expected):
        _, _, term, trunc, info = env.step(np.array([1, 0, 0, 0]))
        terms.append(term)
        steps.append(info["optimizer_steps"])
        assert trunc is False
    assert terms == [False] * (expected - 1) + [True]
    assert steps == [min(total_steps, (i + 1) * steps_per_action) for i in range(expected)]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([1, 0, 0, 0]))


def test_a_constant_mask_trains_the_same_student_whatever_the_phase_length():
    """Comparisons across decision intervals rely on this: a policy that acts once per episode
    (steps_per_action = total_steps) and a fixed mask played every 10 steps train the same
    student when they play the same mask, to the last bit."""
    finals = []
    for steps_per_action in (10, 40):
        env = gym.make(QUICK, total_steps=40, steps_per_action=steps_per_action).unwrapped
        env.reset(seed=3)
        done = False
        while not done:
            _, _, done, _, info = env.step(np.array([1, 1, 0, 0]))
        finals.append((info["probe_metric"], [p.detach().clone() for p in env.distiller.student.parameters()]))
        env.close()
    assert finals[0][0] == finals[1][0]
    assert all(torch.equal(a, b) for a, b in zip(finals[0][1], finals[1][1]))


def test_registered_ids_and_direct_construction():
    assert {QUICK, DIGITS, "kd_env/TextKD-v0"} <= set(gym.registry)
    kd_env.register_envs()  # idempotent
    env = KnowledgeSelectionEnv("quick", total_steps=20)
    assert env.config.total_steps == 20 and env.config.task == "digits"
    assert gym.make(DIGITS).unwrapped.config.num_phases == 15


# ---- stable-baselines3 ---------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["PPO", "A2C"])
def test_sb3_trains_a_few_hundred_steps_on_digits_and_updates_its_policy(algo):
    """Plain stable-baselines3 on the registered env, end to end: it trains (parameters change)
    and predicts valid actions.  That SB3 *learns* a known optimum is tested on a synthetic env
    (tests/test_agents.py::test_sb3_learns_the_best_mask_on_the_synthetic_env)."""
    import stable_baselines3 as sb3

    env = gym.make(DIGITS)
    kwargs = dict(n_steps=15, batch_size=15, n_epochs=2) if algo == "PPO" else dict(n_steps=15)
    model = getattr(sb3, algo)("MlpPolicy", env, seed=0, device="cpu", **kwargs)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=300)
    assert model.num_timesteps >= 300
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(action.astype(np.int8))


@pytest.mark.parametrize("observation", ["summary", "dict"])
def test_text_env_with_a_tiny_bert_passes_check_env(tiny_bert_dir, text_csv, observation):
    from gymnasium.utils.env_checker import check_env

    env = gym.make("kd_env/TextKD-v0", task=str(text_csv), teacher=str(tiny_bert_dir), max_len=24,
                   batch_size=8, total_steps=6, steps_per_action=2, teacher_max_steps=20,
                   train_examples=None, dev_probe_size=16, observation=observation, record_time=False)
    assert env.unwrapped.distiller.task.kind == "text"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []
    obs, _ = env.reset(seed=0)
    terms = []
    for a in ([1, 1, 1, 1], [0, 1, 0, 1], [1, 0, 1, 0]):
        obs, r, term, _, info = env.step(np.array(a))
        assert env.observation_space.contains(obs) and math.isfinite(r) and not info["crashed"]
        terms.append(term)
    assert terms == [False, False, True]
