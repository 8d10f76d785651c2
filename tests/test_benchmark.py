"""experiments.benchmark end to end on QuickKD with tiny budgets: files and schema, intervals,
resume, the process executor, config errors."""

from __future__ import annotations

import csv
import json
import math
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kd_env
from experiments import benchmark
from experiments.benchmark import runner as bench_runner
from experiments.benchmark import (
    DEFAULT_ALGOS,
    SUMMARY_COLUMNS,
    BenchmarkConfig,
    ConfigError,
    build_grid,
    check_grid,
    parse_override,
    parse_value,
    run_benchmark,
)

from kd_env import Instance, InstanceSet
from tests.helpers import hide_ray, ray_or_skip, tensorboard_runs

ENV = "kd_env/QuickKD-v0"
PHASES = 4  # QuickKD: 40 steps, 10 per phase


def tiny_config(out: Path, **changes) -> BenchmarkConfig:
    """2 algorithms x 2 seeds x QuickKD: ac trains 2 episodes (evaluated after each), the
    random_hard baseline is evaluated once; one held-out episode per evaluation."""
    base = dict(name="tiny", algos=["ac", "random_hard"], envs=[ENV], seeds=[0, 1], episodes=2, eval_every=1,
                eval_episodes=1, workers=1, out=str(out), bootstrap_reps=200, verbose=False)
    return BenchmarkConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return run_benchmark(tiny_config(out))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def cell_arrays(run_dir: Path, algo: str, seed: int) -> dict[str, np.ndarray]:
    with np.load(run_dir / algo / f"kd_env__QuickKD-v0__seed{seed}" / "evaluations.npz") as data:
        return {k: data[k] for k in data.files}


# ---- files and schema -------------------------------------------------------------------------


