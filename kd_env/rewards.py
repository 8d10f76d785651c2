"""The reward registry.

A reward is an object with a ``name``, ``reset(state)``, a call ``reward(previous, state)`` per
phase returning a float, its ``range``, and ``crash_value`` (what the env returns when the phase
crashed).  ``previous`` and ``state`` are the env's published
:class:`~kd_env.state.TrainingState` before and after the phase: a reward never receives the env.
Extra parts a reward wants reported go in ``self.parts``; the env copies them to
``info["rewards"]``.

Built in:

================  ===========================================================================
name              reward after each phase
================  ===========================================================================
dev_loss_delta    decrease of the student's CE on the dev probe since the previous phase
                  (the paper's; the default)
dev_metric_delta  increase of the task metric on the dev probe since the previous phase
final_metric      0 until the last phase, then the dev-probe metric (sparse)
train_loss_delta  decrease of the student's CE on the phase's training batches (no dev probe)
cost_penalized    another reward minus ``lam`` x the relative compute of the selected knowledge
================  ===========================================================================

Add your own::

    from kd_env import register_reward

    @register_reward("probe_accuracy")
    def probe_accuracy(previous, state):
        return state.probe["accuracy"]

``state.probe`` is the dev probe evaluated after the phase (``state.probe_fresh``); set
``needs_probe=False`` when the reward does not read it (saves its evaluation; then
``state.probe`` is the latest one, possibly older).  Before issue 37 rewards received
``(env, outcome)``; reading an env field from a state raises an ``AttributeError`` naming the
field that replaced it (``outcome.weights`` is ``state.action``, ``outcome.previous_probe`` is
``previous.probe``).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import numpy as np

from .registry import Registry, check_function_params
from .state import TrainingState

__all__ = ["Reward", "REWARD_REGISTRY", "register_reward", "make_reward", "reward_names"]


class Reward:
    """Base class of rewards.

    Class attributes:
        name: registry name.
        range: the reward's declared range.
        crash_value: returned by the env when a phase crashes (its ``crash_penalty`` overrides).
        needs_probe: the reward reads the dev probe every phase.
    """

    name: str = ""
    range: tuple[float, float] = (-math.inf, math.inf)
    crash_value: float = -1.0
    needs_probe: bool = True

    def __init__(self, **params: Any):
        if params:
            raise TypeError(f"reward {self.name!r} takes no parameters; got {sorted(params)}")
        self.parts: dict[str, float] = {}

    def reset(self, state: TrainingState) -> None:
        """Called at every env reset with the fresh student's state (its first dev probe taken)."""
        self.parts = {}

    def __call__(self, previous: TrainingState, state: TrainingState) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def __reduce__(self):
        # Pickle by registry name when registered: rewards made from functions are local classes
        # that pickle cannot find by import path.  The instance state (e.g. the previous loss of a
        # delta reward) travels with it, so an unpickled env continues its episode identically.
        cls = type(self)
        if REWARD_REGISTRY.get(self.name) is cls:
            return (_registered_reward, (self.name,), dict(self.__dict__))
        return (_new_reward, (cls,), dict(self.__dict__))


REWARD_REGISTRY: Registry = Registry("reward")


def _registered_reward(name: str) -> Reward:
    """An uninitialised instance of registered reward ``name`` (pickle fills in its state)."""
    if name not in REWARD_REGISTRY:
        raise ValueError(f"unpickling reward {name!r}, which is not registered in this process; import "
                         f"the module that registers it first; registered: {sorted(REWARD_REGISTRY)}")
    cls = REWARD_REGISTRY[name]
    return cls.__new__(cls)


def _new_reward(cls: type[Reward]) -> Reward:
    return cls.__new__(cls)


