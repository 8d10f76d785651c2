"""Batched students: N copies of a feature-task env (DigitsKD) trained as one batched model in one
process, behind Gymnasium's :class:`~gymnasium.vector.VectorEnv` API.

A DigitsKD optimizer step is a handful of tiny matmuls, so one student per process spends its
time in Python and kernel launches, not arithmetic.  :class:`BatchedKDVectorEnv` keeps one
ordinary :class:`~kd_env.env.KnowledgeSelectionEnv` per copy for everything that happens once
per phase or episode (resets, instances, observations, rewards, infos, the data order of each
student), and trains the N students of a phase together: their parameters are stacked into
``(N, ...)`` tensors, every linear layer is one batched matmul (``torch.baddbmm``), every
knowledge loss is computed for all N students at once, and AdamW, gradient clipping and the
learning-rate schedule run on the stacked tensors with each student's own step count.  For the
built-in knowledge types the whole step (forward, every term, backward) is written out without
autograd (:class:`_HandStep`); a user's knowledge type trains through autograd and ``vmap``.

Each copy keeps its own seed, situation (instance), mask, example weighting, data order and
crash handling, so N copies give what N single envs give with the same seeds, up to float
rounding (a batched matmul sums in another order than a single one): ``tests/test_vector_env.py``
compares every observation, reward and final metric within a stated tolerance.

Make one with ``gymnasium.make_vec("kd_env/DigitsKD-v0", num_envs=32)`` (the digits ids register
this class as their ``vector_entry_point``) or ``BatchedKDVectorEnv(32, config="digits", ...)``
with the arguments of :class:`~kd_env.env.KnowledgeSelectionEnv`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, create_empty_array
from torch import nn

from .engine import Distiller
from .env import KnowledgeSelectionEnv
from .knowledge import Feature, Finetune, Knowledge, Relation, Response, UncertaintyKD, uncertainty_weighting
from .metrics import compute_metrics
from .models import MLPClassifier, ModelOutputs
from .phase_stats import PhaseStats

__all__ = ["BatchedKDVectorEnv", "StudentBatch", "batched_knowledge_loss"]

#: AdamW's defaults, as :class:`~kd_env.engine.Distiller` uses them
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


# --------------------------------------------------------------------------------------------
# Knowledge losses of N students at once
# --------------------------------------------------------------------------------------------
# Shapes: student/teacher logits (N, B, C); hidden[j] (N, B, H_j) (MLP layers: one "token");
# labels (N, B); label_mask (N, B) float (1 = labelled).  Each function returns (N,) losses equal
# to the knowledge's own loss on each student's batch.


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last dimension.  PyTorch's CPU kernel is slow on a short last
    dimension (10 classes: 4x slower than this on (32, 64, 10)); the value is the same."""
    return x - torch.logsumexp(x, -1, keepdim=True)


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


