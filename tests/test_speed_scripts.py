"""The speed scripts in perf/ that the README quotes: they run and print their rows."""

from __future__ import annotations

import importlib.util
import subprocess

import torch

from kd_env.knowledge import make_knowledge
from kd_env.models import ModelOutputs
from tests.helpers import PYTHON, ROOT, subprocess_env


def _engine_speed_module():
    spec = importlib.util.spec_from_file_location("engine_speed", ROOT / "perf" / "engine_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_relation_through_fsp_matrices_has_the_relation_value():
    """The README's Gram-trick speed-up compares two forms of the same loss."""
    naive = _engine_speed_module().RelationThroughFspMatrices()
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, 3:] = 0

    def outputs(widths):
        hidden = [torch.randn(3, 5, w, generator=gen) for w in widths]
        return ModelOutputs(logits=torch.randn(3, 2, generator=gen), hidden=hidden, attentions=None,
                            cls=hidden[-1][:, 0], mask=mask)

    student, teacher = outputs([6, 8, 8]), outputs([6, 8, 8])
    relation = make_knowledge(["relation"])[0]
    torch.testing.assert_close(naive(student, teacher, {}), relation(student, teacher, {}))


def _markdown_rows(stdout: str, columns: int) -> dict[str, list[str]]:
    """The body rows of the markdown tables in ``stdout`` with ``columns`` cells, by their first
    cell (bold marks removed)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == columns and not set(cells[0]) <= set("-"):
            rows[cells[0].strip("*")] = [c.strip("*") for c in cells]
    return rows


def test_engine_speed_prints_the_gram_speed_up_as_the_ratio_of_its_rates():
    """The Gram-form row is the ratio of the two rates printed above it (one repetition, one
    thread: each median is the single measurement), not a number of its own."""
    proc = subprocess.run([PYTHON, "perf/engine_speed.py", "--digits-only", "--relation-naive", "--reps", "1",
                           "--threads", "1"], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _markdown_rows(proc.stdout, 5)
    gram_row = "digits engine, all four knowledge types: optimizer steps/s"
    direct_row = "digits engine, all four, relation through H x H FSP matrices: optimizer steps/s"
    speed_row = "speed-up of the Gram form (all four knowledge types)"
    finetune_row = "digits engine, finetune only: optimizer steps/s"
    assert {gram_row, direct_row, speed_row, finetune_row} <= set(rows), proc.stdout
    for label in (gram_row, direct_row, speed_row, finetune_row):
        _, threads, median, spread, _ = rows[label]
        assert threads == "1", rows[label]
        assert spread == f"{median}-{median}", rows[label]  # one repetition: min = median = max
    gram, direct, finetune = (float(rows[label][2]) for label in (gram_row, direct_row, finetune_row))
    assert gram > 0 and direct > 0 and finetune > 0, proc.stdout
    assert rows[speed_row][2].endswith("x"), rows[speed_row]
    speed_up = float(rows[speed_row][2][:-1])
    # the rates are printed to whole steps/s and the speed-up to 0.1: allow for that rounding only
    exact = gram / direct
    assert abs(speed_up - exact) <= 0.05 + 1.01 * exact * (0.5 / gram + 0.5 / direct), (speed_up, gram, direct)


def test_batched_env_speed_prints_every_row_with_its_ratio():
    proc = subprocess.run([PYTHON, "perf/batched_env_speed.py", "--env", "kd_env/QuickKD-v0", "--sizes", "1,4",
                           "--async-copies", "0", "--rounds", "1", "--seconds", "0.3"], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "x |" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["single env", "batched, N = 1", "batched, N = 4"]
    assert rows[0].rstrip().endswith("| 1.00x |")
    assert all(float(r.split("|")[3]) > 0 for r in rows)  # steps/s per core measured, not blank
    assert "CPU:" in proc.stdout and "1 thread per process" in proc.stdout
