"""The main job end to end (quick preset, in subprocesses), its resume, and its flag checks."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.glue_ac import RESULT_COLUMNS, STAGES, config_from_args, install_seconds, print_timing
from tests.helpers import tensorboard_runs

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--preset", "quick", "--methods", "selector,vanilla_kd,random_hard,only:response", "--seeds", "0,1",
        "--episodes", "3"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(ROOT)})
    return env


def _run(out: Path, name: str, extra: list[str] | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "experiments.glue_ac", *ARGS, "--out", str(out), "--name", name, *(extra or [])]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    proc = _run(out, "full")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / "full.stdout").write_text(proc.stdout)
    return out / "full"


def test_the_run_ends_with_a_timing_table_of_every_stage(finished_run: Path):
    stdout = (finished_run.parent / "full.stdout").read_text()
    table = stdout[stdout.index("wall time per stage"):]
    for label in STAGES.values():
        assert label in table, label
    assert "(8 students, 1 at a time)" in table
    times = json.loads((finished_run / "timing.json").read_text())
    for key in ("teacher", "teacher_cache", "selector", "students", "report"):
        assert 0 <= times[key] <= times["total"], key
    assert times["student_units"] == 8 and times["workers"] == 1
    assert sum(times[k] for k in ("teacher", "teacher_cache", "selector", "students", "report")) <= times["total"]


def test_install_seconds_recorded_by_the_makefile_are_printed(tmp_path: Path, capsys):
    assert install_seconds(tmp_path) is None
    (tmp_path / ".kd_env-install-seconds").write_text("83 seconds, make install finished 2026-12-05T12:00:00Z\n")
    assert install_seconds(tmp_path) == 83.0
    print_timing({"install": 83.0, "teacher": 61.2, "teacher_cache": 5.0, "selector": None, "students": 600.4,
                  "report": 1.0, "total": 667.6, "student_units": 24, "workers": 2})
    out = capsys.readouterr().out
    assert "install (make install)" in out and "1:23" in out and "10:00  (24 students, 2 at a time)" in out
    assert "(no selector)" in out
    print_timing({"install": None, "total": 1.0, "student_units": 0, "workers": 0})
    assert "not recorded: run `make demo`" in capsys.readouterr().out
    makefile = (ROOT / "Makefile").read_text()
    assert ".kd_env-install-seconds" in makefile  # the file install_seconds reads


def test_precision_flag_sets_teacher_and_student_precision(tmp_path: Path, capsys):
    config = config_from_args(["--preset", "text3", "--precision", "fp32", "--out", str(tmp_path)])
    resolved = config.resolved().to_dict()["distill_resolved"]
    assert resolved["precision"] == resolved["student_precision"] == "fp32"
    with pytest.raises(SystemExit):
        config_from_args(["--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_quick_run_writes_every_file_with_its_schema(finished_run: Path):
    for name in ("results.json", "results.csv", "results.md", "config.yaml", "selection_heatmap.png",
                 "dev_curves.png", "selector_returns.png"):
        assert (finished_run / name).is_file(), name
    # TensorBoard: the selector's training episodes, and every student its own run (SB3's layout)
    runs = tensorboard_runs(finished_run / "tb")
    students = [f"{m.replace(':', '_')}_{s}" for m in ("only:response", "random_hard", "selector", "vanilla_kd")
                for s in (0, 1)]
    assert sorted(runs) == sorted(["selector", *students])
    assert [step for step, _ in runs["selector"]["rollout/ep_rew_mean"]] == [4, 8, 12]  # 3 episodes of 4 phases
    for name in students:
        assert {"eval/mean_reward", "eval/test_metric", "eval/probe_metric", "student/probe_metric"} <= set(runs[name])
    assert config_from_args([*ARGS, "--no-tensorboard"]).tensorboard is False and config_from_args(ARGS).tensorboard
    rows = _rows(finished_run)
    assert list(rows[0].keys()) == RESULT_COLUMNS
    pairs = sorted((r["method"], int(r["seed"])) for r in rows)
    methods = ["only:response", "random_hard", "selector", "vanilla_kd"]
    assert pairs == sorted((m, s) for m in methods for s in (0, 1))
    for r in rows:
        assert 0.0 <= float(r["metric"]) <= 1.0
        assert 0.0 <= float(r["dev_metric"]) <= 1.0
        assert float(r["train_seconds"]) > 0
        assert int(r["student_parameters"]) > 0
        assert len(r["mean_weights"].split()) == 4
    summary = json.loads((finished_run / "results.json").read_text())
    assert 0.5 < summary["teacher"]["metric"] <= 1.0
    assert len(summary["selector_returns"]) == 3
    assert "vanilla_kd" in summary["selector_vs"]
    md = (finished_run / "results.md").read_text()
    assert "| teacher |" in md and "selector" in md and "95% CI" in md
    # only:response trains on the response term alone, every phase
    for r in summary["rows"]:
        if r["method"] == "only:response":
            assert all(a == [0.0, 1.0, 0.0, 0.0] for a in r["actions"])


def test_plots_are_valid_pngs(finished_run: Path):
    import matplotlib.image as mpimg

    for name in ("selection_heatmap.png", "dev_curves.png", "selector_returns.png"):
        data = (finished_run / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(finished_run / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 0.01  # not a blank canvas


def test_rerun_of_a_finished_run_does_not_retrain(finished_run: Path):
    before = {p.name: p.stat().st_mtime_ns for p in (finished_run / "units").iterdir()}
    start = time.perf_counter()
    proc = _run(finished_run.parent, "full")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train selector" not in proc.stderr
    assert "glue_ac full: 1 torch thread(s) (" in proc.stderr  # the run header names the thread count
    after = {p.name: p.stat().st_mtime_ns for p in (finished_run / "units").iterdir()}
    assert before == after
    assert "selector" in proc.stdout and "vanilla_kd" in proc.stdout
    assert time.perf_counter() - start < 120


def test_killed_after_selector_resumes_without_retraining_and_same_rows(finished_run: Path, tmp_path: Path):
    name = "killed"
    cmd = [sys.executable, "-m", "experiments.glue_ac", *ARGS, "--out", str(tmp_path), "--name", name]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = tmp_path / name / "selector" / "done.json"
    deadline = time.time() + 200
    while not done.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert done.exists(), "selector stage never finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    selector_mtime = done.stat().st_mtime_ns
    resumed = _run(tmp_path, name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train selector" not in resumed.stderr
    assert done.stat().st_mtime_ns == selector_mtime
    ref = {(r["method"], r["seed"]): r for r in _rows(finished_run)}
    got = {(r["method"], r["seed"]): r for r in _rows(tmp_path / name)}
    assert ref.keys() == got.keys()
    for key, r in ref.items():
        assert abs(float(r["metric"]) - float(got[key]["metric"])) < 1e-6, key
        assert abs(float(r["return"]) - float(got[key]["return"])) < 1e-6, key


def test_two_workers_give_the_same_rows(finished_run: Path, tmp_path: Path):
    """Students distilled in 2 spawned workers (the selector loaded from its checkpoint, one
    torch thread each, as the quick preset uses) give the rows of the in-process run."""
    proc = _run(tmp_path, "workers", ["--workers", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 workers" in proc.stderr
    ref = json.loads((finished_run / "results.json").read_text())["rows"]
    got = json.loads((tmp_path / "workers" / "results.json").read_text())["rows"]
    assert [(r["method"], r["seed"]) for r in got] == [(r["method"], r["seed"]) for r in ref]
    for a, b in zip(ref, got):
        assert a["metric"] == b["metric"] and a["actions"] == b["actions"] and a["threads"] == b["threads"] == 1
    # the unit files, one per student written by the executor's workers, are the in-process run's
    names = sorted(p.name for p in (finished_run / "units").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "workers" / "units").iterdir())
    assert "only-response__seed0.json" in names
    for name in names:
        a, b = (json.loads((d / "units" / name).read_text()) for d in (finished_run, tmp_path / "workers"))
        assert (a["method"], a["seed"], a["metric"], a["dev_metric"], a["return"]) == \
            (b["method"], b["seed"], b["metric"], b["dev_metric"], b["return"]), name


def test_a_failing_student_stops_the_run_after_the_finished_ones_are_saved(tmp_path: Path, monkeypatch):
    """A unit that raises stops the run with an error naming it and its traceback; the units that
    finished before it are on disk, and a rerun distils only the failed one."""
    import experiments.glue_ac.distil as distil
    from experiments.glue_ac import ExperimentConfig, run_experiment

    real = distil.distil_and_test

    def failing(env, agent, seed):
        if seed == 1:
            raise ArithmeticError("student blew up")
        return real(env, agent, seed)

    monkeypatch.setattr(distil, "distil_and_test", failing)
    config = ExperimentConfig(preset="quick", methods=["finetune"], seeds=[0, 1], episodes=0, workers=1,
                              out=str(tmp_path), name="failing")
    with pytest.raises(RuntimeError, match=r"student finetune seed 1 failed") as exc:
        run_experiment(config)
    assert "ArithmeticError: student blew up" in str(exc.value)
    assert sorted(p.name for p in (tmp_path / "failing" / "units").iterdir()) == ["finetune__seed0.json"]
    monkeypatch.setattr(distil, "distil_and_test", real)
    summary = run_experiment(config)
    assert summary["stage_seconds"]["student_units"] == 1 and len(summary["rows"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--methods", "selector,bogus"], "unknown method(s) ['bogus']"),
    (["--workers", "0"], "workers must be an integer >= 1"),
    (["--address", "10.0.0.1:6379"], "address '10.0.0.1:6379' needs executor 'ray'"),
    (["--agent", "nope"], "unknown agent 'nope'"),
    (["--agent", "lookup"], "agent 'lookup' reads observation one of ['observable', 'observable_only'], got 'summary'"),
    (["--observation", "nope"], "unknown observation 'nope'"),
    (["--preset", "quick", "--episodes", "-1"], "episodes must be an integer >= 0"),
    (["--task", "no_such_task"], "unknown task"),
])
def test_bad_flags_are_errors_listing_valid_values(argv, message, tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        config_from_args([*argv, "--out", str(tmp_path)])
    assert isinstance(exc.value.code, str) and message in exc.value.code, exc.value.code
    assert not any(tmp_path.iterdir()), "a bad flag must not create run files"


def test_executor_flags_are_stored_but_not_part_of_the_run_check(tmp_path: Path, capsys):
    import dataclasses

    from experiments.glue_ac import Run

    with pytest.raises(SystemExit):
        config_from_args(["--executor", "dask"])
    assert "invalid choice: 'dask'" in capsys.readouterr().err
    config = config_from_args(["--preset", "quick", "--out", str(tmp_path), "--name", "r"]).resolved()
    assert (config.executor, config.address) == ("local", None)
    Run(config).prepare()
    on_ray = dataclasses.replace(config, executor="ray", address="10.0.0.1:6379", workers=3)
    Run(on_ray).check()  # where the students run is not the run's identity


def test_bad_seeds_flag(capsys):
    with pytest.raises(SystemExit):
        config_from_args(["--seeds", "a,b"])
    assert "--seeds takes integers" in capsys.readouterr().err


def test_config_file_unknown_key_is_an_error(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: quick\nepisodez: 3\n")
    with pytest.raises(SystemExit) as exc:
        config_from_args(["--config", str(cfg)])
    assert "episodez" in str(exc.value.code) and "episodes" in str(exc.value.code)


def test_config_file_values_are_overridden_by_flags(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: quick\nepisodes: 7\nseeds: [3, 4]\ndistill: {total_steps: 20}\n")
    config = config_from_args(["--config", str(cfg), "--episodes", "2"]).resolved()
    assert config.episodes == 2 and config.seeds == [3, 4]
    assert config.distill_config().total_steps == 20


def test_bad_distill_key_in_config_file(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: quick\ndistill: {total_stepz: 20}\n")
    with pytest.raises(SystemExit) as exc:
        config_from_args(["--config", str(cfg)])
    assert "total_stepz" in str(exc.value.code)


def _unit(method: str, seed: int, test: float, dev: float) -> dict:
    return {"method": method, "seed": seed, "metric_name": "accuracy", "metric": test, "dev_metric": dev,
            "return": 0.0, "train_seconds": 1.0, "student_parameters": 10, "crashed": False,
            "mean_weights": [1.0, 1.0, 0.0, 0.0], "actions": [[1.0, 1.0, 0.0, 0.0]] * 2, "curve": [0.1, dev, dev]}


def test_best_fixed_is_chosen_on_dev_not_test(tmp_path: Path):
    """A synthetic table where dev and test disagree: finetune is best on test, vanilla_kd on dev;
    the dynamic and random baselines score higher still on dev but are not fixed masks."""
    from experiments.glue_ac import ExperimentConfig, Run, choose_best_fixed, write_report

    # (test, dev) per method; seeds 0 and 1 are shifted by -/+ 0.01
    scores = {"finetune": (0.90, 0.50), "vanilla_kd": (0.80, 0.70), "only:response": (0.85, 0.60),
              "eskd": (0.70, 0.99), "dynamic_kd": (0.70, 0.98), "random_hard": (0.60, 0.95), "selector": (0.75, 0.65)}
    config = ExperimentConfig(preset="quick", methods=list(scores), seeds=[0, 1], episodes=0, out=str(tmp_path),
                              name="synthetic").resolved()
    run = Run(config)
    run.prepare()
    rows = [_unit(m, s, test + 0.02 * s - 0.01, dev + 0.02 * s - 0.01) for m, (test, dev) in scores.items() for s in (0, 1)]
    teacher = {"metric": 0.95, "dev_metric": 0.96, "parameters": 100}
    summary = write_report(run, rows, teacher, ["finetune", "response", "feature", "relation"], [],
                           config.distill_config())
    assert summary["best_fixed"] == "vanilla_kd" and summary["best_fixed_chosen_on"] == "dev-probe mean"
    assert max((t for t in summary["methods"] if t["method"] in ("finetune", "vanilla_kd", "only:response")),
               key=lambda t: t["mean"])["method"] == "finetune"  # test would have picked another one
    assert set(summary["selector_vs"]) == {"vanilla_kd"}
    md = (run.dir / "results.md").read_text()
    assert "Best fixed subset: `vanilla_kd`, chosen on the dev-probe mean" in md and "never on the test split" in md
    assert json.loads((run.dir / "results.json").read_text())["best_fixed"] == "vanilla_kd"
    # ties go to the first fixed mask in the table; no fixed mask at all: None
    table = [{"method": "pkd", "dev_mean": 0.7, "n": 2}, {"method": "fixed:1111", "dev_mean": 0.7, "n": 2},
             {"method": "all", "dev_mean": 0.9, "n": 0}]
    assert choose_best_fixed(table) == "pkd"
    assert choose_best_fixed([{"method": "anneal", "dev_mean": 0.9, "n": 2}]) is None


def test_a_baseline_without_its_knowledge_fails_before_the_run_folder(tmp_path: Path):
    from experiments.glue_ac import ExperimentConfig, run_experiment

    config = ExperimentConfig(preset="quick", distill={"knowledge": ["finetune", "feature", "relation"]},
                              methods=["finetune", "eskd"], seeds=[0], episodes=0, out=str(tmp_path), name="no_response")
    with pytest.raises(SystemExit, match=r"eskd needs knowledge \['finetune', 'response'\]"):
        run_experiment(config)
    assert not (tmp_path / "no_response").exists()


def _refuse_constant(name: str):
    raise AssertionError(f"results.json holds {name}, which is not JSON")


def test_one_seed_report_writes_n_a_and_null_not_nan(tmp_path: Path):
    """Issue 13 item 5: one seed used to print the selector's 95% CI as [+nan, +nan]."""
    import io

    from experiments.glue_ac import ExperimentConfig, Run, print_summary, write_report

    config = ExperimentConfig(preset="quick", methods=["selector", "vanilla_kd"], seeds=[0], out=str(tmp_path),
                              name="one").resolved()
    run = Run(config)
    run.prepare()
    knowledge = ["finetune", "response", "feature", "relation"]

    def row(method, metric):
        return {"method": method, "seed": 0, "metric_name": "accuracy", "metric": metric, "dev_metric": metric,
                "return": 0.1, "train_seconds": 1.0, "student_parameters": 10, "crashed": False,
                "actions": [[1.0, 1.0, 0.0, 0.0]] * 4, "curve": [0.1, 0.5, 0.6, 0.7, metric],
                "mean_weights": [1.0, 1.0, 0.0, 0.0]}

    teacher = {"metric": 0.9, "dev_metric": 0.9, "parameters": 100, "fine_tune_seconds": 1.0}
    summary = write_report(run, [row("selector", 0.8), row("vanilla_kd", 0.75)], teacher, knowledge, [0.1, 0.2],
                           config.distill_config())
    out = io.StringIO()
    print_summary(summary, out)
    for text in (out.getvalue(), (run.dir / "results.md").read_text()):
        assert "n/a (1 seed)" in text and "nan" not in text.lower(), text
    saved = json.loads((run.dir / "results.json").read_text(), parse_constant=_refuse_constant)
    assert saved["selector_vs"]["vanilla_kd"]["low"] is None and saved["selector_vs"]["vanilla_kd"]["high"] is None
    assert saved["selector_vs"]["vanilla_kd"]["mean"] == pytest.approx(0.05)


