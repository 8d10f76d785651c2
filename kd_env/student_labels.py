"""The distillation set's labels as the student sees them in a situation: some flipped
(``DistillConfig.label_noise``), only some kept (``DistillConfig.label_fraction``).  Fixed by the
config's seed, so the same across the episodes of an instance (:mod:`kd_env.instances`);
:class:`~kd_env.engine.Distiller` trains on them."""

from __future__ import annotations

import numpy as np

from .config import DistillConfig

__all__ = ["student_label_view"]


def student_label_view(labels: np.ndarray, num_labels: int,
                       config: DistillConfig) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The distillation set's labels as the student sees them under ``config``'s situation.

    Returns ``(student_labels, label_mask)``: ``student_labels`` is ``labels`` with exactly
    ``round(label_noise * N)`` entries (a seeded choice) flipped to a uniformly drawn *other*
    class, or ``None`` without noise; ``label_mask`` marks the ``max(1, round(label_fraction *
    N))`` examples (a seeded choice) that have a gold label, or ``None`` when all have one.
    Both depend only on ``config.seed``, so they are fixed across the episodes of an instance.
    """
    n = len(labels)
    student_labels = label_mask = None
    if config.label_noise > 0:
        if num_labels < 2:
            raise ValueError("config.label_noise needs a classification task (regression labels cannot flip)")
        rng = np.random.default_rng([config.seed, 2718])
        flip = rng.choice(n, size=int(round(config.label_noise * n)), replace=False)
        student_labels = np.asarray(labels).copy()
        shift = rng.integers(1, num_labels, size=len(flip))
        student_labels[flip] = (student_labels[flip] + shift) % num_labels
    if config.label_fraction < 1:
        rng = np.random.default_rng([config.seed, 3141])
        label_mask = np.zeros(n, dtype=bool)
        label_mask[rng.choice(n, size=max(1, int(round(config.label_fraction * n))), replace=False)] = True
    return student_labels, label_mask
