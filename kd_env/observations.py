"""The observation registry.

An observation is an object with a ``name``, ``space(spec)`` (a Gymnasium space that depends only
on the env's :class:`~kd_env.state.StateSpec`, so it is fixed for the env's lifetime) and a call
``obs(state)`` on the env's published :class:`~kd_env.state.TrainingState` returning a value
inside that space.  An observation never receives the env: what it can read is what the state
declares.  ``parts(spec)`` declares the layout an agent's encoder reads (one flat part unless
said otherwise; ``cls`` declares its student/teacher split).

Built in:

* ``summary`` (default): a flat float32 vector of training statistics (table in docs/env.md;
  :class:`kd_env.env.KnowledgeSelectionEnv` lists them), each squashed into declared finite bounds.
* ``cls``: the paper's state: the student's and the teacher's mean final-layer [CLS] vectors
  on the last batch, concatenated (clipped to +-100).

Both compute their values first without any clipping (``unclipped(state)``, float64; a
non-finite loss is ``+inf`` there) and then clip them into the space (a non-finite loss becomes
the cap ``LOG_CAP``, never 0).  Clipping is a guard, not a normal case: the tests check that the
unclipped values of real runs lie inside the bounds.
* ``dict``: a one-level ``Dict`` of both (for stable-baselines3's ``MultiInputPolicy``).
* ``observable``: ``summary`` followed by what a user can compute about their own situation
  (:data:`kd_env.situation.SITUATION_FEATURES`: labelled-example count and share, the teacher's
  dev accuracy, skill above chance and calibration error, its disagreement with the gold labels,
  the student/teacher parameter ratio).  The observation for learned selection.
* ``portable``: the training state in task-free units (losses / log(C), accuracies as skill above
  chance; no loss in a model's own units), the last action and the observable situation: for a
  policy carried across tasks (trained on digits, applied to text).
* ``observable_only``: the budget fraction spent and the observable situation only (one
  decision per episode: a contextual bandit's context).
* ``observable_v2``, ``portable_v2``: ``observable`` and ``portable`` with the v2 situation
  (:data:`kd_env.situation.SITUATION_FEATURES_V2`: the same seven, then the teacher's dev skill
  over the majority class).  Opt-in and one entry longer: the layouts above never change, so
  policy checkpoints trained on them keep loading.

Privileged, for oracles only (instance envs; no default, demo or headline uses them):

* ``oracle_situation``: ``summary`` followed by the instance's *true* configuration
  (:data:`kd_env.instances.FEATURE_FIELDS`: label noise rate, the teacher's training share and
  epochs, ...), which no user has.
* ``oracle_situation_only``: the budget fraction spent and the true configuration only.

Add your own::

    import numpy as np
    from gymnasium import spaces
    from kd_env import register_observation

    @register_observation("progress", space=lambda spec: spaces.Box(0, 1, (1,), np.float32))
    def progress(state):
        return np.array([state.budget_used], np.float32)

Before issue 37 observations received the env (``space(env)``, ``obs(env)``); reading an env
field from the state (``state.distiller``, ``state.last_phase``...) raises an ``AttributeError``
naming the field that replaced it.
"""

from __future__ import annotations

import inspect
import math
from functools import lru_cache
from typing import Any, Callable

import numpy as np
from gymnasium import spaces

from .registry import Registry
from .state import ObservationPart, StateSpec, TrainingState

__all__ = [
    "Observation",
    "OBSERVATION_REGISTRY",
    "register_observation",
    "make_observation",
    "observation_names",
    "summary_features",
    "PRIVILEGED_OBSERVATIONS",
]

#: observations that read the situation's true configuration: oracles, never a learner's input
PRIVILEGED_OBSERVATIONS = ("oracle_situation", "oracle_situation_only")

LOG_CAP = 10.0  # log1p-squashed quantities are clipped to [0, LOG_CAP]
CLS_BOUND = 100.0


class Observation:
    """Base class: ``space(spec)``, ``__call__(state)`` and ``parts(spec)``."""

    name: str = ""

    def __init__(self, **params: Any):
        if params:
            raise TypeError(f"observation {self.name!r} takes no parameters; got {sorted(params)}")

    def space(self, spec: StateSpec) -> spaces.Space:
        raise NotImplementedError

    def __call__(self, state: TrainingState) -> Any:
        raise NotImplementedError

    def parts(self, spec: StateSpec) -> tuple[ObservationPart, ...]:
        """The layout of the flattened observation an agent's encoder reads: one flat part per
        Box (a Dict's parts in key order)."""
        space = self.space(spec)
        if isinstance(space, spaces.Dict):
            return tuple(ObservationPart(k, int(np.prod(v.shape or ()))) for k, v in space.spaces.items())
        return (ObservationPart("", int(np.prod(space.shape or ()))),)


