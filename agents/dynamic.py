"""The literature's dynamic distillation baselines, as agents.

=============  ================================================================================
name           what the student learns from, phase by phase
=============  ================================================================================
dynamic_kd     ``finetune`` + ``response`` every phase, each example weighted by the student's
               uncertainty (Li et al., EMNLP 2021; the env's ``uncertainty`` example weighting)
eskd           ``finetune`` + ``response`` for the first ``switch`` of the phases, then
               ``finetune`` only (early-stopped KD, Cho & Hariharan, ICCV 2019)
two_stage      ``feature`` + ``relation`` (those the env has) for the first ``switch`` of the
               phases, then ``finetune`` + ``response`` (FitNets; TinyBERT)
anneal         the weight moves linearly from ``response`` to ``finetune`` over the budget
=============  ================================================================================

Each is a :class:`~agents.baselines.ScheduleAgent` whose rows (one action per phase) are built
from the env's knowledge names and number of phases when the agent is made: ``agent.rows``
shows the whole schedule.  The agent counts its own ``act`` calls since ``reset()`` (it reads no
observation); a longer episode repeats the last row.  Phase ``p`` (counted from 0) of ``N``
belongs to the first stage of a two-stage method when ``p / N < switch``, i.e. when the budget
used at its start is below ``switch``: with ``N = 15`` and ``switch = 0.5``, phases 0-7.

Knowledge is resolved by name against the env's ``knowledge_names`` (as for the named
baselines), so the schedules keep their meaning when knowledge types are added or reordered; a
method whose knowledge the env lacks is a ``ValueError`` naming the env's knowledge.  In weights
mode the actions are float weights.  ``learn`` does nothing; checkpoints hold the
hyperparameters (``switch``, ``seed``) and rebuild the schedule for the env they are loaded in.
"""

from __future__ import annotations

from typing import Any

from kd_env.checks import matches

from .base import Agent, register_agent
from .baselines import ScheduleAgent

__all__ = ["DynamicKDAgent", "EarlyStoppedKDAgent", "TwoStageAgent", "AnnealAgent", "first_stage_phases"]


def first_stage_phases(num_phases: int, switch: float) -> int:
    """How many of ``num_phases`` phases come before ``switch`` (a fraction of the phases):
    phase ``p`` is in the first stage when ``p / num_phases < switch``."""
    return sum(1 for p in range(num_phases) if p / num_phases < switch)


def _check_switch(switch: Any) -> float:
    if not matches(switch, float) or not 0 <= switch <= 1:
        raise ValueError(f"switch must be a fraction of the phases in [0, 1], got {switch!r}")
    return float(switch)


class _MethodSchedule(ScheduleAgent):
    """A schedule built from a method's rule.  Subclasses set ``name`` and ``required`` and
    implement :meth:`_rows`; ``learn`` does nothing."""

    #: knowledge types the method cannot do without
    required: tuple[str, ...] = ("finetune", "response")

    def __init__(self, env: Any, seed: int | None = None):
        Agent.__init__(self, env)  # the spec first: the rows depend on it
        missing = [k for k in self.required if k not in self.knowledge_names]
        if missing:
            raise ValueError(f"{self.name} needs knowledge {list(self.required)}; this env has "
                             f"{self.knowledge_names} (missing {missing})")
        super().__init__(env, self._rows(max(1, self.spec.num_phases)), seed=seed)

    def _rows(self, num_phases: int) -> list[list[float]]:
        raise NotImplementedError

    def _weights(self, **weights: float) -> list[float]:
        """One action: ``weights[name]`` for each named knowledge type, 0 for the others."""
        return [float(weights.get(n, 0.0)) for n in self.knowledge_names]

    def hyperparameters(self) -> dict[str, Any]:
        return {"seed": self.seed}


class DynamicKDAgent(_MethodSchedule):
    """The supervision adjustment of Dynamic KD (Li et al., "Dynamic Knowledge Distillation for
    Pre-trained Language Models", EMNLP 2021).

    ``finetune`` and ``response`` are on in every phase; inside each batch, an example the
    student is unsure of is learnt more from the teacher: with ``u_i`` the entropy of the
    student's prediction divided by ``log C``, the response loss of example ``i`` is weighted by
    ``u_i`` and its finetune loss by ``1 - u_i``.  The weighting is the env's ``uncertainty``
    example weighting (:mod:`kd_env.knowledge`), switched on for the episode by
    :meth:`reset_options` (its :attr:`example_weighting`).

    Args:
        env: the env (mask or weights mode; needs ``finetune`` and ``response``).
        seed: accepted for a uniform interface; unused.
    """

    name = "dynamic_kd"
    example_weighting = "uncertainty"

    def _rows(self, num_phases: int) -> list[list[float]]:
        return [self._weights(finetune=1, response=1)]


