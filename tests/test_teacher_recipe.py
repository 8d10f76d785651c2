"""Issue 39: a teacher recipe that scales with the data (a floor of steps, early stopping on dev),
the cache key that names it, the teacher's sanity check (majority class, linear probe) with its one
loud line, and the opt-in observations that carry the teacher's skill over the majority class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_env import get_preset
from kd_env.batching import BatchSampler
from kd_env.build import prepare_teacher
from kd_env.data import load_task
from kd_env.models import MLPClassifier
from kd_env.teacher import fingerprint_module, teacher_budget, train_classifier
from kd_env.teacher_check import linear_probe, majority_metric, sanity_warning

CPU = torch.device("cpu")


# ---- the budget ---------------------------------------------------------------------------------


def test_the_budget_is_the_epochs_with_a_floor_and_a_cap():
    # the CSV: 460 examples are 15 steps an epoch; the floor makes 150, early-stopped on dev
    small = teacher_budget(460, 32, 1.0, min_steps=150, patience=3)
    assert (small["steps_per_epoch"], small["epoch_steps"], small["steps"]) == (15, 15, 150)
    assert small["floor"] and small["patience"] == 3 and small["eval_every"] == 15 and small["epochs"] == 10.0
    # rt-polarity's whole train split (321 steps an epoch) and convention-party's (192): the epoch alone,
    # no evaluations: the fine-tune it always was
    for size, steps in ((10252, 321), (6124, 192)):
        full = teacher_budget(size, 32, 1.0, min_steps=150, patience=3)
        assert full["steps"] == steps and not full["floor"] and full["eval_every"] == 0 and full["patience"] == 0
    # epochs above the floor win; the cap is over both
    assert teacher_budget(460, 32, 20.0, min_steps=150)["steps"] == 300
    capped = teacher_budget(460, 32, 1.0, min_steps=150, max_steps=40, patience=3)
    assert capped["steps"] == 40 and capped["floor"] and capped["eval_every"] == 15
    assert teacher_budget(460, 32, 1.0, min_steps=150, max_steps=10)["steps"] == 10
    # no floor (0) or no patience: no early stopping; evaluations ~10 over a long budget, at least an epoch apart
    assert teacher_budget(460, 32, 1.0)["steps"] == 15
    assert teacher_budget(460, 32, 1.0, min_steps=150, patience=0)["eval_every"] == 0
    assert teacher_budget(100, 8, 1.0, min_steps=1000, patience=2)["eval_every"] == 100
    assert teacher_budget(0, 32, 1.0)["steps"] == 1  # as before: at least one step


def _digits_sampler(n: int = 200):
    task = load_task("digits", seed=0)
    split = task["train"].subset(np.arange(n))
    return task, BatchSampler(task, split, None, 64)


def test_early_stopping_stops_after_patience_and_keeps_the_best_weights():
    task, sampler = _digits_sampler()
    torch.manual_seed(0)
    model = MLPClassifier(task["train"].features.shape[1], (32,), task.num_labels)
    scripted = iter([0.50, 0.80, 0.70, 0.79, 0.80, 0.99])  # best at the 2nd look; 3 looks without a better one
    seen: list[tuple[int, str]] = []

    def evaluate(m):
        seen.append((len(seen), fingerprint_module(m)))
        return next(scripted)

    fit = train_classifier(model, sampler, epochs=1.0, lr=1e-2, batch_size=20, seed=0, device=CPU, progress=False,
                           min_steps=100, patience=3, evaluate=evaluate)
    # 200 examples in batches of 20: 10 steps an epoch, a floor of 100, a look every 10 steps
    assert fit["budget"]["steps"] == 100 and fit["budget"]["eval_every"] == 10
    assert fit["history"] == [[10, 0.5], [20, 0.8], [30, 0.7], [40, 0.79], [50, 0.8]]
    assert fit["steps"] == 50 and fit["stopped_early"] and fit["best_step"] == 20 and fit["best_dev"] == 0.8
    assert fingerprint_module(model) == seen[1][1]  # the weights of the best look, restored
    assert not model.training


def test_without_the_floor_the_fine_tune_is_the_old_one_step_for_step():
    task, sampler = _digits_sampler()
    runs = []
    for kwargs in ({}, {"min_steps": 5, "patience": 3}):  # a floor below the epoch changes nothing
        torch.manual_seed(0)
        model = MLPClassifier(task["train"].features.shape[1], (32,), task.num_labels)
        fit = train_classifier(model, sampler, epochs=1.0, lr=1e-2, batch_size=20, seed=0, device=CPU, progress=False,
                               **kwargs)
        assert fit["steps"] == 10 and "history" not in fit
        runs.append(fingerprint_module(model))
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="needs evaluate="):
        train_classifier(model, sampler, epochs=1.0, lr=1e-2, batch_size=20, seed=0, device=CPU, progress=False,
                         min_steps=50, patience=2)


# ---- the teacher's identity (cache key) ---------------------------------------------------------


def test_the_recipe_is_part_of_the_teachers_identity_only_where_it_changes_the_fine_tune(tmp_path: Path):
    # quick: 20 epochs of digits' 1,077 training images in batches of 64 = 340 steps
    base = dict(cache_dir=str(tmp_path), progress=False)
    task = load_task("digits", seed=0)

    def folder(**changes) -> tuple[str, dict]:
        _, summary = prepare_teacher(get_preset("quick", **base, **changes), task, None, CPU, False)
        return Path(summary["folder"]).name, summary

    plain, summary = folder()
    assert folder(teacher_min_steps=300, teacher_patience=3)[0] == plain  # below the epochs' 340: the same teacher
    assert summary["fine_tune"]["budget"]["steps"] == 340
    raised, raised_summary = folder(teacher_min_steps=600, teacher_patience=2)
    assert raised != plain and raised_summary["ident"]["min_steps"] == 600
    assert raised_summary["ident"]["patience"] == 2 and raised_summary["ident"]["recipe"] == 1
    fit = raised_summary["fine_tune"]
    assert fit["budget"]["steps"] == 600 and fit["history"] and fit["best_step"] <= fit["steps"] <= 600
    assert folder(teacher_min_steps=600, teacher_patience=3)[0] != raised  # another patience: another teacher
    # the sanity check is recorded with the teacher, and read back from teacher.json when loaded
    sanity = summary["sanity"]
    assert sanity["ok"] and sanity["teacher"] > sanity["probe"] - 0.1 and sanity["majority"] < 0.2
    assert json.loads((tmp_path / "teachers" / plain / "teacher.json").read_text())["sanity"] == sanity


def test_a_cached_teacher_saved_before_the_sanity_check_gets_one_when_loaded(tmp_path: Path):
    config = get_preset("quick", cache_dir=str(tmp_path), progress=False)
    task = load_task("digits", seed=0)
    _, summary = prepare_teacher(config, task, None, CPU, False)
    path = Path(summary["folder"]) / "teacher.json"
    old = json.loads(path.read_text())
    del old["sanity"]
    path.write_text(json.dumps(old))
    _, loaded = prepare_teacher(config, task, None, CPU, False)
    assert loaded["weights_id"] == summary["weights_id"] and loaded["fine_tune"] == summary["fine_tune"]  # not fine-tuned again
    assert {k: v for k, v in loaded["sanity"].items() if k != "seconds"} == \
        {k: v for k, v in summary["sanity"].items() if k != "seconds"}
    assert "sanity" in json.loads(path.read_text())


# ---- the sanity check ---------------------------------------------------------------------------


def test_the_majority_class_and_the_linear_probe():
    task = load_task("digits", seed=0)
    labels = np.array([1, 1, 1, 0, 2])
    assert majority_metric(task, labels) == pytest.approx(0.6)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    scores = linear_probe(x[:200], y[:200], x[200:], 2)
    assert scores.shape == (100, 2) and (scores.argmax(1) == y[200:]).mean() > 0.9
    np.testing.assert_array_equal(scores, linear_probe(x[:200], y[:200], x[200:], 2))  # deterministic


def _metrics(teacher: float, majority: float, probe: float) -> dict:
    ok = teacher > majority and teacher >= probe
    return {"dev": {"main": teacher}, "fine_tune": {"steps": 15, "budget": {"steps": 15, "train_examples": 463}},
            "sanity": {"version": 1, "teacher": teacher, "majority": majority, "probe": probe, "ok": ok}}


def test_the_warning_is_one_line_with_the_flags_that_give_more_budget():
    line = sanity_warning(_metrics(0.566, 0.556, 0.70))
    assert line == ("WARNING: the teacher is no better than a linear probe on the frozen encoder on dev (teacher 0.566, "
                    "majority class 0.556, linear probe 0.700) after 15 fine-tuning steps on 463 examples; knowledge "
                    "copied from it (response, and methods weighting it) is suspect. More teacher budget: "
                    "--teacher-min-steps 300 (or --teacher-epochs E, --teacher-max-steps N, --teacher-patience P)")
    both = sanity_warning(_metrics(0.556, 0.556, 0.70))
    assert both.startswith("WARNING: the teacher is no better than the majority class or a linear probe on the frozen "
                           "encoder on dev (teacher 0.556")
    assert "\n" not in both
    assert sanity_warning(_metrics(0.83, 0.556, 0.78)) is None
    assert sanity_warning({"dev": {"main": 0.5}}) is None  # no check recorded: nothing to say


# ---- the observable situation: the teacher over the majority class, opt-in ------------------------


def test_the_v2_observations_append_the_teachers_skill_over_the_majority_class():
    import gymnasium as gym

    import kd_env  # noqa: F401 - registers the env ids
    from kd_env.observations import PORTABLE_STATE, summary_features
    from kd_env.situation import (SITUATION_FEATURES, SITUATION_FEATURES_V2, observable_situation,
                                  observable_situation_v2)

    assert SITUATION_FEATURES_V2[:-1] == SITUATION_FEATURES and len(SITUATION_FEATURES) == 7
    envs = {name: gym.make("kd_env/QuickKD-v0", observation=name, record_time=False).unwrapped
            for name in ("observable", "observable_v2", "portable", "portable_v2")}
    try:
        obs = {name: env.reset(seed=0)[0] for name, env in envs.items()}
        k = len(envs["portable"].distiller.knowledge_names)
        n = len(summary_features(envs["observable"]))
        assert obs["observable"].shape == (n + 7,) and obs["observable_v2"].shape == (n + 8,)  # the old layout kept
        assert obs["portable"].shape == (len(PORTABLE_STATE) + k + 7,) and obs["portable_v2"].shape == (len(PORTABLE_STATE) + k + 8,)
        np.testing.assert_array_equal(obs["observable_v2"][:-1], obs["observable"])
        np.testing.assert_array_equal(obs["portable_v2"][:-1], obs["portable"])
        d = envs["observable_v2"].distiller
        v2 = observable_situation_v2(d)
        np.testing.assert_array_equal(v2[:7], observable_situation(d))
        labels = np.asarray(d.dev_data.labels)[np.asarray(d.probe_indices)]
        majority = np.bincount(labels).max() / len(labels)
        acc = v2[SITUATION_FEATURES_V2.index("teacher_dev_accuracy")]
        assert v2[-1] == pytest.approx(max(0.0, (acc - majority) / (1 - majority)), abs=1e-5)
        assert 0.5 < v2[-1] <= 1.0  # the digits teacher is far above its majority class
    finally:
        for env in envs.values():
            env.close()


# ---- the main job: flags, config.yaml and the report -------------------------------------------------


def test_teacher_flags_override_the_recipe():
    from experiments.glue_ac import config_from_args

    def distill(*flags: str) -> dict:
        return config_from_args(["--situations", "none", *flags]).distill_config().to_dict()

    default = distill()
    assert (default["teacher_epochs"], default["teacher_min_steps"], default["teacher_patience"]) == (1.0, 150, 3)
    epochs = distill("--teacher-epochs", "3")
    assert (epochs["teacher_epochs"], epochs["teacher_min_steps"]) == (3.0, 0)  # the epochs asked for, no floor
    both = distill("--teacher-epochs", "3", "--teacher-min-steps", "400", "--teacher-max-steps", "350",
                   "--teacher-patience", "5")
    assert (both["teacher_min_steps"], both["teacher_max_steps"], both["teacher_patience"]) == (400, 350, 5)
    with pytest.raises(SystemExit):
        distill("--teacher-min-steps", "-1")


def _rt_csv(folder: Path, train: int, dev: int, test: int) -> Path:
    """A two-class CSV folder of real rt-polarity snippets (the shipped data), written at test time."""
    import csv

    task = load_task("rt-polarity", seed=0)
    folder.mkdir(parents=True)
    for name, size in (("train", train), ("dev", dev), ("test", test)):
        split = task[name]
        pick = np.random.default_rng(39).permutation(len(split))[:size]
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows([split.texts[i], int(split.labels[i])] for i in pick)
    return folder


def test_a_small_csv_gets_a_teacher_above_the_majority_class_or_the_warning(tmp_path: Path, capsys):
    """A 300-example two-class CSV of real snippets through the main job with a teacher budget cut
    to a few steps (the test's; the default recipe's measurement is
    results/2026-12-08-teacher-small-data.md): the teacher either beats the majority class and the
    probe, or the console and the report's first lines say it does not."""
    import yaml

    from experiments.glue_ac import ExperimentConfig, run_experiment

    data = _rt_csv(tmp_path / "my_data", 300, 60, 60)
    config = ExperimentConfig(
        preset="text3", distill={"task": str(data), "max_len": 32, "batch_size": 8, "total_steps": 2,
                                 "steps_per_action": 2, "dev_probe_size": 16, "teacher_max_steps": 3,
                                 "teacher_batch_size": 8, "train_examples": 32, "progress": False, "threads": 1,
                                 "cache_dir": str(tmp_path / "cache")},
        episodes=0, seeds=[0], methods=["vanilla_kd", "finetune"], out=str(tmp_path / "runs"), name="small", workers=1)
    summary = run_experiment(config)
    err = capsys.readouterr().err
    teacher = summary["teacher"]
    sanity = teacher["sanity"]
    assert sanity["majority"] == pytest.approx(majority_metric(load_task(str(data)), load_task(str(data))["dev"].labels))
    fine_tune = yaml.safe_load((tmp_path / "runs" / "small" / "config.yaml").read_text())["teacher"]
    assert fine_tune["budget"]["steps"] == 3 and fine_tune["steps"] <= 3
    head = (tmp_path / "runs" / "small" / "results.md").read_text().splitlines()[:6]
    if sanity["teacher"] > sanity["majority"] and sanity["teacher"] >= sanity["probe"]:
        assert teacher["warning"] is None and "WARNING" not in err
    else:
        assert teacher["warning"].startswith("WARNING: the teacher is no better than")
        assert err.count("WARNING: the teacher is no better than") == 1  # one line on the console
        assert any(teacher["warning"] in line for line in head)  # and the report's first lines
        assert summary["suspect"] == ["vanilla_kd"]  # it copies the teacher; finetune does not
        assert any("`vanilla_kd`" in line and "Suspect" in line for line in head)