OBSERVATION_REGISTRY: Registry = Registry("observation")


def register_observation(name: str, space: Callable | None = None, overwrite: bool = False) -> Callable:
    """Decorator registering an :class:`Observation` subclass, or a function ``fn(state)`` together
    with ``space=fn(spec) -> gymnasium.Space`` (``state`` a :class:`~kd_env.state.TrainingState`,
    ``spec`` a :class:`~kd_env.state.StateSpec`)."""

    def wrap(obj):
        if inspect.isclass(obj) and issubclass(obj, Observation):
            cls = obj
        elif callable(obj):
            if space is None:
                raise TypeError(f"register_observation({name!r}) on a function needs space=fn(spec) -> Space")
            fn, space_fn = obj, space

            class FunctionObservation(Observation):
                def space(self, spec):
                    return space_fn(spec)

                def __call__(self, state):
                    return fn(state)

            cls = FunctionObservation
            cls.__qualname__ = getattr(obj, "__qualname__", cls.__qualname__)
        else:
            raise TypeError("register_observation decorates an Observation subclass or a function")
        OBSERVATION_REGISTRY.add(name, cls, obj, overwrite)
        return obj

    return wrap


def observation_names() -> list[str]:
    return OBSERVATION_REGISTRY.names()


def make_observation(spec: str | Observation, **params: Any) -> Observation:
    if isinstance(spec, Observation):
        return spec
    return OBSERVATION_REGISTRY.lookup(spec)(**params)


def _log1p(x: float) -> float:
    """``log1p(x)``, unclipped; a non-finite ``x`` (a diverged loss) is ``+inf``, which clipping
    turns into the cap ``LOG_CAP`` (the worst value), never 0."""
    x = float(x)
    if not math.isfinite(x):
        return math.inf
    return math.log1p(x) if x > -1.0 else -math.inf


@lru_cache(maxsize=256)
def _space_once(obs: "Observation", spec: StateSpec) -> Any:
    """``obs.space(spec)``, built once per observation and spec, not at every step."""
    return obs.space(spec)


def _clip_into(values: np.ndarray, space: spaces.Box) -> np.ndarray:
    """``values`` clipped into ``space`` as float32: ``+inf`` -> the upper bound, ``-inf`` -> the
    lower one, NaN -> 0 clipped into the bounds."""
    out = np.where(np.isposinf(values), space.high, np.where(np.isneginf(values), space.low, values))
    out = np.nan_to_num(out, nan=0.0)
    return np.clip(out, space.low, space.high).astype(np.float32)


def summary_features(spec: StateSpec) -> list[tuple[str, float, float]]:
    """(meaning, low, high) of each entry of the ``summary`` vector, in order."""
    names = spec.knowledge_names
    rows = [("budget fraction used", 0.0, 1.0)]
    rows += [(f"loss[{n}] on the phase, log1p", 0.0, LOG_CAP) for n in names]
    rows += [
        ("student CE on the phase, log1p", 0.0, LOG_CAP),
        ("student accuracy on the phase", 0.0, 1.0),
        ("KL(teacher||student) on the phase, log1p", 0.0, LOG_CAP),
        ("teacher-student argmax agreement", 0.0, 1.0),
        ("student prediction entropy / log(C)", 0.0, 1.0),
        ("dev-probe CE (latest), log1p", 0.0, LOG_CAP),
        ("dev-probe metric (latest)", -1.0, 1.0),
        ("gradient norm, log1p", 0.0, LOG_CAP),
    ]
    rows += [(f"last action[{n}]", 0.0, 1.0) for n in names]
    return rows


@register_observation("summary")
class Summary(Observation):
    """Training statistics of the last phase, squashed into fixed bounds (see
    :func:`summary_features`)."""

    def space(self, spec):
        rows = summary_features(spec)
        low = np.asarray([r[1] for r in rows], dtype=np.float32)
        high = np.asarray([r[2] for r in rows], dtype=np.float32)
        return spaces.Box(low, high, dtype=np.float32)

    def unclipped(self, state) -> np.ndarray:
        """The statistics before clipping, float64, in the order of :func:`summary_features`
        (``+inf`` for a non-finite loss)."""
        p = state.phase
        num_classes = max(2, state.spec.num_classes)
        vals = [state.budget_used]
        vals += [_log1p(x) for x in p.losses]
        vals += [_log1p(p.student_ce), float(p.student_accuracy), _log1p(p.teacher_kl), float(p.agreement),
                 float(p.entropy) / math.log(num_classes)]
        probe = state.probe_values
        vals += [_log1p(probe["loss"]), float(probe["main"]), _log1p(p.grad_norm)]
        vals += [float(x) for x in state.action]
        return np.asarray(vals, dtype=np.float64)

    def __call__(self, state):
        return _clip_into(self.unclipped(state), _space_once(self, state.spec))


