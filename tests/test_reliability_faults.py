"""Reliability, faults and untrusted files.

* An injected non-finite loss in some phases while the ``ac`` selector learns: crashed episodes
  end with the crash penalty, the student stays finite, learning goes on, and the main job
  (``experiments.glue_ac`` with a ``--plugin`` file) records the crash in its results.
* Result and checkpoint writes are atomic: a failure at the rename (or before it) leaves the old
  file intact and no partial file behind.
* Untrusted files: a crafted pickle as the teacher checkpoint and a YAML config with a Python tag
  are refused and never run their payload; Hugging Face models load with trust_remote_code=False.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from tests.helpers import read_json

import kd_env  # noqa: F401 - registers the env ids
from agents import load_agent, make_agent
from experiments import glue_ac
from experiments.cli import load_plugins
from kd_env import DistillConfig, get_preset
from kd_env.build import build_distiller
from kd_env.io import atomic_write_bytes, atomic_write_json, atomic_write_text

QUICK = "kd_env/QuickKD-v0"



# ---- injected non-finite losses --------------------------------------------------------------------

#: a plug-in knowledge: the response loss, except that every PERIOD-th optimizer step in which it is
#: trained (selected with weight > 0) gives NaN.  With soft weights it is trained in every step of a
#: 4 x 10-step episode, so episodes alternate: 1-40 fine, 41-60 crash at step 20, 61-100 fine, ...
FLAKY_PLUGIN = '''
import torch
import torch.nn.functional as F

from kd_env import register_knowledge

PERIOD = 60
STATE = {"trained_steps": 0, "nans": 0}


@register_knowledge("flaky_response", needs=("logits",), overwrite=True)
def flaky_response(student, teacher, batch):
    loss = F.kl_div(F.log_softmax(student.logits, -1), F.log_softmax(teacher.logits.float(), -1),
                    log_target=True, reduction="batchmean")
    if torch.is_grad_enabled():  # a selected term, in a training step
        STATE["trained_steps"] += 1
        if STATE["trained_steps"] % PERIOD == 0:
            STATE["nans"] += 1
            return loss * float("nan")
    return loss
'''
FLAKY_KNOWLEDGE = ["finetune", "response", "flaky_response"]


def _plugin(tmp_path: Path):
    path = tmp_path / "flaky_plugin.py"
    path.write_text(FLAKY_PLUGIN, encoding="utf-8")
    load_plugins([str(path)])
    import sys

    module = next(m for name, m in sys.modules.items() if name.startswith("kd_env_plugin_")
                  and getattr(m, "__file__", None) == str(path))
    return path, module


class StepRecorder(gym.Wrapper):
    """Records, per step: the reward, the ends, the crash flag and whether the student is finite."""

    def __init__(self, env):
        super().__init__(env)
        self.steps: list[dict] = []

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        d = self.env.unwrapped.distiller
        self.steps.append({"reward": reward, "terminated": terminated, "crashed": info["crashed"],
                           "finite": d.student_is_finite(), "obs_ok": self.observation_space.contains(obs),
                           "phase": info["phase"]})
        return obs, reward, terminated, truncated, info


def test_injected_nan_phases_end_episodes_with_the_penalty_and_learning_goes_on(tmp_path):
    _, plugin = _plugin(tmp_path)
    env = StepRecorder(gym.make(QUICK, knowledge=tuple(FLAKY_KNOWLEDGE), action_mode="weights", crash_penalty=-2.0))
    agent = make_agent("ac", env, seed=3)
    agent.learn(env, total_episodes=6)
    assert plugin.STATE["nans"] == 3  # the plug-in did inject, three times
    episodes, current = [], []
    for s in env.steps:
        current.append(s)
        if s["terminated"]:
            episodes.append(current)
            current = []
    assert len(episodes) == 6 and current == []
    assert len(agent.episode_log) == 6 and agent.episodes_done == 6  # learning went on after each crash
    crashed = [e for e in episodes if e[-1]["crashed"]]
    assert [len(e) for e in episodes] == [4, 2, 4, 2, 4, 2]  # phase 2 of every other episode crashed
    assert len(crashed) == 3
    for e in episodes:
        assert all(s["finite"] and s["obs_ok"] for s in e)  # the student stays finite, observations valid
        assert not any(s["crashed"] for s in e[:-1])  # a crash always ends its episode
    for e in crashed:
        assert e[-1]["reward"] == -2.0
    for record, e in zip(agent.episode_log, episodes):
        assert record["length"] == len(e)
        assert record["return"] == pytest.approx(sum(s["reward"] for s in e))
    for p in [*agent.actor.parameters(), *agent.critic.parameters()]:
        assert torch.isfinite(p).all()  # the crash penalty did not poison the agent
    assert math.isfinite(agent.episode_log[-1]["critic_loss"])
    env.close()


def test_main_job_records_the_crash_of_a_unit(tmp_path, capsys):
    plugin_path = tmp_path / "plugin" / "flaky.py"
    plugin_path.parent.mkdir()
    plugin_path.write_text(FLAKY_PLUGIN, encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(f"distill: {{knowledge: {json.dumps(FLAKY_KNOWLEDGE)}}}\n", encoding="utf-8")
    out = tmp_path / "runs"
    code = glue_ac.main(["--preset", "quick", "--config", str(config), "--plugin", str(plugin_path),
                         "--methods", "selector,vanilla_kd,all", "--seeds", "0,1", "--episodes", "3",
                         "--out", str(out), "--name", "flaky"])
    assert code == 0
    run = out / "flaky"
    summary = read_json(run / "results.json")
    rows = {(r["method"], r["seed"]): r for r in summary["rows"]}
    assert sorted(rows) == [(m, s) for m in ("all", "selector", "vanilla_kd") for s in (0, 1)]
    # selector training: episodes of 40, 20 (crash) and 40 trained steps; then the units in order:
    # selector seed 0 crashes at trained step 120, seed 1 not; vanilla_kd never trains the flaky term;
    # all (every term) crashes at 180, not in seed 1
    crashed = {key for key, r in rows.items() if r["crashed"]}
    assert crashed == {("selector", 0), ("all", 0)}
    assert len(summary["selector_returns"]) == 3
    for key, r in rows.items():
        assert len(r["actions"]) == (2 if key in crashed else 4)  # a crash ends the unit's episode
        assert math.isfinite(r["metric"]) and 0.0 <= r["metric"] <= 1.0  # the restored student is evaluated
        assert math.isfinite(r["dev_metric"])
    with open(run / "results.csv", newline="") as fh:
        csv_rows = {(r["method"], int(r["seed"])): r["crashed"] for r in csv.DictReader(fh)}
    assert csv_rows == {key: str(key in crashed) for key in rows}
    assert read_json(run / "units" / "selector__seed0.json")["crashed"] is True


def test_finite_loss_with_a_non_finite_gradient_crashes_the_phase_before_any_update():
    """sqrt at 0 has a finite value and an infinite derivative: the engine must look at the gradient
    too, not only at the loss."""
    from kd_env import register_knowledge

    @register_knowledge("sqrt_at_zero", needs=("logits",), overwrite=True)
    def sqrt_at_zero(student, teacher, batch):
        return torch.sqrt(((student.logits - student.logits.detach()) ** 2).sum())  # = 0, d/dx = NaN

    env = gym.make(QUICK, knowledge=("finetune", "sqrt_at_zero"), crash_penalty=-4.0)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(np.array([1, 0]))
    assert not info["crashed"] and info["losses"]["sqrt_at_zero"] == 0.0  # finite when only reported
    distiller = env.unwrapped.distiller
    before = {k: v.clone() for k, v in distiller.student.state_dict().items()}
    moments = {k: {n: t.clone() for n, t in s.items() if torch.is_tensor(t)}
               for k, s in distiller.optimizer.state_dict()["state"].items()}
    _, reward, terminated, _, info = env.step(np.array([1, 1]))
    assert info["crashed"] and terminated and reward == -4.0
    assert all(torch.equal(v, before[k]) for k, v in distiller.student.state_dict().items())
    after = distiller.optimizer.state_dict()["state"]
    assert all(torch.equal(t, after[k][n]) for k, s in moments.items() for n, t in s.items())  # no step taken
    assert info["optimizer_steps"] == 11  # one phase, plus the crashing step


# ---- atomic writes ---------------------------------------------------------------------------------


def _write_agent_checkpoint(path: Path, version: int) -> None:
    env = gym.make(QUICK)
    make_agent("ac", env, seed=version).save(path)


def _write_sb3_checkpoint(path: Path, version: int) -> None:
    env = gym.make(QUICK)
    make_agent("dqn", env, seed=version).save(path)


def _write_cell(path: Path, version: int) -> None:
    from experiments.benchmark import build_grid, write_cell

    cell = build_grid(["random_hard"], [QUICK], [0], 1, 1)[0]
    arrays = {"results": np.full((1, 1), float(version))}
    result = {"fingerprint": cell.fingerprint(), "version": version}
    write_cell(path, cell, {"arrays": arrays, "result": result})


def _write_csv(path: Path, version: int) -> None:
    from experiments.report import write_csv

    write_csv(path / "results.csv", [{"method": "a", "metric": float(version)}] * 50, ["method", "metric"])


def _write_plot(path: Path, version: int) -> None:
    from experiments.report import plot_returns

    plot_returns([0.1 * version, 0.2, 0.3], path / "returns.png", f"version {version}")


WRITERS = {
    "io_bytes": lambda p, v: atomic_write_bytes(p / "blob.bin", bytes([v]) * 100_000),
    "io_text": lambda p, v: atomic_write_text(p / "results.md", f"# version {v}\n" * 1000),
    "io_json": lambda p, v: atomic_write_json(p / "results.json", {"version": v, "rows": list(range(1000))}),
    "report_csv": _write_csv,
    "report_plot": _write_plot,
    "benchmark_cell": _write_cell,
    "agent_checkpoint": _write_agent_checkpoint,
    "sb3_checkpoint": _write_sb3_checkpoint,
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fail_at", ["rename", "fsync"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial_file(tmp_path, monkeypatch, writer, fail_at):
    write = WRITERS[writer]
    write(tmp_path, 1)
    old = _snapshot(tmp_path)
    assert old, "the first write wrote nothing"
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        raise OSError(28, f"No space left on device (injected at {fail_at})")

    with monkeypatch.context() as m:
        m.setattr(os, "replace" if fail_at == "rename" else "fsync", failing)
        with pytest.raises(OSError, match="injected"):
            write(tmp_path, 2)
    assert calls["n"] >= 1, f"{writer} wrote without os.{'replace' if fail_at == 'rename' else 'fsync'}"
    assert _snapshot(tmp_path) == old  # the old files, byte for byte; no temporary or partial file left
    write(tmp_path, 2)  # and the next write goes through
    assert _snapshot(tmp_path) != old


def test_atomic_helpers_are_what_the_jobs_use():
    """The jobs write results through kd_env.io (so the test above covers them): swapping the
    helper out of a job's namespace is seen by its writes."""
    import experiments.benchmark.cell as benchmark_cell
    import experiments.benchmark.runner as benchmark_runner
    import experiments.benchmark.summary as benchmark_summary
    import experiments.glue_ac.pipeline as glue_pipeline
    import experiments.glue_ac.report as glue_report
    import experiments.glue_ac.run as glue_run
    import experiments.headroom.cli as headroom_cli
    import experiments.report as report
    import experiments.store as store
    import experiments.student_settings as student_settings

    for module in (glue_pipeline, glue_report, glue_run, headroom_cli, store, student_settings, benchmark_cell,
                   benchmark_runner, benchmark_summary, report):
        names = [n for n in ("atomic_write_json", "atomic_write_text", "atomic_write_bytes") if hasattr(module, n)]
        assert names, module.__name__
        for name in names:
            assert getattr(module, name) is getattr(__import__("kd_env.io", fromlist=[name]), name)


