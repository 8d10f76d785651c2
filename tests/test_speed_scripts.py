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


def test_engine_speed_times_the_gram_form_against_the_fsp_matrices():
    proc = subprocess.run([PYTHON, "perf/engine_speed.py", "--digits-only", "--relation-naive", "--reps", "1",
                           "--threads", "1"], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("digits engine, all four knowledge types: optimizer steps/s",
                "digits engine, all four, relation through H x H FSP matrices: optimizer steps/s",
                "speed-up of the Gram form"):
        assert row in proc.stdout, proc.stdout


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