def register_reward(name: str, needs_probe: bool | None = None, overwrite: bool = False,
                    reward_range: tuple[float, float] | None = None) -> Callable:
    """Decorator registering a :class:`Reward` subclass or a function ``fn(previous, state) -> float``
    (the :class:`~kd_env.state.TrainingState` before and after the phase).

    Args:
        name: the name used in ``gym.make(..., reward=name)`` and ``reset(options={"reward": name})``.
        needs_probe: whether the reward reads the dev probe (functions default to True).
        overwrite: allow replacing an existing entry with a different object.
        reward_range: declared range (functions default to unbounded).
    """

    def wrap(obj):
        if inspect.isclass(obj) and issubclass(obj, Reward):
            cls = obj
        elif callable(obj):
            fn = obj
            params = inspect.signature(fn).parameters

            class FunctionReward(Reward):
                def __init__(self, **kwargs: Any):
                    check_function_params("reward", name, params, kwargs)
                    self.kwargs = kwargs
                    self.parts = {}

                def __call__(self, previous, state):
                    return float(fn(previous, state, **self.kwargs))

            cls = FunctionReward
            cls.__qualname__ = getattr(obj, "__qualname__", cls.__qualname__)
            cls.needs_probe = True if needs_probe is None else bool(needs_probe)
        else:
            raise TypeError("register_reward decorates a Reward subclass or a function")
        if needs_probe is not None:
            cls.needs_probe = bool(needs_probe)
        if reward_range is not None:
            cls.range = tuple(reward_range)
        REWARD_REGISTRY.add(name, cls, obj, overwrite)
        return obj

    return wrap


def reward_names() -> list[str]:
    return REWARD_REGISTRY.names()


def make_reward(spec: str | Reward, **params: Any) -> Reward:
    """A reward instance from a registered name (with ``params``) or an instance."""
    if isinstance(spec, Reward):
        if params:
            raise TypeError("parameters are given with a reward name, not with a reward instance")
        return spec
    if spec not in REWARD_REGISTRY:
        raise ValueError(f"unknown reward {spec!r}; valid: {reward_names()}")
    try:
        return REWARD_REGISTRY[spec](**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for reward {spec!r}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Built-in rewards
# --------------------------------------------------------------------------------------------


@register_reward("dev_loss_delta")
class DevLossDelta(Reward):
    """The paper's reward: ``scale * (previous dev-probe CE - dev-probe CE)`` after the phase.

    Args:
        scale: multiplier (default 1).
    """

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def __call__(self, previous, state):
        self.parts = {"probe_loss": state.probe["loss"]}
        return self.scale * (previous.probe["loss"] - state.probe["loss"])


@register_reward("dev_metric_delta")
class DevMetricDelta(Reward):
    """Increase of the dev-probe task metric (accuracy, F1, ...) since the previous phase."""

    range = (-2.0, 2.0)

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def __call__(self, previous, state):
        self.parts = {"probe_metric": state.probe["main"]}
        return self.scale * (state.probe["main"] - previous.probe["main"])


@register_reward("final_metric")
class FinalMetric(Reward):
    """Sparse: 0 on every phase but the last, which gets the dev-probe metric."""

    range = (-1.0, 1.0)

    def __call__(self, previous, state):
        return float(state.probe["main"]) if state.terminated else 0.0


@register_reward("train_loss_delta")
class TrainLossDelta(Reward):
    """Decrease of the student's CE on the training batches from one phase to the next (no dev
    probe needed; the first phase is compared with the CE measured at reset)."""

    needs_probe = False

    def __call__(self, previous, state):
        ce = float(state.phase.student_ce)
        self.parts = {"train_ce": ce}
        return float(previous.phase.student_ce) - ce


@register_reward("cost_penalized")
class CostPenalized(Reward):
    """Another reward minus ``lam`` x the compute of the selected knowledge.

    The compute of a phase is ``sum_k w_k * cost_k / sum_k cost_k`` (in [0, 1]), with each
    knowledge type's relative ``cost`` (:class:`kd_env.knowledge.Knowledge`).

    Args:
        base: the wrapped reward's name.
        lam: penalty per unit of compute (>= 0).
        base_params: parameters of the wrapped reward.
    """

    def __init__(self, base: str = "dev_loss_delta", lam: float = 0.01, base_params: dict | None = None):
        super().__init__()
        if base == "cost_penalized":
            raise ValueError("cost_penalized cannot wrap itself")
        if not lam >= 0:
            raise ValueError(f"cost_penalized: lam must be >= 0, got {lam}")
        self.base = make_reward(base, **(base_params or {}))
        self.lam = float(lam)
        self.needs_probe = self.base.needs_probe
        self.crash_value = self.base.crash_value

    def reset(self, state):
        super().reset(state)
        self.base.reset(state)

    def __call__(self, previous, state):
        base = float(self.base(previous, state))
        costs = np.asarray(state.spec.knowledge_costs, dtype=np.float64)
        compute = float(np.dot(state.action, costs) / costs.sum())
        self.parts = {**self.base.parts, self.base.name: base, "compute": compute}
        return base - self.lam * compute


#: the rewards kd_env ships (registered above, before any user code can add one)
BUILTIN_REWARDS: tuple[str, ...] = tuple(REWARD_REGISTRY)