# ---- untrusted files -------------------------------------------------------------------------------


class Payload:
    """A pickle that, when loaded with full unpickling, creates ``marker`` (standing for any code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _teacher_checkpoint(cache: Path) -> Path:
    files = list((cache / "teachers").glob("mlp-digits-*/model.pt"))
    assert len(files) == 1, files
    return files[0]


def test_crafted_pickle_as_teacher_checkpoint_is_refused_and_the_teacher_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    config = get_preset("quick", cache_dir=str(cache))
    first = build_distiller(config)
    reference = {k: v.clone() for k, v in first.teacher_model.state_dict().items()}
    first.close()
    checkpoint = _teacher_checkpoint(cache)
    # the payload is live: full unpickling would run it
    live_marker = tmp_path / "live_marker"
    torch.save(Payload(live_marker), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert live_marker.exists()
    marker = tmp_path / "marker"
    torch.save(Payload(marker), checkpoint)
    with pytest.warns(RuntimeWarning) as record:
        second = build_distiller(config)
    message = " ".join(str(w.message) for w in record)
    assert str(checkpoint) in message and "refused" in message and "fine-tuning the teacher again" in message
    assert not marker.exists()
    # rebuilt (same seed: the same teacher), and the file is a weights-only checkpoint again
    for k, v in second.teacher_model.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert set(torch.load(checkpoint, weights_only=True)) == set(reference)
    second.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the next build trusts the rebuilt file silently
        build_distiller(config).close()
    assert not marker.exists()


def test_yaml_config_with_a_python_tag_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "marker"
    text = f'preset: quick\nname: !!python/object/apply:os.system ["touch {marker}"]\n'
    import yaml

    yaml.unsafe_load(text)  # the payload is live: an unsafe loader runs it
    assert marker.exists()
    marker.unlink()
    config = tmp_path / "evil.yaml"
    config.write_text(text, encoding="utf-8")
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as excinfo:
        glue_ac.main(["--config", str(config), "--out", str(out)])
    message = str(excinfo.value.code)
    assert "evil.yaml" in message and "not a plain YAML mapping" in message and "python/object/apply" in message
    assert not marker.exists() and not out.exists()


def test_benchmark_config_with_a_python_tag_is_refused(tmp_path):
    from experiments.benchmark import BenchmarkConfig, ConfigError, run_benchmark

    marker = tmp_path / "marker"
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "random_hard.yml").write_text(
        f'default:\n  episodes: !!python/object/apply:os.system ["touch {marker}"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        run_benchmark(BenchmarkConfig(name="evil", algos=["random_hard"], envs=[QUICK], seeds=[0],
                                      config_dir=str(configs), out=str(tmp_path / "runs"), verbose=False))
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_crafted_pickle_in_an_agent_checkpoint_is_refused(tmp_path):
    """(agents have their own test; this one checks the payload never runs through load_agent)"""
    env = gym.make(QUICK)
    make_agent("ac", env, seed=0).save(tmp_path / "agent")
    marker = tmp_path / "marker"
    torch.save(Payload(marker), tmp_path / "agent" / "weights.pt")
    from agents import CheckpointError

    with pytest.raises(CheckpointError, match="weights.pt"):
        load_agent(tmp_path / "agent", env)
    assert not marker.exists()


def test_hugging_face_models_never_run_remote_code_by_default(tiny_bert_dir, text_csv, monkeypatch, tmp_path):
    import transformers

    from kd_env import models

    assert DistillConfig().trust_remote_code is False
    for preset in ("text", "text3", "paper", "quick", "digits"):
        assert get_preset(preset).trust_remote_code is False
    seen: list[tuple[str, object]] = []
    real_model = transformers.AutoModelForSequenceClassification.from_pretrained
    real_tokenizer = transformers.AutoTokenizer.from_pretrained

    def spy(kind, real):
        def wrapped(*args, **kwargs):
            seen.append((kind, kwargs.get("trust_remote_code", "absent")))
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained",
                        spy("model", real_model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy("tokenizer", real_tokenizer))
    models.load_hf_classifier(str(tiny_bert_dir), 2)
    models.load_tokenizer(str(tiny_bert_dir))
    assert seen == [("model", False), ("tokenizer", False)]

    # the whole build (tokenizer, teacher, student) passes the config's flag, off by default; it is
    # stopped right after the teacher is loaded, before any training
    class Stop(Exception):
        pass

    import kd_env.build as build

    real_load = build.load_hf_classifier

    def load_then_stop(*args, **kwargs):
        real_load(*args, **kwargs)
        raise Stop

    monkeypatch.setattr(build, "load_hf_classifier", load_then_stop)
    seen.clear()
    config = DistillConfig(task=str(text_csv), teacher=str(tiny_bert_dir), student_layers=1, max_len=16,
                           progress=False, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(Stop):
        build_distiller(config)
    assert seen == [("tokenizer", False), ("model", False)]
