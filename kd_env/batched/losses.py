"""The built-in knowledge types' batched forms: each type's loss for N students at once.

Shapes: student/teacher logits (N, B, C); hidden[j] (N, B, H_j) (MLP layers: one "token");
labels (N, B); label_mask (N, B) float (1 = labelled).  Each function returns (N,) losses equal
to the knowledge's own loss on each student's batch.  The knowledge types point at these from
their :meth:`~kd_env.knowledge.Knowledge.batched` methods; a user's type gets
:func:`vmapped_loss` (its single form mapped over the students with ``torch.func.vmap``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..example_weightings import uncertainty_weighting
from ..knowledge import Feature, Finetune, Knowledge, Relation, Response, UncertaintyKD
from ..models import ModelOutputs
from .states import StudentStates, TeacherStates, _log_softmax

__all__ = ["batched_knowledge_loss", "finetune_loss", "response_loss", "uncertainty_kd_loss", "feature_loss",
           "relation_loss", "vmapped_loss"]

Weights = Mapping[str, "torch.Tensor | None"]


def _finetune_per_example(s_logits: "torch.Tensor | StudentStates", labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy to ``labels``, ``(N, B)`` (``s_logits``: logits, or the
    students' states, whose log-probabilities are computed once per batch)."""
    log_p = s_logits.log_softmax(1.0) if isinstance(s_logits, StudentStates) else _log_softmax(s_logits)
    return -log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _response_per_example(student: "StudentStates", teacher: "TeacherStates", temperature: float) -> torch.Tensor:
    log_p_s = student.log_softmax(temperature)
    log_p_t = teacher.log_softmax(temperature)
    return (teacher.softmax(temperature) * (log_p_t - log_p_s)).sum(-1) * temperature * temperature


