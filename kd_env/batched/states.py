"""N students' and their teacher's outputs on a batch, as the batched knowledge losses read them.

Shapes: student/teacher logits (N, B, C); hidden[j] (N, B, H_j) (MLP layers: one "token").
"""

from __future__ import annotations

from typing import Any

import torch

from ..models import ModelOutputs

__all__ = ["StudentStates", "TeacherStates"]


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last dimension.  PyTorch's CPU kernel is slow on a short last
    dimension (10 classes: 4x slower than this on (32, 64, 10)); the value is the same."""
    return x - torch.logsumexp(x, -1, keepdim=True)



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

    def _memoised(self, key: tuple, compute: Any) -> Any:
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
                              lambda: _ProjectedMoments.apply(self.raw[j], self.projections[j],
                                                              self.targets[j]))  # type: ignore[index]  # _paired(j)

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
        if self._paired(j) and t is self.targets[j]:  # type: ignore[index]  # _paired(j): targets are set
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