class _ProjectedMoments(torch.autograd.Function):
    """Per-example ``||P h||^2`` and ``(P h) . t`` of N students, with a hand-written backward.

    Inputs: hidden states ``h`` ``(N, B, d)``, projections ``P`` ``(N, H, d)`` and the teacher's
    states ``t`` ``(N, B, H)`` (data: no gradient).  Both values are computed in the student's
    width ``d`` (the teacher's ``H`` is 4x wider on digits):

    * ``||P h||^2 = h^T G h`` with the Gram matrix ``G = P^T P`` ``(N, d, d)``;
    * ``(P h) . t = h . U`` with ``U = t P`` ``(N, B, d)``.

    Backward, for upstream gradients ``a = dL/d||P h||^2`` and ``c = dL/d((P h) . t)`` ``(N, B)``:

    * ``dL/dh = 2 a (h G) + c U`` (elementwise: ``h G`` and ``U`` are kept from the forward);
    * ``dL/dG = h^T diag(a) h`` and ``dL/dP = t^T diag(c) h + P (dL/dG + dL/dG^T)
      = t^T diag(c) h + 2 P dL/dG`` (``dL/dG`` is symmetric).

    Autograd on the same expressions runs five batched matmuls backwards (both factors of
    ``P^T P``, both of ``h G``, ``t P``); this runs three (``h^T diag(a) h``, ``t^T diag(c) h``
    and ``2 P dL/dG`` added by ``baddbmm``), a sixth fewer multiply-adds for the whole step, and
    one graph node instead of eight.  The values are those of the autograd form up to rounding.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, p: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hg = torch.bmm(h, torch.bmm(p.transpose(1, 2), p))  # h G
        u = torch.bmm(t, p)  # t P
        ctx.save_for_backward(h, p, t, hg, u)
        return (hg * h).sum(-1), (u * h).sum(-1)

    @staticmethod
    def backward(ctx: Any, g_sq: torch.Tensor, g_dot: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        h, p, t, hg, u = ctx.saved_tensors
        a, c = g_sq.unsqueeze(-1), g_dot.unsqueeze(-1)
        dh = torch.addcmul(c * u, a, hg, value=2.0) if ctx.needs_input_grad[0] else None
        dp = None
        if ctx.needs_input_grad[1]:
            d_gram = torch.bmm(h.transpose(1, 2), a * h)
            dp = torch.baddbmm(torch.bmm(t.transpose(1, 2), c * h), p, d_gram, alpha=2.0)
        return dh, dp, None


class StudentStates:
    """N students' outputs on a batch: logits ``(N, B, C)`` and their hidden states ``raw[j]``
    ``(N, B, d_j)`` with the learned projections ``projections[j]`` ``(N, H_j, d_j)`` (``None``:
    identity) kept apart.  The built-in losses only need dot products of projected states,
    ``(P h) . (P h) = h^T (P^T P) h`` and ``(P h) . t = h . (P^T t)``, which cost ``d_j`` wide
    operations instead of ``H_j`` wide ones (the teacher's width is 4x the student's on digits);
    :attr:`hidden` materialises the projected states for other knowledge types.

    ``targets`` (the teacher's states ``(N, B, H_j)``, optional) are the states :meth:`dot` is
    asked about: with them, a layer's :meth:`sq_norm` and :meth:`dot` are computed together by
    :class:`_ProjectedMoments`.  Each value is computed once per batch: with its graph when
    gradients are enabled, and a term computed without gradient reads the same value detached.
    """

    def __init__(self, logits: torch.Tensor, raw: list[torch.Tensor], projections: list[torch.Tensor | None],
                 targets: list[torch.Tensor] | None = None):
        self.logits = logits
        self.raw = raw
        self.projections = projections
        self.targets = targets
        self._memo: dict[tuple, tuple[Any, bool]] = {}  # key -> (value, computed with its graph)
        self._hidden: list[torch.Tensor] | None = None

    @property
    def hidden(self) -> list[torch.Tensor]:
        """Projected hidden states ``(N, B, H_j)``, as a single student's ``ModelOutputs.hidden``."""
        if self._hidden is None:
            self._hidden = [h if p is None else torch.bmm(h, p.transpose(1, 2)) for h, p in zip(self.raw, self.projections)]
        return self._hidden

    @property
    def depth(self) -> int:
        return len(self.raw)

    def _memoised(self, key: tuple, compute: Any) -> torch.Tensor:
        """``compute()`` once per key: a value computed without a graph is recomputed when a
        gradient is asked for; one computed with its graph serves a no-gradient caller detached."""
        grad = torch.is_grad_enabled()
        hit = self._memo.get(key)
        if hit is None or (grad and not hit[1]):
            hit = (compute(), grad)
            self._memo[key] = hit
        value = hit[0]
        if grad:
            return value
        return tuple(v.detach() for v in value) if isinstance(value, tuple) else value.detach()

    def log_softmax(self, temperature: float = 1.0) -> torch.Tensor:
        """``log_softmax(logits / temperature)`` ``(N, B, C)``, shared by the terms and the
        statistics of a step."""
        def compute():
            return _log_softmax(self.logits if temperature == 1.0 else self.logits / temperature)
        return self._memoised(("log_softmax", float(temperature)), compute)

    def argmax(self) -> torch.Tensor:
        """The students' predicted class per example, ``(N, B)``."""
        return self._memoised(("argmax",), lambda: self.logits.detach().argmax(-1))

    def _moments(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(||P_j h_j||^2, (P_j h_j) . targets[j])`` per example, from one :class:`_ProjectedMoments`."""
        return self._memoised(("moments", j),
                              lambda: _ProjectedMoments.apply(self.raw[j], self.projections[j], self.targets[j]))

    def know(self, j: int, t: torch.Tensor, sq_norm: torch.Tensor, dot: torch.Tensor) -> None:
        """Take ``||h_j||^2`` and ``h_j . t`` as known (layer ``j`` is data without a projection,
        e.g. the input: the values need no graph and are not recomputed)."""
        self._memo[("sq", j)] = (sq_norm, True)
        self._memo[("dot", j, id(t))] = (dot, True)

    def _paired(self, j: int) -> bool:
        return self.projections[j] is not None and self.targets is not None

    def sq_norm(self, j: int) -> torch.Tensor:
        """``||P_j h_j||^2`` per example, ``(N, B)``."""
        if self._paired(j):
            return self._moments(j)[0]

        def compute():
            h, p = self.raw[j], self.projections[j]
            hg = h if p is None else torch.bmm(h, torch.bmm(p.transpose(1, 2), p))
            return (hg * h).sum(-1)
        return self._memoised(("sq", j), compute)

    def dot(self, j: int, t: torch.Tensor) -> torch.Tensor:
        """``(P_j h_j) . t`` per example, ``(N, B)``, for the teacher's state ``t`` of layer ``j``."""
        if self._paired(j) and t is self.targets[j]:
            return self._moments(j)[1]

        def compute():
            h, p = self.raw[j], self.projections[j]
            return (h * (t if p is None else torch.bmm(t, p))).sum(-1)
        return self._memoised(("dot", j, id(t)), compute)


class TeacherStates(ModelOutputs):
    """The teacher's outputs on N students' batches (``(N, B, ...)``), with each hidden state's
    squared norm per example (``sq_norms[j]``, ``(N, B)``) and, read from the data table rather
    than recomputed every step, its log-probabilities and probabilities at the temperatures in
    use and its predicted class (``(N, B)``)."""

    def __init__(self, logits: torch.Tensor, hidden: list[torch.Tensor], sq_norms: list[torch.Tensor],
                 log_probs: dict[float, torch.Tensor] | None = None, probs: dict[float, torch.Tensor] | None = None,
                 argmax: torch.Tensor | None = None):
        super().__init__(logits=logits, hidden=hidden)
        self.sq_norms = sq_norms
        self.log_probs = log_probs or {}
        self.probs = probs or {}
        self._argmax = argmax
        #: ``(||x||^2, x . hidden[0])`` per example for the student's input ``x`` (set by the batch)
        self.input_moments: tuple[torch.Tensor, torch.Tensor] | None = None
        #: the data table's rows these states were read from, ``(N, B, F)`` (set by the batch)
        self.rows: torch.Tensor | None = None

    def log_softmax(self, temperature: float) -> torch.Tensor:
        """``log_softmax(logits / temperature)`` (stored for the temperatures in use)."""
        hit = self.log_probs.get(float(temperature))
        return hit if hit is not None else _log_softmax(self.logits / temperature)

    def softmax(self, temperature: float) -> torch.Tensor:
        """``softmax(logits / temperature)``, as ``log_softmax(...).exp()`` (stored for the
        temperatures in use)."""
        hit = self.probs.get(float(temperature))
        return hit if hit is not None else self.log_softmax(temperature).exp()

    def argmax(self) -> torch.Tensor:
        """The teacher's predicted class per example, ``(N, B)``."""
        return self._argmax if self._argmax is not None else self.logits.argmax(-1)


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
                           example_weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``knowledge``'s loss for each of N students, ``(N,)``.

    ``student`` and ``teacher`` hold ``(N, B, ...)`` tensors, and ``batch`` ``labels`` ``(N, B)``
    and optionally ``label_mask``.  The built-in types of a feature task (``finetune``,
    ``response``, ``feature``, ``relation``, ``uncertainty_kd``) have batched forms written out
    (equal to the single student's loss up to float rounding); any other registered knowledge is
    mapped over the students with ``torch.func.vmap`` (its loss must then be vmap-able: no
    data-dependent shapes or ``.item()``).  ``example_weights`` (per-example weights ``(N, B)`` by
    knowledge name) applies a per-example weighting such as Dynamic KD's ``uncertainty``.
    """
    example_weights = example_weights or {}
    s = student.logits
    mask = batch.get("label_mask")
    if s.shape[-1] == 1:
        raise ValueError("the batched env supports classification tasks only (regression has one output)")
    kind = type(knowledge)
    if kind is Finetune:
        return _labelled_mean(_finetune_per_example(student, batch["labels"]), example_weights.get("finetune"), mask)
    if kind is Response:
        values = _response_per_example(student, teacher, knowledge.temperature)
        return _labelled_mean(values, example_weights.get("response"), None)
    if kind is UncertaintyKD:
        u = _uncertainty(s)
        ft = _labelled_mean(_finetune_per_example(student, batch["labels"]), 1.0 - u, mask)
        resp = _labelled_mean(_response_per_example(student, teacher, knowledge.response.temperature), u, None)
        return ft + resp
    if kind is Feature:
        losses = []
        for j in knowledge._indices(student.depth - 1):
            if knowledge.tokens == "all":  # mean over (B, H) of (P h - t)^2
                sq = student.sq_norm(j) - 2 * student.dot(j, teacher.hidden[j]) + teacher.sq_norms[j]
                losses.append(sq.mean(1) / teacher.hidden[j].shape[-1])
            else:
                losses.append(_feature_pooled(student, teacher, j).mean(1))
        return torch.stack(losses).mean(0)
    if kind is Relation:
        losses = []
        for j in range(1, student.depth):
            # fsp_mse with one token: ||a_s b_s^T - a_t b_t^T||^2 by Gram (dot) products
            a_t, b_t = teacher.hidden[j - 1], teacher.hidden[j]
            sq = _RelationProduct.apply(student.sq_norm(j - 1), student.sq_norm(j), student.dot(j - 1, a_t),
                                        student.dot(j, b_t), teacher.sq_norms[j - 1], teacher.sq_norms[j])
            losses.append(sq.mean(1) / (a_t.shape[-1] * b_t.shape[-1]))
        return torch.stack(losses).mean(0)
    if example_weights.get(knowledge.name) is not None:
        raise ValueError(f"the batched env has no per-example weighting for knowledge {knowledge.name!r}")
    return _vmapped_loss(knowledge, student, teacher, batch)


def _vmapped_loss(knowledge: Knowledge, student: StudentStates, teacher: ModelOutputs,
                  batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A user's knowledge type, mapped over the students with ``torch.func.vmap``."""

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


# --------------------------------------------------------------------------------------------
# N MLP students as one batched model
# --------------------------------------------------------------------------------------------


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W^T + b`` for every student: x (N, B, in), W (N, out, in), b (N, out)."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _architecture(distiller: Distiller) -> tuple:
    """What must agree for two students to be stacked: parameter names and shapes, knowledge."""
    return (tuple((n, tuple(p.shape)) for n, p in distiller.student.named_parameters()),
            tuple(distiller.knowledge_names))


def check_batchable(distiller: Distiller) -> None:
    """``ValueError`` unless ``distiller`` trains an MLP student in fp32 without dropout (what the
    batched engine reproduces)."""
    model = distiller.student.model
    if not isinstance(model, MLPClassifier):
        raise ValueError(f"the batched env trains MLP students of feature tasks (digits); this config has a "
                         f"{type(model).__name__} student (task {distiller.config.task!r}): use gym.make or an "
                         f"async vector env")
    if model.dropout.p != 0:
        raise ValueError(f"the batched env trains students without dropout; this one has dropout {model.dropout.p}")
    if distiller.precision != "fp32":
        raise ValueError(f"the batched env trains in fp32; this config resolves student precision to "
                         f"{distiller.precision!r} (set student_precision='fp32')")
    if distiller.task.num_labels < 2:
        raise ValueError("the batched env supports classification tasks only")


class StudentBatch:
    """The students of several distillers (same architecture and knowledge), trained together.

    The distillers stay the owners of everything but the training arithmetic: each keeps its own
    data order (``_next_indices``), step count, label view and example weighting.  Parameters
    and AdamW moments live here as ``(N, ...)`` tensors; :meth:`load` copies a freshly reset
    student in, :meth:`store` writes the trained ones back into the distillers' modules.

    Args:
        distillers: one per copy, all passing :func:`check_batchable`, same architecture.
        device: where the batched training runs (``"cpu"``, ``"cuda"``).
    """

    def __init__(self, distillers: Sequence[Distiller], device: str | torch.device = "cpu"):
        if not distillers:
            raise ValueError("StudentBatch needs at least one distiller")
        for d in distillers:
            check_batchable(d)
        arch = _architecture(distillers[0])
        for d in distillers[1:]:
            if _architecture(d) != arch:
                raise ValueError("the students of one batch must share architecture and knowledge types")
        self.device = _checked_device(device)
        self.distillers = list(distillers)
        self.n = len(distillers)
        first = distillers[0]
        self.knowledge = first.knowledge
        model = first.student.model
        self.layer_names = [(f"model.layers.{i}.weight", f"model.layers.{i}.bias") for i in range(len(model.layers))]
        self.projection_names = [None if isinstance(p, nn.Identity) else f"projections.{j}.weight"
                                 for j, p in enumerate(first.student.projections)]
        # every student's parameters are one row of `flat` (N, P); `params[name]` are (N, *shape)
        # views of it (leaves for autograd), so AdamW and clipping are a dozen ops on (N, P)
        named = [(n, p) for n, p in first.student.named_parameters() if p.requires_grad]
        # in a row, the parameters with weight decay first, then the others (each in the module's
        # order): the parameters AdamW steps alike sit side by side, one kernel tensor per run
        named = [x for x in named if _decays(*x)] + [x for x in named if not _decays(*x)]
        sizes = [p.numel() for _, p in named]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self.flat = torch.zeros((self.n, int(starts[-1])), device=self.device)
        self.params: dict[str, torch.Tensor] = {}
        for (name, p), a, b in zip(named, starts[:-1], starts[1:]):
            view = self.flat[:, a:b].view(self.n, *p.shape)
            self.params[name] = view.requires_grad_(True)
        self._segments = list(zip(starts[:-1].tolist(), starts[1:].tolist()))  # each parameter's columns
        # weight decay as the Distiller's parameter groups have it: matrices yes, biases and norms no
        self._decay = [_decays(n, p) for n, p in named]
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        #: AdamW's step count per slot and parameter (PyTorch counts per parameter: one that got no
        #: gradient in a step, e.g. the head when only ``feature`` is chosen, is not stepped at all)
        self.adam_steps = np.zeros((self.n, len(named)), dtype=np.int64)
        self.grad_flat = torch.zeros_like(self.flat)
        self._step_counts = torch.zeros((self.n, len(named)), device=self.device)  # the same, for the fused kernel
        # per slot and parameter: views of the parameters, gradients, moments and step counts
        self._views = [[[t[i, a:b] for a, b in self._segments] for i in range(self.n)]
                       for t in (self.flat, self.grad_flat, self.exp_avg, self.exp_avg_sq)]
        self._views.append([[self._step_counts[i, q] for q in range(len(named))] for i in range(self.n)])
        self._zero_grads: list[torch.Tensor] | None = None  # the gradient of a parameter no chosen term reaches
        self._adam_views: dict[bytes, list] = {}  # AdamW's view lists by the (slot, parameter) runs they cover
        #: per slot: its distiller's learning rate, warm-up steps, total steps and weight decay
        self._schedule = np.zeros((self.n, 4))
        self._max_norm = torch.zeros(self.n, device=self.device)  # per slot: its gradient clipping norm
        self._reach: np.ndarray | None = None
        self._student_params: dict[int, tuple] = {}  # id(distiller) -> (distiller, its parameters in our order)
        # each slot's distillation set as the student sees it, in row blocks shared by the slots
        # with the same data and teacher, so that a step gathers every student's batch with one index
        n_train = len(first.train_data)
        dev = self.device
        self._teacher_memo: dict[int, tuple] = {}
        t_out = self._teacher_outputs(first)
        # the temperatures the knowledge softens the teacher's outputs with (their log-probabilities
        # are stored, not recomputed every step)
        self.temperatures = sorted({1.0} | {float(k.temperature) for k in self.knowledge if isinstance(k, Response)}
                                   | {float(k.response.temperature) for k in self.knowledge
                                      if isinstance(k, UncertaintyKD)})
        widths = [("features", first.train_data.features.shape[1])]
        widths += [(f"teacher_logp@{t}", t_out[0].shape[1]) for t in self.temperatures]
        widths += [(f"teacher_p@{t}", t_out[0].shape[1]) for t in self.temperatures]
        widths += [("teacher_argmax", 1)]
        widths += [(f"hidden{j}", h.shape[1]) for j, h in enumerate(t_out[1]) if j > 0]
        widths += [(f"sq_norm{j}", 1) for j in range(len(t_out[1]))]
        widths += [("input_sq_norm", 1), ("input_dot0", 1)]  # the student's layer 0 is its input: data too
        # the teacher's side of feature and relation per example, for the written-out step
        # (:class:`_HandStep`): 1 / max(||t_j||, 1e-12), ||t_j||^2 / max(||t_j||, 1e-12)^2 and
        # ||t_{j-1}||^2 ||t_j||^2, each group in adjacent columns
        widths += [(f"inv_norm{j}", 1) for j in range(len(t_out[1]))]
        widths += [(f"unit_sq_norm{j}", 1) for j in range(len(t_out[1]))]
        widths += [(f"sq_norm_pair{j}", 1) for j in range(1, len(t_out[1]))]
        #: the columns a written-out step reads (those above, the rest only autograd's terms)
        self._hand_width = int(sum(w for _, w in widths))
        widths += [("teacher_logits", t_out[0].shape[1])] + [("hidden0", h.shape[1]) for h in t_out[1][:1]]
        #: whether the input's moments with the teacher's first state are read from the table
        self._input_moments = (len(t_out[1]) > 0 and len(self.projection_names) > 0
                               and self.projection_names[0] is None
                               and tuple(t_out[1][0].shape) == tuple(first.train_data.features.shape))
        ends = np.cumsum([w for _, w in widths])
        self._columns = {name: (int(e - w), int(e)) for (name, w), e in zip(widths, ends)}
        self._num_hidden = len(t_out[1])
        #: the distillation sets as the students see them, one block ``(n, F)`` per distinct
        #: (data, teacher) pair (fields side by side, so a step gathers all of them with one index);
        #: the copies of one config share a block, so a step reads a table that stays in cache
        #: (gathering 32 copies' rows from 32 private blocks missed the cache on every row)
        self.table = torch.zeros((0, n_train, int(ends[-1])), device=dev)
        self._blocks: list[tuple[Any, Any] | None] = []  # block -> the (train_data, teacher) it holds
        self._block_of = np.zeros(self.n, dtype=np.int64)  # slot -> its block
        #: per slot: the student's labels (N, n) and label mask (N, n) (1 = labelled)
        self.labels = torch.zeros((self.n, n_train), dtype=torch.long, device=dev)
        self.label_masks = torch.ones((self.n, n_train), device=dev)
        self.has_mask = np.zeros(self.n, dtype=bool)
        n_probe = len(first.probe_indices)
        self.probe_features = torch.zeros((self.n, n_probe, first.train_data.features.shape[1]), device=dev)
        self.probe_labels = torch.zeros((self.n, n_probe), dtype=torch.long)
        self._source: list[Distiller | None] = [None] * self.n  # whose data each slot holds
        self._slot_offsets = (np.arange(self.n) * n_train)[:, None]
        self._row_offsets = self._slot_offsets.copy()  # each slot's first row in the flattened table
        self._gather_buffer: torch.Tensor | None = None  # the rows a training step gathers (reused)
        self._buffer_fields: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None  # its field views
        for i, d in enumerate(self.distillers):
            self.load(i, d)
        #: the step written out without autograd, for the built-in knowledge (``None``: autograd)
        self._hand = _HandStep.plan(self)

    # ---- copies in and out ------------------------------------------------------------------
    def load(self, i: int, distiller: Distiller) -> None:
        """Copy ``distiller``'s (freshly reset) student into slot ``i`` and zero its AdamW state
        (a reset distiller has a new optimizer)."""
        # (a distiller reset in place keeps its student's architecture)
        if distiller is not self.distillers[i] and _architecture(distiller) != _architecture(self.distillers[0]):
            check_batchable(distiller)
            raise ValueError("a copy changed its student's architecture or knowledge types; the batched env "
                             "needs every instance to share them")
        self.distillers[i] = distiller
        with torch.no_grad():
            torch._foreach_copy_(self._views[0][i], [p.detach().reshape(-1) for p in self._student_views(i)])
            self.exp_avg[i].zero_()
            self.exp_avg_sq[i].zero_()
        self.adam_steps[i] = 0
        self._step_counts[i] = 0
        cfg = distiller.config  # its learning-rate schedule (lr_factor's constants)
        self._schedule[i] = (cfg.lr, int(cfg.warmup_fraction * cfg.total_steps), cfg.total_steps, cfg.weight_decay)
        self._max_norm[i] = cfg.max_grad_norm
        if self._source[i] is not distiller:
            self._load_data(i, distiller)

    def store(self, indices: Sequence[int] | None = None) -> None:
        """Write the trained parameters of slots ``indices`` (all) back into their distillers."""
        slots = range(self.n) if indices is None else indices
        with torch.no_grad():  # one kernel call for every parameter of every slot
            torch._foreach_copy_([p for i in slots for p in self._student_views(i)],
                                 [row for i in slots for row in self._views[0][i]])

    def _student_views(self, i: int) -> list[torch.Tensor]:
        """Slot ``i``'s distiller's student parameters, flattened views in our order (kept while
        the slot holds that distiller)."""
        d = self.distillers[i]
        hit = self._student_params.get(id(d))
        if hit is None or hit[0] is not d:
            named = dict(d.student.named_parameters())
            hit = (d, [named[n].view(-1) for n in self.params])
            self._student_params[id(d)] = hit
        return hit[1]

    def _teacher_outputs(self, d: Distiller) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The teacher's logits and mapped hidden states (one vector per layer) on the whole
        distillation set, read once per teacher cache."""
        key = id(d.teacher)
        hit = self._teacher_memo.get(key)
        if hit is None or hit[0] is not d.teacher:
            with torch.no_grad():
                out = d.teacher.outputs(d.train_data.batch(np.arange(len(d.train_data))))
            hit = (d.teacher, (out.logits.float(), [h[:, 0].float() for h in out.hidden]))
            self._teacher_memo[key] = hit
        return hit[1]

    def _load_data(self, i: int, d: Distiller) -> None:
        """Slot ``i``'s rows of the data tables from distiller ``d``: its labels, mask and probe,
        and a block of :attr:`table` holding ``d``'s data and teacher outputs (shared with the
        slots whose distillers have the same data and teacher, written when no slot has it)."""
        if len(d.train_data) != self.labels.shape[1] or len(d.probe_indices) != self.probe_features.shape[1]:
            raise ValueError("the batched env needs every copy and instance to have the same distillation set and "
                             "dev probe sizes (train_examples, dev_probe_size)")
        labels = d.student_labels if d.student_labels is not None else d.train_data.labels
        probe = d.dev_data.batch(d.probe_indices)
        self._source[i] = None  # slot i's block is free to reuse unless another slot holds it too
        block = self._block_for(i, d)
        with torch.no_grad():
            self.labels[i].copy_(torch.as_tensor(np.asarray(labels)).long())
            if d.label_mask is None:
                self.label_masks[i].fill_(1.0)
            else:
                self.label_masks[i].copy_(torch.as_tensor(d.label_mask, dtype=torch.float32))
            self.has_mask[i] = d.label_mask is not None
            self.probe_features[i].copy_(probe["features"])
            self.probe_labels[i].copy_(probe["labels"].long())
        self._block_of[i] = block
        self._row_offsets[i] = block * self.labels.shape[1]
        self._source[i] = d

    def _block_for(self, i: int, d: Distiller) -> int:
        """The block of :attr:`table` with ``d``'s data and teacher outputs: one that already has
        them, else a block no other slot uses (a new one when every block is in use), filled.
        Blocks are matched by the identity of the data and teacher objects they were read from
        (held in :attr:`_blocks`, so they stay alive and their identities are not reused)."""
        for b, held in enumerate(self._blocks):
            if held is not None and held[0] is d.train_data and held[1] is d.teacher:
                return b
        used = {int(self._block_of[s]) for s in range(self.n) if s != i and self._source[s] is not None}
        free = [b for b in range(len(self._blocks)) if b not in used]
        if free:
            b = int(self._block_of[i]) if int(self._block_of[i]) in free else free[0]
        else:
            b = len(self._blocks)
            self.table = torch.cat([self.table, self.table.new_zeros((1, *self.table.shape[1:]))])
            self._blocks.append(None)
        self._blocks[b] = None  # until it is filled
        full = d.train_data.batch(np.arange(len(d.train_data)))
        logits, hidden = self._teacher_outputs(d)
        fields = {"features": full["features"], "teacher_logits": logits}
        for t in self.temperatures:
            fields[f"teacher_logp@{t}"] = torch.log_softmax(logits / t, -1)
            fields[f"teacher_p@{t}"] = fields[f"teacher_logp@{t}"].exp()
        fields["teacher_argmax"] = logits.argmax(-1, keepdim=True).float()
        for j, h in enumerate(hidden):
            fields[f"hidden{j}"] = h
            fields[f"sq_norm{j}"] = (h * h).sum(-1, keepdim=True)
            norm = fields[f"sq_norm{j}"].sqrt().clamp_min(1e-12)
            fields[f"inv_norm{j}"] = 1.0 / norm
            fields[f"unit_sq_norm{j}"] = fields[f"sq_norm{j}"] / (norm * norm)
            if j > 0:
                fields[f"sq_norm_pair{j}"] = fields[f"sq_norm{j - 1}"] * fields[f"sq_norm{j}"]
        x = full["features"].float()
        fields["input_sq_norm"] = (x * x).sum(-1, keepdim=True)
        fields["input_dot0"] = ((x * hidden[0]).sum(-1, keepdim=True) if self._input_moments
                                else torch.full_like(x[:, :1], math.nan))  # unused then
        with torch.no_grad():
            for name, (a, c) in self._columns.items():
                self.table[b, :, a:c].copy_(fields[name])
        self._blocks[b] = (d.train_data, d.teacher)
        return b

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, targets: list[torch.Tensor] | None = None,
                inputs: tuple[torch.Tensor, torch.Tensor] | None = None) -> StudentStates:
        """The students' outputs on ``x`` (N, B, in): logits (N, B, C) and hidden states
        (``targets``: the teacher's hidden states on the same batch, see :class:`StudentStates`;
        ``inputs``: ``||x||^2`` and ``x . targets[0]`` per example, read from the data table)."""
        p = self.params
        h = x
        hidden = [h]
        for w, b in self.layer_names:
            h = torch.relu(_linear(h, p[w], p[b]))
            hidden.append(h)
        logits = _linear(h, p["model.head.weight"], p["model.head.bias"])
        states = StudentStates(logits, hidden, [None if name is None else p[name] for name in self.projection_names],
                               targets)
        if inputs is not None and targets is not None:
            states.know(0, targets[0], *inputs)
        return states

    # ---- one phase ----------------------------------------------------------------------------
    def train_phase(self, weights: np.ndarray, steps: Sequence[int], all_losses: bool = True) -> list[PhaseStats]:
        """One phase for every slot: slot i runs ``steps[i]`` optimizer steps (0: none) with
        loss ``sum_k weights[i, k] * L_k``, exactly as :meth:`Distiller.train_phase` does
        (the same data, crash rules, schedule and statistics); returns each slot's statistics."""
        start = time.perf_counter()
        dev = self.device
        n, k = self.n, len(self.knowledge)
        w = torch.as_tensor(weights, dtype=torch.float32, device=dev)
        steps = np.asarray(steps, dtype=np.int64)
        running = steps > 0
        selected = weights > 0  # (N, K)
        has_active = selected.any(1)
        computed = list(range(k)) if all_losses else [j for j in range(k) if selected[:, j].any()]
        grad_terms = [j for j in range(k) if selected[:, j].any()]
        hand = self._hand if all_losses else None
        rows = hand.uncertainty_rows() if hand is not None else None
        sums = np.zeros((n, k))
        counts = np.zeros((n, k))
        stats = {s: np.zeros(n) for s in ("total", "grad")}
        prediction_sums = np.zeros((n, len(_PREDICTION_STATS)))  # per slot, summed over the steps
        chosen = slice(None) if len(grad_terms) == k else grad_terms
        w_numpy = w.double().cpu().numpy()  # the weights as the step's float32 product reads them
        done = np.zeros(n, dtype=np.int64)
        trained = np.zeros(n, dtype=np.int64)
        crashed = np.zeros(n, dtype=bool)
        for step in range(int(steps.max(initial=0))):
            live = running & (step < steps) & ~crashed
            if not live.any():
                break
            batch, t_out = self._gather(live)
            if hand is not None:
                state = hand.forward(batch, t_out, rows)
                stacked, predictions = state.values, state.stats
            else:
                with torch.set_grad_enabled(bool(grad_terms)):
                    s_out = self.forward(batch["features"], t_out.hidden, t_out.input_moments)
                    terms = self._terms(s_out, t_out, batch, computed, grad_terms)
                stacked = torch.stack([terms[j] if j in terms else torch.full((n,), math.nan, device=dev)
                                       for j in range(k)], 1)  # (N, K)
                predictions = self._prediction_values(s_out, t_out, batch)
            read = torch.cat([stacked.detach(), predictions], 1).cpu().double().numpy()  # one copy to numpy
            values = read[:, :k]
            done += live
            finite = np.isfinite(values)
            crash_now = live & (selected & ~finite).any(1)
            crashed |= crash_now
            ok = live & ~crash_now
            sums[ok] += np.where(finite[ok], values[ok], 0.0)
            counts[ok] += finite[ok]
            prediction_sums[ok] += read[ok, k:]
            update = ok & has_active
            if update.any():
                # (N,): sum_k w_k L_k per student over the terms someone chose
                upd = torch.as_tensor(update, device=dev)
                if hand is not None:
                    total = (values[:, chosen] * w_numpy[:, chosen]).sum(1)
                    hand.backward(state, w * upd.unsqueeze(1))
                else:
                    total_t = (stacked[:, chosen] * w[:, chosen]).sum(1)
                    for p in self.params.values():
                        p.grad = None
                    torch.where(upd, total_t, torch.zeros_like(total_t)).sum().backward()
                    self._collect_grads()
                    total = total_t.detach().cpu().double().numpy()
                grad_norm = self._clip(upd)  # (N,) before clipping
                bad = update & ~np.isfinite(grad_norm)
                crashed |= bad
                update &= ~bad
                if update.any():
                    self._adamw(update, selected)
                    stats["total"][update] += total[update]
                    stats["grad"][update] += grad_norm[update]
                    trained += update
            for i in np.flatnonzero(live & ~crashed):
                self.distillers[i].step += 1
        for i in np.flatnonzero(crashed):
            self.distillers[i].step += 1  # the crashing step is spent
        seconds = (time.perf_counter() - start) / max(1, n)
        stats.update({name: prediction_sums[:, j] for j, name in enumerate(_PREDICTION_STATS)})
        out = []
        for i in range(n):
            m = max(1, int(done[i]) - int(crashed[i]))
            losses = np.where(counts[i] > 0, sums[i] / np.maximum(counts[i], 1), np.nan)
            out.append(PhaseStats(
                losses=losses, total_loss=stats["total"][i] / max(1, trained[i]), student_ce=stats["ce"][i] / m,
                student_accuracy=stats["acc"][i] / m, teacher_kl=stats["kl"][i] / m, agreement=stats["agree"][i] / m,
                entropy=stats["ent"][i] / m, grad_norm=stats["grad"][i] / max(1, trained[i]), steps=int(done[i]),
                trained_steps=int(trained[i]), seconds=seconds, crashed=bool(crashed[i])))
        return out

    def _terms(self, s_out: StudentStates, t_out: TeacherStates, batch: dict[str, torch.Tensor],
               computed: Sequence[int], grad_terms: Sequence[int]) -> dict[int, torch.Tensor]:
        """The knowledge terms ``computed`` of every student, ``(N,)`` each, with gradient for
        those in ``grad_terms``; each distiller's example weighting applied to its row."""
        weighting = [d.example_weighting for d in self.distillers]
        for name in set(weighting) - {None}:
            if name != "uncertainty":
                raise ValueError(f"the batched env supports the 'uncertainty' example weighting only, got {name!r}")
        example_weights = None
        if "uncertainty" in weighting:
            rows = torch.as_tensor([x == "uncertainty" for x in weighting], device=self.device).unsqueeze(1)
            u = _uncertainty(s_out.logits)
            ones = torch.ones_like(u)
            example_weights = {"response": torch.where(rows, u, ones), "finetune": torch.where(rows, 1.0 - u, ones)}
        terms = {}
        # the terms with gradient first: the products they share with the others are then
        # computed once, with their graph, and read detached by the terms without gradient
        for j in sorted(computed, key=lambda j: j not in grad_terms):
            kn = self.knowledge[j]
            weights = example_weights if kn.name in ("finetune", "response") else None
            with torch.set_grad_enabled(j in grad_terms and torch.is_grad_enabled()):
                terms[j] = batched_knowledge_loss(kn, s_out, t_out, batch, weights)
        return terms

    def _gather(self, live: np.ndarray) -> tuple[dict[str, torch.Tensor], TeacherStates]:
        """The next training batch of every live slot (from its distiller's own data order); idle
        slots get their first examples (computed on, never learnt from)."""
        bs = self.distillers[0].config.batch_size
        first = np.arange(bs)
        width = self._hand_width if self._hand is not None else self.table.shape[2]  # the columns the step reads
        if self._gather_buffer is None or self._gather_buffer.shape != (self.n, bs, width):
            self._gather_buffer = self.table.new_empty((self.n, bs, width))
        return self._batch_at(np.stack([d._next_indices() if live[i] else first
                                        for i, d in enumerate(self.distillers)]), out=self._gather_buffer)

    def _batch_at(self, idx: np.ndarray, out: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], TeacherStates]:
        """The batch of examples ``idx[i]`` of each slot i (``(N, B)`` indices), its table rows
        written into ``out`` (``(N, B, F)``) when given: a training step reuses one buffer (a
        fresh 3 MB tensor every step costs the kernel's page faults, more than the copy), whose
        field views are made once.  An ``out`` narrower than the table gets the first columns
        (the fields beyond them are ``None``: the written-out step does not read them)."""
        bs = idx.shape[1]
        flat = torch.as_tensor((idx + self._row_offsets).reshape(-1), device=self.device)
        rows = self.table.view(-1, self.table.shape[2])
        if out is not None:
            rows = rows[:, :out.shape[2]]
        if out is None:
            out = rows.index_select(0, flat).view(self.n, bs, -1)
            fields = self._fields(out)
        else:
            torch.index_select(rows, 0, flat, out=out.view(-1, rows.shape[1]))
            if self._buffer_fields is None or self._buffer_fields[0] is not out:
                self._buffer_fields = (out, self._fields(out))
            fields = self._buffer_fields[1]
        per_slot = torch.as_tensor((idx + self._slot_offsets).reshape(-1), device=self.device)
        labels = self.labels.view(-1).index_select(0, per_slot).view(self.n, bs)
        batch = {"features": fields["features"], "labels": labels}
        if self.has_mask.any():
            batch["label_mask"] = self.label_masks.view(-1).index_select(0, per_slot).view(self.n, bs)
        h = range(self._num_hidden)
        teacher = TeacherStates(fields["teacher_logits"], [fields[f"hidden{j}"] for j in h],
                                [fields[f"sq_norm{j}"] for j in h],
                                {t: fields[f"teacher_logp@{t}"] for t in self.temperatures},
                                {t: fields[f"teacher_p@{t}"] for t in self.temperatures},
                                fields["teacher_argmax"].long())
        teacher.input_moments = (fields["input_sq_norm"], fields["input_dot0"]) if self._input_moments else None
        teacher.rows = out
        return batch, teacher

    def _fields(self, table: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of gathered table rows ``(N, B, F)`` by field: ``(N, B, width)``, or ``(N, B)``
        for the one-column fields."""
        out = {}
        for name, (a, b) in self._columns.items():
            if b > table.shape[2]:
                out[name] = None
                continue
            out[name] = table[:, :, a] if b - a == 1 else table[:, :, a:b]
        return out

    @staticmethod
    def _prediction_stats(stats: dict[str, np.ndarray], student: StudentStates, teacher: TeacherStates,
                          batch: dict[str, torch.Tensor], ok: np.ndarray) -> None:
        """:func:`~kd_env.phase_stats.accumulate_prediction_stats` for every slot in ``ok``."""
        values = StudentBatch._prediction_values(student, teacher, batch).cpu().double().numpy()
        for j, name in enumerate(_PREDICTION_STATS):
            stats[name][ok] += values[ok, j]

    @staticmethod
    @torch.no_grad()
    def _prediction_values(student: StudentStates, teacher: TeacherStates, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each slot's prediction statistics on its batch, ``(N, 5)`` in the order of
        ``_PREDICTION_STATS`` (the students' log-probabilities and predictions shared with the
        step's knowledge terms, the teacher's read from the data table)."""
        logp = student.log_softmax(1.0)
        labels = batch["labels"]
        ce = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        predicted = student.argmax()
        hit = (predicted == labels).float()
        mask = batch.get("label_mask")
        if mask is None:
            ce_mean, acc = ce.mean(1), hit.mean(1)
        else:
            count = mask.sum(1)
            ce_mean = torch.where(count > 0, (ce * mask).sum(1) / count.clamp_min(1), torch.zeros_like(count))
            acc = torch.where(count > 0, (hit * mask).sum(1) / count.clamp_min(1), torch.zeros_like(count))
        logq = teacher.log_softmax(1.0)
        kl = (teacher.softmax(1.0) * (logq - logp)).sum(-1).mean(1)
        agree = (predicted == teacher.argmax()).float().mean(1)
        ent = -(logp.exp() * logp).sum(-1).mean(1)
        return torch.stack([ce_mean, acc, kl, agree, ent], 1)

    def _collect_grads(self) -> None:
        """The parameters' gradients (autograd's) gathered in :attr:`grad_flat` ``(N, P)`` (zero
        for a parameter without one)."""
        if self._zero_grads is None:
            self._zero_grads = [torch.zeros((self.n, b - a), device=self.device) for a, b in self._segments]
        torch.cat([z if p.grad is None else p.grad.reshape(self.n, -1)
                   for p, z in zip(self.params.values(), self._zero_grads)], 1, out=self.grad_flat)  # one copy

    def _clip(self, update: torch.Tensor) -> np.ndarray:
        """The students' gradients in :attr:`grad_flat` ``(N, P)`` clipped per student to
        ``config.max_grad_norm`` as ``clip_grad_norm_`` clips them (slots not updated are left
        alone); returns each student's gradient norm before clipping."""
        grads = self.grad_flat
        total = torch.linalg.vector_norm(grads, 2, dim=1)
        coef = torch.div(self._max_norm, total + 1e-6).clamp_(max=1.0)
        grads.mul_(torch.where(update, coef, 1.0).unsqueeze(1))
        return total.detach().cpu().double().numpy()

    def reach(self) -> np.ndarray:
        """Which knowledge terms reach which parameter, ``(K, parameters)`` bools.  A parameter
        no chosen term reaches gets no gradient in a single env (``grad is None``), and AdamW
        then leaves it and its moments alone (no weight decay either)."""
        if self._reach is None:
            with torch.enable_grad():
                self._reach = self._find_reach()
        return self._reach

    def _find_reach(self) -> np.ndarray:
        bs = self.distillers[0].config.batch_size  # every slot's first examples, in a tensor of their own
        batch, t_out = self._batch_at(np.tile(np.arange(bs), (self.n, 1)))
        s_out = self.forward(batch["features"], t_out.hidden, t_out.input_moments)
        reach = np.zeros((len(self.knowledge), len(self.params)), dtype=bool)
        for j, kn in enumerate(self.knowledge):
            loss = batched_knowledge_loss(kn, s_out, t_out, batch).sum()
            grads = torch.autograd.grad(loss, list(self.params.values()), allow_unused=True, retain_graph=True)
            reach[j] = [g is not None for g in grads]
        return reach

    @torch.no_grad()
    def _adamw(self, update: np.ndarray, selected: np.ndarray) -> None:
        """One AdamW step on :attr:`grad_flat` for the slots in ``update``, with PyTorch's fused
        AdamW kernel (the same arithmetic as the Distiller's ``foreach`` AdamW): each slot with
        its learning rate (its distiller's warmup/linear schedule at its step) and weight decay,
        each parameter with its own step count; a parameter no selected term reaches is not
        stepped (PyTorch skips a parameter without a gradient)."""
        stepped = update[:, None] & (selected.astype(np.int64) @ self.reach().astype(np.int64) > 0)  # (N, params)
        self.adam_steps += stepped
        self._step_counts.add_(torch.as_tensor(stepped, dtype=torch.float32, device=self.device))
        if not stepped.any():
            return
        lr = self._learning_rates()[:, None]
        wd = self._schedule[:, 3:4] * np.asarray(self._decay)[None, :]
        # neighbouring parameters of a slot with the same step count are one tensor for the kernel
        same = np.zeros_like(stepped)
        same[:, 1:] = stepped[:, 1:] & stepped[:, :-1] & (self.adam_steps[:, 1:] == self.adam_steps[:, :-1])
        # one kernel call per (learning rate, weight decay) group of (slot, parameter) pairs
        rates = lr[stepped.any(1), 0]
        for group_lr in (rates[:1] if (rates == rates[0]).all() else np.unique(rates)):
            in_lr = stepped & (lr == group_lr)
            for group_wd in np.unique(wd[in_lr]):
                members = in_lr & (wd == group_wd)
                key = members.tobytes() + same.tobytes()  # the same runs step again and again
                views = self._adam_views.get(key)
                if views is None:
                    if len(self._adam_views) >= 64:
                        self._adam_views.clear()
                    views = self._adam_views[key] = self._run_views(members, same)
                torch._fused_adamw_(*views[:4], [], views[4], lr=float(group_lr), beta1=_BETA1, beta2=_BETA2,
                                    weight_decay=float(group_wd), eps=_EPS, amsgrad=False, maximize=False)

    def _run_views(self, members: np.ndarray, same: np.ndarray) -> list[list[torch.Tensor]]:
        """The kernel's tensors for the (slot, parameter) pairs ``members``: parameters, gradients,
        both moments and step counts, one per run of neighbouring parameters of a slot that
        ``same`` joins (one step count for the run)."""
        runs: list[list[int]] = []  # [slot, first parameter, last parameter]
        for i, q in np.argwhere(members).tolist():
            if runs and runs[-1][0] == i and runs[-1][2] == q - 1 and same[i, q]:
                runs[-1][2] = q
            else:
                runs.append([i, q, q])
        out = [[t[i, self._segments[q][0]:self._segments[last][1]] for i, q, last in runs]
               for t in (self.flat, self.grad_flat, self.exp_avg, self.exp_avg_sq)]
        out.append([self._views[4][i][q] for i, q, _ in runs])
        return out

    def _learning_rates(self) -> np.ndarray:
        """Each slot's learning rate for its next optimizer step, ``(N,)``: its distiller's
        warm-up / linear schedule (:func:`~kd_env.engine.lr_factor`, the same float arithmetic)
        at its step."""
        step = np.fromiter((d.step for d in self.distillers), dtype=np.float64, count=self.n)
        base, warm, total = self._schedule[:, 0], self._schedule[:, 1], self._schedule[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(step < warm, (step + 1) / warm, np.maximum(0.0, (total - step) / np.maximum(1, total - warm)))
        return base * factor

    # ---- checks and evaluation ------------------------------------------------------------------
    def snapshot(self) -> torch.Tensor:
        """A copy of every student's parameters."""
        return self.flat.detach().clone()

    def finite(self) -> np.ndarray:
        """Per slot: are all its parameters finite?"""
        with torch.no_grad():
            return torch.isfinite(self.flat).all(1).cpu().numpy()

    def restore(self, snapshot: torch.Tensor, indices: Sequence[int]) -> None:
        """Slots ``indices`` back to their parameters in ``snapshot`` (AdamW's moments stay)."""
        with torch.no_grad():
            rows = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
            self.flat[rows] = snapshot[rows]

    @torch.no_grad()
    def evaluate_probe(self) -> list[dict[str, float]]:
        """Each student's loss and metrics on its distiller's dev probe (eval mode), as
        :meth:`Distiller.evaluate` ``("probe")`` gives them."""
        logits = self.forward(self.probe_features).logits.float().cpu()
        labels = self.probe_labels
        # cross-entropy as logsumexp - the label's logit, with one max (also the prediction)
        top, predicted = logits.max(-1, keepdim=True)
        log_total = (logits - top).exp_().sum(-1).log_().add_(top.squeeze(-1))
        losses = (log_total - logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)).mean(1).double().numpy()
        correct = (predicted.squeeze(-1) == labels).sum(1).numpy()
        out = []
        for i, d in enumerate(self.distillers):
            if _accuracy_only(d.task):  # what compute_metrics gives, without its per-copy numpy pass
                acc = float(correct[i] / labels.shape[1])
                metrics = {"accuracy": acc, "main": acc}
            else:
                metrics = compute_metrics(d.task, logits[i].numpy(), labels[i].numpy())
            metrics["loss"] = float(losses[i])
            out.append(metrics)
        return out

    @torch.no_grad()
    def measure(self, indices: Sequence[int]) -> dict[int, PhaseStats]:
        """:meth:`Distiller.measure` for slots ``indices`` at once: every knowledge loss and the
        prediction statistics on each one's next training batch, without training and without
        consuming its budget or data (the first observation of an episode)."""
        start = time.perf_counter()
        bs = self.distillers[0].config.batch_size
        idx = np.zeros((self.n, bs), dtype=np.int64)
        for i, d in enumerate(self.distillers):
            rows = d.order[d.position: d.position + bs] if i in indices else np.arange(bs)
            idx[i] = rows if len(rows) == bs else d.order[:bs]
        batch, t_out = self._batch_at(idx)
        s_out = self.forward(batch["features"], t_out.hidden, t_out.input_moments)
        terms = self._terms(s_out, t_out, batch, range(len(self.knowledge)), [])
        values = torch.stack([terms[j] for j in range(len(self.knowledge))], 1)
        values = values.double().cpu().numpy()
        stats = {s: np.zeros(self.n) for s in ("ce", "acc", "kl", "agree", "ent")}
        self._prediction_stats(stats, s_out, t_out, batch, np.ones(self.n, dtype=bool))
        seconds = (time.perf_counter() - start) / max(1, len(indices))
        return {i: PhaseStats(losses=values[i], total_loss=0.0, student_ce=stats["ce"][i],
                              student_accuracy=stats["acc"][i], teacher_kl=stats["kl"][i],
                              agreement=stats["agree"][i], entropy=stats["ent"][i], grad_norm=0.0, steps=0,
                              trained_steps=0, seconds=seconds, crashed=not np.isfinite(values[i]).all())
                for i in indices}


# --------------------------------------------------------------------------------------------
# One optimizer step written out: forward, knowledge terms and backward without autograd
# --------------------------------------------------------------------------------------------


class _StepState:
    """What :meth:`_HandStep.forward` keeps of one step for the statistics and the backward."""

    __slots__ = ("values", "stats", "probs", "labels", "teacher_probs", "x", "targets", "logit_parts",
                 "moment_parts")

    def __init__(self, **kwargs: Any):
        for name, value in kwargs.items():
            setattr(self, name, value)


class _HandStep:
    """The arithmetic of one optimizer step of N MLP students with the built-in knowledge of a
    feature task (``finetune``, ``response``, ``uncertainty_kd``, ``feature``, ``relation``),
    written out without autograd.  :meth:`forward` computes every term's value for every
    student (the observation reports each term's mean over the phase, chosen or not), the
    prediction statistics, and each term's derivatives per example; :meth:`backward` runs the
    chain rule through the students by hand for the students' weights of the terms.

    Every term is a function of the logits ``z`` and of two numbers per example and layer
    ``j``, ``s_j = ||P_j h_j||^2`` and ``d_j = (P_j h_j) . t_j`` (see :class:`_ProjectedMoments`),
    so the backward needs only ``dL/dz`` ``(N, B, C)`` and ``a_j = dL/ds_j``, ``c_j = dL/dd_j``
    ``(N, B)``:

    * ``dL/dz = A (softmax(z) - onehot(y)) + sum_T R_T (softmax(z / T) - q_T)``, with ``A`` the
      weights of the cross-entropy per example, ``R_T`` ``T`` times those of the KL terms at
      temperature ``T`` and ``q_T`` the teacher's probabilities;
    * ``dL/dh_j += 2 a_j (h_j G_j) + c_j U_j`` and ``dL/dP_j = t_j^T diag(c_j) h_j
      + 2 P_j (h_j^T diag(a_j) h_j)`` (:class:`_ProjectedMoments`'s backward);
    * then the MLP's layers backwards (ReLU masks from the activations).

    The formulas are those of :func:`batched_knowledge_loss` and of the autograd Functions above,
    with the same clamps and gradient masks; values and gradients equal theirs up to float
    rounding (``tests/test_vector_env.py`` checks both).  Against autograd on those expressions
    this saves the graph (about a hundred nodes a step), and about half of the small operations:
    the per-layer arithmetic runs on the layers stacked ``(L, N, B)``, the softmaxes share one
    ``max`` (which is also the prediction), the teacher's side of ``feature`` and ``relation``
    is read from the data table, and activations and moment products are written into buffers
    reused every step.  :meth:`plan` gives ``None`` for anything else (another knowledge type,
    layers of different widths, a layer without a projection): that trains through autograd.
    """

    KINDS = (Finetune, Response, UncertaintyKD, Feature, Relation)

    def __init__(self, batch: "StudentBatch"):
        self.batch = batch
        self.knowledge = list(batch.knowledge)
        self.layers = len(batch.layer_names)
        self.width = int(batch.params[batch.layer_names[0][0]].shape[1])
        self.temperatures = [t for t in batch.temperatures if t != 1.0]
        self.uncertain = any(type(k) is UncertaintyKD for k in self.knowledge)
        cols = batch._columns
        depth = self.layers + 1
        self._sq_norms = (cols["sq_norm0"][0], cols[f"sq_norm{depth - 1}"][1])  # (first, end) columns
        self._inv_norms = (cols["inv_norm0"][0], cols[f"inv_norm{depth - 1}"][1])
        self._unit_sq_norms = (cols["unit_sq_norm0"][0], cols[f"unit_sq_norm{depth - 1}"][1])
        self._pairs = (cols["sq_norm_pair1"][0], cols[f"sq_norm_pair{depth - 1}"][1]) if depth > 1 else None
        #: the teacher's width of each hidden state
        self.teacher_widths = [float(cols[f"hidden{j}"][1] - cols[f"hidden{j}"][0]) for j in range(depth)]
        self._buffers: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self._log_classes: float | None = None
        self._relation_plan: tuple | None = None

    @classmethod
    def plan(cls, batch: "StudentBatch") -> "_HandStep | None":
        """The written-out step for ``batch``, or ``None`` where autograd must run it."""
        if any(type(k) not in cls.KINDS for k in batch.knowledge):
            return None
        widths = {int(batch.params[w].shape[1]) for w, _ in batch.layer_names}
        if len(widths) != 1 or batch._num_hidden != len(batch.layer_names) + 1:
            return None
        if batch.projection_names[0] is not None or any(name is None for name in batch.projection_names[1:]):
            return None
        if any(type(k) is Relation for k in batch.knowledge) and not batch._input_moments:
            return None
        return cls(batch)

    def uncertainty_rows(self) -> torch.Tensor | None:
        """Which students weight their examples by Dynamic KD's ``uncertainty`` (``(N, 1)``), or
        ``None`` when none does; another weighting is refused as the autograd path refuses it."""
        weighting = [d.example_weighting for d in self.batch.distillers]
        for name in set(weighting) - {None}:
            if name != "uncertainty":
                raise ValueError(f"the batched env supports the 'uncertainty' example weighting only, got {name!r}")
        if "uncertainty" not in weighting:
            return None
        return torch.as_tensor([x == "uncertainty" for x in weighting], device=self.batch.device).unsqueeze(1)

    def _buffers_for(self, n: int, bs: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A step's activations ``(L, N, B, d)``, moment products ``(2, L, N, B, d)`` (``h G``
        and ``t P``) and a scratch of that size, reused (a step's are read before the next step
        writes them; a fresh megabyte every step costs the kernel's page faults)."""
        key = (n, bs)
        if key not in self._buffers:
            shape = (self.layers, n, bs, self.width)
            self._buffers = {key: (like.new_empty(shape), like.new_empty((2, *shape)), like.new_empty((2, *shape)))}
        return self._buffers[key]

    def _columns(self, rows: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
        """Adjacent one-wide fields of the gathered rows as ``(fields, N, B)``."""
        return rows[:, :, span[0]:span[1]].permute(2, 0, 1)

    @torch.no_grad()
    def forward(self, data: dict[str, torch.Tensor], teacher: TeacherStates, rows: torch.Tensor | None) -> _StepState:
        """Every knowledge term of every student on its batch (``values`` ``(N, K)``), the
        prediction statistics (``stats`` ``(N, 5)``: cross-entropy, accuracy, KL to the teacher,
        agreement, entropy, as :meth:`StudentBatch._prediction_stats` computes them) and what
        :meth:`backward` reads."""
        b = self.batch
        p = b.params
        x = data["features"]
        n, bs = x.shape[:2]
        hidden, prods, scratch = self._buffers_for(n, bs, x)
        h = x
        for layer, (wn, bn) in enumerate(b.layer_names):
            torch.baddbmm(p[bn].unsqueeze(1), h, p[wn].transpose(1, 2), out=hidden[layer])
            h = hidden[layer].relu_()
        # the logits class-major, (N, C, B): the softmaxes reduce over a short dimension that is
        # not the innermost, which vectorises over the examples (several times faster than (N, B, C))
        z = torch.baddbmm(p["model.head.bias"].unsqueeze(2), p["model.head.weight"], h.transpose(1, 2))
        for layer in range(self.layers):
            proj = p[b.projection_names[layer + 1]]
            torch.bmm(hidden[layer], torch.bmm(proj.transpose(1, 2), proj), out=prods[0, layer])
            torch.bmm(teacher.hidden[layer + 1], proj, out=prods[1, layer])
        sd = torch.mul(prods, hidden, out=scratch).sum(-1)  # (2, L, N, B): s_j = ||P_j h_j||^2, d_j = (P_j h_j) . t_j
        # log-softmax at every temperature from one max (which is also the prediction)
        top, predicted = z.max(1, keepdim=True)
        shifted = z - top
        exp = shifted.exp()
        total = exp.sum(1, keepdim=True)
        log_p = shifted - total.log()
        probs, log_probs = {1.0: exp.div_(total)}, {1.0: log_p}
        for t in self.temperatures:
            scaled = shifted * (1.0 / t)
            exp = scaled.exp()
            total = exp.sum(1, keepdim=True)
            log_probs[t], probs[t] = scaled.sub_(total.log()), exp.div_(total)
        predicted = predicted.squeeze(1)
        labels = data["labels"]
        ce = log_p.gather(1, labels.unsqueeze(1)).squeeze(1).neg_()
        mask = data.get("label_mask")
        entropy = (probs[1.0] * log_p).sum(1).neg_()
        u = None
        if rows is not None or self.uncertain:
            if self._log_classes is None:  # as uncertainty_weighting divides
                self._log_classes = float(torch.log(torch.tensor(float(z.shape[1]))))
            u = (entropy / self._log_classes).clamp_(0.0, 1.0)
        kl: dict[float, torch.Tensor] = {}
        teacher_probs = {t: teacher.softmax(t).transpose(1, 2) for t in probs}  # (N, C, B) views

        def kl_at(t: float) -> torch.Tensor:  # KL(q_T || p_T) per example
            if t not in kl:
                kl[t] = (teacher_probs[t] * (teacher.log_softmax(t).transpose(1, 2) - log_probs[t])).sum(1)
            return kl[t]

        # the prediction statistics
        hit = (predicted == labels).float()
        agree = (predicted == teacher.argmax()).float()
        if mask is None:
            stats = torch.stack([ce, hit, kl_at(1.0), agree, entropy], -1).mean(1)
            ce_weight = None  # 1 / B for every example
        else:
            count = mask.sum(1, keepdim=True)
            ce_weight = mask / count.clamp_min(1)
            labelled = torch.stack([ce, hit], -1).mul_(ce_weight.unsqueeze(-1)).sum(1)
            stats = torch.cat([labelled, torch.stack([kl_at(1.0), agree, entropy], -1).mean(1)], 1)

        values: list[torch.Tensor] = []
        logit_parts: list[tuple[int, Any, dict[float, Any]]] = []  # (term, cross-entropy weights, KL weights by T)
        moment_parts: list[tuple[int, torch.Tensor, torch.Tensor, Any]] = []  # (term, dL/ds, dL/dd, layers)
        rows_data = teacher.rows
        for k, kn in enumerate(self.knowledge):
            kind = type(kn)
            if kind is Finetune:
                if rows is None:
                    weights = ce_weight if ce_weight is not None else 1.0 / bs
                else:
                    extra = torch.where(rows, 1.0 - u, torch.ones_like(u))
                    weights = extra * (ce_weight if ce_weight is not None else 1.0 / bs)
                values.append(ce.mean(1) if isinstance(weights, float) else (ce * weights).sum(1))
                logit_parts.append((k, weights, {}))
            elif kind is Response:
                t = kn.temperature
                per = kl_at(t)
                if rows is None:
                    values.append(per.mean(1) * (t * t))
                    logit_parts.append((k, None, {t: t / bs}))
                else:
                    weights = torch.where(rows, u, torch.ones_like(u)) * (1.0 / bs)
                    values.append((per * weights).sum(1) * (t * t))
                    logit_parts.append((k, None, {t: weights * t}))
            elif kind is UncertaintyKD:
                t = kn.response.temperature
                ft = (1.0 - u) * (ce_weight if ce_weight is not None else 1.0 / bs)
                resp = u * (1.0 / bs)
                values.append((ce * ft).sum(1) + (kl_at(t) * resp).sum(1) * (t * t))
                logit_parts.append((k, ft, {t: resp * t}))
            elif kind is Feature:
                value, ds, dd, which = self._feature(kn, sd, rows_data, teacher, bs)
                values.append(value)
                moment_parts.append((k, ds, dd, which))
            else:
                value, ds, dd = self._relation(sd, rows_data, teacher, bs)
                values.append(value)
                moment_parts.append((k, ds, dd, slice(None)))
        return _StepState(values=torch.stack(values, 1), stats=stats, probs=probs, labels=labels,
                          teacher_probs=teacher_probs, x=x,
                          targets=[teacher.hidden[j + 1] for j in range(self.layers)],
                          logit_parts=logit_parts, moment_parts=moment_parts)

    def _feature(self, kn: Feature, sd: torch.Tensor, rows: torch.Tensor, teacher: TeacherStates,
                 bs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """``feature``'s value ``(N,)`` and its derivatives by ``s_j`` and ``d_j`` per example,
        ``(J, N, B)``, on the layers it reads (``which``: their positions in ``0..L-1``)."""
        layers = kn._indices(self.layers)
        which: Any = slice(None) if layers == list(range(1, self.layers + 1)) else [j - 1 for j in layers]
        s, d = sd[0, which], sd[1, which]
        scale = 1.0 / (len(layers) * bs)
        if kn.tokens == "all":  # mean over (B, H) of (P h - t)^2
            q = self._columns(rows, self._sq_norms)[1:][which]
            widths = torch.tensor([self.teacher_widths[j] for j in layers], device=s.device)
            value = (torch.add(s, q).sub_(d, alpha=2.0).mean(2) / widths.unsqueeze(1)).mean(0)
            ds = (scale / widths).view(-1, 1, 1).expand_as(s)
            return value, ds, ds * -2.0, which
        # _PooledFeature: f = s / ns^2 + q / nt^2 - 2 d / (ns nt), ns = max(sqrt(s), 1e-12)
        inv_nt = self._columns(rows, self._inv_norms)[1:][which]
        unit_t = self._columns(rows, self._unit_sq_norms)[1:][which]
        root = s.sqrt()
        inv_ns = root.clamp_min(1e-12).reciprocal_()
        inv_ns2 = inv_ns * inv_ns
        inv_nn = inv_ns.mul_(inv_nt)  # 1 / (ns nt)
        unit_s = s * inv_ns2
        dn = d * inv_nn
        value = torch.add(unit_s, unit_t).sub_(dn, alpha=2.0).mean(2).mean(0)
        # df/ds = 1 / ns^2 + [sqrt(s) >= 1e-12] (d / (ns nt) - s / ns^2) / ns^2
        ds = dn.sub_(unit_s).mul_(inv_ns2).mul_(root >= 1e-12).add_(inv_ns2).mul_(scale)
        return value, ds, inv_nn.mul_(-2.0 * scale), which

    def _relation(self, sd: torch.Tensor, rows: torch.Tensor, teacher: TeacherStates,
                  bs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``relation``'s value ``(N,)`` and its derivatives by ``s_j``, ``d_j`` (``(L, N, B)``):
        :class:`_RelationProduct` on the pairs ``(j - 1, j)``, the input's moments and the
        teacher's products of squared norms read from the data table."""
        s0, d0 = teacher.input_moments
        s = torch.cat([s0.unsqueeze(0), sd[0]])  # (D, N, B)
        d = torch.cat([d0.unsqueeze(0), sd[1]])
        value = (s[:-1] * s[1:]).sub_(d[:-1] * d[1:], alpha=2.0).add_(self._columns(rows, self._pairs))  # (L, N, B)
        if self._relation_plan is None:
            widths = self.teacher_widths
            pairs = torch.tensor([a * c for a, c in zip(widths[:-1], widths[1:])], device=s.device)
            self._relation_plan = (pairs.view(-1, 1), (1.0 / (pairs * (self.layers * bs))).view(-1, 1, 1))
        pairs, grad_scale = self._relation_plan
        g = (value >= 0).float().mul_(grad_scale)
        rel = (value.clamp_min_(0).mean(2) / pairs).mean(0)
        ds, dd = g * s[:-1], (g * d[:-1]).mul_(-2.0)  # layer j as the second of pair (j - 1, j)
        if self.layers > 1:  # layer j as the first of pair (j, j + 1)
            ds[:-1].addcmul_(g[1:], s[2:])
            dd[:-1].addcmul_(g[1:], d[2:], value=-2.0)
        return rel, ds, dd

    @torch.no_grad()
    def backward(self, st: _StepState, coef: torch.Tensor) -> None:
        """The gradient of ``sum_i sum_k coef[i, k] L_ik`` by every student's parameters, written
        into :attr:`StudentBatch.grad_flat` (``coef`` ``(N, K)``: each student's weights of the
        terms, zero for a student that does not learn in this step)."""
        b = self.batch
        p = b.params
        x = st.x
        n, bs = x.shape[:2]
        hidden, prods, _ = self._buffers_for(n, bs, x)
        top = self.layers - 1
        ce_coef, kl_coef = None, {}
        for k, weights, by_t in st.logit_parts:
            c = coef[:, k:k + 1]
            if weights is not None:
                ce_coef = weights * c if ce_coef is None else ce_coef + weights * c
            for t, r in by_t.items():
                kl_coef[t] = r * c if t not in kl_coef else kl_coef[t] + r * c
        a = dd = None
        for k, ds_k, dd_k, which in st.moment_parts:
            c = coef[:, k:k + 1]
            if a is None and which == slice(None):
                a, dd = ds_k * c, dd_k * c
                continue
            if a is None:
                a, dd = hidden.new_zeros(hidden.shape[:3]), hidden.new_zeros(hidden.shape[:3])
            if which == slice(None):
                a.addcmul_(ds_k, c)
                dd.addcmul_(dd_k, c)
            else:
                a[which] += ds_k * c
                dd[which] += dd_k * c
        extra = None
        if a is not None:  # dL/dh_j from the moments: 2 a_j (h_j G_j) + c_j U_j
            extra = torch.mul(prods[1], dd.unsqueeze(-1)).addcmul_(prods[0], a.unsqueeze(-1), value=2.0)
        grads: dict[str, torch.Tensor] = {}
        head_w, head_b = p["model.head.weight"], p["model.head.bias"]
        gz = None
        if ce_coef is not None:  # dL/dz class-major, (N, C, B), as the logits
            ce_coef = ce_coef.expand(n, bs).unsqueeze(1)
            gz = st.probs[1.0] * ce_coef
            gz.scatter_add_(1, st.labels.unsqueeze(1), ce_coef.neg())
        for t, r in kl_coef.items():
            diff = st.probs[t] - st.teacher_probs[t]
            r = r.unsqueeze(1)
            gz = diff.mul_(r) if gz is None else gz.addcmul_(diff, r)
        if gz is not None:
            grads["model.head.weight"] = torch.bmm(gz, hidden[top])
            grads["model.head.bias"] = gz.sum(2)
            dz = gz.transpose(1, 2)
            dh = torch.bmm(dz, head_w) if extra is None else extra[top].baddbmm_(dz, head_w)
        else:
            grads["model.head.weight"], grads["model.head.bias"] = torch.zeros_like(head_w), torch.zeros_like(head_b)
            dh = extra[top] if extra is not None else torch.zeros_like(hidden[top])
        for layer in range(top, -1, -1):
            wn, bn = b.layer_names[layer]
            pre = torch.ops.aten.threshold_backward(dh, hidden[layer], 0.0)
            grads[wn] = torch.bmm(pre.transpose(1, 2), x if layer == 0 else hidden[layer - 1])
            grads[bn] = pre.sum(1)
            if layer > 0:
                dh = torch.bmm(pre, p[wn]) if extra is None else extra[layer - 1].baddbmm_(pre, p[wn])
        if a is not None:
            ah = torch.mul(hidden, a.unsqueeze(-1), out=prods[0])  # the products are read: reuse their buffer
            ch = torch.mul(hidden, dd.unsqueeze(-1), out=prods[1])
        for layer in range(self.layers):
            name = b.projection_names[layer + 1]
            if a is None:
                grads[name] = torch.zeros_like(p[name])
                continue
            h = hidden[layer]
            d_gram = torch.bmm(h.transpose(1, 2), ah[layer])
            grads[name] = torch.bmm(st.targets[layer].transpose(1, 2), ch[layer]).baddbmm_(p[name], d_gram, alpha=2.0)
        torch.cat([grads[name].reshape(n, -1) for name in p], 1, out=b.grad_flat)


def _accuracy_only(task: Any) -> bool:
    """Whether :func:`~kd_env.metrics.compute_metrics` gives ``task`` accuracy alone."""
    key = task.name
    if key not in _ACCURACY_ONLY:
        probe = compute_metrics(task, np.eye(max(2, task.num_labels), dtype=np.float32)[:2], np.array([0, 0]))
        _ACCURACY_ONLY[key] = set(probe) == {"accuracy", "main"} and probe["main"] == probe["accuracy"] == 0.5
    return _ACCURACY_ONLY[key]


_ACCURACY_ONLY: dict[str, bool] = {}

#: the prediction statistics of a step, in the order of their columns
_PREDICTION_STATS = ("ce", "acc", "kl", "agree", "ent")


def _decays(name: str, p: torch.Tensor) -> bool:
    """Whether AdamW decays parameter ``name`` (the Distiller's groups: matrices yes, biases and
    norms no)."""
    return p.ndim >= 2 and "norm" not in name.lower()


# --------------------------------------------------------------------------------------------
# The vector env
# --------------------------------------------------------------------------------------------


def _clone_distiller(prototype: Distiller) -> Distiller:
    """A distiller that shares ``prototype``'s data, teacher, teacher cache and initial state
    (read-only) and has its own student, optimizer, schedule, data order and random stream;
    closing it leaves the shared teacher cache open (the prototype's owner closes it)."""
    import copy

    clone = copy.copy(prototype)
    clone.student = copy.deepcopy(prototype.student)
    clone._torch_rng = {}
    clone.step_timer = None
    clone.close = lambda: None  # the shared teacher cache is closed with the prototype
    clone.reset(prototype.config.seed)
    return clone


class _BatchedCopy(KnowledgeSelectionEnv):
    """One copy of a :class:`BatchedKDVectorEnv`: an ordinary env whose phase is trained by the
    vector env's :class:`StudentBatch`; its ``step`` reads the phase's result from there."""

    _pending: tuple[PhaseStats, bool, dict[str, float] | None] | None = None

    def __init__(self, *args: Any, prototypes: dict[str, Distiller], **kwargs: Any):
        self._prototypes = prototypes
        super().__init__(*args, **kwargs)

    def _build_distiller(self, config: Any) -> Distiller:
        """A copy of the vector env's one distiller for ``config``: the data, teacher and teacher
        cache are shared by every copy (built once, not once per copy and instance); the student,
        its optimizer and data order are the copy's own."""
        key = repr(config)
        if key not in self._prototypes:
            self._prototypes[key] = super()._build_distiller(config)
        return _clone_distiller(self._prototypes[key])

    def _checked_action(self, action: Any) -> np.ndarray:
        if self._pending is not None:  # checked by the vector env before the phase was trained
            return self._validate_action(action)
        return super()._checked_action(action)

    def _train_phase_or_crash(self, w: np.ndarray) -> tuple[PhaseStats, bool]:
        if self._pending is None:
            raise RuntimeError("a copy of a BatchedKDVectorEnv is stepped by its vector env, not on its own")
        phase, crashed, _ = self._pending
        return phase, crashed

    def _probe(self) -> dict[str, float]:
        probe = self._pending[2] if self._pending is not None else None
        return probe if probe is not None else self.distiller.evaluate("probe")


class BatchedKDVectorEnv(VectorEnv):
    """``num_envs`` knowledge-selection envs whose students train as one batched model.

    Observations, rewards, ``terminated``/``truncated`` and infos are those of ``num_envs``
    :class:`~kd_env.env.KnowledgeSelectionEnv` made with the same arguments and reset with seeds
    ``seed, seed + 1, ...`` (Gymnasium's vector seeding); infos are batched as
    :class:`~gymnasium.vector.SyncVectorEnv` batches them (``info[key][i]`` with mask
    ``info["_" + key]``).  Reset ``options`` go to every copy (``replay``, ``instance``,
    ``example_weighting``, ``reward``), or per copy as a list of ``num_envs`` dicts (``None``
    for a copy: no options).  ``reset(options=..., ...)`` may also hold ``"reset_mask"`` (a
    boolean array): only those copies are reset.

    Autoreset: ``autoreset_mode`` ``"next_step"`` (Gymnasium's default: the step after an
    episode's last resets that copy, returning its first observation with reward 0) or
    ``"same_step"`` (the last step returns the next episode's first observation; the final one is
    in ``info["final_obs"]``, its info in ``info["final_info"]``).

    Args:
        num_envs: number of copies (students).
        *args, **kwargs: those of :class:`~kd_env.env.KnowledgeSelectionEnv` (config, preset
            and overrides, ``instances``, ``observation``, ``reward``, ...).
        device: where the students train: ``"cpu"`` (default) or ``"cuda"``.
        autoreset_mode: ``"next_step"`` or ``"same_step"``.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, *args: Any, device: str = "cpu", autoreset_mode: str = "next_step",
                 **kwargs: Any):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        modes = {"next_step": AutoresetMode.NEXT_STEP, "same_step": AutoresetMode.SAME_STEP,
                 AutoresetMode.NEXT_STEP: AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP: AutoresetMode.SAME_STEP}
        if autoreset_mode not in modes:
            raise ValueError(f"autoreset_mode must be 'next_step' or 'same_step', got {autoreset_mode!r}")
        self.autoreset_mode = modes[autoreset_mode]
        device = _checked_device(device)
        kwargs.pop("max_episode_steps", None)  # from gymnasium.make_vec; episodes end with the budget
        if kwargs.get("render_mode") is not None:
            raise ValueError("the batched env does not render; make single envs with render_mode='ansi'")
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.num_envs = int(num_envs)
        self.envs: list[_BatchedCopy] = []
        self._prototypes: dict[str, Distiller] = {}  # one distiller per config, shared by the copies
        try:
            for _ in range(self.num_envs):
                self.envs.append(_BatchedCopy(*args, prototypes=self._prototypes, **kwargs))
            self.batch = StudentBatch([e.distiller for e in self.envs], device=device)
        except Exception:
            for e in self.envs:
                e.close()
            for d in self._prototypes.values():
                d.close()
            raise
        first = self.envs[0]
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.knowledge_names = list(first.knowledge_names)
        self.device = self.batch.device
        self._needs_reset = np.ones(self.num_envs, dtype=bool)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._observations = create_empty_array(self.single_observation_space, n=self.num_envs)
        self._closed = False
        self.last_phase_seconds = 0.0

    # ---- reset ------------------------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: Any = None):
        self._check_open()
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset seed must be an int, None or a list of {self.num_envs} seeds, got {len(seeds)}")
        options = dict(options) if isinstance(options, dict) else options
        mask = np.ones(self.num_envs, dtype=bool)
        if isinstance(options, dict) and "reset_mask" in options:
            mask = np.asarray(options.pop("reset_mask"), dtype=bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        per_copy = self._per_copy_options(options)
        indices = [int(i) for i in np.flatnonzero(mask)]
        self._begin_resets(indices, seeds, per_copy)
        infos: dict[str, Any] = {}
        for i, (obs, info) in self._finish_resets(indices).items():
            self._observations = _set_row(self._observations, i, obs, self.single_observation_space)
            infos = self._add_info(infos, info, i)
        self._autoreset[mask] = False
        return self._copy_obs(), infos

    def _per_copy_options(self, options: Any) -> list[dict[str, Any] | None]:
        if options is None or isinstance(options, dict):
            return [options or None] * self.num_envs
        if isinstance(options, (list, tuple)) and len(options) == self.num_envs:
            return [None if o is None else dict(o) for o in options]
        raise ValueError(f"reset options must be a dict, None or a list of {self.num_envs} dicts (one per copy), "
                         f"got {type(options).__name__}")

    def _begin_resets(self, indices: Sequence[int], seeds: Any, options: Any) -> None:
        """Reset the copies' distillers (options, instance, seed) and load their fresh students."""
        self._needs_reset[list(indices)] = True  # until the reset completes
        for i in indices:
            env = self.envs[i]
            env._pending = None
            env._begin_reset(seeds[i], options[i])
            self.batch.load(i, env.distiller)

    def _finish_resets(self, indices: Sequence[int]) -> dict[int, tuple[Any, dict[str, Any]]]:
        """The first observation and info of each copy in ``indices`` (after
        :meth:`_begin_resets`), their first batch measured and dev probe evaluated at once."""
        if not indices:
            return {}
        measured = self.batch.measure(indices)
        probes = self.batch.evaluate_probe()
        out = {}
        for i in indices:
            out[i] = self.envs[i]._finish_reset(measured[i], probes[i])
            self._needs_reset[i] = False
        return out

    # ---- step -------------------------------------------------------------------------------
    def step(self, actions: Any):
        """One phase in every copy: the students of copies whose episode goes on train together;
        copies that ended an episode on the last step are reset instead (``next_step`` mode)."""
        self._check_open()
        start = time.perf_counter()
        actions = np.asarray(actions)
        if actions.shape[:1] != (self.num_envs,):
            raise ValueError(f"actions must have a leading dimension of num_envs={self.num_envs}, got shape "
                             f"{actions.shape}; expected {self.action_space}")
        resetting = self._autoreset.copy()
        if self._needs_reset[~resetting].any():
            raise RuntimeError("step() before reset(): call reset() first")
        stepping = {int(i): actions[i] for i in np.flatnonzero(~resetting)}
        restarting = {int(i): (None, None) for i in np.flatnonzero(resetting)}
        results = self.advance(stepping, restarting, strict=True)
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        for i in stepping:
            _, rewards[i], terminated[i], truncated[i], _ = results[i]
        ended = [i for i in stepping if terminated[i] or truncated[i]]
        final = {}
        if self.autoreset_mode == AutoresetMode.SAME_STEP and ended:
            final = self.advance({}, {i: (None, None) for i in ended}, strict=True)
        infos: dict[str, Any] = {}
        for i in range(self.num_envs):
            if i in final:
                obs, info = final[i]
                step = results[i]
                info = {**info, "final_obs": step[0], "final_info": step[4]}
            elif i in stepping:
                obs, info = results[i][0], results[i][4]
            else:
                obs, info = results[i]
            self._observations = _set_row(self._observations, i, obs, self.single_observation_space)
            infos = self._add_info(infos, info, i)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._autoreset = terminated | truncated
        self.last_phase_seconds = time.perf_counter() - start
        return self._copy_obs(), rewards, terminated, truncated, infos

    def advance(self, steps: dict[int, Any], resets: dict[int, tuple[int | None, dict[str, Any] | None]],
                strict: bool = False) -> dict[int, Any]:
        """Step some copies and reset others, in one batched phase (the rest wait): what
        :class:`Lockstep` drives, one copy per independent driver.

        Args:
            steps: ``{copy: action}``: these copies take one phase; each result is the copy's
                ``(obs, reward, terminated, truncated, info)``, as its single env's ``step``.
            resets: ``{copy: (seed, options)}``: these copies start an episode; each result is
                ``(obs, info)``, as its single env's ``reset``.
            strict: raise the first copy's error (a bad action, a step after the episode's end)
                before anything runs; otherwise that copy's result is the exception and the other
                copies go on.

        Returns:
            ``{copy: result or exception}``.
        """
        self._check_open()
        out: dict[int, Any] = {}
        weights = np.zeros((self.num_envs, len(self.knowledge_names)))
        stepping = []
        for i, action in steps.items():  # every action checked before any student trains
            try:
                if self._needs_reset[i]:
                    raise RuntimeError("step() before reset(): call reset() first")
                weights[i] = self.envs[i]._checked_action(action)
                stepping.append(i)
            except (ValueError, RuntimeError) as exc:
                if strict:
                    raise type(exc)(f"copy {i}: {exc}") from None
                out[i] = exc
        restarting = []
        for i, (seed, options) in resets.items():
            try:
                self._begin_resets([i], {i: seed}, {i: options})
                restarting.append(i)
            except (ValueError, RuntimeError) as exc:
                if strict:
                    raise
                out[i] = exc
        budget = np.zeros(self.num_envs, dtype=np.int64)
        for i in stepping:
            d = self.envs[i].distiller
            budget[i] = max(0, min(d.config.steps_per_action, d.budget_left))
        finite = np.ones(self.num_envs, dtype=bool)
        phases: list[PhaseStats] = []
        if stepping:
            snapshot = self.batch.snapshot()
            phases = self.batch.train_phase(weights, budget)
            finite = self.batch.finite()
            broken = [i for i in stepping if not finite[i]]
            if broken:
                self.batch.restore(snapshot, broken)  # as the single env: back to the state before the phase
            self.batch.store(stepping)
        out.update(self._finish_resets(restarting))
        probes = self.batch.evaluate_probe() if stepping else []
        for i in stepping:
            env = self.envs[i]
            crashed = phases[i].crashed or not finite[i]
            env._pending = (phases[i], crashed, None if crashed else probes[i])
            try:
                out[i] = env.step(steps[i])
            finally:
                env._pending = None
        return out

    # ---- helpers ------------------------------------------------------------------------------
    def _copy_obs(self):
        return _copy_tree(self._observations)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the vector env is closed")

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """``getattr(copy, name)(*args, **kwargs)`` (or the attribute) of every copy."""
        out = []
        for env in self.envs:
            attr = getattr(env, name)
            out.append(attr(*args, **kwargs) if callable(attr) else attr)
        return tuple(out)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return tuple(getattr(env, name) for env in self.envs)

    def set_attr(self, name: str, values: Any) -> None:
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr needs one value or {self.num_envs} values, got {len(values)}")
        for env, value in zip(self.envs, values):
            setattr(env, name, value)

    def close_extras(self, **kwargs: Any) -> None:
        if self._closed:
            return
        self._closed = True
        for env in self.envs:
            env.close()
        for d in self._prototypes.values():
            d.close()

    def __repr__(self) -> str:
        return f"BatchedKDVectorEnv(num_envs={self.num_envs}, device={self.device}, knowledge={self.knowledge_names})"


def _checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device: ``cpu``, ``cuda``, ``cuda:<i>`` or ``auto`` (CUDA when there is
    one); ``ValueError`` naming the valid ones otherwise, or when CUDA is asked for and absent."""
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device
    else:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<index>' or 'auto', got {device!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<index>' or 'auto', got {device!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this torch has no CUDA device (torch.cuda.is_available() "
                         f"is False); use 'cpu' or 'auto'")
    return torch.device(name)


def _set_row(batched: Any, i: int, value: Any, space: gym.Space) -> Any:
    """Row ``i`` of a batched observation set to ``value`` (``concatenate``'s layout)."""
    if isinstance(space, gym.spaces.Dict):
        for key, sub in space.spaces.items():
            batched[key] = _set_row(batched[key], i, value[key], sub)
        return batched
    batched[i] = value
    return batched


def _copy_tree(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _copy_tree(v) for k, v in x.items()}
    return np.array(x, copy=True)



# --------------------------------------------------------------------------------------------
# Independent drivers on the copies: one learner per copy, stepping in lockstep
# --------------------------------------------------------------------------------------------


class CopyEnv(gym.Env):
    """Copy ``index`` of a :class:`BatchedKDVectorEnv` seen as a single env, for code written
    for one env (an agent's ``learn``, an evaluation loop).  ``reset`` and ``step`` go through
    ``lockstep``, which runs them batched with the other copies' calls; ``unwrapped`` is the
    copy itself (its distiller holds the trained student after every phase)."""

    def __init__(self, lockstep: "Lockstep", venv: BatchedKDVectorEnv, index: int):
        super().__init__()
        self._lockstep, self._venv, self._index = lockstep, venv, index
        copy = venv.envs[index]
        self.observation_space = copy.observation_space
        self.action_space = copy.action_space
        self.metadata = copy.metadata

    @property
    def unwrapped(self) -> KnowledgeSelectionEnv:
        return self._venv.envs[self._index]

    @property
    def spec(self):  # the single env's (gym.make's), if the copies were made from an id
        return getattr(self._venv, "single_spec", None)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        return self._lockstep.call(self._venv, self._index, "reset", (seed, options))

    def step(self, action: Any):
        return self._lockstep.call(self._venv, self._index, "step", action)

    def close(self) -> None:
        pass  # the vector env owns the copy


class Lockstep:
    """Runs independent drivers (one callable per driver, e.g. one learner's training per seed)
    in threads, one at a time, each on its own copies of batched vector envs (:class:`CopyEnv`):
    when every driver is waiting on a copy's ``reset`` or ``step``, all the waiting calls run as
    one batched phase.  Each driver therefore sees exactly what it would see on its own single
    env, while the students of all drivers train together.

    Only one driver runs at a time (a baton), so drivers never race on global state (random
    streams, the torch RNG a distiller saves and restores); drivers must not share objects.
    Outside :meth:`run`, a copy's call runs at once, alone.
    """

    def __init__(self):
        import threading

        self._cond = threading.Condition()
        self._baton = threading.Lock()
        self._pending: dict[int, tuple] = {}  # driver -> (venv, copy, kind, args)
        self._results: dict[int, Any] = {}
        self._live: set[int] = set()
        self._driver = threading.local()
        self._threads = False

    def copy_env(self, venv: BatchedKDVectorEnv, index: int) -> CopyEnv:
        if not 0 <= index < venv.num_envs:
            raise ValueError(f"copy index {index} out of range for a vector env of {venv.num_envs} copies")
        return CopyEnv(self, venv, index)

    def call(self, venv: BatchedKDVectorEnv, index: int, kind: str, args: Any) -> Any:
        driver = getattr(self._driver, "id", None)
        if not self._threads or driver is None:  # no drivers running: this call alone
            result = self._execute({0: (venv, index, kind, args)})[0]
        else:
            with self._cond:
                self._pending[driver] = (venv, index, kind, args)
                self._cond.notify_all()
            self._baton.release()  # let the other drivers run until they wait too
            with self._cond:
                while driver not in self._results:
                    self._cond.wait()
                result = self._results.pop(driver)
            self._baton.acquire()
        if isinstance(result, BaseException):
            raise result
        return result

    @staticmethod
    def _execute(requests: dict[int, tuple]) -> dict[int, Any]:
        """One batched phase per vector env for the waiting calls; ``{driver: result or error}``."""
        out: dict[int, Any] = {}
        by_venv: dict[int, list[tuple[int, tuple]]] = {}
        for driver, request in requests.items():
            by_venv.setdefault(id(request[0]), []).append((driver, request))
        for items in by_venv.values():
            venv = items[0][1][0]
            owner: dict[int, int] = {}
            steps, resets = {}, {}
            for driver, (_, index, kind, args) in items:
                if index in owner:
                    out[driver] = RuntimeError(f"two drivers called copy {index} of one vector env at once")
                    continue
                owner[index] = driver
                (steps if kind == "step" else resets)[index] = args
            try:
                results = venv.advance(steps, resets)
            except Exception as exc:  # noqa: BLE001 - every driver of this env learns of it
                results = {index: exc for index in owner}
            for index, driver in owner.items():
                out[driver] = results[index]
        return out

    def run(self, drivers: Sequence[Any]) -> list[Any]:
        """Run ``drivers`` (callables without arguments) to the end; their return values, or the
        exception a driver raised, in order."""
        import threading

        outcomes: list[Any] = [None] * len(drivers)

        def body(k: int, fn: Any) -> None:
            self._driver.id = k
            self._baton.acquire()
            try:
                outcomes[k] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                outcomes[k] = exc
            finally:
                with self._cond:
                    self._live.discard(k)
                    self._cond.notify_all()
                self._baton.release()

        self._threads = True
        self._live = set(range(len(drivers)))
        threads = [threading.Thread(target=body, args=(k, fn), daemon=True) for k, fn in enumerate(drivers)]
        try:
            for t in threads:
                t.start()
            while True:
                with self._cond:
                    while self._live and len(self._pending) < len(self._live):
                        self._cond.wait()
                    if not self._live:
                        break
                    requests, self._pending = self._pending, {}
                with self._baton:  # every live driver waits: none runs while the phase does
                    results = self._execute(requests)
                with self._cond:
                    self._results.update(results)
                    self._cond.notify_all()
            for t in threads:
                t.join()
        finally:
            self._threads = False
        return outcomes
