"""Reliability of the cached fine-tuned teacher (issue 38: every cached artefact is checked before use).

* A saved teacher's ``teacher.json`` holds a manifest (SHA-256 of every file) and the teacher's
  identity ``weights_id``; flipped bytes in an MLP teacher's ``model.pt`` or in a text teacher's
  weights are detected at load, warned about in one line naming the file, and the teacher is
  fine-tuned again (the same one: same seed), so a student trained afterwards scores as before.
* A summary whose recorded dev metric does not match the weights is refused and rebuilt.
* A teacher folder from before the manifest still loads, silently, and gains its manifest.
* The teacher's identity enters the benchmark cell's fingerprint and the glue_ac unit's check:
  results made with another teacher are recomputed, never mixed in.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.benchmark.cell import read_cell, teachers_used
from experiments.benchmark.grid import RESULT_FILE, build_grid, teachers_key
from kd_env import DistillConfig, get_preset
from kd_env.build import DEV_TOLERANCE, build_distiller, teacher_manifest, weights_id
from kd_env.io import atomic_write_json


def _digits(cache: Path) -> DistillConfig:
    return get_preset("digits", cache_dir=str(cache))  # students reach ~0.8 in its 150 steps


def _text(cache: Path, tiny_bert_dir: Path, text_csv: Path) -> DistillConfig:
    return DistillConfig(task=str(text_csv), teacher=str(tiny_bert_dir), student_layers=1, max_len=16, batch_size=8,
                         total_steps=4, steps_per_action=2, teacher_max_steps=2, train_examples=32, dev_probe_size=16,
                         progress=False, knowledge=["finetune", "response"], cache_dir=str(cache), threads=1)


def _teacher_folder(cache: Path) -> Path:
    folders = [f for f in (cache / "teachers").iterdir() if f.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def _student_score(config: DistillConfig, expect_warning: str | None = None) -> tuple[float, dict, dict]:
    """Build (warning ``expect_warning`` or silently), train a student for the whole budget with
    every knowledge on, and return its test metric, the teacher's weights and summary."""
    if expect_warning is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a sound cached teacher loads silently
            d = build_distiller(config)
        messages = ""
    else:
        with pytest.warns(RuntimeWarning) as record:
            d = build_distiller(config)
        messages = " ".join(str(w.message) for w in record)
        assert expect_warning in messages and "fine-tuning the teacher again" in messages, messages
    try:
        d.reset(0)
        while d.budget_left > 0:
            d.train_phase(np.ones(d.num_knowledge))
        score = float(d.evaluate("test")["main"])
        weights = {k: v.detach().cpu().clone() for k, v in d.teacher_model.state_dict().items()}
        return score, weights, dict(d.teacher_metrics)
    finally:
        d.close()