class EarlyStoppedKDAgent(_MethodSchedule):
    """Early-stopped knowledge distillation (Cho & Hariharan, "On the Efficacy of Knowledge
    Distillation", ICCV 2019): learn from the teacher early, then from the labels alone.

    ``finetune`` + ``response`` for the phases ``p`` with ``p / N < switch``, then ``finetune``
    only.

    Args:
        env: the env (mask or weights mode; needs ``finetune`` and ``response``).
        switch: the fraction of the phases distilled from the teacher, in [0, 1].
        seed: accepted for a uniform interface; unused.
    """

    name = "eskd"

    def __init__(self, env: Any, switch: float = 0.5, seed: int | None = None):
        self.switch = _check_switch(switch)
        super().__init__(env, seed=seed)

    def _rows(self, num_phases: int) -> list[list[float]]:
        early = first_stage_phases(num_phases, self.switch)
        return ([self._weights(finetune=1, response=1)] * early
                + [self._weights(finetune=1)] * (num_phases - early))

    def hyperparameters(self) -> dict[str, Any]:
        return {"switch": self.switch, "seed": self.seed}


class TwoStageAgent(_MethodSchedule):
    """Intermediate-layer distillation first, then prediction-layer distillation: FitNets
    (Romero et al., ICLR 2015: hints, then KD) and TinyBERT (Jiao et al., Findings of EMNLP
    2020: intermediate layers, then predictions).

    ``feature`` and ``relation`` (those of them the env has; at least one) for the phases ``p``
    with ``p / N < switch``, then ``finetune`` + ``response``.  TinyBERT's attention loss is
    not part of the first stage: add it with a ``schedule:<file>`` agent when wanted.

    Args:
        env: the env (mask or weights mode; needs ``finetune``, ``response`` and ``feature`` or
            ``relation``).
        switch: the fraction of the phases spent on the intermediate layers, in [0, 1].
        seed: accepted for a uniform interface; unused.
    """

    name = "two_stage"
    intermediate: tuple[str, ...] = ("feature", "relation")

    def __init__(self, env: Any, switch: float = 0.5, seed: int | None = None):
        self.switch = _check_switch(switch)
        super().__init__(env, seed=seed)

    def _rows(self, num_phases: int) -> list[list[float]]:
        present = [k for k in self.intermediate if k in self.knowledge_names]
        if not present:
            raise ValueError(f"{self.name} needs knowledge 'feature' or 'relation' for its first stage; this env "
                             f"has {self.knowledge_names}")
        early = first_stage_phases(num_phases, self.switch)
        return ([self._weights(**{k: 1 for k in present})] * early
                + [self._weights(finetune=1, response=1)] * (num_phases - early))

    def hyperparameters(self) -> dict[str, Any]:
        return {"switch": self.switch, "seed": self.seed}


class AnnealAgent(_MethodSchedule):
    """Move the weight from the teacher's outputs to the gold labels over the budget: the loss
    ``(1 - t) * response + t * finetune`` with ``t`` growing linearly from 0 to 1 (a gradual
    form of ESKD's switch).

    * weights mode: at phase ``p`` of ``N``, ``t = p / (N - 1)`` (``t = 0`` when ``N = 1``):
      ``response`` weight ``1 - t``, ``finetune`` weight ``t``.
    * mask mode (on/off only): ``response`` alone for the phases with ``p / N < 1/3``,
      ``response`` + ``finetune`` for the next ones up to ``p / N < 2/3``, then ``finetune``
      alone (with ``N = 15``: phases 0-4, 5-9, 10-14).

    Args:
        env: the env (mask or weights mode; needs ``finetune`` and ``response``).
        seed: accepted for a uniform interface; unused.
    """

    name = "anneal"

    def _rows(self, num_phases: int) -> list[list[float]]:
        if self.action_mode == "weights":
            ts = [p / (num_phases - 1) if num_phases > 1 else 0.0 for p in range(num_phases)]
            return [self._weights(finetune=t, response=1 - t) for t in ts]
        first = first_stage_phases(num_phases, 1 / 3)
        second = first_stage_phases(num_phases, 2 / 3)
        return ([self._weights(response=1)] * first
                + [self._weights(finetune=1, response=1)] * (second - first)
                + [self._weights(finetune=1)] * (num_phases - second))


_DESCRIPTIONS: dict[type[_MethodSchedule], str] = {
    DynamicKDAgent: "finetune + response, examples weighted by student uncertainty (Dynamic KD, Li+21)",
    EarlyStoppedKDAgent: "finetune + response for the first switch=0.5 of the phases, then finetune (ESKD, Cho+19)",
    TwoStageAgent: "feature + relation for the first switch=0.5 of the phases, then finetune + response (FitNets/TinyBERT)",
    AnnealAgent: "weight moves linearly from response to finetune over the budget",
}
for _cls, _description in _DESCRIPTIONS.items():
    register_agent(_cls.name, description=_description)(_cls)

