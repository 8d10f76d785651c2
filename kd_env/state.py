"""The training state the env publishes: what observations, rewards and agents may read.

After every reset and every phase :class:`~kd_env.env.KnowledgeSelectionEnv` publishes one frozen
:class:`TrainingState` (``env.unwrapped.state``).  Observations are ``space(spec)`` plus
``obs(state)``, rewards ``reward(previous, state)``: neither receives the env, so neither can
reach into the distiller or the env's private fields, and a policy's inputs are exactly what the
state declares.

* :class:`StateSpec` is what stays fixed for the env's lifetime (the knowledge types, the class
  count, the task metric, the widths of the paper's [CLS] state, the names of the privileged
  instance features): an observation's space depends on it alone, so a space can be worked out,
  stored and compared without building an env (:func:`space_spec`, :func:`compare_space_specs`).
* :class:`TrainingState` is the state after a phase: the budget spent, the phase's statistics
  (:class:`~kd_env.engine.PhaseStats`), the latest dev probe, the last action, and, computed on
  first use and then kept, the user-observable situation (:mod:`kd_env.situation`), the paper's
  [CLS] vectors and (privileged, for oracles) the instance's true configuration.

Reading an old name (``state.distiller``, ``state.last_phase``, ...) raises an ``AttributeError``
that names the field to use instead: observations and rewards took the env before issue 37.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping

import numpy as np
from gymnasium import spaces

from .engine import PhaseStats

__all__ = ["StateSpec", "TrainingState", "ObservationPart", "space_spec", "compare_space_specs"]

#: names an observation or reward written against the env used to read, and what replaces them
_MOVED = {
    "distiller": "state.step / state.total_steps / state.budget_used, state.phase (the phase's "
                 "statistics), state.situation (the observable situation), state.cls, and state.spec "
                 "(knowledge_names, num_classes, metric)",
    "last_phase": "state.phase",
    "last_probe": "state.probe",
    "last_action": "state.action",
    "knowledge_names": "state.spec.knowledge_names",
    "instance_set": "state.oracle_features (privileged)",
    "observation_fn": "nothing (an observation receives only the state)",
    "reward_fn": "nothing (a reward receives the previous and the current state)",
}


@dataclass(frozen=True)
class StateSpec:
    """What an env keeps fixed for its lifetime, and so what an observation's space may depend on.

    Attributes:
        knowledge_names: the knowledge types, in action order.
        knowledge_costs: each type's relative compute (:attr:`kd_env.knowledge.Knowledge.cost`).
        num_classes: the task's class count (at least 2; 1 for regression).
        metric: the task's main metric (``accuracy``, ``f1``, ...).
        cls_sizes: widths of the student's and the teacher's [CLS] vectors (the ``cls`` state);
            ``None`` when not worked out (a spec built without an env).
        oracle_fields: names of the instance's true configuration (privileged); empty without
            an instance set.
    """

    knowledge_names: tuple[str, ...]
    knowledge_costs: tuple[float, ...] = ()
    num_classes: int = 2
    metric: str = "accuracy"
    cls_sizes: tuple[int, int] | None = None
    oracle_fields: tuple[str, ...] = ()

    @property
    def num_knowledge(self) -> int:
        return len(self.knowledge_names)

    @property
    def chance(self) -> float:
        """A uniform guess's accuracy."""
        return 1.0 / max(2, self.num_classes)