class _Weights:
    """A state dict seen as a module (what :func:`kd_env.build.weights_id` reads)."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state


def _flip_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _assert_same_weights(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_saved_teacher_has_a_manifest_of_every_file(tmp_path):
    cache = tmp_path / "cache"
    _, weights, metrics = _student_score(_digits(cache))
    folder = _teacher_folder(cache)
    summary = json.loads((folder / "teacher.json").read_text())
    assert set(summary["files"]) == {"model.pt"}
    assert summary["files"] == teacher_manifest(folder)
    assert summary["weights_id"] == weights_id(_Weights(weights)) == metrics["weights_id"]
    assert metrics["folder"] == str(folder)
    assert not list((cache / "teachers").glob("*.tmp"))


def test_flipped_bytes_in_an_mlp_teacher_are_detected_and_the_teacher_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    config = _digits(cache)
    before, reference, metrics = _student_score(config)
    assert before > 0.7  # the issue: a corrupted teacher gave 0.09-0.19
    checkpoint = _teacher_folder(cache) / "model.pt"
    _flip_bytes(checkpoint)
    after, weights, again = _student_score(config, expect_warning=str(checkpoint))
    # the same seed fine-tunes the same teacher: the same weights, identity and student score
    _assert_same_weights(weights, reference)
    assert again["weights_id"] == metrics["weights_id"]
    assert after == before
    assert set(torch.load(checkpoint, weights_only=True)) == set(reference)
    _student_score(config)  # the rebuilt folder passes every check, silently


def test_a_missing_teacher_file_is_detected_and_the_teacher_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    config = _digits(cache)
    before, reference, _ = _student_score(config)
    checkpoint = _teacher_folder(cache) / "model.pt"
    checkpoint.unlink()
    after, weights, _ = _student_score(config, expect_warning=f"{checkpoint} is missing")
    _assert_same_weights(weights, reference)
    assert after == before


def test_flipped_bytes_in_a_text_teacher_are_detected_and_the_teacher_rebuilt(tiny_bert_dir, text_csv, tmp_path):
    cache = tmp_path / "cache"
    config = _text(cache, tiny_bert_dir, text_csv)
    before, reference, metrics = _student_score(config)
    folder = _teacher_folder(cache)
    summary = json.loads((folder / "teacher.json").read_text())
    weights_file = next(name for name in summary["files"] if name.endswith((".safetensors", ".bin")))
    assert {"model/config.json", weights_file} <= set(summary["files"])  # tokenizer files are listed too
    _flip_bytes(folder / weights_file)
    after, weights, again = _student_score(config, expect_warning=str(folder / weights_file))
    _assert_same_weights(weights, reference)
    assert again["weights_id"] == metrics["weights_id"]
    assert after == before


@pytest.mark.parametrize("subset", [False, True], ids=["whole-dev", "check-subset"])
def test_a_summary_whose_dev_metric_is_not_the_teachers_is_refused_and_rebuilt(tmp_path, monkeypatch, subset):
    import kd_env.build as build

    if subset:  # as for a text task's dev split: a load checks a fixed seeded subset, recorded at save
        monkeypatch.setattr(build, "CHECK_EXAMPLES", 100)
    cache = tmp_path / "cache"
    config = _digits(cache)
    before, reference, metrics = _student_score(config)
    summary_path = _teacher_folder(cache) / "teacher.json"
    summary = json.loads(summary_path.read_text())
    n_dev = 359
    assert summary["check"]["examples"] == (100 if subset else n_dev)
    if not subset:
        assert summary["check"]["main"] == summary["dev"]["main"]
    record = summary["check"] if subset else summary["dev"]
    true_value = record["main"]
    record["main"] = true_value - 0.2 if true_value > 0.5 else true_value + 0.2
    if not subset:
        summary["check"]["main"] = record["main"]
    atomic_write_json(summary_path, summary)
    expected = "dev metric on its 100 check examples" if subset else "dev metric measures"
    after, weights, again = _student_score(config, expect_warning=expected)
    _assert_same_weights(weights, reference)
    assert after == before
    assert (again["check"] if subset else again["dev"])["main"] == pytest.approx(true_value, abs=DEV_TOLERANCE)
    _student_score(config)  # the rebuilt summary describes its weights: silent


def test_a_teacher_folder_without_a_manifest_still_loads_and_gains_one(tmp_path, monkeypatch):
    import kd_env.build as build

    cache = tmp_path / "cache"
    config = _digits(cache)
    before, reference, metrics = _student_score(config)
    summary_path = _teacher_folder(cache) / "teacher.json"
    summary = json.loads(summary_path.read_text())
    old = {k: v for k, v in summary.items() if k not in ("files", "weights_id", "check")}  # before issue 38
    atomic_write_json(summary_path, old)

    def fail(*args, **kwargs):
        raise AssertionError("an old-format teacher folder must be loaded, not fine-tuned again")

    monkeypatch.setattr(build, "train_classifier", fail)
    after, weights, again = _student_score(config)  # silently
    _assert_same_weights(weights, reference)
    assert after == before
    upgraded = json.loads(summary_path.read_text())
    assert upgraded["files"] == summary["files"] and upgraded["weights_id"] == summary["weights_id"]
    assert upgraded["check"] == summary["check"]
    assert again["weights_id"] == metrics["weights_id"]


def _retrained_teacher(folder: Path) -> str:
    """Stand for a teacher fine-tuned again into other weights (e.g. on another GPU): the weights
    move by a hair (same dev metric), with a valid manifest.  Returns the new ``weights_id``."""
    state = torch.load(folder / "model.pt", weights_only=True)
    first = next(k for k in state if k.endswith("weight"))
    state[first] = state[first] + 1e-7
    torch.save(state, folder / "model.pt")
    summary = json.loads((folder / "teacher.json").read_text())
    summary["files"] = teacher_manifest(folder)
    summary["weights_id"] = weights_id(_Weights(state))
    atomic_write_json(folder / "teacher.json", summary)
    return summary["weights_id"]


def test_the_teachers_identity_enters_the_fingerprints(tmp_path):
    cache = tmp_path / "cache"
    config = _digits(cache)
    d = build_distiller(config)

    class _Env:  # what teachers_used reads: an env's distiller(s)
        unwrapped = type("Base", (), {"distiller": d, "_distillers": {}})()

    teachers = teachers_used(_Env())
    d.close()
    folder = _teacher_folder(cache)
    assert teachers == {str(folder): json.loads((folder / "teacher.json").read_text())["weights_id"]}
    cell = build_grid(["random_hard"], ["kd_env/QuickKD-v0"], [0], eval_every=1, eval_episodes=1)[0]
    old_key = teachers_key(teachers)
    assert cell.fingerprint(old_key) != cell.fingerprint()  # cells from before teachers were recorded keep theirs

    # a finished cell on disk, made with this teacher, is read back while the teacher is unchanged
    out = tmp_path / "bench"
    cell_dir = out / cell.relative_dir()
    cell_dir.mkdir(parents=True)
    atomic_write_json(cell_dir / RESULT_FILE, {**cell.describe(old_key), "fingerprint": cell.fingerprint(old_key),
                                               "teachers": teachers})
    np.savez(cell_dir / "evaluations.npz", results=np.zeros(1))
    assert read_cell(out, cell) is not None

    # the teacher is fine-tuned again into other weights: it loads (sound), with another identity
    new_id = _retrained_teacher(folder)
    assert new_id != teachers[str(folder)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        d = build_distiller(config)
    assert d.teacher_metrics["weights_id"] == new_id
    d.close()
    assert cell.fingerprint(teachers_key({str(folder): new_id})) != cell.fingerprint(old_key)
    why: list[str] = []
    assert read_cell(out, cell, why) is None  # recomputed, never mixed with the new teacher's cells
    assert why and "teacher changed" in why[0] and str(folder) in why[0]

    # a legacy cell (no teachers recorded) keeps its settings-only fingerprint
    atomic_write_json(cell_dir / RESULT_FILE, {**cell.describe(), "fingerprint": cell.fingerprint()})
    assert read_cell(out, cell) is not None


def test_glue_ac_units_of_another_teacher_run_again(tmp_path):
    from experiments.glue_ac.config import ExperimentConfig
    from experiments.glue_ac.run import Run

    run = Run(ExperimentConfig(name="t", out=str(tmp_path)))
    run.teacher_key = "aaaa"
    run.save_unit({"method": "vanilla_kd", "seed": 0, "metric": 0.5})
    assert run.load_unit("vanilla_kd", 0)["teacher"] == "aaaa"
    run.teacher_key = "bbbb"  # the teacher's weights changed
    assert run.load_unit("vanilla_kd", 0) is None
    # a row written before teachers were recorded is kept
    run.store.write(run.unit_name("vanilla_kd", 1), {"method": "vanilla_kd", "seed": 1, "metric": 0.5})
    assert run.load_unit("vanilla_kd", 1) is not None
