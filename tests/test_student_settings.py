"""experiments.student_settings: a grid of distillation settings, each a glue_ac run of the
fixed methods, compared in one table (on the digits ``quick`` preset)."""

from __future__ import annotations

import json

import pytest

from experiments.student_settings import DEFAULT_GRID, load_grid, main


def _grid(tmp_path, text: str):
    path = tmp_path / "grid.yml"
    path.write_text(text)
    return path


def test_grid_runs_and_compares(tmp_path, capsys):
    grid = _grid(tmp_path, "preset: quick\nsettings:\n  base: {}\n  slow: {lr: 0.0003}\n")
    assert main(["--grid", str(grid), "--seeds", "0,1", "--methods", "finetune,vanilla_kd",
                 "--out", str(tmp_path / "runs"), "--name", "g"]) == 0
    out = tmp_path / "runs" / "g"
    data = json.loads((out / "comparison.json").read_text())
    assert [s["setting"] for s in data["settings"]] == ["base", "slow"]
    base, slow = data["settings"]
    assert set(base["methods"]) == {"finetune", "vanilla_kd"} and base["methods"]["finetune"]["n"] == 2
    for s in (base, slow):
        best = s["methods"][s["best_on_dev"]]
        assert s["best_dev"] == max(m["dev_mean"] for m in s["methods"].values()) == best["dev_mean"]
        assert s["share_of_teacher"] == pytest.approx(best["mean"] / s["teacher"]["metric"])
        assert s["vanilla_kd_minus_finetune"]["n"] == 2
    # a 10x smaller learning rate over 40 steps learns less: the grid really changes the students
    assert slow["methods"]["finetune"]["mean"] < base["methods"]["finetune"]["mean"]
    assert (out / "base" / "results.json").exists() and (out / "slow" / "units").is_dir()
    table = (out / "comparison.md").read_text()
    assert "| base | (preset) |" in table and "lr=0.0003" in table and "Best setting on dev" in table
    assert "share of teacher" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("settings: []\n", "non-empty 'settings' mapping"),
    ("preset: quick\nsettings:\n  a: {lr: -1}\n", "setting 'a': config.lr must be > 0"),
    ("preset: quick\nsettings:\n  a: {pooling: max}\n", "config.pooling must be one of"),
    ("preset: quick\nsetting:\n  a: {}\n", "non-empty 'settings' mapping"),
    ("preset: nope\nsettings:\n  a: {}\n", "unknown preset 'nope'"),
])
def test_bad_grid_is_a_clear_error(tmp_path, text, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(")):
        load_grid(_grid(tmp_path, text))


def test_only_names_settings_of_the_grid(tmp_path, capsys):
    grid = _grid(tmp_path, "preset: quick\nsettings:\n  base: {}\n")
    with pytest.raises(SystemExit):
        main(["--grid", str(grid), "--only", "other", "--out", str(tmp_path)])
    assert "unknown setting(s) ['other']; the grid has ['base']" in capsys.readouterr().err


def test_default_grid_is_valid():
    preset, settings = load_grid(DEFAULT_GRID)
    assert preset == "text" and "mean" in settings


def test_finished_settings_are_read_back_not_rerun(tmp_path, monkeypatch):
    grid = _grid(tmp_path, "preset: quick\nsettings:\n  base: {}\n")
    args = ["--grid", str(grid), "--seeds", "0", "--methods", "finetune", "--out", str(tmp_path / "runs"), "--name", "g"]
    assert main(args) == 0
    first = (tmp_path / "runs" / "g" / "comparison.md").read_text()
    import experiments.student_settings as module

    monkeypatch.setattr(module, "run_experiment", lambda config: pytest.fail("a finished setting was rerun"))
    assert main(args) == 0
    assert (tmp_path / "runs" / "g" / "comparison.md").read_text() == first