@register_observation("cls")
class Cls(Observation):
    """The paper's state: mean final-layer [CLS] of the student, then of the teacher (mapped top
    layer), on the phase's last batch; clipped to +-100."""

    def space(self, spec):
        student, teacher = _cls_sizes(spec, self.name)
        return spaces.Box(-CLS_BOUND, CLS_BOUND, (student + teacher,), dtype=np.float32)

    def parts(self, spec):
        student, teacher = _cls_sizes(spec, self.name)
        return (ObservationPart("cls", student + teacher, kind="cls", split=student),)

    def unclipped(self, state) -> np.ndarray:
        """Student then teacher [CLS] means before clipping, float64."""
        s, t = state.cls
        return np.concatenate([s, t]).astype(np.float64)

    def __call__(self, state):
        return _clip_into(self.unclipped(state), _space_once(self, state.spec))


def _cls_sizes(spec: StateSpec, name: str) -> tuple[int, int]:
    if spec.cls_sizes is None:
        raise ValueError(f"observation {name!r} needs the [CLS] widths of an env's models (StateSpec.cls_sizes)")
    return spec.cls_sizes


@register_observation("dict")
class DictObservation(Observation):
    """``{"summary": ..., "cls": ...}`` for ``MultiInputPolicy``."""

    def __init__(self):
        super().__init__()
        self.members = {"summary": Summary(), "cls": Cls()}

    def space(self, spec):
        return spaces.Dict({k: v.space(spec) for k, v in self.members.items()})

    def parts(self, spec):
        out = []
        for key, member in sorted(self.members.items()):  # a Dict space orders its keys
            out += [ObservationPart(key, p.size, p.kind, p.split) for p in member.parts(spec)]
        return tuple(out)

    def unclipped(self, state) -> dict[str, np.ndarray]:
        """Each part's values before clipping."""
        return {k: v.unclipped(state) for k, v in self.members.items()}

    def __call__(self, state):
        return {k: v(state) for k, v in self.members.items()}


def _instance_feature_box(spec: StateSpec, low: np.ndarray, high: np.ndarray, name: str) -> spaces.Box:
    """``Box(low, high)`` followed by one [0, 1] entry per instance feature."""
    if not spec.oracle_fields:
        raise ValueError(f"observation {name!r} needs an env made with instances=<set name>")
    n = len(spec.oracle_fields)
    return spaces.Box(np.concatenate([low, np.zeros(n, np.float32)]).astype(np.float32),
                      np.concatenate([high, np.ones(n, np.float32)]).astype(np.float32), dtype=np.float32)


@register_observation("oracle_situation")
class OracleSituation(Observation):
    """Privileged (an oracle's input): the ``summary`` vector followed by the current instance's
    *true* configuration (:data:`kd_env.instances.FEATURE_FIELDS`, each in [0, 1]), which no user
    distilling their own model knows.  Needs an env made with ``instances=<set>``."""

    def __init__(self):
        super().__init__()
        self.summary = Summary()

    def space(self, spec):
        inner = self.summary.space(spec)
        return _instance_feature_box(spec, inner.low, inner.high, self.name)

    def __call__(self, state):
        return np.concatenate([self.summary(state), state.oracle_features]).astype(np.float32)


@register_observation("oracle_situation_only")
class OracleSituationOnly(Observation):
    """Privileged (an oracle's input): the fraction of the student's budget spent, followed by the
    current instance's true configuration (:data:`kd_env.instances.FEATURE_FIELDS`), and nothing
    of the training state.  With one phase per episode (``steps_per_action = total_steps``) a
    policy on it is a constant mask per kind of situation, chosen from facts a user does not have.
    Needs an env made with ``instances=<set>``."""

    def space(self, spec):
        return _instance_feature_box(spec, np.zeros(1, np.float32), np.ones(1, np.float32), self.name)

    def __call__(self, state):
        return np.concatenate([[state.budget_used], state.oracle_features]).astype(np.float32)


def _situation_box(low: np.ndarray, high: np.ndarray, v2: bool = False) -> spaces.Box:
    from .situation import SITUATION_FEATURES, SITUATION_FEATURES_V2

    n = len(SITUATION_FEATURES_V2 if v2 else SITUATION_FEATURES)
    return spaces.Box(np.concatenate([low, np.zeros(n, np.float32)]).astype(np.float32),
                      np.concatenate([high, np.ones(n, np.float32)]).astype(np.float32), dtype=np.float32)


