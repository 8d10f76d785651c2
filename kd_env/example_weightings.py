"""Per-example weightings: how much each example counts in each knowledge term.

A weighting is registered by name (:func:`register_example_weighting`) and chosen with
``reset(options={"example_weighting": name})``; built in: ``uncertainty`` (Dynamic KD).
:mod:`kd_env.knowledge` re-exports these names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import torch

from .models import ModelOutputs
from .registry import Registry

if TYPE_CHECKING:
    from .knowledge import Knowledge

__all__ = ["EXAMPLE_WEIGHTINGS", "register_example_weighting", "example_weighting_names",
           "check_example_weighting", "uncertainty_weighting"]


EXAMPLE_WEIGHTINGS: Registry = Registry("example weighting")


def register_example_weighting(name: str, targets: Iterable[str], overwrite: bool = False) -> Callable:
    """Decorator registering a per-example weighting under ``name``.

    The function takes ``(student, teacher, batch)`` (model outputs and the batch; the student's
    outputs are detached) and returns ``{knowledge name: (B,) weights}`` for the knowledge types
    in ``targets``; each such term becomes ``sum_i w_i l_i / n`` (see :meth:`Knowledge.weighted`)
    and is still multiplied by the action's weight for that knowledge.  Other terms are unchanged.
    An env uses one with ``reset(options={"example_weighting": name})``.
    """
    targets = tuple(targets)

    def wrap(fn):
        fn.targets = targets
        EXAMPLE_WEIGHTINGS.add(name, fn, fn, overwrite)
        return fn

    return wrap


def example_weighting_names() -> list[str]:
    return EXAMPLE_WEIGHTINGS.names()


def check_example_weighting(name: str, knowledge: Iterable[Knowledge]) -> Callable:
    """The registered weighting ``name``, checked against the knowledge types in use: each of its
    targets must be in use and have a per-example form.  ``ValueError`` otherwise."""
    if name not in EXAMPLE_WEIGHTINGS:
        raise ValueError(f"unknown example weighting {name!r}; valid: {example_weighting_names()}")
    fn = EXAMPLE_WEIGHTINGS[name]
    by_name = {k.name: k for k in knowledge}
    missing = [t for t in fn.targets if t not in by_name]
    if missing:
        raise ValueError(f"example weighting {name!r} weights knowledge {list(fn.targets)}, but {missing} "
                         f"is not in use (in use: {list(by_name)})")
    flat = [t for t in fn.targets if not by_name[t].has_per_example]
    if flat:
        raise ValueError(f"example weighting {name!r} needs per-example losses, which knowledge {flat} does not "
                         f"provide (implement Knowledge.per_example)")
    return fn


@register_example_weighting("uncertainty", targets=("finetune", "response"))
def uncertainty_weighting(student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, torch.Tensor]):
    """Dynamic KD's supervision adjustment (Li et al., EMNLP 2021): an example the student is
    unsure of is learnt more from the teacher.  With ``u_i`` the entropy of the student's
    prediction divided by ``log C`` (in [0, 1]): ``response`` gets weight ``u_i``, ``finetune``
    ``1 - u_i``."""
    logits = student.logits.detach().float()
    if logits.shape[-1] == 1:
        raise ValueError("example weighting 'uncertainty' needs class probabilities; regression tasks have none")
    logp = torch.log_softmax(logits, -1)
    u = -(logp.exp() * logp).sum(-1) / torch.log(torch.tensor(float(logits.shape[-1])))
    u = u.clamp(0.0, 1.0)
    return {"response": u, "finetune": 1.0 - u}
