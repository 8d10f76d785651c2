"""Plug-ins as a new user writes them: one file registers an instance set, a knowledge type and
an agent; the benchmark runs them from ``--plugin FILE`` in spawned workers and on Ray, beside a
``schedule:<file>`` agent configured with ``--set``; every executor loads the same files."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from experiments import cli
from experiments.benchmark import BenchmarkConfig, ConfigError, build_grid, run_benchmark
from experiments.executors import execute
from tests.helpers import PYTHON, ray_or_skip, subprocess_env

#: the plug-in: every name is this file's own, so that it can be loaded beside the built-ins
PLUGIN = textwrap.dedent('''
    """A user's plug-in: an instance set, a knowledge type and an agent."""
    import os
    from pathlib import Path

    import torch.nn.functional as F

    from agents import register_agent
    from agents.baselines import FixedAgent
    from kd_env import Instance, InstanceSet, register_instance_set, register_knowledge

    #: every process that trains a student with the knowledge type leaves its pid here
    CALLS = Path(__file__).with_name("calls")

    register_instance_set(InstanceSet(
        name="plugin-two", base="quick", instances=[Instance("clean", {}), Instance("noisy", {"label_noise": 0.4})],
        held_out=["noisy"], description="two quick situations from a plug-in"), overwrite=True)


    @register_knowledge("plugin_soft_labels", needs=("logits",), overwrite=True)
    def plugin_soft_labels(student, teacher, batch):
        CALLS.mkdir(exist_ok=True)
        (CALLS / str(os.getpid())).touch()
        return F.kl_div(F.log_softmax(student.logits, -1), F.log_softmax(teacher.logits.float(), -1),
                        log_target=True, reduction="batchmean")


    @register_agent("plugin_last_only", description="only the last knowledge type", overwrite=True)
    def plugin_last_only(env, seed=None):
        k = env.action_space.shape[0]
        return FixedAgent(env, [0.0] * (k - 1) + [1.0], name="plugin_last_only", seed=seed)