def test_grid_writes_every_file_with_the_rl_zoo_schema(serial_run):
    run_dir = serial_run.run_dir
    assert not serial_run.failed
    assert len(serial_run.executed) == 4 and not serial_run.skipped
    for seed in (0, 1):
        ac = cell_arrays(run_dir, "ac", seed)
        assert {"timesteps", "results", "ep_lengths"} <= set(ac)
        assert ac["timesteps"].tolist() == [PHASES, 2 * PHASES]  # after episode 1, and at the end
        assert ac["results"].shape == ac["ep_lengths"].shape == (2, 1)
        assert ac["ep_lengths"].tolist() == [[PHASES], [PHASES]]
        assert ac["test_metrics"].shape == (2, 1) and np.all((ac["test_metrics"] >= 0) & (ac["test_metrics"] <= 1))
        assert ac["final_actions"].shape == (1, PHASES, 4)
        assert set(np.unique(ac["final_actions"])) <= {0.0, 1.0}
        assert ac["train_returns"].shape == (2,)
        baseline = cell_arrays(run_dir, "random_hard", seed)
        assert baseline["timesteps"].tolist() == [0] and baseline["results"].shape == (1, 1)
        result = json.loads((run_dir / "ac" / f"kd_env__QuickKD-v0__seed{seed}" / "result.json").read_text())
        assert result["train_episodes"] == 2 and result["train_steps"] == 2 * PHASES
        assert result["test_metric"] == pytest.approx(ac["test_metrics"][-1].mean())
        assert result["return"] == pytest.approx(ac["results"][-1].mean())
        # held-out: evaluation instances never among the training ones
        assert not set(result["eval_seeds"]) & set(range(result["train_seeds"][0], result["train_seeds"][1] + 1))

    runs = read_csv(run_dir / "runs.csv")
    assert len(runs) == 4 and {r["algorithm"] for r in runs} == {"ac", "random_hard"}
    assert {"test_metric", "return", "freq_finetune", "freq_relation"} <= set(runs[0])
    summary = read_csv(run_dir / "summary.csv")
    assert list(summary[0]) == SUMMARY_COLUMNS
    assert [r["algorithm"] for r in summary] == ["ac", "random_hard"]
    markdown = (run_dir / "summary.md").read_text()
    assert "| algorithm |" in markdown and "P(> random_hard)" in markdown and "| ac | mask | 2 | 2 |" in markdown
    plots = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert plots == ["kd_env__QuickKD-v0-learning_curves.png", "kd_env__QuickKD-v0-selection-ac.png",
                     "kd_env__QuickKD-v0-selection-random_hard.png", "kd_env__QuickKD-v0-selection.png"]
    for name in plots:
        assert (run_dir / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_intervals_bracket_the_point_estimates(serial_run):
    runs = read_csv(serial_run.run_dir / "runs.csv")
    for row in serial_run.rows:
        mine = [float(r["test_metric"]) for r in runs if r["algorithm"] == row["algorithm"]]
        assert row["test_mean"] == pytest.approx(np.mean(mine))
        assert row["test_iqm"] == pytest.approx(np.mean(mine))  # 2 runs: the IQM is the mean
        for key in ("test_mean", "test_iqm", "return_mean", "return_iqm"):
            assert row[f"{key}_low"] <= row[key] <= row[f"{key}_high"], key
            assert row[f"{key}_low"] >= min(mine if key.startswith("test") else [-math.inf])
    ac, reference = serial_run.rows
    assert 0.0 <= ac["poi_low"] <= ac["poi_vs_random_hard"] <= ac["poi_high"] <= 1.0
    assert math.isnan(reference["poi_vs_random_hard"])


def _refuse_constant(name: str):
    raise AssertionError(f"summary.json holds {name}, which is not JSON")


def test_one_seed_summary_has_no_interval(serial_run, tmp_path, monkeypatch):
    """Issue 13 item 5: with one seed the bootstrap used to give a zero-width 'interval'."""
    from experiments import report

    legends: list[str] = []

    def keep_legend(fig, path):
        legends.extend(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())

    monkeypatch.setattr(report, "_save", keep_legend)
    cells = [c for c in serial_run.cells if c.seed == 0]
    payloads = {c: benchmark.read_cell(serial_run.run_dir, c) for c in cells}
    rows = benchmark.summarize(tmp_path, cells, payloads, tiny_config(tmp_path, seeds=[0]))
    assert all(math.isnan(r["test_mean_low"]) and math.isnan(r["poi_low"]) for r in rows)
    markdown = (tmp_path / "summary.md").read_text()
    assert "n/a (1 seed)" in markdown and "nan" not in markdown.lower()
    saved = json.loads((tmp_path / "summary.json").read_text(), parse_constant=_refuse_constant)
    assert [r["algorithm"] for r in saved] == ["ac", "random_hard"]
    assert saved[0]["test_mean_low"] is None and saved[0]["test_mean"] == pytest.approx(rows[0]["test_mean"])
    assert "ac (CI n/a (1 seed))" in legends


def test_every_learner_writes_tensorboard_in_sb3_layout(serial_run):
    """One run folder per learner and seed, ``tb/<env>/<algo>_<seed>/``, read back by
    TensorBoard: SB3's rollout and eval tags for the learner, the evaluations alone (at step 0)
    for the fixed policy, with the numbers of ``evaluations.npz``."""
    runs = tensorboard_runs(serial_run.run_dir / "tb")
    assert sorted(runs) == [f"kd_env__QuickKD-v0/{algo}_{seed}" for algo in ("ac", "random_hard") for seed in (0, 1)]
    knowledge = json.loads((serial_run.run_dir / "ac" / "kd_env__QuickKD-v0__seed0" / "result.json").read_text())[
        "knowledge"]
    evaluation = {"eval/mean_reward", "eval/mean_ep_length", "eval/probe_metric", "eval/test_metric", "eval/test_loss",
                  *(f"eval_weights/{k}/phase_{p}" for k in knowledge for p in range(PHASES))}
    training = {"rollout/ep_rew_mean", "rollout/ep_len_mean", "rollout/ep_probe_mean", "time/episodes",
                *(f"rollout/weight_{k}" for k in knowledge), "train/actor_loss", "train/critic_loss"}
    for name, scalars in runs.items():
        algo, seed = name.split("/")[1].rsplit("_", 1)
        arrays = cell_arrays(serial_run.run_dir, algo, int(seed))
        assert evaluation <= set(scalars), name
        assert [s for s, _ in scalars["eval/test_metric"]] == arrays["timesteps"].tolist()
        np.testing.assert_allclose([v for _, v in scalars["eval/test_metric"]], arrays["test_metrics"].mean(axis=1),
                                   rtol=1e-6)
        np.testing.assert_allclose([v for _, v in scalars["eval/mean_reward"]], arrays["results"].mean(axis=1),
                                   rtol=1e-5, atol=1e-7)
        final = np.nanmean(arrays["final_actions"], axis=0)  # (phases, knowledge)
        assert scalars[f"eval_weights/{knowledge[1]}/phase_2"][-1][1] == pytest.approx(final[2, 1])
        if algo == "ac":  # trained: one point per training episode, at the env steps so far
            assert training <= set(scalars), name
            assert [s for s, _ in scalars["rollout/ep_rew_mean"]] == [PHASES, 2 * PHASES]
            returns = arrays["train_returns"]
            assert scalars["rollout/ep_rew_mean"][-1][1] == pytest.approx(returns.mean(), rel=1e-5, abs=1e-7)
        else:  # never trained: its evaluation only, at step 0
            assert not set(scalars) - evaluation and arrays["timesteps"].tolist() == [0]


def test_no_tensorboard_writes_no_event_files(tmp_path):
    from experiments.benchmark import parse_args

    assert parse_args([]).tensorboard and not parse_args(["--no-tensorboard"]).tensorboard
    result = run_benchmark(tiny_config(tmp_path, algos=["ac"], seeds=[0], episodes=1, tensorboard=False, plots=False))
    assert not result.failed and len(result.executed) == 1
    assert not list(tmp_path.rglob("events.out.tfevents.*")) and not (result.run_dir / "tb").exists()


# ---- resume -----------------------------------------------------------------------------------


def test_resume_skips_finished_cells_and_reruns_missing_or_changed_ones(serial_run, monkeypatch):
    calls = []
    real, real_many = benchmark.run_cell, bench_runner.run_cells

    def counting(cell, threads=1, tensorboard=None):
        calls.append((cell.algo, cell.seed))
        return real(cell, threads, tensorboard)

    def counting_many(cells, threads=1, tensorboard=None):  # seeds of one setting trained together
        calls.extend((cell.algo, cell.seed) for cell in cells)
        return real_many(cells, threads, tensorboard)

    monkeypatch.setattr(bench_runner, "run_cell", counting)  # what the units of work call
    monkeypatch.setattr(bench_runner, "run_cells", counting_many)
    out = serial_run.run_dir.parent
    again = run_benchmark(tiny_config(out))
    assert calls == [] and not again.executed and len(again.skipped) == 4
    assert _same_rows(again.rows, serial_run.rows)

    (serial_run.run_dir / "random_hard" / "kd_env__QuickKD-v0__seed1" / "result.json").unlink()
    partial = run_benchmark(tiny_config(out))
    assert calls == [("random_hard", 1)] and len(partial.skipped) == 3

    calls.clear()
    changed = run_benchmark(tiny_config(out, overrides=["random_hard.p=0.9"]))
    assert sorted(calls) == [("random_hard", 0), ("random_hard", 1)]
    assert len(changed.skipped) == 2
    calls.clear()
    run_benchmark(tiny_config(out))  # back to p=0.5: those cells are rerun again
    assert sorted(calls) == [("random_hard", 0), ("random_hard", 1)]
    # a rerun cell's TensorBoard run folder holds the new run only (one event file)
    assert len(tensorboard_runs(serial_run.run_dir / "tb")) == 4


def _same_rows(a, b) -> bool:
    return all(x["algorithm"] == y["algorithm"] and x["test_mean"] == y["test_mean"] for x, y in zip(a, b))


# ---- executors --------------------------------------------------------------------------------


def _numbers(run_dir: Path) -> dict[tuple[str, int], dict[str, list]]:
    out = {}
    for algo in ("ac", "random_hard"):
        for seed in (0, 1):
            arrays = cell_arrays(run_dir, algo, seed)
            out[(algo, seed)] = {k: arrays[k].tolist() for k in ("timesteps", "results", "test_metrics",
                                                                 "final_actions", "train_returns")}
    return out


def test_process_executor_gives_the_serial_numbers(serial_run, tmp_path):
    parallel = run_benchmark(tiny_config(tmp_path, workers=2))
    assert not parallel.failed and len(parallel.executed) == 4
    assert _numbers(parallel.run_dir) == _numbers(serial_run.run_dir)
    # each spawned worker wrote its cells' own TensorBoard run folders, the serial run's scalars
    assert tensorboard_runs(parallel.run_dir / "tb") == tensorboard_runs(serial_run.run_dir / "tb")
    for a, b in zip(parallel.rows, serial_run.rows):
        assert (a["test_mean"], a["test_iqm_low"], a["return_mean"]) == (b["test_mean"], b["test_iqm_low"],
                                                                          b["return_mean"])


def test_ray_executor_gives_the_serial_numbers(serial_run, tmp_path):
    ray_or_skip()
    result = run_benchmark(tiny_config(tmp_path, executor="ray", workers=2))
    assert not result.failed and len(result.executed) == 4
    assert _numbers(result.run_dir) == _numbers(serial_run.run_dir)


def _running_ray_tasks() -> list[int]:
    """The pids of Ray workers running one of our jobs now (Ray titles a busy worker
    ``ray::<task name>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if title.startswith(b"ray::_ray_task"):
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's workers through /proc")
def test_ray_retries_a_cell_whose_worker_is_killed(serial_run, tmp_path):
    """A Ray worker killed (SIGKILL) in the middle of a cell: Ray reruns the cell on another
    worker, the run ends with every cell finished and the serial run's numbers, and no file is
    left half-written."""
    import signal
    import threading
    import time

    ray = ray_or_skip()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {k: os.environ[k] for k in ("KD_ENV_CACHE", "HF_HUB_OFFLINE",
                                                                   "HF_DATASETS_OFFLINE") if k in os.environ}})
    killed: list[int] = []
    done = threading.Event()

    def kill_one_busy_worker() -> None:
        while not done.is_set() and not killed:
            for pid in _running_ray_tasks():
                time.sleep(0.3)  # in the middle of the cell, not at its start
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(pid)
                break
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_busy_worker, daemon=True)
    killer.start()
    try:
        result = run_benchmark(tiny_config(tmp_path, executor="ray", workers=2))
    finally:
        done.set()
        killer.join()
        ray.shutdown()
    assert killed, "no Ray worker was seen running a cell"
    assert not result.failed and len(result.executed) == 4
    assert _numbers(result.run_dir) == _numbers(serial_run.run_dir)
    assert not [p for p in result.run_dir.rglob("*") if ".tmp-" in p.name]


def test_ray_executor_without_ray_is_a_clear_error(tmp_path, monkeypatch):
    hide_ray(monkeypatch)
    with pytest.raises(ConfigError, match="pip install"):
        run_benchmark(tiny_config(tmp_path, executor="ray"))
    assert not (tmp_path / "benchmark-tiny").exists()


def test_evaluations_do_not_change_training(serial_run):
    # the same cell evaluated only at the end: its final numbers match the run evaluated after
    # every episode (evaluation uses its own env and leaves the global RNG streams alone)
    cell = build_grid(["ac"], [ENV], [0], eval_every=2, eval_episodes=1, episodes=2)[0]
    payload = benchmark.run_cell(cell)
    assert payload["arrays"]["timesteps"].tolist() == [2 * PHASES]
    reference = cell_arrays(serial_run.run_dir, "ac", 0)
    assert payload["arrays"]["results"][-1].tolist() == reference["results"][-1].tolist()
    assert payload["arrays"]["train_returns"].tolist() == reference["train_returns"].tolist()


@pytest.mark.parametrize("episodes, updates", [(1, 0), (4, 10)])
def test_sb3_budget_is_exact_in_episodes(tmp_path, episodes, updates):
    # PPO collects 4 episodes (16 steps) per rollout on QuickKD, then makes n_epochs=10 updates:
    # a budget of 1 episode stops the rollout untrained; a budget of 4 keeps its update
    cell = build_grid(["ppo"], [ENV], [0], eval_every=10, eval_episodes=1, episodes=episodes)[0]
    result = benchmark.run_cell(cell)["result"]
    assert (result["train_episodes"], result["train_steps"]) == (episodes, episodes * PHASES)
    assert result["agent_updates"] == updates
    assert result["overrun_episodes"] == (1 if episodes == 1 else 0)


def test_weights_mode_agents_run(tmp_path):
    result = benchmark.run_cell(build_grid(["sac"], [ENV], [0], eval_every=10, eval_episodes=1, episodes=3)[0])
    r = result["result"]
    assert r["settings"]["action_mode"] == "weights" and r["train_episodes"] == 3
    assert r["agent_updates"] > 0  # learning_starts = 2 episodes
    actions = result["arrays"]["final_actions"]
    assert np.all((actions >= 0) & (actions <= 1))


def test_dynamic_baselines_run_as_cells():
    expected = {"dynamic_kd": [[1, 1, 0, 0]] * PHASES,  # mask mode (its config)
                "anneal": [[p / 3, 1 - p / 3, 0, 0] for p in range(PHASES)]}  # weights mode: response -> finetune
    for algo, actions in expected.items():
        payload = benchmark.run_cell(build_grid([algo], [ENV], [0], eval_every=1, eval_episodes=1)[0])
        r = payload["result"]
        assert r["train_episodes"] == 0 and r["settings"]["action_mode"] == ("weights" if algo == "anneal" else "mask")
        np.testing.assert_allclose(payload["arrays"]["final_actions"][0], actions, atol=1e-6)
        assert 0.0 <= r["test_metric"] <= 1.0


def test_training_instances_ignore_the_agents_seed():
    import gymnasium as gym

    cell = build_grid(["random_hard"], [ENV], [3], eval_every=1, eval_episodes=1)[0]
    env = benchmark._training_instances_wrapper(gym.make(ENV), cell)
    try:
        env.reset(seed=123)
        first = env.unwrapped.np_random.bit_generator.state
        reference = gym.make(ENV)
        reference.reset(seed=3 * benchmark.TRAIN_SEED_STRIDE)
        assert first == reference.unwrapped.np_random.bit_generator.state
        reference.close()
    finally:
        env.close()
    assert min(cell.eval_seeds()) > 3 * benchmark.TRAIN_SEED_STRIDE + benchmark.TRAIN_SEED_STRIDE


# ---- configuration ------------------------------------------------------------------------------


def test_shipped_configs_are_valid_for_every_env():
    extra = ["a2c", "sac", "td3", "all", "ddpg", "random_soft", "pkd", "finetune", "fixed:1010", "dynamic_kd", "eskd",
             "two_stage", "anneal"]
    algos = list(dict.fromkeys(list(DEFAULT_ALGOS) + extra))
    envs = ["kd_env/DigitsKD-v0", ENV, "kd_env/TextKD-v0", "kd_env/DigitsKD-Instances-v0", "kd_env/DigitsKD-BetweenOracle-v0"]
    cells = build_grid(algos, envs, [0], eval_every=5, eval_episodes=2)
    assert len(cells) == len(algos) * len(envs)
    modes = {c.algo: c.settings.action_mode for c in cells}
    assert {a for a, m in modes.items() if m == "weights"} == {"ac_q", "sac", "td3", "ddpg", "random_soft", "anneal"}
    assert all(c.settings.episodes == 0 for c in cells
               if c.algo in ("random_hard", "all", "vanilla_kd", "dynamic_kd", "eskd", "two_stage", "anneal"))
    # the agents accept every shipped hyperparameter (the dry run builds each one on QuickKD)
    check_grid([c for c in cells if c.env_id == ENV], log=lambda _m: None)


def test_the_between_env_gives_every_learner_the_fifth_tests_budget_and_ac_its_selected_settings():
    import gymnasium as gym

    env = gym.make("kd_env/DigitsKD-BetweenOracle-v0")
    try:
        inner = env.unwrapped
        assert inner.instance_set.name == "digits-between" and inner.config.num_phases == 1  # one decision
        assert inner.config.knowledge == ("finetune", "response", "feature", "relation", "uncertainty_kd")
        assert env.action_space.n == 5
    finally:
        env.close()
    learners = ["ac", "ppo", "dqn", "ac_q"]
    between = {c.algo: c.settings for c in build_grid(learners, ["kd_env/DigitsKD-BetweenOracle-v0"], [0], 600, 2)}
    instances = {c.algo: c.settings for c in build_grid(learners, ["kd_env/DigitsKD-Instances-v0"], [0], 600, 2)}
    assert {a: s.episodes for a, s in between.items()} == dict.fromkeys(learners, 1200)  # equal budgets
    for algo in learners:  # the settings of the fifth test's runs: Instances-v0's, with 1,200 episodes
        assert between[algo].hyperparams == instances[algo].hyperparams, algo


def test_overrides_and_values():
    assert parse_value("1e-3") == pytest.approx(1e-3)
    assert parse_value("3") == 3 and parse_value("true") is True and parse_value("[64, 64]") == [64, 64]
    assert parse_value("dev_metric_delta") == "dev_metric_delta"
    assert parse_override("ppo.learning_rate=1e-3") == ("ppo", ["hyperparams", "learning_rate"], 1e-3)
    assert parse_override("ac.episodes=30") == ("ac", ["episodes"], 30)
    assert parse_override("sac.env_kwargs.reward=final_metric") == ("sac", ["env_kwargs", "reward"], "final_metric")
    cells = build_grid(["ppo", "ac"], [ENV], [0, 1], 2, 1, overrides=["ppo.learning_rate=1e-3", "ac.episodes=5",
                                                                         "ac.env_kwargs.reward=final_metric"])
    ppo = cells[0].settings
    assert ppo.hyperparams["learning_rate"] == 1e-3 and ppo.hyperparams["n_epochs"] == 10  # merged over YAML
    ac = cells[2].settings
    assert ac.episodes == 5 and ac.env_kwargs == {"reward": "final_metric"}
    assert cells[0].fingerprint() == build_grid(["ppo"], [ENV], [0], 2, 1, ["ppo.learning_rate=0.001"])[0].fingerprint()
    assert cells[0].fingerprint() != cells[1].fingerprint()  # another seed


def write_config(folder: Path, algo: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{algo}.yml").write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


@pytest.mark.parametrize("algo, text, message", [
    ("ppo", "default:\n  episodez: 3\n", r"unknown key\(s\) \['episodez'\]"),
    ("ppo", "default:\n  episodes: ten\n", "episodes must be an integer"),
    ("ppo", "default:\n  action_mode: soft\n", "action_mode must be one of"),
    ("ppo", "default:\n  hyperparams:\n    n_steps: ten\n", "n_steps='ten' has type str, expected int"),
    ("ppo", "default:\n  hyperparams:\n    learning_rate: 1e-3\n", r"write 1\.0e-3"),
    ("ppo", "default:\n  hyperparams:\n    learning_rat: 0.1\n", r"unknown hyperparameter\(s\) \['learning_rat'\]"),
    ("ac", "default:\n  hyperparams:\n    hidden_sizes: 64\n", "hidden_sizes=64 has type int, expected list"),
    ("ac", "default:\n  hyperparams:\n    seed: 3\n", "set by the grid"),
    ("ac", "default:\n  hyperparams: [1, 2]\n", "hyperparams must be a mapping"),
    ("ac", "kd_env/QuickKD-v0:\n  episodes: 3\n", "needs a 'default' entry"),
    ("ac", "- 1\n- 2\n", "must hold a mapping"),
    ("ac", "default: {episodes: [}\n", "not valid YAML"),
    ("ac", "default:\n  env_kwargs:\n    action_mode: mask\n", "top level"),
])
def test_bad_config_files_raise_before_anything_runs(tmp_path, algo, text, message):
    configs = write_config(tmp_path / "configs", algo, text)
    with pytest.raises(ConfigError, match=message):
        run_benchmark(tiny_config(tmp_path, algos=[algo], config_dir=str(configs)))
    assert not (tmp_path / "benchmark-tiny").exists()


@pytest.mark.parametrize("changes, message", [
    (dict(algos=["ac", "nope"]), "unknown algorithm"),
    (dict(envs=["kd_env/NoSuchKD-v0"]), "unknown env id"),
    (dict(seeds=[0, 0]), "must be distinct"),
    (dict(seeds=[-1]), "seeds must be"),
    (dict(eval_every=0), "eval_every"),
    (dict(episodes=0), "episodes must be"),
    (dict(overrides=["ppo.learning_rate=0.1"]), "not in the grid"),
    (dict(overrides=["ac.lr"]), "ALGO.KEY=VALUE"),
    (dict(overrides=["ac.lr=fast"]), "lr='fast' has type str"),
    (dict(overrides=["ac.episodes=-2"]), "episodes must be an integer >= 0"),
    (dict(algos=["sac"], overrides=["sac.action_mode=mask"]), "cannot build the agent"),
    (dict(overrides=["ac.env_kwargs.total_stepz=3"]), "gym.make"),
    (dict(workers=0), "workers"),
    (dict(name="a/b"), "name"),
    (dict(executor="dask"), "executor"),
])
def test_bad_grid_inputs_raise_before_any_cell_runs(tmp_path, monkeypatch, changes, message):
    monkeypatch.setattr(bench_runner, "run_cell", lambda *a, **k: pytest.fail("a cell ran"))
    with pytest.raises(ConfigError, match=message):
        run_benchmark(tiny_config(tmp_path, **changes))
    assert not any((tmp_path / "benchmark-tiny").glob("*/*/result.json"))


def test_cli_reports_config_errors(tmp_path, capsys):
    code = benchmark.main(["--name", "x", "--out", str(tmp_path), "--algos", "ac", "--set", "ac.lr=fast"])
    assert code == 2
    assert "lr='fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--seeds", "two"])
    assert benchmark.parse_args(["--seeds", "3"]).seeds == [3]  # one seed, as in glue_ac (was 0, 1, 2)
    assert benchmark.parse_args(["--seeds", "0-2"]).seeds == [0, 1, 2]
    assert benchmark.parse_args(["--seeds", "4,7"]).seeds == [4, 7]
    assert benchmark.parse_args([]).seeds == [0, 1, 2, 3, 4]  # the default grid is unchanged


def test_summary_pairs_every_algorithm_with_the_baseline_by_seed():
    from experiments.benchmark import _paired_with_baseline

    class FakeCell:
        def __init__(self, seed):
            self.seed = seed

    mine = [FakeCell(s) for s in (0, 1, 2)]
    base = [FakeCell(s) for s in (0, 1, 2)]
    payloads = {c: {"result": {"test_metric": v}} for c, v in zip(mine, (0.80, 0.70, 0.90))}
    payloads.update({c: {"result": {"test_metric": v}} for c, v in zip(base, (0.75, 0.72, 0.80))})
    config = BenchmarkConfig(baseline="vanilla_kd")
    row = _paired_with_baseline("ac", mine, base, payloads, config)
    diffs = np.array([0.05, -0.02, 0.10])
    assert row["diff_vs_baseline"] == pytest.approx(diffs.mean())
    # the one paired comparison of every report: experiments.stats.compare over the training seeds
    from experiments.stats import Score, compare

    d = compare([Score("a", "x", s, None, v) for s, v in enumerate(diffs)]
                + [Score("b", "x", s, None, 0.0) for s in range(3)], "a", "b")
    assert (row["diff_low"], row["diff_high"]) == pytest.approx((d.low, d.high))
    assert diffs.min() - 1e-12 <= row["diff_low"] < diffs.mean() < row["diff_high"] <= diffs.max() + 1e-12
    assert row["diff_wins"] == 2
    assert math.isnan(_paired_with_baseline("vanilla_kd", base, base, payloads, config)["diff_vs_baseline"])
    assert math.isnan(_paired_with_baseline("ac", mine, None, payloads, config)["diff_vs_baseline"])


def test_summary_breaks_instance_envs_down_per_held_out_instance():
    from experiments.benchmark import _per_instance_markdown

    def payload(values):
        return {"arrays": {"eval_instances": np.asarray(["a", "b", "a", "b"]),
                           "test_metrics": np.asarray([[0.0, 0.0, 0.0, 0.0], values])}}

    rows = [{"env": "E", "algorithm": "x", "test_iqm": 0.5}, {"env": "E", "algorithm": "y", "test_iqm": 0.9}]
    lines = _per_instance_markdown(rows, {"E": {"x": [payload([0.1, 0.2, 0.3, 0.4])],
                                                "y": [payload([0.5, 0.6, 0.7, 0.8]), payload([0.5, 0.6, 0.7, 0.8])]}})
    table = "\n".join(lines)
    assert "| algorithm | a | b |" in table
    assert table.index("| y | 0.600 | 0.700 |") < table.index("| x | 0.200 | 0.300 |")  # best IQM first
    plain = {"arrays": {"eval_instances": np.asarray(["None", "None"]), "test_metrics": np.asarray([[0.5, 0.6]])}}
    assert _per_instance_markdown(rows, {"E": {"x": [plain]}}) == []


def test_the_summary_says_what_a_learner_played_on_each_situation():
    from experiments.benchmark.tables import _selection_per_instance_markdown

    def payload(masks):  # one decision per episode, 4 episodes: instances a, b, a, b
        return {"result": {"knowledge": ["finetune", "response"]},
                "arrays": {"eval_instances": np.asarray(["a", "b", "a", "b"]),
                           "final_actions": np.asarray(masks, dtype=float).reshape(4, 1, 2)}}

    rows = [{"env": "E", "algorithm": "ac", "train_episodes": 8}, {"env": "E", "algorithm": "fixed:10", "train_episodes": 0}]
    runs = {"E": {"ac": [payload([[1, 0], [0, 1], [1, 0], [0, 1]]), payload([[1, 1], [0, 1], [1, 0], [0, 1]])],
                  "fixed:10": [payload([[1, 0]] * 4)]}}
    table = "\n".join(_selection_per_instance_markdown(rows, runs))
    assert "`ac`" in table and "fixed:10" not in table  # learners only
    assert "| instance | episodes | finetune | response | masks played |" in table
    assert "| a | 4 | 1.00 | 0.25 | `10` x3, `11` x1 |" in table
    assert "| b | 4 | 0.00 | 1.00 | `01` x4 |" in table
    many = {"E": {"ac": [{"result": {"knowledge": ["finetune", "response"]},
                          "arrays": {"eval_instances": np.asarray(["a", "a"]),
                                     "final_actions": np.asarray([[[1, 0], [0, 1]], [[1, 0], [1, 1]]], dtype=float)}}]}}
    table = "\n".join(_selection_per_instance_markdown(rows, many))  # several phases: means, no mask column
    assert "| a | 2 | 0.75 | 0.50 |" in table and "masks played" not in table


def test_summary_regenerates_from_the_cell_files_alone(serial_run, tmp_path):
    """``python -m experiments.benchmark.summary RUN_DIR`` rewrites the same summary files from
    benchmark.json and the cells' result.json / evaluations.npz, without running anything."""
    import shutil

    from experiments.benchmark.summary import main as summary_main

    copy = tmp_path / serial_run.run_dir.name
    shutil.copytree(serial_run.run_dir, copy)
    names = ("summary.md", "summary.csv", "summary.json", "runs.csv")
    written = {name: (serial_run.run_dir / name).read_text() for name in names}
    for name in names:
        (copy / name).unlink()
    assert summary_main([str(copy), "--bootstrap-reps", "200", "--no-plots"]) == 0
    assert {name: (copy / name).read_text() for name in names} == written
    (copy / "benchmark.json").unlink()
    assert summary_main([str(copy)]) == 2  # not a run folder: a clear error, no traceback



@pytest.mark.parametrize("module", ["experiments.benchmark", "experiments.benchmark.summary"])
def test_the_package_modules_run_with_python_m_without_warnings(module):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-W", "error", "-m", module, "--help"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0 and "usage: python -m " + module in done.stdout, done.stderr


def test_oracle_share_from_cell_files_by_hand(tmp_path):
    from experiments.benchmark.oracle import main, oracle_shares

    # two held-out instances a, b; 2 evaluation episodes each; final evaluation is the last row
    finals = {"vanilla_kd": {0: (0.5, 0.5), 1: (0.6, 0.4)}, "fixed_1000": {0: (0.9, 0.1), 1: (0.8, 0.2)},
              "fixed_0100": {0: (0.4, 0.7), 1: (0.5, 0.8)}, "ac": {0: (0.6, 0.6), 1: (0.7, 0.5)}}
    for algo, by_seed in finals.items():
        for seed, (a, b) in by_seed.items():
            cell = tmp_path / algo / f"kd_env__X-v0__seed{seed}"
            cell.mkdir(parents=True)
            np.savez(cell / "evaluations.npz", test_metrics=np.array([[0.0] * 4, [a, b, a, b]]),
                     eval_instances=np.array(["a", "b", "a", "b"]), eval_seeds=np.array([7, 8]) + seed)
    out = oracle_shares(tmp_path, {"a": "fixed:1000", "b": "fixed:0100"}, ["ac"], reps=200)
    # oracle: seed 0 (0.9 + 0.7) / 2 = 0.8, seed 1 (0.8 + 0.8) / 2 = 0.8; baseline 0.5 both: gain 0.3
    assert out["oracle_mean"] == pytest.approx(0.8)
    assert out["oracle_diff"]["mean"] == pytest.approx(0.3)
    # ac: 0.6 both seeds, +0.1 each: a third of the oracle's gain
    assert out["algos"]["ac"]["share"] == pytest.approx(1 / 3)
    assert out["algos"]["ac"]["share_low"] == pytest.approx(1 / 3) == out["algos"]["ac"]["share_high"]
    with pytest.raises(ValueError, match=r"no algorithm for held-out instance\(s\) \['b'\]"):
        oracle_shares(tmp_path, {"a": "fixed:1000"}, ["ac"])
    assert main([str(tmp_path), "--choice", "a=fixed:1000,b=nope"]) == 2
    # an algorithm from another run folder, scored on the same episodes: ALGO@RUN_DIR
    other = tmp_path / "other"
    for seed, (a, b) in {0: (0.9, 0.7), 1: (0.8, 0.8)}.items():  # the oracle's scores: all of the gain
        cell = other / "ac" / f"kd_env__X-v0__seed{seed}"
        cell.mkdir(parents=True)
        np.savez(cell / "evaluations.npz", test_metrics=np.array([[a, b, a, b]]),
                 eval_instances=np.array(["a", "b", "a", "b"]), eval_seeds=np.array([7, 8]) + seed)
    both = oracle_shares(tmp_path, {"a": "fixed:1000", "b": "fixed:0100"}, ["ac", f"ac@{other}"], reps=200)
    assert both["algos"]["ac"]["share"] == pytest.approx(1 / 3)
    assert both["algos"][f"ac@{other}"]["share"] == pytest.approx(1.0)
    vs_ac = oracle_shares(tmp_path, {"a": "fixed:1000", "b": "fixed:0100"}, [f"ac@{other}"], baseline="ac", reps=200)
    assert vs_ac["algos"][f"ac@{other}"]["diff"]["mean"] == pytest.approx(0.2)
    np.savez(other / "ac" / "kd_env__X-v0__seed1" / "evaluations.npz", test_metrics=np.array([[0.8, 0.8, 0.8, 0.8]]),
             eval_instances=np.array(["a", "b", "a", "b"]), eval_seeds=np.array([70, 80]))
    with pytest.raises(ValueError, match=r"seed 1 was scored on other evaluation episodes"):
        oracle_shares(tmp_path, {"a": "fixed:1000", "b": "fixed:0100"}, [f"ac@{other}"], reps=200)


# ---- selection runs (--eval-split dev) ------------------------------------------------------------

if "tiny-bench" not in kd_env.instance_set_names():
    kd_env.register_instance_set(InstanceSet(
        name="tiny-bench", base="quick",
        instances=[Instance("clean", {}), Instance("few-labels", {"label_fraction": 0.1}),
                   Instance("noisy", {"label_noise": 0.4})],
        held_out=["noisy"], description="three quick instances for the benchmark's split tests"))

TINY_INSTANCES = ["vanilla_kd.env_kwargs.config=quick", "vanilla_kd.env_kwargs.instances=tiny-bench"]


def test_dev_split_scores_the_train_instances_dev_split_on_selection_seeds():
    import gymnasium as gym

    from agents import make_agent, run_episode

    env_id = "kd_env/DigitsKD-Instances-v0"
    dev_cell, = build_grid(["vanilla_kd"], [env_id], [1], eval_every=1, eval_episodes=2, overrides=TINY_INSTANCES,
                           eval_split="dev")
    test_cell, = build_grid(["vanilla_kd"], [env_id], [1], eval_every=1, eval_episodes=2, overrides=TINY_INSTANCES)
    assert "eval_split" not in test_cell.describe()  # runs made before the option keep their fingerprints
    assert dev_cell.describe()["eval_split"] == "dev" and dev_cell.fingerprint() != test_cell.fingerprint()
    assert set(dev_cell.eval_seeds()).isdisjoint(test_cell.eval_seeds())
    held_cell, = build_grid(["vanilla_kd"], [env_id], [1], eval_every=1, eval_episodes=2, overrides=TINY_INSTANCES,
                            eval_split="held-out-dev")
    assert held_cell.eval_seeds() == dev_cell.eval_seeds()
    dev, test, held = (benchmark.run_cell(c) for c in (dev_cell, test_cell, held_cell))
    assert dev["result"]["eval_split"] == "dev" and test["result"]["eval_split"] == "test"
    assert list(dev["arrays"]["eval_instances"]) == ["clean", "few-labels"] * 2
    assert list(test["arrays"]["eval_instances"]) == ["noisy"] * 2
    assert list(held["arrays"]["eval_instances"]) == ["noisy"] * 2
    # the recorded score is the dev metric of that student, recomputed here by hand
    env = gym.make(env_id, config="quick", instances="tiny-bench")
    try:
        seed, instance = dev_cell.eval_seeds()[1], "few-labels"
        run_episode(env, make_agent("vanilla_kd", env), deterministic=True, seed=seed, options={"instance": instance})
        by_hand = env.unwrapped.distiller.evaluate("dev")["main"]
        run_episode(env, make_agent("vanilla_kd", env), deterministic=True, seed=seed, options={"instance": "noisy"})
        held_by_hand = env.unwrapped.distiller.evaluate("dev")["main"]
    finally:
        env.close()
    assert dev["arrays"]["test_metrics"][-1][3] == pytest.approx(by_hand)
    assert held["arrays"]["test_metrics"][-1][1] == pytest.approx(held_by_hand)
    with pytest.raises(ConfigError, match=r"eval_split must be one of \['test', 'dev', 'held-out-dev'\], got 'val'"):
        build_grid(["vanilla_kd"], [env_id], [1], eval_every=1, eval_episodes=2, eval_split="val")


def test_selection_runs_say_so_in_their_summary(tmp_path, caplog):
    with caplog.at_level("INFO", logger="experiments"):  # the progress lines are logged (INFO; -q hides them)
        result = run_benchmark(tiny_config(tmp_path, algos=["vanilla_kd"], envs=["kd_env/DigitsKD-Instances-v0"],
                                           seeds=[0], overrides=TINY_INSTANCES, eval_split="dev", verbose=True))
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[1/1]")]
    assert len(progress) == 1 and ": dev (selection) accuracy " in progress[0], progress  # never "test" here
    text = (result.run_dir / "summary.md").read_text(encoding="utf-8")
    assert "Selection run (`--eval-split dev`)" in text
    assert "1 evaluation seed(s) per run, each on every train instance" in text  # what eval_episodes counts
    assert "dev metric per train instance" in text and "held-out instance" not in text
    assert json.loads((result.run_dir / "benchmark.json").read_text())["eval_split"] == "dev"
    with pytest.raises(SystemExit) as exc:  # argparse names the valid choices
        benchmark.parse_args(["--eval-split", "val"])
    assert exc.value.code == 2


def test_runs_with_different_knowledge_lists_in_one_env_summarise_and_plot(tmp_path):
    k5 = "[finetune,response,feature,relation,uncertainty_kd]"
    result = run_benchmark(tiny_config(tmp_path, algos=["vanilla_kd", "fixed:00001"], seeds=[0], plots=True,
                                       overrides=[f"fixed:00001.env_kwargs.knowledge={k5}"]))
    assert not result.failed and len(result.rows) == 2
    plots = result.run_dir / "plots"
    assert (plots / "kd_env__QuickKD-v0-selection.png").stat().st_size > 0
    assert (plots / "kd_env__QuickKD-v0-selection-fixed_00001.png").stat().st_size > 0


def test_the_selection_bar_legend_sits_above_every_bar(tmp_path, monkeypatch):
    """Bars reach 1.0 (a type always selected); the legend must not cover them or the 1.0 tick."""
    from experiments import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    knowledge = ["finetune", "response", "feature", "relation", "uncertainty_kd"]
    report.plot_selection_bars({name: np.ones(5) for name in ("ac", "ppo", "dqn")}, knowledge,
                               tmp_path / "bars.png", "selection")
    fig = figures[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    box = ax.get_legend().get_window_extent().transformed(ax.transData.inverted())
    assert box.y0 > 1.0  # in data units: above the tallest bar
    assert 1.0 in list(ax.get_yticks()) and ax.get_ylim()[1] > box.y1 - 1e-9


# ---- batched cells ------------------------------------------------------------------------------


def test_batched_cells_score_what_single_env_cells_score():
    """The seeds of one setting train together on the batched env (one copy each); every cell's
    numbers are those of the same cell on single envs, up to float rounding in the returns."""
    cells = build_grid(["ac"], [ENV], [0, 1, 2], eval_every=1, eval_episodes=1, episodes=2)
    assert all(benchmark.cell.batched(c) for c in cells)
    together = benchmark.cell.run_cells(cells)
    for cell, payload in zip(cells, together):
        seed_everything = benchmark.seed_everything
        seed_everything(cell.seed)
        alone = benchmark.cell._run_cell(cell, 1)  # the single-env path
        a, b = payload["arrays"], alone["arrays"]
        assert a["test_metrics"].tolist() == b["test_metrics"].tolist()
        assert a["final_actions"].tolist() == b["final_actions"].tolist()
        np.testing.assert_allclose(a["train_returns"], b["train_returns"], atol=1e-5)
        np.testing.assert_allclose(a["results"], b["results"], atol=1e-5)


def test_units_of_work_group_batched_seeds_and_leave_the_rest_alone():
    cells = build_grid(["ac", "ppo"], [ENV], [0, 1, 2], eval_every=1, eval_episodes=1, episodes=2)
    units = bench_runner.units_of_work(cells, workers=2)
    ac = sorted((sorted(c.seed for c in u) for u in units if u[0].algo == "ac"))
    assert ac == [[0, 2], [1]]  # one group, split over the two workers
    assert sorted(len(u) for u in units if u[0].algo == "ppo") == [1, 1, 1]  # SB3: one cell at a time


def test_cells_save_their_trained_agent_and_it_replays_the_final_evaluation(serial_run):
    import gymnasium as gym

    from agents import load_agent
    from experiments.benchmark.cell import AGENT_DIR

    run_dir = serial_run.run_dir
    for seed in (0, 1):
        cell = run_dir / "ac" / f"kd_env__QuickKD-v0__seed{seed}"
        assert json.loads((cell / "result.json").read_text())["agent_checkpoint"] == AGENT_DIR
        arrays = cell_arrays(run_dir, "ac", seed)
        env = gym.make(ENV, action_mode="mask")
        agent = load_agent(cell / AGENT_DIR, env)
        # the final evaluation's episode, replayed by the loaded agent: the same actions
        obs, _ = env.reset(seed=int(arrays["eval_seeds"][0]))
        actions, done = [], False
        while not done:
            a = np.asarray(agent.act(obs, deterministic=True))
            actions.append(a)
            obs, _, term, trunc, _ = env.step(a)
            done = term or trunc
        np.testing.assert_array_equal(np.asarray(actions, np.float64).reshape(-1),
                                      np.asarray(arrays["final_actions"], np.float64).reshape(-1)[:len(actions) * 4])
