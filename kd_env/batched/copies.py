"""The copies of a batched vector env: ordinary envs whose phases its student batch trains.

Each copy is a :class:`~kd_env.env.KnowledgeSelectionEnv` with a :class:`CopyPhases` runner
(the env's declared extension point, :class:`~kd_env.phase_runner.PhaseRunner`): the copy's
distillers share the vector env's data, teacher and teacher cache, and its ``step`` reads the
phase the vector env trained for every copy at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine import Distiller
from ..phase_runner import PhaseRunner
from ..phase_stats import PhaseStats

__all__ = ["CopyPhases"]


def _clone_distiller(prototype: Distiller) -> Distiller:
    """A distiller that shares ``prototype``'s data, teacher, teacher cache and initial state
    (read-only) and has its own student, optimizer, schedule, data order and random stream;
    closing it leaves the shared teacher cache open (the prototype's owner closes it)."""
    import copy

    clone = copy.copy(prototype)
    clone.student = copy.deepcopy(prototype.student)
    clone._torch_rng = {}
    clone.step_timer = None
    clone.close = lambda: None  # type: ignore[method-assign]  # the shared teacher cache is closed with the prototype
    clone.reset(prototype.config.seed)
    return clone


class CopyPhases(PhaseRunner):
    """The phase runner of one copy of a :class:`~kd_env.batched.BatchedKDVectorEnv`: its
    distillers are copies of the vector env's one distiller per config, and its phases are those
    the vector env's :class:`~kd_env.batched.StudentBatch` trained (:attr:`pending`, set for the
    copy's ``step``)."""

    def __init__(self, prototypes: dict[str, Distiller]):
        self._prototypes = prototypes
        #: the phase the vector env trained for this copy: its statistics, whether it crashed and
        #: the dev probe after it (``None`` when crashed); ``None`` outside the vector env's step
        self.pending: tuple[PhaseStats, bool, dict[str, float] | None] | None = None

    @property
    def phase_ready(self) -> bool:
        return self.pending is not None  # the vector env checked the action before training

    def build_distiller(self, config: Any) -> Distiller:
        """A copy of the vector env's one distiller for ``config``: the data, teacher and teacher
        cache are shared by every copy (built once, not once per copy and instance); the student,
        its optimizer and data order are the copy's own."""
        key = repr(config)
        if key not in self._prototypes:
            self._prototypes[key] = super().build_distiller(config)
        return _clone_distiller(self._prototypes[key])

    def train_phase(self, distiller: Distiller, weights: np.ndarray) -> tuple[PhaseStats, bool]:
        if self.pending is None:
            raise RuntimeError("a copy of a BatchedKDVectorEnv is stepped by its vector env, not on its own")
        phase, crashed, _ = self.pending
        return phase, crashed

    def probe(self, distiller: Distiller) -> dict[str, float]:
        probe = self.pending[2] if self.pending is not None else None
        return probe if probe is not None else distiller.evaluate("probe")
