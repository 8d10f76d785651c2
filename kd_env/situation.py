"""What a user can know about their own distillation situation, before training a student.

A person distilling their own model does not know how noisy their labels are or how their teacher
was made, but they can count their labels, score their teacher on their dev data and compare its
predictions with their gold labels.  :func:`observable_situation` computes exactly those numbers
from a :class:`~kd_env.engine.Distiller` (its distillation set as the student sees it, its dev
probe and its teacher), each scaled into [0, 1] by a fixed rule (not by a set's range), so that
situations of different tasks (digits and text) share one space:

=================================  ===============================================================
feature                            how it is computed
=================================  ===============================================================
``labelled_count``                 ``log10(1 + labelled examples) / 5`` (100k labels -> 1)
``labelled_share``                 labelled examples / examples in the distillation set
``teacher_dev_accuracy``           the teacher's accuracy on the dev probe
``teacher_dev_skill``              the same above chance: ``(acc - 1/C) / (1 - 1/C)``, clipped
``teacher_dev_ece``                the teacher's expected calibration error on the dev probe
                                   (15 equal-width confidence bins)
``teacher_gold_disagreement``      share of the labelled distillation examples whose gold label
                                   (as the user has it: noisy where the labels are) is not the
                                   teacher's prediction: an estimate of label noise from data
``student_teacher_param_ratio``    student parameters / teacher parameters
``teacher_dev_over_majority``      (v2 only) the teacher's dev-probe accuracy above the majority
                                   class's: ``(acc - maj) / (1 - maj)``, clipped, where ``maj`` is
                                   the probe's most frequent class's share: 0 for a teacher that
                                   learned nothing a constant guess does not know
=================================  ===============================================================

The first seven are :data:`SITUATION_FEATURES`, the layout of the ``observable``,
``observable_only`` and ``portable`` observations (and of every policy checkpoint trained on them:
it never changes).  :data:`SITUATION_FEATURES_V2` appends ``teacher_dev_over_majority`` (issue 39:
on a small set a teacher can sit at the majority class, which ``teacher_dev_skill``, skill above
*uniform* chance, does not show when the classes are unbalanced); the opt-in observations
``observable_v2`` and ``portable_v2`` carry it (:func:`observable_situation_v2`).

None of them reads the situation's true configuration (the noise rate, the teacher's training
share or epochs): ``tests/test_situation.py`` checks that each moves with the data, not with a
config field copied over.  The result is computed once per distiller and shared by its copies.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Distiller

__all__ = ["SITUATION_FEATURES", "SITUATION_FEATURES_V2", "observable_situation", "observable_situation_v2",
           "expected_calibration_error"]

#: the names of :func:`observable_situation`'s entries, in order (a fixed layout: checkpoints of
#: policies trained on ``observable``, ``observable_only`` and ``portable`` are checked against it)
SITUATION_FEATURES = ("labelled_count", "labelled_share", "teacher_dev_accuracy", "teacher_dev_skill",
                      "teacher_dev_ece", "teacher_gold_disagreement", "student_teacher_param_ratio")
#: the names of :func:`observable_situation_v2`'s entries: :data:`SITUATION_FEATURES`, then the
#: teacher's dev skill over the majority class
SITUATION_FEATURES_V2 = (*SITUATION_FEATURES, "teacher_dev_over_majority")

ECE_BINS = 15


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of class probabilities ``probs`` (N, C) against ``labels`` (N,):
    the confidence-weighted gap between confidence and accuracy over ``bins`` equal-width bins."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected_calibration_error needs probs (N, C) and labels (N,), N > 0; got "
                         f"{probs.shape} and {labels.shape}")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(conf[sel].mean() - correct[sel].mean())
    return float(total)


@torch.no_grad()
def _teacher_logits(distiller: "Distiller", sampler, indices: np.ndarray, live: bool) -> torch.Tensor:
    """The teacher's logits on ``indices`` of ``sampler``: from the teacher-output cache (the
    distillation set) or by running the teacher (``live``; the dev probe), in batches."""
    out = []
    size = max(1, int(distiller.config.eval_batch_size))
    model = distiller.teacher_model
    was_training = model.training if model is not None else False
    if live and model is not None:
        model.eval()
    try:
        for start in range(0, len(indices), size):
            batch = {k: v.to(distiller.device) for k, v in sampler.batch(indices[start:start + size]).items()}
            if live:
                if model is None:
                    raise ValueError("observable_situation needs the distiller's teacher_model to score the dev probe")
                out.append(model(batch).logits.float().cpu())
            else:
                out.append(distiller.teacher.outputs(batch).logits.float().cpu())
    finally:
        if live and model is not None:
            model.train(was_training)
    return torch.cat(out)


def _count(module) -> int:
    return int(sum(p.numel() for p in module.parameters())) if module is not None else 0


def observable_situation(distiller: "Distiller") -> np.ndarray:
    """The user-observable situation of ``distiller`` (:data:`SITUATION_FEATURES`, float32, each in
    [0, 1]); computed once and kept in ``distiller.situation_cache`` (shared by its copies)."""
    return observable_situation_v2(distiller)[: len(SITUATION_FEATURES)]


def observable_situation_v2(distiller: "Distiller") -> np.ndarray:
    """:func:`observable_situation` followed by ``teacher_dev_over_majority``
    (:data:`SITUATION_FEATURES_V2`, float32, each in [0, 1]); computed once, as it is."""
    cache = distiller.situation_cache
    if "observable_v2" in cache:
        return cache["observable_v2"]
    task = distiller.task
    if task.is_regression:
        raise ValueError("the observable situation needs a classification task (teacher accuracy and "
                         "calibration are undefined for regression)")
    num_classes = max(2, int(task.num_labels))
    train = distiller.train_data
    n = len(train)
    labelled = np.arange(n) if distiller.label_mask is None else np.flatnonzero(distiller.label_mask)
    gold = train.labels if distiller.student_labels is None else distiller.student_labels
    t_train = _teacher_logits(distiller, train, labelled, live=False)
    disagreement = float((t_train.argmax(-1).numpy() != np.asarray(gold)[labelled]).mean())
    probe = np.asarray(distiller.probe_indices)
    t_dev = _teacher_logits(distiller, distiller.dev_data, probe, live=True)
    dev_labels = np.asarray(distiller.dev_data.labels)[probe]
    probs = torch.softmax(t_dev, -1).numpy()
    accuracy = float((probs.argmax(1) == dev_labels).mean())
    skill = (accuracy - 1.0 / num_classes) / (1.0 - 1.0 / num_classes)
    majority = float(np.bincount(dev_labels.astype(np.int64), minlength=num_classes).max() / max(1, len(dev_labels)))
    over_majority = (accuracy - majority) / (1.0 - majority) if majority < 1 else 0.0
    ece = expected_calibration_error(probs, dev_labels)
    student = _count(distiller.student.model if hasattr(distiller.student, "model") else distiller.student)
    teacher = _count(distiller.teacher_model)
    ratio = student / teacher if teacher else 1.0
    values = [math.log10(1 + len(labelled)) / 5.0, len(labelled) / max(1, n), accuracy, skill, ece, disagreement,
              ratio, over_majority]
    out = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0).astype(np.float32)
    cache["observable_v2"] = out
    return out
