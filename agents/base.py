"""The agent protocol, the agent registry and checkpoints.

Every agent (our actor-critic selector, the stable-baselines3 adapters, the fixed baselines)
exposes the same methods, so experiments never branch on where an agent comes from:

* ``act(obs, deterministic=False) -> np.ndarray``: an action valid for ``env.action_space``.
* ``reset()``: called at the start of every episode (stateful agents such as schedules use it).
* ``reset_options() -> dict``: env reset options the agent's method needs for an episode (e.g.
  ``{"example_weighting": "uncertainty"}`` for Dynamic KD; default ``{}``);
  :func:`agents.rollout.run_episode` passes them to ``env.reset``, under the caller's own options.
* ``learn(env, total_episodes=None, total_steps=None, callback=None) -> self``.
* ``save(path)`` / ``load(path) -> self``.

The registry (:data:`AGENT_REGISTRY`, a :class:`kd_env.registry.Registry`) maps names to agent
factories.  Checkpoints are folders (:mod:`agents.checkpoints`: ``agent.json``, a JSON header,
and the weights); :func:`load_agent` rebuilds any saved agent from its header (``make_agent(name,
env, **hyperparameters)``) and then loads its tensors.  Running episodes and vector envs:
:mod:`agents.rollout`; per-episode logs: :mod:`agents.episode_log`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from gymnasium import spaces

from kd_env.checks import type_hints
from kd_env.registry import Registry
from kd_env.state import ObservationPart, compare_space_specs, space_spec

from .checkpoints import CHECKPOINT_FORMAT, WEIGHTS_FILE, CheckpointError, load_weights, read_header, write_checkpoint

__all__ = ["Agent", "SelectionSpec", "selection_spec", "EpisodeCallback", "CheckpointError", "AGENT_REGISTRY",
           "register_agent", "agent_hyperparameters", "config_hyperparameters", "check_env_example_weighting",
           "make_agent", "agent_names", "agent_table", "load_agent"]


#: ``callback(agent, record) -> bool | None`` called after every finished training episode with
#: the episode's log record; returning ``False`` stops ``learn``.
EpisodeCallback = Callable[["Agent", dict], "bool | None"]


# --------------------------------------------------------------------------------------------
# What an agent needs to know about an env
# --------------------------------------------------------------------------------------------


@dataclass
class SelectionSpec:
    """The facts about a knowledge-selection env an agent is built for (its spaces, knowledge
    types and episode length; not Gymnasium's ``EnvSpec``, the env's registration record).

    Attributes:
        action_space: the env's action space (``MultiBinary(K)`` or ``Box(0, 1, (K,))``).
        observation_space: the env's observation space.
        action_mode: ``"mask"`` (MultiBinary) or ``"weights"`` (Box).
        knowledge_names: the knowledge type of each action bit, in order.
        num_phases: env steps per episode (``config.num_phases`` for kd_env).
        observation_name: the registered observation's name (``summary``, ``cls``, ``dict``)
            when known, else ``None``.
        observation_parts: the layout the env declares for its flattened observation
            (``env.unwrapped.observation_parts``: which slice is a student/teacher [CLS] pair),
            or ``None`` for an env that declares none.
    """

    action_space: spaces.Space
    observation_space: spaces.Space
    action_mode: str
    knowledge_names: list[str]
    num_phases: int
    observation_name: str | None = None
    observation_parts: tuple[ObservationPart, ...] | None = None

    @property
    def num_knowledge(self) -> int:
        return len(self.knowledge_names)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary stored in checkpoint headers (checked at load)."""
        return {"action_mode": self.action_mode, "knowledge_names": list(self.knowledge_names),
                "observation_space": space_spec(self.observation_space), "num_phases": self.num_phases}


