"""glue_ac on the text path: the paper preset on a local GLUE folder (RTE layout, invented
sentence pairs) with a tiny BERT teacher built in code."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from experiments.glue_ac import ExperimentConfig, config_from_args, run_experiment
from tests.conftest import invented_sentences, write_text_csv


def _write_rte(folder: Path, n_train: int = 88, n_dev: int = 40) -> Path:
    rte = folder / "RTE"
    rte.mkdir(parents=True)
    rows = invented_sentences(n_train + n_dev)
    for name, part in (("train.tsv", rows[:n_train]), ("dev.tsv", rows[n_train:])):
        with open(rte / name, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(["index", "sentence1", "sentence2", "label"])
            for i, (text, label) in enumerate(part):
                w.writerow([i, text, "the film was shown .", "entailment" if label else "not_entailment"])
    return folder


@pytest.fixture()
def glue_dir(tmp_path: Path) -> Path:
    return _write_rte(tmp_path / "glue")


def test_paper_preset_on_local_glue_with_a_local_teacher(glue_dir: Path, tiny_bert_dir: Path, tmp_path: Path):
    config = ExperimentConfig(
        preset="paper",
        distill={"task": "rte", "data_dir": str(glue_dir), "teacher": str(tiny_bert_dir), "student_layers": 2,
                 "max_len": 32, "batch_size": 8, "total_steps": 6, "steps_per_action": 3, "dev_probe_size": 8,
                 "teacher_max_steps": 4, "device": "cpu", "progress": False},
        episodes=2, seeds=[0, 1], methods=["selector", "vanilla_kd", "only:relation"], out=str(tmp_path / "runs"),
        name="paper-rte")
    summary = run_experiment(config)
    run_dir = tmp_path / "runs" / "paper-rte"
    rows = json.loads((run_dir / "results.json").read_text())["rows"]
    assert sorted((r["method"], r["seed"]) for r in rows) == sorted(
        (m, s) for m in ("selector", "vanilla_kd", "only:relation") for s in (0, 1))
    assert summary["metric"] == "accuracy"
    assert summary["task"] == "rte"
    for r in rows:
        assert 0.0 <= r["metric"] <= 1.0
        assert len(r["actions"]) == 2 and len(r["curve"]) == 3  # 2 phases, plus the probe before training
    # GLUE students are scored on GLUE dev (the env's probe is carved from train): 40 examples
    assert all(abs(r["metric"] * 40 - round(r["metric"] * 40)) < 1e-9 for r in rows)
    assert (run_dir / "selection_heatmap.png").is_file()


def test_csv_with_class_names_and_labels_flag_records_the_mapping(tiny_bert_dir: Path, tmp_path: Path):
    """Issue 13 item 3: a CSV whose labels are names runs, in the order --labels gives, and the
    name -> id mapping is in config.yaml and results.json."""
    named = [(text, "good" if label else "bad") for text, label in invented_sentences(64)]
    task = write_text_csv(tmp_path / "named.csv", named)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"distill": {
        "max_len": 24, "batch_size": 8, "total_steps": 4, "steps_per_action": 2, "dev_probe_size": 8,
        "teacher_max_steps": 2, "progress": False}}))
    config = config_from_args(["--config", str(cfg), "--task", str(task), "--teacher", str(tiny_bert_dir),
                               "--labels", "good, bad", "--methods", "vanilla_kd", "--seeds", "0", "--episodes", "0",
                               "--out", str(tmp_path / "runs"), "--name", "named"])
    assert config.distill_config().labels == ("good", "bad")
    run_experiment(config)
    run_dir = tmp_path / "runs" / "named"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["label_mapping"] == {"good": 0, "bad": 1}
    assert saved["distill_resolved"]["labels"] == ["good", "bad"]
    assert json.loads((run_dir / "results.json").read_text())["label_mapping"] == {"good": 0, "bad": 1}
