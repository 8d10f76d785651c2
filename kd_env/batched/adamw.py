"""The batched students' optimizer: gradient clipping and AdamW on the stacked ``(N, P)``
parameters, each slot with its distiller's learning-rate schedule, weight decay and clipping norm,
and each parameter with its own step count (as PyTorch's AdamW counts)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..engine import Distiller
from ..knowledge import Knowledge
from .losses import batched_knowledge_loss

__all__: list[str] = []

#: AdamW's defaults, as :class:`~kd_env.engine.Distiller` uses them
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


def _decays(name: str, p: torch.Tensor) -> bool:
    """Whether AdamW decays parameter ``name`` (the Distiller's groups: matrices yes, biases and
    norms no)."""
    return p.ndim >= 2 and "norm" not in name.lower()


class _StackedAdamW:
    """:class:`~kd_env.batched.students.StudentBatch`'s AdamW and gradient clipping."""

    n: int
    device: torch.device
    distillers: list[Distiller]
    knowledge: Sequence[Knowledge]
    params: dict[str, torch.Tensor]
    flat: torch.Tensor
    grad_flat: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    adam_steps: np.ndarray
    _segments: list[tuple[int, int]]
    _decay: list[bool]
    _step_counts: torch.Tensor
    _views: list[Any]
    _zero_grads: list[torch.Tensor] | None
    _adam_views: dict[bytes, list[list[torch.Tensor]]]
    _schedule: np.ndarray
    _max_norm: torch.Tensor
    _reach: np.ndarray | None
    _batch_at: Any
    forward: Any

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
                torch._fused_adamw_(views[0], views[1], views[2], views[3], [], views[4], lr=float(group_lr), beta1=_BETA1, beta2=_BETA2,
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