def test_run_folder_check_tolerates_only_new_config_fields_at_their_default(tmp_path: Path):
    """A run made before a DistillConfig field existed resumes when the field is at its default;
    any other difference refuses the folder (nothing written)."""
    import yaml

    from experiments.glue_ac import Run

    config = config_from_args(["--preset", "quick", "--out", str(tmp_path), "--name", "r"]).resolved()
    run = Run(config)
    run.prepare()
    saved = yaml.safe_load((run.dir / "config.yaml").read_text())
    del saved["distill_resolved"]["pooling"]  # as written before the field existed
    (run.dir / "config.yaml").write_text(yaml.safe_dump(saved))
    run.check()
    previous = dict(saved["distill_resolved"])
    del saved["distill_resolved"]["precision"]  # "auto" resolves by machine: never taken as the old behaviour
    (run.dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(SystemExit, match="different config"):
        run.check()
    saved["distill_resolved"] = previous
    saved["distill"] = {"lr": 3e-3}  # other overrides that resolve to the same config: the same run
    (run.dir / "config.yaml").write_text(yaml.safe_dump(saved))
    run.check()
    saved["distill_resolved"]["lr"] = 123.0
    (run.dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(SystemExit, match=r"different config \(keys \['distill_resolved'\]\)"):
        run.check()


def test_text_presets_leave_out_the_masks_that_cannot_train_the_head():
    """The text demo runs the selector and the strong baselines; feature or relation alone (no
    signal to the classifier head) only with --methods.  Digits keeps every single mask."""
    from experiments.glue_ac import ExperimentConfig, default_methods

    knowledge = ["finetune", "response", "feature", "relation"]
    for preset in ("text", "text3"):
        methods = ExperimentConfig(preset=preset).resolved().methods
        assert methods == [m for m in default_methods(knowledge) if m not in ("only:feature", "only:relation")]
        assert "only:response" in methods and "selector" in methods
        asked = ExperimentConfig(preset=preset, methods=["vanilla_kd", "only:feature"]).resolved().methods
        assert asked == ["vanilla_kd", "only:feature"]
    assert ExperimentConfig(preset="quick").resolved().methods == default_methods(knowledge)


def test_glue_ac_runs_lookup_as_its_selector_on_the_observable_observation(tmp_path: Path):
    """Issue 27: the lookup agent through the main job's documented route (--agent lookup
    --observation observable), trained on 16 episodes (one round of the 16 masks)."""
    import numpy as np

    from experiments.glue_ac import ExperimentConfig, run_experiment

    config = ExperimentConfig(preset="quick", methods=["selector", "vanilla_kd"], seeds=[0], episodes=16,
                              agent="lookup", observation="observable", action_mode="mask", workers=1,
                              out=str(tmp_path), name="lookup")
    summary = run_experiment(config)
    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == {"selector", "vanilla_kd"}
    # one mask for the whole episode, a real mask of the 16 (the best of its one plain situation)
    actions = np.asarray(rows["selector"]["actions"])
    assert actions.shape[1] == 4 and (actions == actions[0]).all() and set(np.unique(actions)) <= {0.0, 1.0}
    # lookup logs no episodes itself: the runner writes its 16 training episodes to TensorBoard
    runs = tensorboard_runs(tmp_path / "lookup" / "tb")
    assert sorted(runs) == ["selector", "selector_0", "vanilla_kd_0"]
    assert [step for step, _ in runs["selector"]["rollout/ep_rew_mean"]] == [4 * n for n in range(1, 17)]


@pytest.mark.parametrize("argv, message", [
    (["--label-fraction", "1.5"], "label_fraction must be in (0, 1], got 1.5"),
    (["--label-fraction", "0"], "label_fraction must be in (0, 1], got 0.0"),
    (["--label-noise", "1"], "label_noise must be in [0, 1), got 1.0"),
    (["--teacher-train-fraction", "-0.1"], "teacher_train_fraction must be in (0, 1], got -0.1"),
])
def test_bad_situation_flags_are_clear_errors_and_write_nothing(argv, message, tmp_path: Path):
    with pytest.raises(SystemExit) as exc:
        config_from_args([*argv, "--preset", "quick", "--out", str(tmp_path)]).resolved()
    assert message in str(exc.value.code), exc.value.code
    assert not any(tmp_path.iterdir())


def test_the_users_situation_flags_take_effect_and_are_recorded(tmp_path: Path):
    """Issue 28 item 3: a user with few, noisy labels runs the study for exactly that."""
    import numpy as np

    from experiments.glue_ac import run_experiment
    from kd_env.build import build_distiller

    config = config_from_args(["--preset", "quick", "--label-fraction", "0.1", "--label-noise", "0.3",
                               "--methods", "finetune", "--seeds", "0", "--episodes", "0", "--workers", "1",
                               "--out", str(tmp_path), "--name", "situation"])
    run_experiment(config)
    saved = (tmp_path / "situation" / "config.yaml").read_text()
    assert "label_fraction: 0.1" in saved and "label_noise: 0.3" in saved
    distiller = build_distiller(config.resolved().distill_config())
    try:
        n = len(distiller.train_data)
        assert distiller.label_mask.sum() == round(0.1 * n)  # 10% of the distillation set labelled
        flipped = distiller.student_labels != distiller.train_data.labels
        assert flipped.sum() == round(0.3 * n)  # 30% of the labels flipped, each to another class
        assert np.asarray(distiller.student_labels).min() >= 0
    finally:
        distiller.close()


def test_a_learning_agent_named_as_a_method_is_refused_not_played_untrained():
    from experiments.glue_ac.config import ExperimentConfig

    c = ExperimentConfig(methods=["finetune", "ac_q"])
    with pytest.raises(ValueError, match=r"\['ac_q'\] learn.*--agent ac_q"):
        c.resolved()