def _labelled_mean(values: torch.Tensor, weights: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """``sum_i w_i l_i / n`` over the labelled examples (all of them without a mask), per student."""
    if weights is not None:
        values = values * weights
    if mask is None:
        return values.mean(1) if weights is None else values.sum(1) / values.shape[1]
    return (values * mask).sum(1) / mask.sum(1).clamp_min(1)


def _uncertainty(s_logits: torch.Tensor) -> torch.Tensor:
    """Dynamic KD's ``u_i`` (the registered ``uncertainty`` weighting's), ``(N, B)``, no gradient."""
    return uncertainty_weighting(ModelOutputs(logits=s_logits), None, {})["response"]



class _PooledFeature(torch.autograd.Function):
    """``((normalize(P h) - normalize(t))^2).sum(-1)`` per example from ``s = ||P h||^2``,
    ``d = (P h) . t`` and ``q = ||t||^2`` (no gradient), ``F.normalize``'s eps included:
    ``f = s / ns^2 + q / nt^2 - 2 d / (ns nt)`` with ``ns = max(sqrt(s), 1e-12)``, ``nt`` alike.

    Backward by hand (one graph node instead of a dozen): with ``m = [sqrt(s) >= 1e-12]``
    (where the clamp passes a gradient) and ``dns/ds = m / (2 ns)``,
    ``df/ds = 1 / ns^2 + m (d / (ns^3 nt) - s / ns^4)`` (zero up to rounding where ``m``: the
    normalised vector does not change with the norm) and ``df/dd = -2 / (ns nt)``, as autograd
    differentiates the same expression.
    """

    @staticmethod
    def forward(ctx: Any, sq_s: torch.Tensor, dot: torch.Tensor, sq_t: torch.Tensor) -> torch.Tensor:
        root_s = sq_s.sqrt()
        ns, nt = root_s.clamp_min(1e-12), sq_t.sqrt().clamp_min(1e-12)
        ctx.save_for_backward(sq_s, dot, ns, nt, root_s >= 1e-12)
        return sq_s / (ns * ns) + sq_t / (nt * nt) - 2 * dot / (ns * nt)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        sq_s, dot, ns, nt, passes = ctx.saved_tensors
        inv_ns2 = 1.0 / (ns * ns)
        d_sq = inv_ns2 + passes * (inv_ns2 * (dot / (ns * nt) - sq_s * inv_ns2))
        return g * d_sq, g * (-2.0 / (ns * nt)), None


class _RelationProduct(torch.autograd.Function):
    """``max(0, sa sb - 2 da db + ta tb)`` per example: ``||a_s b_s^T - a_t b_t^T||^2`` for one
    token from the students' squared norms ``sa``, ``sb``, their dot products with the
    teacher's states ``da``, ``db`` and the teacher's squared norms ``ta``, ``tb`` (no gradient).
    Backward by hand (one graph node instead of nine): where the value is not clamped,
    ``d/dsa = sb``, ``d/dsb = sa``, ``d/dda = -2 db``, ``d/ddb = -2 da``."""

    @staticmethod
    def forward(ctx: Any, sa: torch.Tensor, sb: torch.Tensor, da: torch.Tensor, db: torch.Tensor,
                ta: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
        value = sa * sb - 2 * da * db + ta * tb
        ctx.save_for_backward(sa, sb, da, db, value >= 0)
        return value.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        sa, sb, da, db, passes = ctx.saved_tensors
        gv = g * passes
        need = ctx.needs_input_grad
        return (gv * sb if need[0] else None, gv * sa if need[1] else None,
                -2 * gv * db if need[2] else None, -2 * gv * da if need[3] else None, None, None)


def _feature_pooled(student: StudentStates, teacher: TeacherStates, j: int) -> torch.Tensor:
    """``((normalize(P h) - normalize(t))^2).sum(-1)`` per example from dot products (``F.normalize``'s
    eps included), see :class:`_PooledFeature`."""
    return _PooledFeature.apply(student.sq_norm(j), student.dot(j, teacher.hidden[j]), teacher.sq_norms[j])


def batched_knowledge_loss(knowledge: Knowledge, student: StudentStates, teacher: TeacherStates,
                           batch: dict[str, torch.Tensor],
                           example_weights: Weights | None = None) -> torch.Tensor:
    """``knowledge``'s loss for each of N students, ``(N,)``: its
    :meth:`~kd_env.knowledge.Knowledge.batched` form.

    ``student`` and ``teacher`` hold ``(N, B, ...)`` tensors, and ``batch`` ``labels`` ``(N, B)``
    and optionally ``label_mask``.  The built-in types of a feature task (``finetune``,
    ``response``, ``feature``, ``relation``, ``uncertainty_kd``) have batched forms written out
    (the functions below, equal to the single student's loss up to float rounding); any other
    registered knowledge is mapped over the students with ``torch.func.vmap`` (:func:`vmapped_loss`:
    its loss must then be vmap-able, no data-dependent shapes or ``.item()``).  ``example_weights``
    (per-example weights ``(N, B)`` by knowledge name) applies a per-example weighting such as
    Dynamic KD's ``uncertainty``.
    """
    if student.logits.shape[-1] == 1:
        raise ValueError("the batched env supports classification tasks only (regression has one output)")
    return knowledge.batched(student, teacher, batch, example_weights or {})


def finetune_loss(knowledge: Finetune, student: StudentStates, teacher: TeacherStates,
                  batch: dict[str, torch.Tensor], example_weights: Weights) -> torch.Tensor:
    """:class:`~kd_env.knowledge.Finetune` for N students."""
    mask = batch.get("label_mask")
    return _labelled_mean(_finetune_per_example(student, batch["labels"]), example_weights.get("finetune"), mask)


def response_loss(knowledge: Response, student: StudentStates, teacher: TeacherStates,
                  batch: dict[str, torch.Tensor], example_weights: Weights) -> torch.Tensor:
    """:class:`~kd_env.knowledge.Response` for N students."""
    values = _response_per_example(student, teacher, knowledge.temperature)
    return _labelled_mean(values, example_weights.get("response"), None)


def uncertainty_kd_loss(knowledge: UncertaintyKD, student: StudentStates, teacher: TeacherStates,
                        batch: dict[str, torch.Tensor], example_weights: Weights) -> torch.Tensor:
    """:class:`~kd_env.knowledge.UncertaintyKD` for N students."""
    mask = batch.get("label_mask")
    u = _uncertainty(student.logits)
    ft = _labelled_mean(_finetune_per_example(student, batch["labels"]), 1.0 - u, mask)
    resp = _labelled_mean(_response_per_example(student, teacher, knowledge.response.temperature), u, None)
    return ft + resp


def feature_loss(knowledge: Feature, student: StudentStates, teacher: TeacherStates,
                 batch: dict[str, torch.Tensor], example_weights: Weights) -> torch.Tensor:
    """:class:`~kd_env.knowledge.Feature` for N students."""
    losses = []
    for j in knowledge._indices(student.depth - 1):
        if knowledge.tokens == "all":  # mean over (B, H) of (P h - t)^2
            sq = student.sq_norm(j) - 2 * student.dot(j, teacher.hidden[j]) + teacher.sq_norms[j]
            losses.append(sq.mean(1) / teacher.hidden[j].shape[-1])
        else:
            losses.append(_feature_pooled(student, teacher, j).mean(1))
    return torch.stack(losses).mean(0)


def relation_loss(knowledge: Relation, student: StudentStates, teacher: TeacherStates,
                  batch: dict[str, torch.Tensor], example_weights: Weights) -> torch.Tensor:
    """:class:`~kd_env.knowledge.Relation` for N students."""
    losses = []
    for j in range(1, student.depth):
        # fsp_mse with one token: ||a_s b_s^T - a_t b_t^T||^2 by Gram (dot) products
        a_t, b_t = teacher.hidden[j - 1], teacher.hidden[j]
        sq = _RelationProduct.apply(student.sq_norm(j - 1), student.sq_norm(j), student.dot(j - 1, a_t),
                                    student.dot(j, b_t), teacher.sq_norms[j - 1], teacher.sq_norms[j])
        losses.append(sq.mean(1) / (a_t.shape[-1] * b_t.shape[-1]))
    return torch.stack(losses).mean(0)


def vmapped_loss(knowledge: Knowledge, student: StudentStates, teacher: ModelOutputs,
                 batch: dict[str, torch.Tensor], example_weights: Weights) -> torch.Tensor:
    """A user's knowledge type (:meth:`Knowledge.batched`'s default), its single form mapped
    over the students with ``torch.func.vmap``."""
    if example_weights.get(knowledge.name) is not None:
        raise ValueError(f"the batched env has no per-example weighting for knowledge {knowledge.name!r}")

    def one(s_logits, s_hidden, t_logits, t_hidden, one_batch):
        s_out = ModelOutputs(logits=s_logits, hidden=[h.unsqueeze(1) for h in s_hidden], cls=s_hidden[-1])
        t_out = ModelOutputs(logits=t_logits, hidden=[h.unsqueeze(1) for h in t_hidden])
        return knowledge(s_out, t_out, one_batch)

    try:
        return torch.func.vmap(one)(student.logits, list(student.hidden), teacher.logits, list(teacher.hidden),
                                    dict(batch))
    except Exception as exc:  # noqa: BLE001 - whatever vmap refuses, say which knowledge
        raise ValueError(f"knowledge {knowledge.name!r} cannot be batched over students with torch.func.vmap "
                         f"({type(exc).__name__}: {exc}); use the single env (gym.make) or a vmap-able loss") from exc
