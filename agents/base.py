"""The agent protocol, the agent registry, checkpoints and an episode runner.

Every agent (our actor-critic selector, the stable-baselines3 adapters, the fixed baselines)
exposes the same methods, so experiments never branch on where an agent comes from:

* ``act(obs, deterministic=False) -> np.ndarray``: an action valid for ``env.action_space``.
* ``reset()``: called at the start of every episode (stateful agents such as schedules use it).
* ``reset_options() -> dict``: env reset options the agent's method needs for an episode (e.g.
  ``{"example_weighting": "uncertainty"}`` for Dynamic KD; default ``{}``); :func:`run_episode`
  passes them to ``env.reset``, under the caller's own options.
* ``learn(env, total_episodes=None, total_steps=None, callback=None) -> self``.
* ``save(path)`` / ``load(path) -> self``.

Checkpoints are folders (:mod:`agents.checkpoints`: ``agent.json``, a JSON header, and the
weights); :func:`load_agent` rebuilds any saved agent from its header (``make_agent(name, env,
**hyperparameters)``) and then loads its tensors.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import kd_env
from kd_env.checks import matches, type_hints

from .checkpoints import CHECKPOINT_FORMAT, HEADER_FILE, WEIGHTS_FILE, CheckpointError, load_weights, read_header, \
    write_checkpoint

__all__ = [
    "make_vector_env",
    "Agent",
    "SelectionSpec",
    "EpisodeLogger",
    "CheckpointError",
    "register_agent",
    "agent_hyperparameters",
    "config_hyperparameters",
    "check_env_example_weighting",
    "make_agent",
    "agent_names",
    "load_agent",
    "run_episode",
    "episode_options",
    "selection_spec",
    "read_header",
    "HEADER_FILE",
    "WEIGHTS_FILE",
    "CHECKPOINT_FORMAT",
]


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
    """

    action_space: spaces.Space
    observation_space: spaces.Space
    action_mode: str
    knowledge_names: list[str]
    num_phases: int
    observation_name: str | None = None

    @property
    def num_knowledge(self) -> int:
        return len(self.knowledge_names)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary stored in checkpoint headers (checked at load)."""
        return {"action_mode": self.action_mode, "knowledge_names": list(self.knowledge_names),
                "observation_space": repr(self.observation_space), "num_phases": self.num_phases}


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
    return SelectionSpec(action_space=action_space, observation_space=env.observation_space, action_mode=mode,
                   knowledge_names=names, num_phases=int(num_phases),
                   observation_name=getattr(obs_fn, "name", None))


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
        :func:`run_episode`).
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
        saved_names = header.get("env", {}).get("knowledge_names")
        if saved_names is not None and list(saved_names) != self.knowledge_names:
            raise CheckpointError(f"checkpoint {str(path)!r} was saved for knowledge {saved_names}, this env has "
                                  f"{self.knowledge_names}")
        saved_mode = header.get("env", {}).get("action_mode")
        if saved_mode is not None and saved_mode != self.action_mode:
            raise CheckpointError(f"checkpoint {str(path)!r} was saved for action_mode {saved_mode!r}, this env "
                                  f"has {self.action_mode!r}")
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

#: name -> (factory(env, argument_or_None, **hyperparameters), takes_argument, one-line description)
_REGISTRY: dict[str, tuple[Callable[..., Agent], bool, str]] = {}
#: name -> the hyperparameters the agent accepts (name -> type), or a function returning them
_HYPERPARAMETERS: dict[str, Mapping[str, Any] | Callable[[], Mapping[str, Any]]] = {}


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
        if name in _REGISTRY and not overwrite and _REGISTRY[name][0] is not factory:
            raise ValueError(f"agent {name!r} is already registered; pass overwrite=True to replace it")
        _REGISTRY[name] = (factory, takes_argument, description)
        _HYPERPARAMETERS.pop(name, None)
        if hyperparameters is not None:
            _HYPERPARAMETERS[name] = hyperparameters
        return factory

    return wrap


def agent_hyperparameters(name: str) -> dict[str, Any] | None:
    """Name -> type of every hyperparameter the agent ``name`` (``fixed:1010`` -> ``fixed``)
    declared at registration, or ``None`` when it declared none."""
    declared = _HYPERPARAMETERS.get(name.partition(":")[0])
    if declared is None:
        return None
    if callable(declared):
        declared = _HYPERPARAMETERS[name.partition(":")[0]] = dict(declared())
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


def agent_names() -> list[str]:
    """Every name :func:`make_agent` accepts (``fixed:<bits>`` and ``schedule:<file>`` as
    templates)."""
    return [f"{n}:<{_ARGUMENT_NAMES.get(n, 'arg')}>" if takes else n for n, (_, takes, _) in _REGISTRY.items()]


_ARGUMENT_NAMES = {"fixed": "bits", "schedule": "file"}


def agent_table() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered agent."""
    return [(shown, _REGISTRY[key][2]) for shown, key in zip(agent_names(), _REGISTRY)]


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
    if key not in _REGISTRY:
        raise ValueError(f"unknown agent {name!r}; valid: {agent_names()}")
    factory, takes_argument, _ = _REGISTRY[key]
    if sep and not takes_argument:
        raise ValueError(f"agent {key!r} takes no ':<argument>' (got {name!r}); valid: {agent_names()}")
    if takes_argument:
        return factory(env, argument=argument if sep else None, **hyperparameters)
    return factory(env, **hyperparameters)


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
    key = name.partition(":")[0]
    if key not in _REGISTRY:
        raise CheckpointError(f"checkpoint {str(path)!r} holds unknown agent {name!r}; valid: {agent_names()}")
    hp = header.get("hyperparameters") or {}
    if not isinstance(hp, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: hyperparameters must be a mapping")
    agent = make_agent(name, env, **hp)
    return agent.load(path)


# --------------------------------------------------------------------------------------------
# Running and logging
# --------------------------------------------------------------------------------------------


def make_vector_env(env_id: str, num_envs: int, vectorization_mode: str = "async", **kwargs: Any) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``gym.make(env_id, **kwargs)`` as one Gymnasium vector env, for
    agents that learn from several episodes at once (``ac``, ``ac_q``).  ``"async"`` runs each copy
    in its own spawned process with one torch thread (``threads=1`` unless given), so N copies use
    N cores; ``"sync"`` steps them in turn in this process; ``"batched"`` (the digits ids,
    :data:`kd_env.BATCHED_ENV_IDS`) trains the N students as one batched model in this process
    (:class:`kd_env.vector.BatchedKDVectorEnv`: the same episodes as ``"sync"``, several times
    faster per core)."""
    if not matches(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    if vectorization_mode not in ("async", "sync", "batched"):
        raise ValueError(f"vectorization_mode must be 'async', 'sync' or 'batched', got {vectorization_mode!r}")
    if vectorization_mode == "batched":
        spec = gym.spec(env_id)
        if spec.vector_entry_point is None:
            raise ValueError(f"env {env_id!r} has no batched vector env (its students are not MLPs); use 'async' or "
                             f"'sync'.  Batched ids: {list(kd_env.BATCHED_ENV_IDS)}")
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    kwargs = {"threads": 1, **kwargs}
    vector_kwargs = {"context": "spawn"} if vectorization_mode == "async" else {}
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode,
                        vector_kwargs=vector_kwargs, **kwargs)


def run_episode(env: Any, agent: Agent, deterministic: bool = True, seed: int | None = None,
                options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one episode of ``agent`` in ``env`` (no learning).

    Args:
        env: the env (reset here with ``seed`` and the options below).
        agent: any :class:`Agent`; its :meth:`Agent.reset` is called first.
        deterministic: passed to ``agent.act``.
        seed: the env's reset seed.
        options: the env's reset options, merged over the agent's own
            (:meth:`Agent.reset_options`): a key given here wins.

    Returns:
        ``{"return", "length", "rewards", "actions" (one list per phase, as the agent chose
        them), "reset_info", "infos", "phase_seconds" (each step's wall time, from
        ``env.unwrapped.last_phase_seconds``; NaN for envs without it), "final_probe_metric",
        "final_probe_loss", "terminated", "truncated"}``; the probe values are NaN for envs
        without a dev probe.
    """
    agent.reset()
    obs, info = env.reset(seed=seed, options=episode_options(agent, options))
    reset_info = info
    rewards: list[float] = []
    actions: list[list[float]] = []
    infos: list[dict[str, Any]] = []
    seconds: list[float] = []
    terminated = truncated = False
    while not (terminated or truncated):
        action = agent.act(obs, deterministic=deterministic)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        actions.append([float(x) for x in np.asarray(action).reshape(-1)])
        infos.append(info)
        seconds.append(float(getattr(env.unwrapped, "last_phase_seconds", math.nan)))
    return {"return": float(sum(rewards)), "length": len(rewards), "rewards": rewards, "actions": actions,
            "reset_info": reset_info, "infos": infos, "phase_seconds": seconds,
            "final_probe_metric": float(info.get("probe_metric", math.nan)),
            "final_probe_loss": float(info.get("probe_loss", math.nan)),
            "terminated": bool(terminated), "truncated": bool(truncated)}


def episode_options(agent: Agent, options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The env reset options of one of ``agent``'s episodes: ``{**agent.reset_options(),
    **options}`` (``None`` when both are empty, i.e. a plain reset)."""
    merged = {**agent.reset_options(), **(options or {})}
    return merged or None


class EpisodeLogger:
    """Per-episode records: kept in a list, appended to ``log_dir/episodes.csv`` and written to
    TensorBoard (``log_dir``) when ``log_dir`` is given.

    Args:
        log_dir: folder for ``episodes.csv`` and the TensorBoard event files (``None``: memory only).
        records: the list records are appended to (an agent's ``episode_log``).
        tensorboard: also write TensorBoard scalars.
    """

    def __init__(self, log_dir: str | os.PathLike | None, records: list[dict[str, Any]], tensorboard: bool = True):
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.records = records
        self._writer = None
        self._columns: list[str] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.log_dir))

    @property
    def csv_path(self) -> Path | None:
        return self.log_dir / "episodes.csv" if self.log_dir is not None else None

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.log_dir is None:
            return
        path = self.csv_path
        if self._columns is None:
            if path.exists() and path.stat().st_size > 0:
                with open(path, newline="", encoding="utf-8") as fh:
                    self._columns = next(csv.reader(fh), None) or list(record)
            else:
                self._columns = list(record)
                with open(path, "w", newline="", encoding="utf-8") as fh:
                    csv.writer(fh).writerow(self._columns)
        with open(path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=self._columns, extrasaction="ignore", restval="").writerow(record)
        if self._writer is not None:
            step = int(record.get("episode", len(self.records)))
            for key, value in record.items():
                if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and key != "episode":
                    if math.isfinite(float(value)):
                        self._writer.add_scalar(f"episode/{key}", float(value), step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def selection_frequencies(actions: list[np.ndarray] | np.ndarray, knowledge_names: list[str]) -> dict[str, float]:
    """``{"freq_<knowledge>": mean action value over the episode}``."""
    arr = np.asarray(actions, dtype=np.float64).reshape(-1, len(knowledge_names)) if len(actions) else \
        np.full((1, len(knowledge_names)), math.nan)
    return {f"freq_{n}": float(v) for n, v in zip(knowledge_names, arr.mean(axis=0))}
