"""What a training phase measures: :class:`PhaseStats`, and the prediction statistics of a batch
that the observations read (CE, accuracy, KL to the teacher, agreement, entropy)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["PhaseStats", "accumulate_prediction_stats"]


@dataclass
class PhaseStats:
    """What one phase of training measured (means over its optimizer steps): the engine's side of
    a phase.  The env adds the action, the dev probe and the episode flags to make the
    :class:`~kd_env.state.TrainingState` a reward sees.

    Attributes:
        losses: per knowledge type (config order), the mean loss on the phase's batches (all K
            are computed, selected or not, so observations can show them).
        total_loss: mean of the weighted sum that was optimised.
        student_ce, student_accuracy: the student's CE/accuracy on the phase's batches.
        teacher_kl: KL(teacher || student) at T=1; agreement: share of argmax agreement.
        entropy: mean entropy of the student's predictions (nats).
        grad_norm: mean gradient norm before clipping (0 when nothing was trained).
        steps: optimizer steps (budget) consumed; trained_steps: steps that updated the student.
        seconds: wall time; crashed: a non-finite loss or gradient stopped the phase.
    """

    losses: np.ndarray
    total_loss: float
    student_ce: float
    student_accuracy: float
    teacher_kl: float
    agreement: float
    entropy: float
    grad_norm: float
    steps: int
    trained_steps: int
    seconds: float
    crashed: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["losses"] = [float(x) for x in self.losses]
        return d


def accumulate_prediction_stats(stats: dict, logits: torch.Tensor, teacher_logits: torch.Tensor,
                                 labels: torch.Tensor, label_mask: torch.Tensor | None = None) -> None:
    """Add the batch's statistics to ``stats``.  CE and accuracy are over the examples the
    student has labels for (0 for a batch without any); the rest over every example."""
    logits = logits.detach().float()
    if label_mask is not None and logits.shape[-1] > 1:
        m = label_mask.bool()
        logp = torch.log_softmax(logits, -1)
        if bool(m.any()):
            stats["ce"] += float(nn.functional.nll_loss(logp[m], labels[m]))
            stats["acc"] += float((logits[m].argmax(-1) == labels[m]).float().mean())
        _accumulate_teacher_stats(stats, logits, logp, teacher_logits)
        return
    if logits.shape[-1] == 1:  # regression
        err = (logits.squeeze(-1) - labels.float()) ** 2
        stats["ce"] += float(err.mean())
        stats["kl"] += float(((logits - teacher_logits.float()) ** 2).mean())
        return
    logp = torch.log_softmax(logits, -1)
    stats["ce"] += float(nn.functional.nll_loss(logp, labels))
    stats["acc"] += float((logits.argmax(-1) == labels).float().mean())
    _accumulate_teacher_stats(stats, logits, logp, teacher_logits)


def _accumulate_teacher_stats(stats: dict, logits: torch.Tensor, logp: torch.Tensor,
                              teacher_logits: torch.Tensor) -> None:
    logq = torch.log_softmax(teacher_logits.float(), -1)
    stats["kl"] += float((logq.exp() * (logq - logp)).sum(-1).mean())
    stats["agree"] += float((logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean())
    stats["ent"] += float(-(logp.exp() * logp).sum(-1).mean())
