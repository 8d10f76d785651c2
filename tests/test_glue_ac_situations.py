"""glue_ac's situations (issue 28 items 4 and 5): ``--situation`` / ``--instance-set``, the
per-situation study ``--situations`` with its report and heatmap, its resume, ``transfer`` from an
agent checkpoint, and the demo's default situations.  Tiny: the quick digits preset, a small
instance set registered here, one thread, in this process."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments.glue_ac import (
    DEMO_SITUATIONS,
    EXPERIMENT_PRESETS,
    ExperimentConfig,
    config_from_args,
    main,
    run_experiment,
)
from kd_env import Instance, InstanceSet, register_instance_set

SET = "glue-ac-test-situations"
SITUATIONS = ["clean", "scarce-noisy"]
METHODS = ["selector", "vanilla_kd", "finetune", "dynamic_kd"]
STUDY = ["--instance-set", SET, "--situations", ",".join(SITUATIONS), "--methods", ",".join(METHODS),
         "--seeds", "0,1", "--episodes", "1", "--workers", "1"]


@pytest.fixture(scope="module", autouse=True)
def instance_set():
    register_instance_set(InstanceSet(
        name=SET, base="quick",
        instances=[Instance("clean", {}), Instance("scarce-noisy", {"label_fraction": 0.2, "label_noise": 0.3})],
        held_out=["scarce-noisy"], description="glue_ac tests"), overwrite=True)


def _main(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def study(tmp_path_factory, instance_set) -> Path:
    out = tmp_path_factory.mktemp("runs")
    stdout = _main([*STUDY, "--out", str(out), "--name", "study"])
    (out / "study.stdout").write_text(stdout)
    return out / "study"


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.json") if "units" in p.parts
            or p.name == "done.json"}


# ---- one situation ----------------------------------------------------------------------------


def test_situation_applies_its_overrides_and_is_recorded(tmp_path: Path):
    from kd_env.build import build_distiller

    config = config_from_args(["--instance-set", SET, "--situation", "scarce-noisy", "--methods", "finetune",
                               "--seeds", "0", "--episodes", "0", "--workers", "1", "--out", str(tmp_path)])
    c = config.resolved()
    assert (c.preset, c.name) == ("quick", "glue_ac-quick-scarce-noisy")  # the set's own preset
    run_experiment(config)
    saved = yaml.safe_load((tmp_path / c.name / "config.yaml").read_text())
    assert (saved["situation"], saved["instance_set"]) == ("scarce-noisy", SET)
    assert saved["distill"] == {}  # the situation's overrides are not the user's
    assert (saved["distill_resolved"]["label_fraction"], saved["distill_resolved"]["label_noise"]) == (0.2, 0.3)
    assert "Situation `scarce-noisy`" in (tmp_path / c.name / "results.md").read_text()
    distiller = build_distiller(c.distill_config())
    try:
        n = len(distiller.train_data)
        assert distiller.label_mask.sum() == round(0.2 * n)
        assert (distiller.student_labels != distiller.train_data.labels).sum() == round(0.3 * n)
    finally:
        distiller.close()
    # a registered set of the package: digits-switch over the quick preset (same task)
    switch = config_from_args(["--preset", "quick", "--instance-set", "digits-switch", "--situation",
                               "labels15-noisy35-weak"]).resolved().distill_config()
    assert (switch.label_fraction, switch.label_noise, switch.teacher_train_fraction, switch.total_steps) == \
        (0.15, 0.35, 0.03, 40)
    # a setting the situation does not make goes over it; the same value as the situation's is no clash
    mine = config_from_args(["--instance-set", SET, "--situation", "scarce-noisy", "--label-noise", "0.3"])
    assert mine.resolved().distill_config().label_noise == 0.3


@pytest.mark.parametrize("argv, message", [
    (["--situation", "nope"], f"unknown situation(s) ['nope'] of instance set '{SET}'; valid: ['clean', "
                              f"'scarce-noisy']"),
    (["--situations", "clean,nope"], "unknown situation(s) ['nope']"),
    (["--situation", "scarce-noisy", "--label-noise", "0.1"],
     "label_noise 0.1 contradicts situation 'scarce-noisy' of 'glue-ac-test-situations' (label_noise 0.3)"),
    (["--situation", "clean", "--label-fraction", "0.5"], "label_fraction 0.5 contradicts situation 'clean'"),
    (["--situation", "clean", "--preset", "text3"], "pass --preset quick (or leave --preset out)"),
    (["--situation", "clean", "--situations", "clean"], "not both"),
])
def test_bad_situations_are_clear_errors_and_write_nothing(argv, message, tmp_path: Path):
    with pytest.raises(SystemExit) as exc:
        config_from_args(["--instance-set", SET, *argv, "--out", str(tmp_path)])
    assert message in str(exc.value.code), exc.value.code
    assert not any(tmp_path.iterdir())


def test_unknown_situation_of_the_default_set_lists_its_names(tmp_path: Path):
    with pytest.raises(SystemExit) as exc:
        config_from_args(["--situation", "rt-nope", "--out", str(tmp_path)])
    assert "of instance set 'text3-situations'; valid: ['rt-clean', 'rt-labels5'" in str(exc.value.code)
    assert not any(tmp_path.iterdir())


def test_demo_runs_the_text3_default_situations_unless_told_otherwise():
    assert EXPERIMENT_PRESETS["text3"].situations is DEMO_SITUATIONS
    c = config_from_args([]).resolved()
    assert (c.preset, c.situations, c.instance_set, c.name) == \
        ("text3", DEMO_SITUATIONS, "text3-situations", "glue_ac-text3-situations")
    for argv in (["--situations", "none"], ["--label-fraction", "0.1"], ["--task", "sst2"]):
        assert not config_from_args(argv).situations, argv  # one run, as before
    one = config_from_args(["--situation", "rt-labels5"]).resolved()
    assert (one.situations, one.situation, one.distill_config().label_fraction) == (None, "rt-labels5", 0.05)
    assert config_from_args(["--preset", "quick"]).situations is None
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "$(PY) -m experiments.glue_ac $(ARGS)" in makefile
    with pytest.raises(ValueError, match="run_situations"):
        run_experiment(ExperimentConfig(preset="quick", instance_set=SET, situations=SITUATIONS))


# ---- the study per situation ----------------------------------------------------------------


def test_study_writes_one_run_per_situation_and_the_per_situation_report(study: Path):
    report = json.loads((study / "situations.json").read_text())
    assert report["situations"] == SITUATIONS and report["instance_set"] == SET
    stdout = (study.parent / "study.stdout").read_text()
    assert "one study per situation" in stdout and "W/T/L" in stdout and "wall time per stage" in stdout
    assert "(16 students, 1 at a time)" in stdout  # 2 situations x 4 methods x 2 seeds, summed
    md = (study / "situations.md").read_text()
    for name in SITUATIONS:
        run_dir = study / name
        assert (run_dir / "selector" / "done.json").is_file()  # a selector trained on this situation's episodes
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["situation"] == name and saved["name"] == f"study/{name}"
        assert saved["distill_resolved"]["label_noise"] == (0.3 if name == "scarce-noisy" else 0.0)
        rows = _results(run_dir)["rows"]
        test = {m: {r["seed"]: r["metric"] for r in rows if r["method"] == m} for m in METHODS}
        dev = {m: np.mean([r["dev_metric"] for r in rows if r["method"] == m]) for m in METHODS}
        per = report["per_situation"][name]
        assert [t["method"] for t in per["methods"]] == METHODS and all(t["n"] == 2 for t in per["methods"])
        for t in per["methods"]:
            assert t["mean"] == pytest.approx(np.mean(list(test[t["method"]].values())))
            assert t["std"] == pytest.approx(np.std(list(test[t["method"]].values()), ddof=1))
        assert per["winner"] == max(METHODS, key=lambda m: np.mean(list(test[m].values())))
        assert per["best_fixed"] == max(("vanilla_kd", "finetune"), key=lambda m: dev[m])  # chosen on dev
        comps = per["comparisons"]["selector"]
        assert set(comps) == {"best_fixed", "vanilla_kd", "dynamic_kd"}
        assert comps["best_fixed"]["baseline"] == per["best_fixed"]
        for v in comps.values():
            diffs = [test["selector"][s] - test[v["baseline"]][s] for s in (0, 1)]
            assert v["n"] == 2 and v["seeds"] == [0, 1]
            assert v["mean"] == pytest.approx(np.mean(diffs))
            assert min(diffs) - 1e-12 <= v["low"] <= v["mean"] <= v["high"] <= max(diffs) + 1e-12
            assert (v["wins"], v["ties"], v["losses"]) == (sum(d > 0 for d in diffs), sum(d == 0 for d in diffs),
                                                           sum(d < 0 for d in diffs))
        assert np.asarray(per["heatmaps"]["selector"]).shape == (4, 4)  # knowledge x phase
        assert f"| {name} | selector | `dynamic_kd` |" in md
    assert "95% bca bootstrap CI over the seeds" in md and "| winner |" in md and "| best fixed (chosen on dev) |" in md
    # pooled over the 2 situations: the mean of their mean paired differences, a hierarchical interval
    rows = {(r["method"], r["minus"]): r for r in report["pooled"]["all situations"]["rows"]}
    for ref in ("best_fixed", "vanilla_kd", "dynamic_kd"):
        r = rows[("selector", ref)]
        means = [report["per_situation"][n]["comparisons"]["selector"][ref]["mean"] for n in SITUATIONS]
        assert r["mean"] == pytest.approx(np.mean(means)) and r["low"] <= r["mean"] <= r["high"]
        assert r["situations_won"] == sum(m > 0 for m in means) and r["situations"] == 2
    assert "Over all situations" in md and "resampling situations, then evaluation seeds within each" in md


def test_study_heatmap_has_a_panel_per_situation(study: Path):
    import matplotlib.image as mpimg

    grid = mpimg.imread(study / "situations-heatmap.png")
    one = mpimg.imread(study / "clean" / "selection_heatmap.png")
    assert grid.ndim == 3 and grid.std() > 0.01
    assert grid.shape[1] > 1.6 * one.shape[1]  # two panels side by side


def test_study_rerun_redoes_only_what_is_missing(study: Path):
    before = _mtimes(study)
    report = json.loads((study / "situations.json").read_text())
    missing = study / "scarce-noisy" / "units" / "finetune__seed1.json"
    old = json.loads(missing.read_text())
    missing.unlink()
    stdout = _main([*STUDY, "--out", str(study.parent), "--name", "study"])
    after = _mtimes(study)
    changed = sorted(k for k in after if after[k] != before.get(k))
    assert changed == ["scarce-noisy/units/finetune__seed1.json"]  # no selector retrained, no other student
    assert json.loads(missing.read_text())["metric"] == old["metric"]
    again = json.loads((study / "situations.json").read_text())
    assert again["per_situation"] == report["per_situation"]
    assert "(1 students, 1 at a time)" in stdout


# ---- transfer -------------------------------------------------------------------------------


def test_transfer_acts_as_the_checkpoint_with_no_training(study: Path, tmp_path: Path):
    """The clean situation's selector, carried into a run of the same situation as `transfer`,
    gives exactly that selector's students; another checkpoint in the same folder redistils the
    transfer students only."""
    ckpt = study / "clean" / "selector" / "agent"
    stamp = {p.name: p.stat().st_mtime_ns for p in ckpt.iterdir()}
    argv = ["--instance-set", SET, "--situation", "clean", "--methods", "vanilla_kd", "--seeds", "0,1",
            "--episodes", "0", "--workers", "1", "--out", str(tmp_path), "--name", "t"]
    _main([*argv, "--transfer-checkpoint", str(ckpt)])
    run_dir = tmp_path / "t"
    summary = _results(run_dir)
    assert summary["transfer_checkpoint"] == str(ckpt) and set(summary["transfer_vs"]) == {"vanilla_kd"}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["transfer_checkpoint"] == str(ckpt)
    assert not (run_dir / "selector").exists()  # no training on this task
    assert {p.name: p.stat().st_mtime_ns for p in ckpt.iterdir()} == stamp
    assert (run_dir / "transfer_heatmap.png").is_file()
    selector = {r["seed"]: r for r in _results(study / "clean")["rows"] if r["method"] == "selector"}
    transfer = {r["seed"]: r for r in summary["rows"] if r["method"] == "transfer"}
    assert set(transfer) == {0, 1}
    for seed, r in transfer.items():
        assert r["actions"] == selector[seed]["actions"] and r["metric"] == selector[seed]["metric"]
    # another checkpoint: the transfer students again, vanilla KD's kept
    before = _mtimes(run_dir)
    other = study / "scarce-noisy" / "selector" / "agent"
    _main([*argv, "--transfer-checkpoint", str(other)])
    after = _mtimes(run_dir)
    assert sorted(k for k in after if after[k] != before[k]) == ["units/transfer__seed0.json",
                                                                 "units/transfer__seed1.json"]
    unit = json.loads((run_dir / "units" / "transfer__seed0.json").read_text())
    assert unit["checkpoint"] == str(other)


def test_transfer_in_the_study_gets_its_own_heatmap_row_and_comparisons(study: Path, tmp_path: Path):
    from experiments.glue_ac import write_situations

    # the study's report from its runs' summaries, with a transfer row added to each (no distilling)
    runs = {name: _results(study / name) for name in SITUATIONS}
    for summary in runs.values():
        summary["rows"] += [{**r, "method": "transfer"} for r in summary["rows"] if r["method"] == "selector"]
    # the study's config with a transfer checkpoint (not checked: nothing is loaded here)
    config = dataclasses.replace(ExperimentConfig(preset="quick", instance_set=SET, situations=SITUATIONS,
                                                  methods=METHODS, seeds=[0, 1], name="study").resolved(),
                                 methods=[*METHODS, "transfer"], transfer_checkpoint="ckpt")
    report = write_situations(config, tmp_path, runs)
    for name in SITUATIONS:
        comps = report["per_situation"][name]["comparisons"]
        assert set(comps) == {"selector", "transfer"}
        assert comps["transfer"]["vanilla_kd"]["mean"] == pytest.approx(comps["selector"]["vanilla_kd"]["mean"])
    import matplotlib.image as mpimg

    grid = mpimg.imread(tmp_path / "situations-heatmap.png")
    single_row = mpimg.imread(study / "situations-heatmap.png")
    assert grid.shape[0] > 1.5 * single_row.shape[0]  # a second row of panels
    assert "| scarce-noisy | transfer | `dynamic_kd` |" in (tmp_path / "situations.md").read_text()


def test_a_checkpoint_for_another_observation_or_action_mode_fails_early_with_a_hint(study: Path, tmp_path: Path):
    ckpt = str(study / "clean" / "selector" / "agent")
    base = ["--instance-set", SET, "--situation", "clean", "--transfer-checkpoint", ckpt, "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:  # before any env is built: config_from_args builds none
        config_from_args([*base, "--observation", "observable"])
    message = str(exc.value.code)
    assert "was saved for another observation space (17 entries) than this run's observation 'observable' " \
           "(24 entries)" in message
    assert "the checkpoint was trained with --observation summary and --action-mode weights: pass the same" in message
    with pytest.raises(SystemExit) as exc:
        config_from_args([*base, "--action-mode", "mask"])
    assert "was saved for action_mode 'weights', this env has 'mask'" in str(exc.value.code)
    assert "--action-mode weights" in str(exc.value.code)
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_with_other_network_shapes_fails_when_loaded_before_the_run_folder(study: Path,
                                                                                       tmp_path: Path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(study / "clean" / "selector" / "agent", ckpt)
    header = json.loads((ckpt / "agent.json").read_text())
    header["hyperparameters"]["hidden_sizes"] = [8, 8]  # the header passes; the weights do not fit
    (ckpt / "agent.json").write_text(json.dumps(header))
    config = config_from_args(["--instance-set", SET, "--situation", "clean", "--methods", "vanilla_kd", "--seeds",
                               "0", "--episodes", "0", "--workers", "1", "--transfer-checkpoint", str(ckpt),
                               "--out", str(tmp_path / "runs"), "--name", "shapes"])
    with pytest.raises(SystemExit) as exc:
        run_experiment(config)
    assert f"--transfer-checkpoint {ckpt}: checkpoint does not fit this 'ac' agent" in str(exc.value.code)
    assert "--observation summary" in str(exc.value.code)
    assert not (tmp_path / "runs" / "shapes").exists()


def test_the_study_shows_the_dev_headroom_of_each_situation_and_says_where_there_is_none(tmp_path):
    import json as _json

    from experiments.glue_ac.situations import _headroom_markdown, dev_headroom

    design = {"choice_seeds": [0, 1], "check_seeds": [100, 101], "rows": [
        {"instance": "a", "constant": "fixed:0100", "switching": "fixed:0100", "value": 0.0,
         "check": {"fixed:0100": 0.80, "fixed:1100": 0.75, "agent:dynamic_kd": 0.77}},
        {"instance": "b", "constant": "fixed:1111", "switching": "schedule:1110>1111@2", "value": 0.004,
         "check": {"fixed:1111": 0.700, "schedule:1110>1111@2": 0.704, "fixed:1100": 0.695,
                   "agent:dynamic_kd": 0.71}}]}
    path = tmp_path / "design.json"
    path.write_text(_json.dumps(design))
    h = dev_headroom(str(path), ["a", "b", "not-measured"])
    assert list(h["situations"]) == ["a", "b"]
    a, b = h["situations"]["a"], h["situations"]["b"]
    assert a["oracle_minus_vanilla_kd"] == pytest.approx(0.05) and a["oracle_minus_dynamic_kd"] == pytest.approx(0.03)
    assert a["has_headroom"] and not b["has_headroom"]  # b: +0.009 over vanilla KD, under the 0.02 threshold
    assert b["oracle"] == pytest.approx(0.704) and b["oracle_minus_dynamic_kd"] == pytest.approx(-0.006)
    text = "\n".join(_headroom_markdown(h))
    assert "No headroom on dev in `b`" in text and "`a`" not in text.split("No headroom")[1]
    assert dev_headroom(str(tmp_path / "absent.json"), ["a"])["missing"]
    assert dev_headroom(None, ["a"]) is None and dev_headroom("", ["a"]) is None


def test_the_study_says_when_a_learned_methods_weights_are_flat():
    from experiments.glue_ac.situations import _flatness_markdown, weight_spread

    flat = [[0.5, 0.51], [0.49, 0.5], [0.5, 0.5]]  # knowledge x phase
    learned = [[0.9, 0.95], [0.3, 0.2], [0.0, 0.1]]
    assert weight_spread(flat) == pytest.approx(0.01) and weight_spread(learned) == pytest.approx(0.9)
    text = "\n".join(_flatness_markdown({"s": {"heatmaps": {"selector": flat, "transfer": learned}}}))
    assert "`s`, `selector`: **flat**" in text and "about 0.50" in text
    assert "`s`, `transfer`: not flat" in text and "0.90" in text