@dataclass(frozen=True, eq=False)
class TrainingState:
    """The env's state after a reset or a phase (frozen; a new one per phase).

    Attributes:
        spec: the env's :class:`StateSpec`.
        step, total_steps: optimizer steps taken and the budget.
        phase_index: phases taken in the episode (0 after a reset).
        phase: statistics of the last phase that did not crash (after a reset: the first batch,
            measured without an update).
        probe: the latest dev-probe evaluation (``loss``, ``main``, metrics), or ``None``.
        probe_fresh: the probe was evaluated after this phase (a reward that reads it needs that).
        action: the weights of the last phase (zeros after a reset), float32, read-only.
        terminated: the budget is spent or the phase crashed.
        crashed: the phase hit a non-finite loss, gradient or parameter.
        instance: the instance's name in an instance env, else ``None``.
    """

    spec: StateSpec
    step: int
    total_steps: int
    phase_index: int
    phase: PhaseStats
    probe: Mapping[str, float] | None
    probe_fresh: bool
    action: np.ndarray
    terminated: bool = False
    crashed: bool = False
    instance: str | None = None
    situation_fn: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    cls_fn: Callable[[], tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)
    oracle_fn: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self):
        action = np.array(self.action, dtype=np.float32)
        action.setflags(write=False)
        object.__setattr__(self, "action", action)

    @property
    def budget_used(self) -> float:
        """The share of the optimizer-step budget spent, in [0, 1]."""
        return self.step / self.total_steps if self.total_steps else 1.0

    @property
    def probe_values(self) -> Mapping[str, float]:
        """The latest dev probe, or zero loss and metric before any (what the observations read)."""
        return self.probe if self.probe is not None else {"loss": 0.0, "main": 0.0}

    @cached_property
    def situation_v2(self) -> np.ndarray:
        """What a user can compute about their own situation, v2
        (:data:`kd_env.situation.SITUATION_FEATURES_V2`, float32, each in [0, 1])."""
        if self.situation_fn is None:
            raise ValueError("this state carries no observable situation (made without an env)")
        return self.situation_fn()

    @cached_property
    def situation(self) -> np.ndarray:
        """What a user can compute about their own situation
        (:data:`kd_env.situation.SITUATION_FEATURES`, float32, each in [0, 1]): the first entries
        of :attr:`situation_v2`."""
        from .situation import SITUATION_FEATURES

        return self.situation_v2[: len(SITUATION_FEATURES)]

    @cached_property
    def cls(self) -> tuple[np.ndarray, np.ndarray]:
        """The paper's state: mean final-layer [CLS] of the student and of the teacher's mapped top
        layer on the phase's last batch."""
        if self.cls_fn is None:
            raise ValueError("this state carries no [CLS] vectors (made without an env)")
        return self.cls_fn()

    @cached_property
    def oracle_features(self) -> np.ndarray:
        """Privileged, for oracles only: the instance's true configuration
        (:data:`kd_env.instances.FEATURE_FIELDS`, clipped to [0, 1])."""
        if self.oracle_fn is None:
            raise ValueError("the instance's true configuration needs an env made with instances=<set name>")
        return self.oracle_fn()

    def __getattr__(self, name: str) -> Any:  # only called when normal lookup fails
        if name in _MOVED:
            raise AttributeError(f"TrainingState has no {name!r}: observations and rewards receive the env's "
                                 f"published state, not the env (kd_env issue 37); use {_MOVED[name]}")
        raise AttributeError(f"TrainingState has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Declared observation layouts (what an agent's encoder reads)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservationPart:
    """One part of a flattened observation: ``kind="flat"`` (passes through) or ``kind="cls"``
    (a student vector of ``split`` entries followed by a teacher vector)."""

    key: str
    size: int
    kind: str = "flat"
    split: int = 0


# --------------------------------------------------------------------------------------------
# Structured space specs (checkpoints store these and compare them field by field)
# --------------------------------------------------------------------------------------------


def _bounds(values: np.ndarray) -> Any:
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size and np.all(flat == flat[0]):
        return _number(flat[0])
    return [_number(v) for v in flat]


def _number(v: float) -> float | str:
    v = float(v)
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def space_spec(space: spaces.Space) -> dict[str, Any]:
    """A JSON-ready description of a Gymnasium space: ``type``, ``shape``, ``dtype`` and, for a
    ``Box``, its bounds (one number when all equal); a ``Dict``'s parts by key."""
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_spec(v) for k, v in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _bounds(space.low), "high": _bounds(space.high)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "shape": list(np.atleast_1d(space.n))}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": [int(v) for v in np.ravel(space.nvec)]}
    raise ValueError(f"space {space} is not supported; valid: Box, Dict, MultiBinary, Discrete, MultiDiscrete")


def compare_space_specs(saved: Any, current: Any, where: str = "observation space") -> list[str]:
    """The differences between two :func:`space_spec` descriptions, one line each (empty when
    they match)."""
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return [] if saved == current else [f"{where}: {saved!r} vs {current!r}"]
    if saved.get("type") != current.get("type"):
        return [f"{where}: a {saved.get('type')} vs a {current.get('type')}"]
    if saved.get("type") == "Dict":
        a, b = saved.get("spaces", {}), current.get("spaces", {})
        diffs = [f"{where}: part {k!r} only in the saved space" for k in a if k not in b]
        diffs += [f"{where}: part {k!r} only in the current space" for k in b if k not in a]
        for k in a:
            if k in b:
                diffs += compare_space_specs(a[k], b[k], f"{where}[{k!r}]")
        return diffs
    if saved.get("shape") != current.get("shape") and saved.get("shape") and current.get("shape"):
        # another size: its bounds differ too, and saying so adds nothing
        return [f"{where}: shape {tuple(saved['shape'])} (saved) vs {tuple(current['shape'])} (this env)"]
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key == "type" or saved.get(key) == current.get(key):
            continue
        diffs.append(f"{where}: {key} {saved.get(key)!r} (saved) vs {current.get(key)!r} (this env)")
    return diffs
