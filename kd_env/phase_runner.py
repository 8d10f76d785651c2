"""How a :class:`~kd_env.env.KnowledgeSelectionEnv` builds its distillers, trains a phase and
probes the dev set: the env's declared extension point (``KnowledgeSelectionEnv(...,
phase_runner=...)``).  The default does all three in the env's own distiller; the batched env
(:mod:`kd_env.batched`) plugs in one that hands each copy the phase its vector env trained for
every copy at once."""

from __future__ import annotations

import numpy as np

from .build import build_distiller
from .config import DistillConfig
from .engine import Distiller, PhaseStats

__all__ = ["PhaseRunner"]


class PhaseRunner:
    """The default: every phase trained in the env's distiller, when the env's ``step`` asks."""

    @property
    def phase_ready(self) -> bool:
        """Whether a phase trained before the env's ``step`` waits to be handed over: the env then
        checks only the action's form (whoever trained the phase checked the episode's end first,
        and the budget is already spent)."""
        return False

    def build_distiller(self, config: DistillConfig) -> Distiller:
        """The distiller of ``config`` (at the env's construction, a new instance or a config reset option)."""
        return build_distiller(config)

    def train_phase(self, distiller: Distiller, weights: np.ndarray) -> tuple[PhaseStats, bool]:
        """One phase with knowledge ``weights``: its statistics and whether it crashed.  The engine
        stops on a non-finite loss or gradient; an update can also leave non-finite parameters
        after the phase's last step, which only the parameters themselves show: then the student
        goes back to its state before the phase."""
        snapshot = distiller.snapshot_student()
        phase = distiller.train_phase(weights)
        student_finite = distiller.student_is_finite()
        if not student_finite:
            distiller.restore_student(snapshot)
        return phase, phase.crashed or not student_finite

    def probe(self, distiller: Distiller) -> dict[str, float]:
        """The student's loss and metrics on the dev probe after a phase."""
        return distiller.evaluate("probe")