@register_observation("observable")
class Observable(Observation):
    """The ``summary`` vector followed by the observable situation
    (:func:`kd_env.situation.observable_situation`): the student's training state plus only what a
    user can compute from their own data and teacher.  Works on any classification env, with or
    without instances."""

    #: the v2 situation (:data:`~kd_env.situation.SITUATION_FEATURES_V2`) instead of the first
    v2 = False

    def __init__(self):
        super().__init__()
        self.summary = Summary()

    def space(self, spec):
        inner = self.summary.space(spec)
        return _situation_box(inner.low, inner.high, self.v2)

    def __call__(self, state):
        return np.concatenate([self.summary(state), _situation(state, self.v2)]).astype(np.float32)


def _situation(state: TrainingState, v2: bool) -> np.ndarray:
    return state.situation_v2 if v2 else state.situation


@register_observation("observable_v2")
class ObservableV2(Observable):
    """``observable`` with the v2 situation (:func:`kd_env.situation.observable_situation_v2`: the
    same features, then the teacher's dev skill over the majority class); one entry longer."""

    v2 = True


@register_observation("observable_only")
class ObservableOnly(Observation):
    """The fraction of the budget spent followed by the observable situation, and nothing of the
    training state: the context of a one-decision contextual bandit."""

    def space(self, spec):
        return _situation_box(np.zeros(1, np.float32), np.ones(1, np.float32))

    def __call__(self, state):
        return np.concatenate([[state.budget_used], state.situation]).astype(np.float32)


#: the cap of ``portable``'s losses in units of log(C)
PORTABLE_CAP = 4.0
#: the scale-free training state of ``portable``: (meaning, low, high), before the knowledge
#: types' last actions and the observable situation
PORTABLE_STATE = (
    ("budget fraction used", 0.0, 1.0),
    ("student CE on the phase / log(C)", 0.0, PORTABLE_CAP),
    ("student skill on the phase: (accuracy - 1/C) / (1 - 1/C)", -1.0, 1.0),
    ("KL(teacher||student) on the phase / log(C)", 0.0, PORTABLE_CAP),
    ("teacher-student agreement above chance: (agreement - 1/C) / (1 - 1/C)", -1.0, 1.0),
    ("student prediction entropy / log(C)", 0.0, 1.0),
    ("dev-probe CE (latest) / log(C)", 0.0, PORTABLE_CAP),
    ("dev-probe skill (latest): (metric - 1/C) / (1 - 1/C) for accuracy, else the metric", -1.0, 1.0),
)


def _skill(value: float, num_classes: int) -> float:
    chance = 1.0 / num_classes
    return (float(value) - chance) / (1.0 - chance)


@register_observation("portable")
class Portable(Observation):
    """The training state in units that mean the same on every classification task, followed by
    the last action and the observable situation (:func:`kd_env.situation.observable_situation`):
    losses divided by ``log(C)`` (a uniform guess's cross-entropy), accuracies as skill above
    chance, nothing in a model's own units (no feature or relation loss, no gradient norm).  For a
    policy carried from one task to another -- trained on digits (10 classes, MLPs), applied to
    text (2 classes, transformers) -- where ``observable``'s raw losses would lie in other ranges.
    Works on any classification env."""

    #: the v2 situation (:data:`~kd_env.situation.SITUATION_FEATURES_V2`) instead of the first
    v2 = False

    def space(self, spec):
        k = spec.num_knowledge
        low = [r[1] for r in PORTABLE_STATE] + [0.0] * k
        high = [r[2] for r in PORTABLE_STATE] + [1.0] * k
        return _situation_box(np.asarray(low, np.float32), np.asarray(high, np.float32), self.v2)

    def unclipped(self, state) -> np.ndarray:
        """The values before clipping, float64 (``+inf`` for a non-finite loss)."""
        p = state.phase
        c = max(2, state.spec.num_classes)
        log_c = math.log(c)
        probe = state.probe_values
        probe_skill = _skill(probe["main"], c) if state.spec.metric == "accuracy" else float(probe["main"])
        vals = [state.budget_used, _finite(p.student_ce) / log_c, _skill(p.student_accuracy, c),
                _finite(p.teacher_kl) / log_c, _skill(p.agreement, c), float(p.entropy) / log_c,
                _finite(probe["loss"]) / log_c, probe_skill]
        vals += [float(x) for x in state.action]
        return np.concatenate([np.asarray(vals, np.float64), _situation(state, self.v2).astype(np.float64)])

    def __call__(self, state):
        return _clip_into(self.unclipped(state), _space_once(self, state.spec))


@register_observation("portable_v2")
class PortableV2(Portable):
    """``portable`` with the v2 situation (:func:`kd_env.situation.observable_situation_v2`: the
    same features, then the teacher's dev skill over the majority class); one entry longer."""

    v2 = True


def _finite(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) else math.inf