def test_the_report_says_it_first_and_marks_the_methods_that_copy_the_teacher(tmp_path: Path):
    from experiments.glue_ac import ExperimentConfig, Run, write_report

    config = ExperimentConfig(preset="quick", methods=["finetune", "vanilla_kd", "selector"], seeds=[0], episodes=0,
                              out=str(tmp_path), name="synthetic").resolved()
    run = Run(config)
    run.prepare()
    metrics = _metrics(0.566, 0.556, 0.70)
    warning = sanity_warning(metrics)
    weights = {"finetune": [1.0, 0.0, 0.0, 0.0], "vanilla_kd": [1.0, 1.0, 0.0, 0.0], "selector": [0.5, 0.2, 0.3, 0.0]}
    rows = [{"method": m, "seed": 0, "metric_name": "accuracy", "metric": 0.6, "dev_metric": 0.6, "return": 0.0,
             "train_seconds": 1.0, "student_parameters": 10, "crashed": False, "mean_weights": w,
             "actions": [w], "curve": [0.5, 0.6]} for m, w in weights.items()]
    teacher = {"metric": 0.57, "dev_metric": 0.566, "parameters": 100, "warning": warning,
               "fine_tune": {"budget": teacher_budget(463, 32, 1.0), "steps": 15, "dev": 0.566, "majority_dev": 0.556,
                             "probe_dev": 0.70}}
    summary = write_report(run, rows, teacher, ["finetune", "response", "feature", "relation"], [],
                           config.distill_config())
    assert summary["suspect"] == ["vanilla_kd", "selector"]
    md = (run.dir / "results.md").read_text().splitlines()
    assert md[2] == f"**{warning}**"  # right under the title
    assert md[4].startswith("Suspect (they copy the teacher's outputs, knowledge `response` weighted above 0): "
                            "`vanilla_kd`, `selector`")
    assert any(line.startswith("| vanilla_kd † |") for line in md) and any(line.startswith("| finetune |") for line in md)
    assert any(line.startswith("Teacher fine-tuned for 15 optimizer steps of a budget of 15") for line in md)