''')

KNOWLEDGE = "[finetune,response,plugin_soft_labels]"
ENV = "kd_env/DigitsKD-Instances-v0"


def _files(tmp_path: Path) -> tuple[Path, str]:
    """The plug-in file and a ``schedule:<file>`` agent whose file sits in a sub-folder (its name
    holds a '/' and dots, as ``--set`` must handle)."""
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN, encoding="utf-8")
    plan = tmp_path / "my.plans" / "plan.v1.yaml"
    plan.parent.mkdir()
    plan.write_text("- [1, 0, 1]\n- [0, 1, 1]\n", encoding="utf-8")
    return plugin, f"schedule:{plan}"


def _overrides(algos: list[str]) -> list[str]:
    return [f"{a}.env_kwargs.{k}" for a in algos
            for k in ("config=quick", "instances=plugin-two", f"knowledge={KNOWLEDGE}")]


def _check_run(run_dir: Path, algos: list[str], plugin: Path) -> set[int]:
    runs = (run_dir / "runs.csv").read_text(encoding="utf-8")
    for algo in algos:
        assert algo in runs
    results = [json.loads(p.read_text(encoding="utf-8")) for p in run_dir.glob("*/*/result.json")]
    assert len(results) == len(algos)
    for r in results:
        assert r["settings"]["env_kwargs"]["instances"] == "plugin-two"
    calls = {int(p.name) for p in (plugin.parent / "calls").iterdir()}
    assert calls, "the plug-in's knowledge type never ran"
    return calls


def test_the_benchmark_runs_a_plugin_in_two_spawned_workers(tmp_path):
    plugin, schedule = _files(tmp_path)
    algos = ["plugin_last_only", schedule]
    args = ["--plugin", str(plugin), "--workers", "2", "--name", "plug", "--out", str(tmp_path / "runs"),
            "--algos", ",".join(algos), "--envs", ENV, "--seeds", "0", "--eval-episodes", "1",
            "--baseline", "plugin_last_only", "--no-plots", "--bootstrap-reps", "50"]
    for override in _overrides(algos):
        args += ["--set", override]
    proc = subprocess.Popen([PYTHON, "-m", "experiments.benchmark", *args], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "[2/2]" in err and "FAILED" not in err  # progress lines: logging, on stderr
    calls = _check_run(tmp_path / "runs" / "benchmark-plug", algos, plugin)
    assert calls - {proc.pid}  # students trained with it in the workers, which loaded the plug-in


def test_the_ray_executor_loads_the_plugin_in_its_workers(tmp_path, monkeypatch):
    ray = ray_or_skip()
    plugin, schedule = _files(tmp_path)
    monkeypatch.setattr(cli, "_LOADED_PLUGINS", {})  # this test's plug-in is not handed to later tests' workers
    monkeypatch.chdir(tmp_path)  # the paths travel resolved: a Ray worker's folder is not ours
    algos = ["plugin_last_only", schedule]
    config = BenchmarkConfig(name="plug-ray", algos=algos, envs=[ENV], seeds=[0], eval_every=100, eval_episodes=1,
                             overrides=_overrides(algos), workers=2, executor="ray", out=str(tmp_path / "runs"),
                             plots=False, bootstrap_reps=50, verbose=False, baseline="plugin_last_only",
                             plugins=[plugin.name])
    try:
        result = run_benchmark(config)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert not result.failed and len(result.executed) == 2, result.failed
    assert _check_run(result.run_dir, algos, plugin) - {os.getpid()}


def test_executors_hand_the_loaded_plugins_to_their_workers(tmp_path, monkeypatch):
    """A wrapper that loads a plug-in itself (``load_plugins``) and runs jobs on spawned workers:
    they load it too, before a job runs."""
    plugin = tmp_path / "counter_plugin.py"
    plugin.write_text("import os\nLOADED_IN = os.getpid()\n", encoding="utf-8")
    monkeypatch.setattr(cli, "_LOADED_PLUGINS", {})
    cli.load_plugins([str(plugin)])
    assert cli.loaded_plugins() == [str(plugin.resolve())]
    out: dict[int, tuple] = {}
    execute([1, 2], _plugin_pid, lambda job, payload, error: out.__setitem__(job, (payload, error)), workers=2)
    assert all(error is None for _, error in out.values()), out
    assert {payload for payload, _ in out.values()} - {os.getpid()}, out


def _plugin_pid(job: int) -> int:
    """The pid of the process in which the plug-in module (loaded under its file's module name)
    was imported: a worker's own."""
    import sys

    module = next(m for name, m in sys.modules.items() if name.startswith("kd_env_plugin_counter_plugin_"))
    return module.LOADED_IN


def test_a_plugin_gets_the_same_module_name_in_every_process_and_loads_once(tmp_path, monkeypatch):
    plugin = tmp_path / "same.py"
    plugin.write_text("COUNT = globals().get('COUNT', 0) + 1\n", encoding="utf-8")
    monkeypatch.setattr(cli, "_LOADED_PLUGINS", {})
    first = cli.load_plugins([str(plugin)])
    monkeypatch.chdir(tmp_path)
    again = cli.load_plugins(["same.py"])  # relative, from elsewhere: the same file, not loaded twice
    assert first == again == [str(plugin.resolve())] and cli.loaded_plugins() == first
    assert cli._module_name(plugin.resolve()) == cli._module_name(plugin.resolve())
    with pytest.raises(FileNotFoundError, match="is not a .py file"):
        cli.load_plugins([str(tmp_path / "missing.py")])


def test_schedule_and_plugin_agents_need_no_yaml_and_take_set_overrides(tmp_path, monkeypatch):
    plugin, schedule = _files(tmp_path)
    monkeypatch.setattr(cli, "_LOADED_PLUGINS", {})
    cli.load_plugins([str(plugin)])
    cells = build_grid(["plugin_last_only", schedule], ["kd_env/QuickKD-v0"], [0], 1, 1,
                       overrides=[f"{schedule}.env_kwargs.reward=dev_metric_delta", "plugin_last_only.episodes=0"])
    by_algo = {c.algo: c.settings for c in cells}
    assert by_algo[schedule].env_kwargs == {"reward": "dev_metric_delta"} and by_algo[schedule].episodes == 0
    assert by_algo["plugin_last_only"].action_mode == "mask" and by_algo["plugin_last_only"].episodes == 0
    with pytest.raises(ConfigError, match="unknown algorithm"):
        build_grid(["no_such_agent"], ["kd_env/QuickKD-v0"], [0], 1, 1)


def test_a_missing_plugin_file_is_a_config_error(tmp_path):
    config = BenchmarkConfig(name="x", algos=["random_hard"], envs=["kd_env/QuickKD-v0"], seeds=[0], workers=1,
                             out=str(tmp_path), plugins=[str(tmp_path / "nope.py")], verbose=False)
    with pytest.raises(ConfigError, match="nope.py' is not a .py file"):
        run_benchmark(config)
    assert not (tmp_path / "benchmark-x").exists()