def selection_spec(env: Any) -> SelectionSpec:
    """Read a :class:`SelectionSpec` from a kd_env env (wrapped or not) or any env with a
    ``MultiBinary(K)`` / ``Box(0, 1, (K,))`` action space.

    Other envs may declare ``knowledge_names`` and ``num_phases`` attributes; otherwise the
    knowledge names are ``k0 .. k{K-1}`` and the episode length is taken from the env's
    ``spec.max_episode_steps`` (or 1).
    """
    base = getattr(env, "unwrapped", env)
    action_space = env.action_space
    if isinstance(action_space, spaces.MultiBinary):
        mode = "mask"
        if len(action_space.shape) != 1:
            raise ValueError(f"agents need a 1-D MultiBinary(K) action space, got {action_space}")
        k = int(action_space.shape[0])
    elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        mode = "weights"
        k = int(action_space.shape[0])
    else:
        raise ValueError(f"agents need a MultiBinary(K) (mask) or Box(0, 1, (K,)) (weights) action space, "
                         f"got {action_space}")
    names = list(getattr(base, "knowledge_names", None) or [f"k{i}" for i in range(k)])
    if len(names) != k:
        raise ValueError(f"env declares {len(names)} knowledge names {names} for {k} action entries")
    config = getattr(base, "config", None)
    num_phases = getattr(config, "num_phases", None) or getattr(base, "num_phases", None)
    if num_phases is None:
        spec = getattr(env, "spec", None)
        num_phases = getattr(spec, "max_episode_steps", None) or 1
    obs_fn = getattr(base, "observation_fn", None)
    parts = getattr(base, "observation_parts", None)
    return SelectionSpec(action_space=action_space, observation_space=env.observation_space, action_mode=mode,
                         knowledge_names=names, num_phases=int(num_phases),
                         observation_name=getattr(obs_fn, "name", None),
                         observation_parts=tuple(parts) if parts is not None else None)


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