def test_the_flags_name_the_cap_where_the_cap_cut_the_budget():
    from kd_env.teacher_check import more_budget_flags

    capped = {"steps": 3, "budget": teacher_budget(300, 8, 1.0, min_steps=150, max_steps=3)}
    assert more_budget_flags(capped) == "--teacher-max-steps 300 (the cap of 3 steps cut its budget; or --teacher-min-steps N)"
    floor = {"steps": 90, "budget": teacher_budget(250, 32, 1.0, min_steps=200, patience=3)}
    assert more_budget_flags(floor).startswith("--teacher-min-steps 400 (or --teacher-epochs E")


def test_a_run_made_before_the_recipe_fields_resumes(tmp_path: Path):
    import yaml

    from experiments.glue_ac import ExperimentConfig, Run

    config = ExperimentConfig(preset="text3", situations=[], methods=["vanilla_kd"], seeds=[0], out=str(tmp_path),
                              name="old").resolved()
    run = Run(config)
    run.prepare()
    path = run.dir / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    for key in ("teacher_min_steps", "teacher_patience"):  # config.yaml as written before issue 39
        del saved["distill_resolved"][key]
    path.write_text(yaml.safe_dump(saved))
    run.check()  # no difference: every unit records its teacher's weights_id
    saved["distill_resolved"]["teacher_epochs"] = 2.0
    path.write_text(yaml.safe_dump(saved))
    with pytest.raises(SystemExit, match="different config"):
        run.check()


def test_without_a_probe_the_warning_is_about_the_majority_class_alone():
    metrics = _metrics(0.5, 0.556, 0.0)
    del metrics["sanity"]["probe"]
    line = sanity_warning(metrics)
    assert line.startswith("WARNING: the teacher is no better than the majority class on dev (teacher 0.500, "
                           "majority class 0.556, linear probe nan)")
