"""An algorithm's settings in the benchmark: its YAML (``experiments/configs/<algo>.yml``, one
entry per env id merged over ``default``, rl-baselines3-zoo style), ``--set ALGO.KEY=VALUE``
overrides, and the checks that run before any cell does.

Config errors (unknown keys, wrong types, bad values) are :class:`ConfigError`: settings are
checked statically (types through :func:`kd_env.checks.check_types`, hyperparameters against
what each agent declared at registration, :func:`agents.agent_hyperparameters`), then
:func:`check_grid` builds every (algorithm, env) once.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence

import yaml

from experiments.logs import get_logger
from experiments.resources import package_dir
from kd_env.checks import check_known, check_types

if TYPE_CHECKING:
    from .grid import Cell

#: the shipped configs (package data, found through importlib.resources)
CONFIG_DIR = package_dir("experiments", "configs")
#: the config of a registered agent with no ``<algo>.yml`` (a plug-in's agent): a mask, no training
NO_CONFIG: dict[str, dict[str, Any]] = {"default": {"action_mode": "mask", "episodes": 0}}
LOGGER = get_logger("benchmark")
ENTRY_KEYS = ("action_mode", "episodes", "env_kwargs", "hyperparams")
ACTION_MODES = ("mask", "weights")


class ConfigError(ValueError):
    """A bad benchmark configuration (YAML, CLI override or grid), found before anything runs."""

@dataclass(frozen=True)
class AlgoSettings:
    """Everything that configures one algorithm on one env (one YAML entry, resolved)."""

    algo: str
    env_id: str
    action_mode: str
    episodes: int
    env_kwargs: dict[str, Any]
    hyperparams: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __hash__(self) -> int:  # the dict fields are never mutated after construction
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))


def config_path(algo: str, config_dir: str | Path = CONFIG_DIR) -> Path:
    """The YAML of ``algo`` (``fixed:1010`` -> ``fixed.yml``)."""
    return Path(config_dir) / f"{algo.partition(':')[0]}.yml"


def _type_name(value: Any) -> str:
    return type(value).__name__


#: the types of an entry's keys (``env_kwargs`` are gym.make's, ``hyperparams`` the agent's)
ENTRY_TYPES = {"action_mode": Literal[ACTION_MODES], "episodes": int, "env_kwargs": Optional[dict[str, Any]],
               "hyperparams": Optional[dict[str, Any]]}


def _check_entry(entry: Any, where: str) -> dict[str, Any]:
    """Validate the shape of one YAML entry (keys and the types of the benchmark's own keys)."""
    if entry is None:
        return {}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: an entry must be a mapping with keys {list(ENTRY_KEYS)}, got {_type_name(entry)}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {list(ENTRY_KEYS)} (agent hyperparameters go "
                          f"under 'hyperparams', gym.make arguments under 'env_kwargs')")
    check_types(entry, ENTRY_TYPES, f"{where}: ", error=ConfigError)
    if entry.get("episodes", 0) < 0:
        raise ConfigError(f"{where}: episodes must be an integer >= 0, got {entry['episodes']!r}")
    if "seed" in (entry.get("hyperparams") or {}):
        raise ConfigError(f"{where}: hyperparams.seed is set by the grid (--seeds), remove it")
    if "action_mode" in (entry.get("env_kwargs") or {}):
        raise ConfigError(f"{where}: set action_mode at the entry's top level, not in env_kwargs")
    return dict(entry)


def load_algo_config(algo: str, config_dir: str | Path = CONFIG_DIR) -> dict[str, dict[str, Any]]:
    """Read and check ``<config_dir>/<algo>.yml``: ``{env id or "default": entry}``.  A registered
    agent with no file there (a plug-in's agent) gets :data:`NO_CONFIG`: a mask, 0 episodes
    (evaluated as it is, never trained; ``--set ALGO.episodes=N`` trains it).

    Raises:
        ConfigError: no such file for a name no agent is registered as, not YAML, not a mapping
            of entries, no ``default`` entry, or an entry with unknown keys or wrongly typed values.
    """
    path = config_path(algo, config_dir)
    if not path.is_file():
        from agents.base import AGENT_REGISTRY

        available = sorted(p.stem for p in Path(config_dir).glob("*.yml"))
        if algo.partition(":")[0] in AGENT_REGISTRY:
            LOGGER.info(f"note: no {path.name} in {config_dir} for {algo}: the defaults {NO_CONFIG['default']} "
                        f"(--set {algo}.episodes=N to train it)")
            return {"default": dict(NO_CONFIG["default"])}
        raise ConfigError(f"no config for algorithm {algo!r}: {path} does not exist; configs exist for {available}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of env ids (and 'default') to entries, got {_type_name(data)}")
    if "default" not in data:
        raise ConfigError(f"{path} needs a 'default' entry (used for env ids without their own)")
    return {str(env): _check_entry(entry, f"{path} [{env}]") for env, entry in data.items()}


def parse_value(text: str) -> Any:
    """A CLI value: YAML scalar/list/mapping, with ``1e-3``-style floats read as floats (PyYAML
    reads exponents without a dot as strings)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse value {text!r}: {exc}") from None
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") and value.strip().lower() not in (
                "nan", "inf", "-inf", "+inf") else value
        except ValueError:
            return value
    return value


def parse_override(text: str, algos: Sequence[str] = ()) -> tuple[str, list[str], Any]:
    """``ALGO.KEY=VALUE`` -> ``(algo, key path, value)``; ``KEY`` is ``episodes``,
    ``action_mode``, ``env_kwargs.NAME``, ``hyperparams.NAME`` or just a hyperparameter
    ``NAME``.  ``ALGO`` is the longest of ``algos`` the target starts with (so an algorithm
    whose name holds dots, ``schedule:my/sched.json``, can be configured), else the target's
    part before its first dot."""
    target, sep, raw = text.partition("=")
    target = target.strip()
    named = [a for a in algos if target.startswith(f"{a}.")]
    if named:
        algo = max(named, key=len)
        dot, key = ".", target[len(algo) + 1:]
    else:
        algo, dot, key = target.partition(".")
    if not sep or not dot or not algo or not key:
        raise ConfigError(f"override {text!r} must look like ALGO.KEY=VALUE, e.g. ppo.learning_rate=1.0e-3, "
                          f"ac.episodes=30, ac.env_kwargs.reward=dev_metric_delta")
    parts = key.split(".")
    if parts[0] in ("episodes", "action_mode"):
        if len(parts) != 1:
            raise ConfigError(f"override {text!r}: {parts[0]} has no sub-keys")
        path = parts
    elif parts[0] in ("env_kwargs", "hyperparams"):
        if len(parts) != 2:
            raise ConfigError(f"override {text!r}: use {parts[0]}.NAME=VALUE")
        path = parts
    elif len(parts) == 1:
        path = ["hyperparams", parts[0]]
    else:
        raise ConfigError(f"override {text!r}: unknown key {key!r}; use episodes, action_mode, env_kwargs.NAME or "
                          f"a hyperparameter name")
    return algo, path, parse_value(raw)


def resolve_settings(algo: str, env_id: str, config: dict[str, dict[str, Any]],
                     overrides: Sequence[tuple[list[str], Any]] = (), episodes: int | None = None) -> AlgoSettings:
    """The ``default`` entry, then the env's entry, then ``overrides``, then ``episodes`` (a
    global budget override), checked."""
    base = config["default"]
    env_entry = config.get(env_id) or {}
    merged: dict[str, Any] = {
        "action_mode": env_entry.get("action_mode", base.get("action_mode", "mask")),
        "episodes": env_entry.get("episodes", base.get("episodes", 0)),
        "env_kwargs": {**(base.get("env_kwargs") or {}), **(env_entry.get("env_kwargs") or {})},
        "hyperparams": {**(base.get("hyperparams") or {}), **(env_entry.get("hyperparams") or {})},
    }
    for path, value in overrides:
        if len(path) == 1:
            merged[path[0]] = value
        else:
            merged[path[0]][path[1]] = value
    if episodes is not None and merged["episodes"] > 0:
        merged["episodes"] = episodes
    _check_entry(merged, f"{algo} on {env_id} (after overrides)")
    settings = AlgoSettings(algo=algo, env_id=env_id, action_mode=merged["action_mode"], episodes=merged["episodes"],
                            env_kwargs=dict(merged["env_kwargs"]), hyperparams=dict(merged["hyperparams"]))
    check_hyperparameter_types(settings)
    return settings


# ---- static hyperparameter checks (the dry run in check_grid catches the rest) --------------


def check_hyperparameter_types(settings: AlgoSettings) -> None:
    """Unknown hyperparameters and values of the wrong type, against what the agent declared
    where it is registered (agents that declare nothing are left to the dry run)."""
    from agents import agent_hyperparameters
    from agents.base import agent_keywords

    annotations = agent_hyperparameters(settings.algo)
    if annotations is None:  # undeclared: the factory's own keywords, where its signature tells them
        accepted = agent_keywords(settings.algo)
        unknown = sorted(set(settings.hyperparams) - set(accepted or ()))
        if accepted is not None and unknown:
            raise ConfigError(f"{settings.algo} on {settings.env_id}: unknown hyperparameter(s) {unknown}; "
                              f"{settings.algo} accepts {accepted}")
        return
    where = f"{settings.algo} on {settings.env_id}"
    check_known(settings.hyperparams, annotations, where, "hyperparameter", ConfigError)
    check_types(settings.hyperparams, annotations, where, error=ConfigError,
                message="{where}: hyperparameter {name}={value} has type {type}, expected {kinds}{hint}")


def check_grid(cells: Sequence["Cell"], log: Callable[[str], None] = print) -> None:
    """Build every (algorithm, env) once in this process: prepares each env (teacher fine-tune
    and cache, once, before workers start) and lets the agents validate their hyperparameters.

    Raises:
        ConfigError: an env or an agent that cannot be built with its settings.
    """
    import gymnasium as gym

    from agents import make_agent

    envs: dict[str, Any] = {}
    prepared: set[str] = set()
    seen: set[str] = set()
    try:
        for cell in cells:
            s = cell.settings
            key = json.dumps(s.to_dict(), sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            env_key = json.dumps([s.env_id, s.action_mode, s.env_kwargs], sort_keys=True, default=str)
            if env_key not in envs:
                if s.env_id not in prepared:
                    log(f"preparing {s.env_id} (the first time, this fine-tunes and caches its teacher)")
                    prepared.add(s.env_id)
                try:
                    envs[env_key] = gym.make(s.env_id, action_mode=s.action_mode, **s.env_kwargs)
                except Exception as exc:  # noqa: BLE001 - report any construction error as a config error
                    raise ConfigError(f"{s.algo}: gym.make({s.env_id!r}, action_mode={s.action_mode!r}, "
                                      f"**{s.env_kwargs}) failed: {exc}") from None
            try:
                make_agent(s.algo, envs[env_key], seed=0, **s.hyperparams)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(f"{s.algo} on {s.env_id} (action_mode={s.action_mode!r}): cannot build the agent "
                                  f"with hyperparams {s.hyperparams}: {exc}") from None
    finally:
        for env in envs.values():
            env.close()