class Agent:
    """Base class of all agents.

    Subclasses set ``name`` (the registry name written to checkpoints), implement :meth:`act`,
    and override :meth:`learn`, :meth:`reset`, :meth:`hyperparameters`, :meth:`_state_dict` /
    :meth:`_load_state_dict` as needed.  ``save``/``load`` then work unchanged.

    Args:
        env: the env the agent acts in (only its spaces and knowledge names are kept).
    """

    name: str = ""
    #: a registered per-example weighting this agent's episodes run with (``None``: none); the
    #: default :meth:`reset_options` asks the env for it
    example_weighting: str | None = None

    def __init__(self, env: Any):
        self.spec = selection_spec(env)
        self.action_space = self.spec.action_space
        self.observation_space = self.spec.observation_space
        self.knowledge_names = list(self.spec.knowledge_names)
        self.action_mode = self.spec.action_mode
        self.episode_log: list[dict[str, Any]] = []

    # ---- acting -----------------------------------------------------------------------------
    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        """An action for one observation: an int8 0/1 mask (mask mode) or float32 weights in
        ``[0, 1]`` (weights mode), shape ``(K,)``."""
        raise NotImplementedError

    def reset(self) -> None:
        """Start of an episode (default: nothing)."""

    def reset_options(self) -> dict[str, Any]:
        """Env reset options this agent's method needs for an episode (default:
        ``{"example_weighting": name}`` when :attr:`example_weighting` is set, else none).

        An agent whose method changes how the student trains, beyond the per-phase action (e.g.
        Dynamic KD's per-example weighting), says so here; whoever runs the agent's episode
        resets the env with ``{**agent.reset_options(), **caller_options}`` (see
        :func:`agents.rollout.run_episode`).
        """
        return {"example_weighting": self.example_weighting} if self.example_weighting is not None else {}

    # ---- learning ---------------------------------------------------------------------------
    def learn(self, env: Any, total_episodes: int | None = None, total_steps: int | None = None,
              callback: EpisodeCallback | None = None) -> "Agent":
        """Train on ``env`` for ``total_episodes`` episodes or ``total_steps`` env steps (default:
        nothing to learn).  Returns ``self``."""
        return self

    # ---- persistence ------------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild this agent with ``make_agent(name, env, **hp)``."""
        return {}

    def _state_dict(self) -> dict[str, Any] | None:
        """Tensors to save (nested dicts of tensors and plain values), or ``None``."""
        return None

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_state_dict` returned."""

    def _extra_header(self) -> dict[str, Any]:
        """Small JSON-able state kept in the header (e.g. an RNG state)."""
        return {}

    def _load_extra_header(self, extra: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_header` returned."""

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint folder at ``path`` (created; existing files replaced)."""
        state = self._state_dict()
        header = {"format": CHECKPOINT_FORMAT, "agent": self.name, "hyperparameters": self.hyperparameters(),
                  "env": self.spec.describe(), "extra": self._extra_header(),
                  "has_weights": state is not None}
        write_checkpoint(path, header, state)

    def load(self, path: str | os.PathLike) -> "Agent":
        """Restore the state saved at ``path`` into this agent (built with the same name and
        hyperparameters; :func:`load_agent` does both).  Returns ``self``."""
        header = read_header(path)
        if header["agent"] != self.name:
            raise CheckpointError(f"checkpoint {str(path)!r} holds agent {header['agent']!r}, not {self.name!r}; "
                                  f"use agents.load_agent(path, env)")
        check_fits(path, header, self.knowledge_names, self.action_mode, self.observation_space)
        if header.get("has_weights"):
            self._load_state_dict(load_weights(Path(path) / WEIGHTS_FILE))
        self._load_extra_header(header.get("extra") or {})
        return self

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}(name={self.name!r}, {hp})"

    # ---- helpers for subclasses -------------------------------------------------------------
    def _format_action(self, values: np.ndarray) -> np.ndarray:
        """Values in [0, 1] as this env's action: int8 0/1 (mask) or float32 (weights)."""
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if self.action_mode == "mask":
            return (values > 0.5).astype(np.int8)
        return np.clip(values, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

#: name -> factory(env, argument_or_None, **hyperparameters); each entry's :attr:`Registry.info`
#: holds ``takes_argument``, ``description`` and ``hyperparameters`` (the hyperparameters the
#: agent accepts, name -> type, or a function returning them; ``None``: not declared)
AGENT_REGISTRY: Registry = Registry("agent")


def register_agent(name: str, takes_argument: bool = False, description: str = "",
                   overwrite: bool = False,
                   hyperparameters: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None) -> Callable:
    """Decorator registering an agent factory (a class or a function ``(env, **hp) -> Agent``).

    Args:
        name: the registry name.
        takes_argument: the name is used as ``name:<argument>`` (e.g. ``fixed:1010``); the
            factory then receives ``argument=`` (``None`` when given without one).
        description: one line shown by :func:`agent_table`.
        overwrite: allow replacing an existing entry.
        hyperparameters: the hyperparameters the agent accepts, name -> type annotation (or a
            function returning that mapping, called when first asked, for agents whose library
            is imported late); :func:`agent_hyperparameters` returns them, and configs are
            checked against them (:func:`kd_env.checks.check_types`).  ``None``: not declared.
    """

    def wrap(factory):
        AGENT_REGISTRY.add(name, factory, factory, overwrite, set_name=False, takes_argument=takes_argument,
                           description=description, hyperparameters=hyperparameters)
        return factory

    return wrap


def _info(key: str) -> dict[str, Any]:
    return AGENT_REGISTRY.info.get(key, {})


def agent_keywords(name: str) -> list[str] | None:
    """The keyword arguments the factory of agent ``name`` accepts besides ``env`` (and
    ``argument`` for ``name:<argument>`` agents), read from its signature, or ``None`` when it
    takes ``**kwargs`` (it cannot be told) or is not registered: for agents that declared no
    hyperparameters, what a config may set."""
    import inspect

    factory = AGENT_REGISTRY.get(name.partition(":")[0])
    if factory is None:
        return None
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return sorted(n for n, p in params.items() if n not in ("self", "env", "argument")
                  and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


def agent_hyperparameters(name: str) -> dict[str, Any] | None:
    """Name -> type of every hyperparameter the agent ``name`` (``fixed:1010`` -> ``fixed``)
    declared at registration, or ``None`` when it declared none."""
    info = _info(name.partition(":")[0])
    declared = info.get("hyperparameters")
    if declared is None:
        return None
    if callable(declared):
        declared = info["hyperparameters"] = dict(declared())
    return dict(declared)


def check_env_example_weighting(env: Any, name: str | None) -> str | None:
    """``name`` (or ``None``) once it is known to be a registered example weighting
    (:func:`kd_env.register_example_weighting`) that fits the env's knowledge types (when the env
    has a distiller to ask); ``ValueError`` naming the valid ones otherwise."""
    if name is None:
        return None
    if not isinstance(name, str) or not name:
        raise ValueError(f"example_weighting must be a registered example weighting's name or None, got {name!r}")
    from kd_env.knowledge import check_example_weighting

    distiller = getattr(getattr(env, "unwrapped", env), "distiller", None)
    if distiller is not None:
        check_example_weighting(name, distiller.knowledge)
    return name


def config_hyperparameters(config_class: type, exclude: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    """The hyperparameters of an agent configured by a dataclass: its fields' types (less
    ``exclude``), plus ``extra`` name -> type."""
    hints = {k: v for k, v in type_hints(config_class).items() if k not in exclude}
    return {**hints, **extra}


_ARGUMENT_NAMES = {"fixed": "bits", "schedule": "file"}


def agent_names() -> list[str]:
    """Every name :func:`make_agent` accepts (``fixed:<bits>`` and ``schedule:<file>`` as
    templates), in registration order."""
    return [f"{n}:<{_ARGUMENT_NAMES.get(n, 'arg')}>" if _info(n).get("takes_argument") else n
            for n in AGENT_REGISTRY]


def agent_table() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered agent."""
    return [(shown, _info(key).get("description", "")) for shown, key in zip(agent_names(), AGENT_REGISTRY)]


def make_agent(name: str, env: Any, **hyperparameters: Any) -> Agent:
    """Build the agent registered as ``name`` for ``env``.

    Args:
        name: a registered name (see :func:`agent_names`), e.g. ``"ac"``, ``"ppo"``,
            ``"vanilla_kd"``, ``"fixed:1010"``, ``"schedule:curriculum.yaml"``.
        env: the env the agent acts in (a kd_env env, possibly wrapped, or any env with a
            ``MultiBinary(K)`` / ``Box(0, 1, (K,))`` action space).
        **hyperparameters: passed to the agent (unknown ones raise ``ValueError``).

    Raises:
        ValueError: an unknown name (the message lists the valid ones) or bad hyperparameters.
    """
    if not isinstance(name, str):
        raise ValueError(f"agent name must be a string, got {name!r}; valid: {agent_names()}")
    key, sep, argument = name.partition(":")
    if key not in AGENT_REGISTRY:
        raise ValueError(f"unknown agent {name!r}; valid: {agent_names()}")
    factory, takes_argument = AGENT_REGISTRY[key], bool(_info(key).get("takes_argument"))
    if sep and not takes_argument:
        raise ValueError(f"agent {key!r} takes no ':<argument>' (got {name!r}); valid: {agent_names()}")
    if takes_argument:
        return factory(env, argument=argument if sep else None, **hyperparameters)
    return factory(env, **hyperparameters)


def check_known(path: str | os.PathLike, header: dict[str, Any]) -> None:
    """:class:`CheckpointError` when the checkpoint's agent is not registered."""
    name = str(header["agent"])
    if name.partition(":")[0] not in AGENT_REGISTRY:
        raise CheckpointError(f"checkpoint {str(path)!r} holds unknown agent {name!r}; valid: {agent_names()}")


def check_fits(path: str | os.PathLike, header: dict[str, Any], knowledge_names: Sequence[str],
               action_mode: str, observation_space: spaces.Space | dict[str, Any] | None = None) -> None:
    """:class:`CheckpointError` when the checkpoint (its parsed header) was saved for other
    knowledge types, another action mode or (when given: a space or its :func:`space_spec`)
    another observation space than this env's (read from the header alone: nothing is built).
    Spaces are compared field by field and every difference is named; a header written before
    issue 37 holds the space's ``repr``, compared as text."""
    env = header.get("env") or {}
    saved_names = env.get("knowledge_names")
    if saved_names is not None and list(saved_names) != list(knowledge_names):
        raise CheckpointError(f"checkpoint {str(path)!r} was saved for knowledge {saved_names}, this env has "
                              f"{list(knowledge_names)}")
    saved_mode = env.get("action_mode")
    if saved_mode is not None and saved_mode != action_mode:
        raise CheckpointError(f"checkpoint {str(path)!r} was saved for action_mode {saved_mode!r}, this env "
                              f"has {action_mode!r}")
    saved_space = env.get("observation_space")
    if observation_space is not None and saved_space is not None:
        diffs = observation_space_differences(saved_space, observation_space)
        if diffs:
            raise CheckpointError(f"checkpoint {str(path)!r} does not fit this env's observation space (it was "
                                  f"saved for another): " + "; ".join(diffs))


def observation_space_differences(saved: Any, current: spaces.Space | dict[str, Any]) -> list[str]:
    """How a checkpoint's saved observation space (a :func:`space_spec`, or an old header's
    ``repr``) differs from ``current`` (a space or its spec), one line per difference."""
    if isinstance(saved, str):  # a header written before issue 37
        if isinstance(current, dict):
            return []  # a repr cannot be compared with a spec without the space
        return [] if saved == repr(current) else [f"{saved} (saved) vs {current!r} (this env)"]
    return compare_space_specs(saved, current if isinstance(current, dict) else space_spec(current))


def load_agent(path: str | os.PathLike, env: Any) -> Agent:
    """Restore any agent saved with ``agent.save(path)`` for ``env``.

    The header names the agent and its hyperparameters; the agent is rebuilt with
    :func:`make_agent` and its tensors loaded (weights-only: a crafted pickle is refused).

    Raises:
        CheckpointError: (a ``ValueError``) the checkpoint is missing, malformed, unsafe or was
            saved for an env with other knowledge types / action mode.
    """
    header = read_header(path)
    name = header["agent"]
    check_known(path, header)
    hp = header.get("hyperparameters") or {}
    if not isinstance(hp, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: hyperparameters must be a mapping")
    agent = make_agent(name, env, **hp)
    return agent.load(path)
