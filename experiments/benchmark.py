"""Benchmark RL algorithms on the knowledge-selection envs: algorithms x seeds x envs.

    python -m experiments.benchmark                                   # the default grid (below)
    python -m experiments.benchmark --algos ac,ppo,random_hard --seeds 0-2 --episodes 40
    python -m experiments.benchmark --envs kd_env/TextKD-v0 --workers 2
    python -m experiments.benchmark --set ppo.learning_rate=1.0e-3 --set ac.episodes=30
    python -m experiments.benchmark --executor ray [--address auto]   # needs the optional `ray`

Every cell (algorithm, env, seed) trains a fresh agent for its budget of episodes on training
instances, then is evaluated with the deterministic policy on held-out instances: a kd_env
instance is the student initialisation and data order fixed by the env's reset seed; training
resets use seeds ``seed * 100000 + k``, evaluation resets ``10**9 + seed * 1000 + j``, so the
two never meet.  Per evaluation episode the benchmark records the episode return and the final
student's test metric (``env.unwrapped.distiller.evaluate("test")["main"]``, the task's metric,
accuracy for digits); the cell's score is their mean over the evaluation episodes of the last
evaluation.  The learners are also evaluated every ``--eval-every`` training episodes (learning
curves); the baselines, which do not learn, only at the end.  Any registered agent is a valid
``--algos`` entry, among them the literature's dynamic baselines ``dynamic_kd``, ``eskd``,
``two_stage`` and ``anneal`` (:mod:`agents.dynamic`; not in the default grid).  Evaluation
episodes reset the env with the agent's own reset options (Dynamic KD's example weighting).

Hyperparameters: ``experiments/configs/<algo>.yml`` (rl-baselines3-zoo style), one entry per env
id merged over a ``default`` entry.  An entry holds ``action_mode`` (``mask`` or ``weights``:
sac/td3/ddpg/ac_q act on weights), ``episodes`` (the training budget), ``env_kwargs`` (passed to
``gym.make``: any DistillConfig field, ``reward``, ``observation`` ...) and ``hyperparams``
(passed to ``agents.make_agent``).  ``--set ALGO.KEY=VALUE`` overrides one (``KEY`` is
``episodes``, ``action_mode``, ``env_kwargs.NAME`` or a hyperparameter name).  Config errors
(unknown keys, wrong types, bad values) are reported before any cell runs: the grid is checked
statically, then every (algorithm, env) is built once.

Outputs, ``runs/benchmark-<name>/``::

    <algo>/<env>__seed<k>/evaluations.npz   timesteps, results, ep_lengths (rl-zoo keys; results
                                            and ep_lengths are (evaluations, episodes)), plus
                                            test_metrics, probe_metrics, final_actions,
                                            train_returns
    <algo>/<env>__seed<k>/result.json       the cell's scores, settings and timings; written
                                            last, atomically: a cell with it is finished
    runs.csv                                one row per cell
    summary.csv, summary.md, summary.json   per env and algorithm: mean and IQM with 95%
                                            stratified-bootstrap CIs of the test metric and the
                                            return, probability of improvement over random_hard
                                            (one seed: no CI, "n/a (1 seed)" / null)
    plots/<env>-learning_curves.png         evaluation return and test metric vs env steps
    plots/<env>-selection.png               mean selection frequency per knowledge type
    plots/<env>-selection-<algo>.png        knowledge x phase heatmap of the final policy

Resumable: a finished cell whose settings are unchanged is read back, not rerun; one whose
settings changed is rerun.  ``--fresh`` reruns everything.

Execution: ``--workers N`` runs cells in N spawned processes; ``--executor ray`` on Ray (local,
or a cluster with ``--address``).  Each cell runs on ``--threads`` torch threads (default 1:
the envs' models are small, and N workers then use N cores).  A cell's numbers depend only on
its settings and seed (global RNGs are reseeded per cell, evaluation does not disturb the
training RNG streams), so every executor gives the same numbers for the same ``--threads``.

Default budget (no flags): 7 algorithms (ac, ac_q, ppo, dqn; vanilla_kd, dynamic_kd,
random_hard) x 5 seeds x kd_env/DigitsKD-Instances-v0 (15 phases per episode; the instance env,
where the headroom is), 2 worker processes.  The learners train 300 episodes each (4,500 env
steps, the same for every learner; the configs' ``episodes``) and are evaluated after 100, 200
and 300 episodes on 3 held-out seeds x the 4 held-out instances; the baselines run one such
evaluation: 4 x 5 x (300 + 36) + 3 x 5 x 12 = 6,900 DigitsKD episodes of ~0.3-0.6 s.  The full
default grid has not been timed; from ``ac``'s measured 2.5 min per 300-episode run (one core,
other jobs on the other), expect the better part of an hour on 2 cores.  ``--envs kd_env/DigitsKD-v0`` (12 episodes per learner) is the old,
minutes-scale smoke benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import io
import json
import math
import os
import random
import sys
import time
import traceback
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from experiments import stats
from experiments.cli import SEEDS_HELP, parse_seeds
from experiments.report import (
    json_safe,
    markdown_table,
    paired_difference,
    plot_heatmap,
    plot_learning_curves,
    plot_selection_bars,
    write_csv,
)
from kd_env.io import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = [
    "ConfigError",
    "AlgoSettings",
    "Cell",
    "BenchmarkConfig",
    "BenchmarkResult",
    "load_algo_config",
    "resolve_settings",
    "parse_override",
    "build_grid",
    "check_grid",
    "run_cell",
    "run_benchmark",
    "summarize",
    "main",
]

#: the default grid: the instance env, where the right knowledge differs between situations (the
#: headroom tool measured +7.6 points for an instance-aware choice there, about 0 on DigitsKD-v0)
DEFAULT_ALGOS = ("ac", "ac_q", "ppo", "dqn", "vanilla_kd", "dynamic_kd", "random_hard")
DEFAULT_ENVS = ("kd_env/DigitsKD-Instances-v0",)
DEFAULT_SEEDS = 5
DEFAULT_EVAL_EVERY = 100
DEFAULT_EVAL_EPISODES = 3
DEFAULT_WORKERS = 2
REFERENCE_ALGO = "random_hard"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
ENTRY_KEYS = ("action_mode", "episodes", "env_kwargs", "hyperparams")
ACTION_MODES = ("mask", "weights")
EXECUTORS = ("local", "ray")
#: training resets of seed s use seeds s * TRAIN_SEED_STRIDE + k (k < TRAIN_SEED_STRIDE)
TRAIN_SEED_STRIDE = 100_000
#: evaluation resets of seed s use seeds EVAL_SEED_BASE + s * MAX_EVAL_EPISODES + j
EVAL_SEED_BASE = 1_000_000_000
MAX_EVAL_EPISODES = 1000
MAX_SEED = 9_999
#: bump when a cell's outputs change meaning (finished cells of another format are rerun)
CELL_FORMAT = 2
RESULT_FILE = "result.json"
EVALUATIONS_FILE = "evaluations.npz"


class ConfigError(ValueError):
    """A bad benchmark configuration (YAML, CLI override or grid), found before anything runs."""


# ============================================================================================
# Configuration: YAML per algorithm, overrides, the grid
# ============================================================================================


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


@dataclass(frozen=True)
class Cell:
    """One run of the grid: an algorithm's settings on an env, with one seed."""

    settings: AlgoSettings
    seed: int
    eval_every: int
    eval_episodes: int

    @property
    def algo(self) -> str:
        return self.settings.algo

    @property
    def env_id(self) -> str:
        return self.settings.env_id

    @property
    def learns(self) -> bool:
        return self.settings.episodes > 0

    def relative_dir(self) -> Path:
        """``<algo>/<env>__seed<k>`` (``:`` and ``/`` made file-name safe)."""
        return Path(_slug(self.algo)) / f"{env_slug(self.env_id)}__seed{self.seed}"

    def describe(self) -> dict[str, Any]:
        """The JSON-able definition of the cell (what its numbers depend on)."""
        return {"format": CELL_FORMAT, "settings": self.settings.to_dict(), "seed": self.seed,
                "eval_every": self.eval_every, "eval_episodes": self.eval_episodes}

    def fingerprint(self) -> str:
        text = json.dumps(self.describe(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def train_seeds(self, count: int) -> list[int]:
        return [self.seed * TRAIN_SEED_STRIDE + k for k in range(count)]

    def eval_seeds(self) -> list[int]:
        return [EVAL_SEED_BASE + self.seed * MAX_EVAL_EPISODES + j for j in range(self.eval_episodes)]

    def label(self) -> str:
        return f"{self.algo} {self.env_id} seed {self.seed}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def env_slug(env_id: str) -> str:
    """``kd_env/DigitsKD-v0`` -> ``kd_env__DigitsKD-v0``."""
    return _slug(env_id.replace("/", "__"))


def config_path(algo: str, config_dir: str | Path = CONFIG_DIR) -> Path:
    """The YAML of ``algo`` (``fixed:1010`` -> ``fixed.yml``)."""
    return Path(config_dir) / f"{algo.partition(':')[0]}.yml"


def _type_name(value: Any) -> str:
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    if "action_mode" in entry and entry["action_mode"] not in ACTION_MODES:
        raise ConfigError(f"{where}: action_mode must be one of {list(ACTION_MODES)}, got {entry['action_mode']!r}")
    if "episodes" in entry and (not _is_int(entry["episodes"]) or entry["episodes"] < 0):
        raise ConfigError(f"{where}: episodes must be an integer >= 0, got {entry['episodes']!r} "
                          f"({_type_name(entry['episodes'])})")
    for key in ("env_kwargs", "hyperparams"):
        if key in entry and entry[key] is not None and not isinstance(entry[key], dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {entry[key]!r} ({_type_name(entry[key])})")
        for name in (entry.get(key) or {}):
            if not isinstance(name, str):
                raise ConfigError(f"{where}: {key} keys must be strings, got {name!r}")
    if "seed" in (entry.get("hyperparams") or {}):
        raise ConfigError(f"{where}: hyperparams.seed is set by the grid (--seeds), remove it")
    if "action_mode" in (entry.get("env_kwargs") or {}):
        raise ConfigError(f"{where}: set action_mode at the entry's top level, not in env_kwargs")
    return dict(entry)


def load_algo_config(algo: str, config_dir: str | Path = CONFIG_DIR) -> dict[str, dict[str, Any]]:
    """Read and check ``<config_dir>/<algo>.yml``: ``{env id or "default": entry}``.

    Raises:
        ConfigError: no such file, not YAML, not a mapping of entries, no ``default`` entry, or
            an entry with unknown keys or wrongly typed values.
    """
    path = config_path(algo, config_dir)
    if not path.is_file():
        available = sorted(p.stem for p in Path(config_dir).glob("*.yml"))
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


def parse_override(text: str) -> tuple[str, list[str], Any]:
    """``ALGO.KEY=VALUE`` -> ``(algo, key path, value)``; ``KEY`` is ``episodes``,
    ``action_mode``, ``env_kwargs.NAME``, ``hyperparams.NAME`` or just a hyperparameter
    ``NAME``."""
    target, sep, raw = text.partition("=")
    algo, dot, key = target.strip().partition(".")
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

_SIMPLE_TYPES = {bool: "bool", int: "int", float: "float", str: "str", tuple: "list", list: "list",
                 dict: "dict", type(None): "null"}


def _allowed_kinds(annotation: Any) -> set[str] | None:
    """The YAML kinds an annotation admits (``None``: cannot tell, do not check)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds: set[str] = set()
        for arg in args:
            sub = _allowed_kinds(arg)
            if sub:
                kinds |= sub
        return kinds or None
    if origin is not None:
        annotation = origin
    if annotation in _SIMPLE_TYPES:
        return {_SIMPLE_TYPES[annotation]}
    return set()  # a class (callable, schedule, noise object ...): nothing from YAML but null fits it


def _value_kind_ok(value: Any, kinds: set[str]) -> bool:
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return bool(kinds & {"int", "float"})
    if isinstance(value, float):
        return "float" in kinds
    if isinstance(value, str):
        return "str" in kinds
    if isinstance(value, (list, tuple)):
        return "list" in kinds
    if isinstance(value, dict):
        return "dict" in kinds
    if value is None:
        return "null" in kinds
    return True


def hyperparameter_annotations(algo: str) -> dict[str, Any] | None:
    """Name -> type annotation of every hyperparameter ``algo`` accepts, or ``None`` when the
    agent's signature says nothing (only the dry run checks those)."""
    key = algo.partition(":")[0]
    if key in ("ac", "ac_q"):
        from agents.actor_critic import ActorCriticConfig

        hints = typing.get_type_hints(ActorCriticConfig)
        hints.pop("critic", None)
        return {**hints, "log_dir": str | None, "tensorboard": bool}
    from agents.sb3 import ALGORITHMS

    if key in ALGORITHMS:
        import stable_baselines3

        cls = getattr(stable_baselines3, ALGORITHMS[key][0])
        out = {name: p.annotation for name, p in inspect.signature(cls.__init__).parameters.items()
               if name not in ("self", "policy", "env", "seed", "verbose", "_init_setup_model")}
        out.update({"policy": str, "log_dir": str | None, "tensorboard": bool, "action_noise_std": float})
        return out
    return None


def check_hyperparameter_types(settings: AlgoSettings) -> None:
    """Unknown hyperparameters and values of the wrong type, from the agent's signature."""
    annotations = hyperparameter_annotations(settings.algo)
    if annotations is None:
        return
    where = f"{settings.algo} on {settings.env_id}"
    unknown = sorted(set(settings.hyperparams) - set(annotations))
    if unknown:
        raise ConfigError(f"{where}: unknown hyperparameter(s) {unknown}; valid: {sorted(annotations)}")
    for name, value in settings.hyperparams.items():
        kinds = _allowed_kinds(annotations[name])
        if kinds is None or _value_kind_ok(value, kinds):
            continue
        hint = ""
        if isinstance(value, str) and kinds & {"int", "float"}:
            try:
                float(value)
                hint = " (PyYAML reads 1e-3 as a string: write 1.0e-3)"
            except ValueError:
                pass
        raise ConfigError(f"{where}: hyperparameter {name}={value!r} has type {_type_name(value)}, expected "
                          f"{' or '.join(sorted(kinds)) or 'an object YAML cannot express'}{hint}")


def build_grid(algos: Sequence[str], envs: Sequence[str], seeds: Sequence[int], eval_every: int, eval_episodes: int,
               overrides: Sequence[str] = (), episodes: int | None = None,
               config_dir: str | Path = CONFIG_DIR) -> list[Cell]:
    """Every cell of the grid, algorithm-major, from the YAML configs and the overrides.

    Raises:
        ConfigError: anything wrong with the names, seeds, budget, configs or overrides.
    """
    algos, envs, seeds = list(algos), list(envs), list(seeds)
    if not algos:
        raise ConfigError("no algorithms given")
    if not envs:
        raise ConfigError("no envs given")
    for name, values in (("algorithms", algos), ("envs", envs), ("seeds", seeds)):
        if len(set(values)) != len(values):
            raise ConfigError(f"{name} must be distinct, got {values}")
    if not seeds or not all(_is_int(s) and 0 <= s <= MAX_SEED for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers in [0, {MAX_SEED}], got {seeds}")
    if not _is_int(eval_every) or eval_every < 1:
        raise ConfigError(f"eval_every must be a positive integer, got {eval_every!r}")
    if not _is_int(eval_episodes) or not 1 <= eval_episodes <= MAX_EVAL_EPISODES:
        raise ConfigError(f"eval_episodes must be an integer in [1, {MAX_EVAL_EPISODES}], got {eval_episodes!r}")
    if episodes is not None and (not _is_int(episodes) or not 0 < episodes < TRAIN_SEED_STRIDE):
        raise ConfigError(f"episodes must be an integer in [1, {TRAIN_SEED_STRIDE - 1}], got {episodes!r}")
    _check_env_ids(envs)
    _check_algo_names(algos)
    parsed: dict[str, list[tuple[list[str], Any]]] = {a: [] for a in algos}
    for text in overrides:
        algo, path, value = parse_override(text)
        if algo not in parsed:
            raise ConfigError(f"override {text!r} names algorithm {algo!r}, which is not in the grid {algos}")
        parsed[algo].append((path, value))
    cells = []
    for algo in algos:
        config = load_algo_config(algo, config_dir)
        for env_id in envs:
            settings = resolve_settings(algo, env_id, config, parsed[algo], episodes)
            if settings.episodes >= TRAIN_SEED_STRIDE:
                raise ConfigError(f"{algo} on {env_id}: episodes must be < {TRAIN_SEED_STRIDE}, got {settings.episodes}")
            for seed in seeds:
                cells.append(Cell(settings=settings, seed=seed, eval_every=eval_every, eval_episodes=eval_episodes))
    return cells


def _check_env_ids(envs: Sequence[str]) -> None:
    import gymnasium as gym

    import kd_env  # noqa: F401 - registers the ids

    unknown = [e for e in envs if e not in gym.registry]
    if unknown:
        ours = sorted(k for k in gym.registry if k.startswith("kd_env/"))
        raise ConfigError(f"unknown env id(s) {unknown}; kd_env registers {ours}")


def _check_algo_names(algos: Sequence[str]) -> None:
    from agents import agent_names

    valid = agent_names()
    keys = {n.partition(":")[0] for n in valid}
    bad = [a for a in algos if a.partition(":")[0] not in keys]
    if bad:
        raise ConfigError(f"unknown algorithm(s) {bad}; valid: {valid}")


def check_grid(cells: Sequence[Cell], log: Callable[[str], None] = print) -> None:
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


# ============================================================================================
# One cell
# ============================================================================================


def _training_instances_wrapper(env: Any, cell: Cell) -> Any:
    import gymnasium as gym

    class TrainingInstances(gym.Wrapper):
        """Reset k of this run uses seed ``seed * TRAIN_SEED_STRIDE + k``, whatever seed the
        agent passes: training instances are fixed by the run's seed and never evaluation ones."""

        def __init__(self, inner: gym.Env):
            super().__init__(inner)
            self.resets = 0

        def reset(self, *, seed: int | None = None, options: dict | None = None):
            if self.resets >= TRAIN_SEED_STRIDE:
                raise RuntimeError(f"more than {TRAIN_SEED_STRIDE} training episodes in one run")
            instance = cell.seed * TRAIN_SEED_STRIDE + self.resets
            self.resets += 1
            return self.env.reset(seed=instance, options=options)

    return TrainingInstances(env)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _PreservedGlobalRandomness:
    """Save and restore the global RNG states (python, numpy, torch) around a block: the
    evaluation episodes (whose env reseeds torch) must not change the training streams."""

    def __enter__(self):
        import torch

        self._states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        return self

    def __exit__(self, *exc):
        import torch

        py, nps, ts = self._states
        random.setstate(py)
        np.random.set_state(nps)
        torch.set_rng_state(ts)
        return False


def evaluation_episodes(env: Any, seeds: Sequence[int]) -> list[tuple[int, str | None]]:
    """The held-out episodes of an evaluation: each seed on each held-out instance of an instance
    env (paired across algorithms), or each seed alone on a plain env."""
    iset = getattr(env.unwrapped, "instance_set", None)
    instances: list[str | None] = list(iset.test_names) if iset is not None else [None]
    return [(int(seed), inst) for seed in seeds for inst in instances]


def _evaluate(env: Any, agent: Any, seeds: Sequence[int], num_phases: int, k: int) -> dict[str, np.ndarray]:
    """Deterministic episodes on the held-out instances (seeds, and held-out situations of an
    instance env; see :func:`evaluation_episodes`)."""
    from agents import run_episode

    episodes = evaluation_episodes(env, seeds)
    n = len(episodes)
    out = {"returns": np.zeros(n), "lengths": np.zeros(n, np.int64), "test": np.zeros(n), "test_loss": np.zeros(n),
           "probe": np.zeros(n), "actions": np.full((n, num_phases, k), np.nan, np.float32)}
    with _PreservedGlobalRandomness():
        for j, (seed, instance) in enumerate(episodes):
            options = {"instance": instance} if instance is not None else None
            episode = run_episode(env, agent, deterministic=True, seed=seed, options=options)
            test = env.unwrapped.distiller.evaluate("test")
            out["returns"][j] = episode["return"]
            out["lengths"][j] = episode["length"]
            out["test"][j] = test["main"]
            out["test_loss"][j] = test.get("loss", math.nan)
            out["probe"][j] = episode["final_probe_metric"]
            acts = np.asarray(episode["actions"], np.float32).reshape(-1, k)[:num_phases]
            out["actions"][j, :len(acts)] = acts
    return out


def run_cell(cell: Cell, threads: int = 1) -> dict[str, Any]:
    """Train and evaluate one cell (in this process, on ``threads`` torch threads).

    Returns:
        the cell's payload: ``"arrays"`` (what goes to ``evaluations.npz``) and ``"result"``
        (what goes to ``result.json``).
    """
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seed_everything(cell.seed)
        return _run_cell(cell, threads)
    finally:
        torch.set_num_threads(previous_threads)


def _run_cell(cell: Cell, threads: int) -> dict[str, Any]:
    import gymnasium as gym

    import kd_env  # noqa: F401 - registers the ids
    from agents import make_agent
    from kd_env.data import main_metric_name

    start = time.perf_counter()
    s = cell.settings
    make_kwargs = {**s.env_kwargs, "action_mode": s.action_mode}
    train_env = _training_instances_wrapper(gym.make(s.env_id, **make_kwargs), cell)
    eval_env = gym.make(s.env_id, **make_kwargs)
    try:
        base = eval_env.unwrapped
        num_phases = int(base.config.num_phases)
        knowledge = list(base.knowledge_names)
        k = len(knowledge)
        agent = make_agent(s.algo, train_env, seed=cell.seed, **s.hyperparams)
        eval_seeds = cell.eval_seeds()
        eval_pairs = evaluation_episodes(eval_env, eval_seeds)
        timesteps: list[int] = []
        episodes_at: list[int] = []
        evaluations: list[dict[str, np.ndarray]] = []
        train_returns: list[float] = []
        progress = {"episodes": 0, "steps": 0, "overrun": 0, "eval_seconds": 0.0}

        def evaluate_now() -> None:
            t0 = time.perf_counter()
            evaluations.append(_evaluate(eval_env, agent, eval_seeds, num_phases, k))
            timesteps.append(progress["steps"])
            episodes_at.append(progress["episodes"])
            progress["eval_seconds"] += time.perf_counter() - t0

        def on_episode(_agent: Any, record: dict[str, Any]) -> bool:
            if progress["episodes"] >= s.episodes:
                # An on-policy SB3 rollout (PPO: 4 episodes) ran past the budget: stop it here,
                # untrained.  Stopping at the budget itself would also drop the update of a
                # rollout that ends exactly there.
                progress["overrun"] += 1
                return False
            progress["episodes"] += 1
            progress["steps"] += int(record.get("length", num_phases))
            train_returns.append(float(record.get("return", math.nan)))
            if progress["episodes"] < s.episodes and progress["episodes"] % cell.eval_every == 0:
                evaluate_now()
            return True

        train_start = time.perf_counter()
        if s.episodes > 0:
            agent.learn(train_env, total_episodes=s.episodes, callback=on_episode)
            if progress["episodes"] != s.episodes:
                raise RuntimeError(f"{cell.label()}: trained {progress['episodes']} episodes, budget {s.episodes}")
        train_seconds = time.perf_counter() - train_start - progress["eval_seconds"]
        evaluate_now()
        metric_name = main_metric_name(base.distiller.task)
        updates = _agent_updates(agent)
    finally:
        train_env.close()
        eval_env.close()

    final = evaluations[-1]
    results = np.stack([e["returns"] for e in evaluations])
    arrays = {
        "timesteps": np.asarray(timesteps, np.int64),
        "results": results,
        "ep_lengths": np.stack([e["lengths"] for e in evaluations]),
        "episodes": np.asarray(episodes_at, np.int64),
        "test_metrics": np.stack([e["test"] for e in evaluations]),
        "test_losses": np.stack([e["test_loss"] for e in evaluations]),
        "probe_metrics": np.stack([e["probe"] for e in evaluations]),
        "final_actions": final["actions"],
        "train_returns": np.asarray(train_returns, np.float64),
        "eval_seeds": np.asarray(eval_seeds, np.int64),
        "eval_instances": np.asarray([str(i) for _, i in eval_pairs]),
    }
    selection = np.nanmean(final["actions"].reshape(-1, k), axis=0)
    result = {
        **cell.describe(),
        "fingerprint": cell.fingerprint(),
        "algo": cell.algo, "env_id": cell.env_id,
        "metric_name": metric_name,
        "knowledge": knowledge,
        "num_phases": num_phases,
        "train_episodes": progress["episodes"],
        "train_steps": progress["steps"],
        "overrun_episodes": progress["overrun"],
        "agent_updates": updates,
        "test_metric": float(final["test"].mean()),
        "return": float(final["returns"].mean()),
        "probe_metric": float(final["probe"].mean()),
        "selection": {name: float(v) for name, v in zip(knowledge, selection)},
        "train_seeds": [cell.seed * TRAIN_SEED_STRIDE, cell.seed * TRAIN_SEED_STRIDE + progress["episodes"] - 1]
        if progress["episodes"] else [],
        "eval_seeds": list(eval_seeds),
        "threads": threads,
        "seconds": {"train": train_seconds, "eval": progress["eval_seconds"],
                    "total": time.perf_counter() - start},
    }
    return {"arrays": arrays, "result": result}


def _agent_updates(agent: Any) -> int | None:
    """Gradient updates the agent made (ours: ``updates_done``; SB3: ``_n_updates``), if known."""
    for owner, name in ((agent, "updates_done"), (getattr(agent, "model", None), "_n_updates")):
        value = getattr(owner, name, None)
        if isinstance(value, (int, np.integer)):
            return int(value)
    return None


# ---- cell files -----------------------------------------------------------------------------


def write_cell(out_dir: Path, cell: Cell, payload: dict[str, Any]) -> None:
    """``evaluations.npz`` then ``result.json`` (the finished marker), each atomically."""
    folder = out_dir / cell.relative_dir()
    buf = io.BytesIO()
    np.savez(buf, **payload["arrays"])
    atomic_write_bytes(folder / EVALUATIONS_FILE, buf.getvalue())
    atomic_write_json(folder / RESULT_FILE, payload["result"])


def read_cell(out_dir: Path, cell: Cell) -> dict[str, Any] | None:
    """The finished cell's payload, or ``None`` when it is missing, unreadable or was made with
    other settings."""
    folder = out_dir / cell.relative_dir()
    try:
        result = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
        with np.load(folder / EVALUATIONS_FILE) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, KeyError):
        return None
    if not isinstance(result, dict) or result.get("fingerprint") != cell.fingerprint():
        return None
    return {"arrays": arrays, "result": result}


# ============================================================================================
# Executors
# ============================================================================================


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def _run_cell_catching(cell: Cell, threads: int) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return run_cell(cell, threads), None
    except Exception:  # noqa: BLE001 - reported by the driver, the other cells go on
        return None, traceback.format_exc()


OnDone = Callable[[Cell, "dict[str, Any] | None", "str | None"], None]


def execute(cells: Sequence[Cell], on_done: OnDone, executor: str = "local", workers: int = 1, threads: int = 1,
            address: str | None = None) -> None:
    """Run ``cells``; ``on_done(cell, payload, error)`` is called in this process as each ends."""
    if not cells:
        return
    if executor == "ray":
        _execute_ray(cells, on_done, workers, threads, address)
    elif workers <= 1:
        for cell in cells:
            on_done(cell, *_run_cell_catching(cell, threads))
    else:
        _execute_processes(cells, on_done, workers, threads)


def _execute_processes(cells: Sequence[Cell], on_done: OnDone, workers: int, threads: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(cells)), mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_run_cell_catching, cell, threads): cell for cell in cells}
        try:
            for future in as_completed(futures):
                cell = futures[future]
                try:
                    payload, error = future.result()
                except Exception:  # noqa: BLE001 - a worker that died (killed, out of memory)
                    payload, error = None, traceback.format_exc()
                on_done(cell, payload, error)
        except BaseException:  # Ctrl-C or a failing on_done: drop the queued cells, do not wait for them
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _ray_env_vars() -> dict[str, str]:
    keys = ("KD_ENV_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "HF_HOME")
    return {k: os.environ[k] for k in keys if k in os.environ}


def _execute_ray(cells: Sequence[Cell], on_done: OnDone, workers: int, threads: int, address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise RuntimeError("--executor ray needs the optional 'ray' package: pip install 'ray>=2.9' "
                           "(or use the default local executor with --workers N)") from None
    started_here = not ray.is_initialized()
    if started_here:
        init: dict[str, Any] = {"runtime_env": {"env_vars": _ray_env_vars()}, "include_dashboard": False,
                                "log_to_driver": False}
        if address:
            init["address"] = address
        else:
            init["num_cpus"] = max(1, workers) * threads
        ray.init(**init)
    try:
        remote = ray.remote(num_cpus=threads, max_retries=0)(_run_cell_catching)
        refs = {remote.remote(cell, threads): cell for cell in cells}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    payload, error = ray.get(ref)
                except Exception:  # noqa: BLE001 - a task or worker failure
                    payload, error = None, traceback.format_exc()
                on_done(refs[ref], payload, error)
    finally:
        if started_here:
            ray.shutdown()


# ============================================================================================
# The benchmark
# ============================================================================================


@dataclass
class BenchmarkConfig:
    """Everything one invocation needs (the CLI builds it; tests build it directly)."""

    name: str = "default"
    """run folder: ``<out>/benchmark-<name>``"""
    algos: list[str] = field(default_factory=lambda: list(DEFAULT_ALGOS))
    envs: list[str] = field(default_factory=lambda: list(DEFAULT_ENVS))
    seeds: list[int] = field(default_factory=lambda: list(range(DEFAULT_SEEDS)))
    episodes: int | None = None
    """training episodes of every learner (``None``: each YAML's ``episodes``)"""
    eval_every: int = DEFAULT_EVAL_EVERY
    """evaluate the learners every this many training episodes (and at the end)"""
    eval_episodes: int = DEFAULT_EVAL_EPISODES
    """held-out episodes per evaluation"""
    overrides: list[str] = field(default_factory=list)
    """``ALGO.KEY=VALUE`` settings"""
    workers: int = DEFAULT_WORKERS
    threads: int = 1
    """torch threads per cell"""
    executor: str = "local"
    address: str | None = None
    out: str = "runs"
    config_dir: str = str(CONFIG_DIR)
    fresh: bool = False
    """rerun finished cells too"""
    plots: bool = True
    baseline: str = "vanilla_kd"
    """the fixed policy every algorithm is compared with, paired by seed (same held-out episodes);
    vanilla KD is the best single fixed mask on DigitsKD-Instances-v0's train instances (dev)"""
    bootstrap_reps: int = 2000
    confidence: float = 0.95
    verbose: bool = True

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / f"benchmark-{self.name}"


@dataclass
class BenchmarkResult:
    run_dir: Path
    cells: list[Cell]
    executed: list[Cell]
    """cells run by this invocation"""
    skipped: list[Cell]
    """finished cells read back"""
    failed: dict[str, str]
    """cell label -> traceback"""
    rows: list[dict[str, Any]]
    """summary rows"""
    wall_seconds: float


def run_benchmark(config: BenchmarkConfig) -> BenchmarkResult:
    """Build and check the grid, run the unfinished cells, summarise."""
    start = time.perf_counter()
    log = print if config.verbose else (lambda *_a, **_k: None)
    if config.executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {list(EXECUTORS)}, got {config.executor!r}")
    if not _is_int(config.workers) or config.workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {config.workers!r}")
    if not _is_int(config.threads) or config.threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {config.threads!r}")
    if not config.name or _slug(config.name) != config.name:
        raise ConfigError(f"name must be non-empty and use only letters, digits, '-', '_' and '.', got {config.name!r}")
    cells = build_grid(config.algos, config.envs, config.seeds, config.eval_every, config.eval_episodes,
                       config.overrides, config.episodes, config.config_dir)
    if config.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--executor ray needs the optional 'ray' package: pip install 'ray>=2.9'") from None
    run_dir = config.run_dir
    payloads: dict[Cell, dict[str, Any]] = {}
    todo: list[Cell] = []
    for cell in cells:
        done = None if config.fresh else read_cell(run_dir, cell)
        if done is not None:
            payloads[cell] = done
        else:
            if (run_dir / cell.relative_dir() / RESULT_FILE).exists() and not config.fresh:
                log(f"rerunning {cell.label()}: its settings changed since it was run")
            todo.append(cell)
    skipped = [c for c in cells if c in payloads]
    log(f"benchmark {run_dir}: {len(cells)} cells ({len(config.algos)} algorithms x {len(config.envs)} envs x "
        f"{len(config.seeds)} seeds), {len(skipped)} already finished, {len(todo)} to run "
        f"({config.executor} executor, {config.workers} worker(s), {config.threads} thread(s) each)")
    if todo:
        check_grid(todo, log=log)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "benchmark.json", {
        "algos": config.algos, "envs": config.envs, "seeds": config.seeds, "episodes": config.episodes,
        "eval_every": config.eval_every, "eval_episodes": config.eval_episodes, "overrides": config.overrides,
        "cells": {str(c.relative_dir()): c.describe() for c in cells}})
    failed: dict[str, str] = {}
    executed: list[Cell] = []
    counter = {"done": 0}

    def on_done(cell: Cell, payload: dict[str, Any] | None, error: str | None) -> None:
        counter["done"] += 1
        prefix = f"[{counter['done']}/{len(todo)}] {cell.label()}"
        if payload is None:
            failed[cell.label()] = error or "unknown error"
            log(f"{prefix}: FAILED\n{error}")
            return
        write_cell(run_dir, cell, payload)
        payloads[cell] = payload
        executed.append(cell)
        r = payload["result"]
        log(f"{prefix}: test {r['metric_name']} {r['test_metric']:.4f}, return {r['return']:+.4f} "
            f"({r['seconds']['total']:.1f} s)")

    execute(todo, on_done, config.executor, config.workers, config.threads, config.address)
    finished = [c for c in cells if c in payloads]
    rows = summarize(run_dir, finished, payloads, config) if finished else []
    wall = time.perf_counter() - start
    result = BenchmarkResult(run_dir=run_dir, cells=cells, executed=executed, skipped=skipped, failed=failed,
                             rows=rows, wall_seconds=wall)
    if rows:
        log("\n" + (run_dir / "summary.md").read_text(encoding="utf-8"))
    log(f"benchmark finished in {wall:.1f} s ({wall / 60:.1f} min) wall: {len(executed)} cells run, "
        f"{len(skipped)} read back, {len(failed)} failed; results in {run_dir}")
    return result


# ---- summary --------------------------------------------------------------------------------

RUN_COLUMNS = ["env", "algorithm", "seed", "action_mode", "train_episodes", "train_steps", "metric_name",
               "test_metric", "return", "probe_metric", "train_seconds", "eval_seconds", "total_seconds"]
SUMMARY_COLUMNS = [
    "env", "algorithm", "action_mode", "runs", "train_episodes", "metric_name",
    "test_mean", "test_mean_low", "test_mean_high", "test_iqm", "test_iqm_low", "test_iqm_high",
    "return_mean", "return_mean_low", "return_mean_high", "return_iqm", "return_iqm_low", "return_iqm_high",
    "poi_vs_random_hard", "poi_low", "poi_high", "diff_vs_baseline", "diff_low", "diff_high", "diff_wins",
    "seconds_per_run",
]


def _interval(values: Sequence[float] | list[np.ndarray], statistic: str, config: BenchmarkConfig) -> tuple[float, float, float]:
    return stats.interval_estimate(values, statistic, config.confidence, config.bootstrap_reps, seed=0)


def summarize(run_dir: Path, cells: Sequence[Cell], payloads: dict[Cell, dict[str, Any]],
              config: BenchmarkConfig) -> list[dict[str, Any]]:
    """Write runs.csv, summary.csv, summary.md and the plots; return the summary rows."""
    by_env: dict[str, dict[str, list[Cell]]] = {}
    for cell in cells:
        by_env.setdefault(cell.env_id, {}).setdefault(cell.algo, []).append(cell)
    run_rows = []
    for cell in cells:
        r = payloads[cell]["result"]
        run_rows.append({"env": cell.env_id, "algorithm": cell.algo, "seed": cell.seed,
                         "action_mode": cell.settings.action_mode, "train_episodes": r["train_episodes"],
                         "train_steps": r["train_steps"], "metric_name": r["metric_name"],
                         "test_metric": r["test_metric"], "return": r["return"], "probe_metric": r["probe_metric"],
                         "train_seconds": r["seconds"]["train"], "eval_seconds": r["seconds"]["eval"],
                         "total_seconds": r["seconds"]["total"],
                         **{f"freq_{k}": r["selection"][k] for k in r["knowledge"]}})
    knowledge_columns = list(dict.fromkeys(k for row in run_rows for k in row if k.startswith("freq_")))
    write_csv(run_dir / "runs.csv", run_rows, RUN_COLUMNS + knowledge_columns)

    rows: list[dict[str, Any]] = []
    for env_id, algos in by_env.items():
        reference = algos.get(REFERENCE_ALGO)
        reference_scores = [payloads[c]["result"]["test_metric"] for c in reference] if reference else None
        for algo, algo_cells in algos.items():
            results = [payloads[c]["result"] for c in algo_cells]
            test = [r["test_metric"] for r in results]
            returns = [r["return"] for r in results]
            row: dict[str, Any] = {"env": env_id, "algorithm": algo, "action_mode": algo_cells[0].settings.action_mode,
                                   "runs": len(results), "train_episodes": algo_cells[0].settings.episodes,
                                   "metric_name": results[0]["metric_name"],
                                   "seconds_per_run": float(np.mean([r["seconds"]["total"] for r in results]))}
            for prefix, values in (("test", test), ("return", returns)):
                for statistic in ("mean", "iqm"):
                    point, low, high = _interval(values, statistic, config)
                    row.update({f"{prefix}_{statistic}": point, f"{prefix}_{statistic}_low": low,
                                f"{prefix}_{statistic}_high": high})
            if reference_scores is not None and algo != REFERENCE_ALGO:
                point, low, high = stats.poi_interval(test, reference_scores, config.confidence, config.bootstrap_reps)
                row.update({"poi_vs_random_hard": point, "poi_low": low, "poi_high": high})
            else:
                row.update({"poi_vs_random_hard": math.nan, "poi_low": math.nan, "poi_high": math.nan})
            row.update(_paired_with_baseline(algo, algo_cells, algos.get(config.baseline), payloads, config))
            rows.append(row)
    aggregate = _aggregate_rows(by_env, payloads, config) if len(by_env) > 1 else []
    write_csv(run_dir / "summary.csv", rows + aggregate, SUMMARY_COLUMNS)
    atomic_write_json(run_dir / "summary.json", json_safe(rows + aggregate))  # null where no interval
    payloads_by_algo = {env_id: {algo: [payloads[c] for c in algo_cells] for algo, algo_cells in algos.items()}
                        for env_id, algos in by_env.items()}
    atomic_write_text(run_dir / "summary.md", _summary_markdown(rows, aggregate, config, payloads_by_algo))
    if config.plots:
        _plots(run_dir, by_env, payloads)
    return rows + aggregate


def _paired_with_baseline(algo: str, cells: Sequence[Cell], baseline: Sequence[Cell] | None,
                          payloads: dict[Cell, dict[str, Any]], config: BenchmarkConfig) -> dict[str, Any]:
    """Mean over seeds of (algorithm - baseline) test metric with a t interval; a cell and the
    baseline's cell of the same seed are scored on the same held-out episodes, so they pair."""
    empty = {"diff_vs_baseline": math.nan, "diff_low": math.nan, "diff_high": math.nan, "diff_wins": math.nan}
    if baseline is None or algo == config.baseline:
        return empty
    mine = {c.seed: payloads[c]["result"]["test_metric"] for c in cells}
    theirs = {c.seed: payloads[c]["result"]["test_metric"] for c in baseline}
    d = paired_difference(mine, theirs, config.confidence)
    if d["n"] == 0:
        return empty
    return {"diff_vs_baseline": d["mean"], "diff_low": d["low"], "diff_high": d["high"], "diff_wins": d["wins"]}


def _aggregate_rows(by_env: dict[str, dict[str, list[Cell]]], payloads: dict[Cell, dict[str, Any]],
                    config: BenchmarkConfig) -> list[dict[str, Any]]:
    """Test metric over all envs (stratified by env) for the algorithms run on every env."""
    common = [a for a in next(iter(by_env.values())) if all(a in algos for algos in by_env.values())]
    rows = []
    for algo in common:
        tasks = [np.asarray([payloads[c]["result"]["test_metric"] for c in algos[algo]]) for algos in by_env.values()]
        row: dict[str, Any] = {"env": "all", "algorithm": algo, "action_mode": "", "runs": sum(t.size for t in tasks),
                               "train_episodes": "", "metric_name": "main"}
        for statistic in ("mean", "iqm"):
            point, low, high = _interval(tasks, statistic, config)
            row.update({f"test_{statistic}": point, f"test_{statistic}_low": low, f"test_{statistic}_high": high})
        if REFERENCE_ALGO in common and algo != REFERENCE_ALGO:
            ref = [np.asarray([payloads[c]["result"]["test_metric"] for c in algos[REFERENCE_ALGO]])
                   for algos in by_env.values()]
            point, low, high = stats.poi_interval(tasks, ref, config.confidence, config.bootstrap_reps)
            row.update({"poi_vs_random_hard": point, "poi_low": low, "poi_high": high})
        rows.append(row)
    return rows


def _fmt(row: dict[str, Any], key: str, digits: int = 3) -> str:
    """``point [low, high]`` of ``key`` (its bounds are ``key_low``/``key_high``; for the
    probability of improvement ``poi_low``/``poi_high``), or a dash when absent."""
    low_key, high_key = {"poi": ("poi_low", "poi_high"), "diff": ("diff_low", "diff_high")}.get(
        key.split("_")[0], (f"{key}_low", f"{key}_high"))
    value = row.get(key)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "—"
    return stats.format_interval(value, row[low_key], row[high_key], digits)


def _per_instance_markdown(rows: list[dict[str, Any]],
                           payloads_by_algo: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    """For instance envs: each algorithm's final test metric on each held-out situation (mean over
    its runs' evaluation episodes there)."""
    lines: list[str] = []
    for env_id, algos in payloads_by_algo.items():
        per: dict[str, dict[str, float]] = {}
        for algo, payloads in algos.items():
            values: dict[str, list[float]] = {}
            for payload in payloads:
                arrays = payload["arrays"]
                if "eval_instances" not in arrays or not len(arrays["eval_instances"]):
                    continue
                for inst, metric in zip(arrays["eval_instances"], arrays["test_metrics"][-1]):
                    if str(inst) != "None":
                        values.setdefault(str(inst), []).append(float(metric))
            if values:
                per[algo] = {inst: float(np.mean(v)) for inst, v in values.items()}
        if not per:
            continue
        instances = sorted({i for v in per.values() for i in v})
        order = [r["algorithm"] for r in sorted((r for r in rows if r["env"] == env_id), key=lambda r: -r["test_iqm"])]
        lines += [f"### {env_id}: test metric per held-out instance (mean over runs and evaluation seeds)", ""]
        lines.append(markdown_table(["algorithm", *instances],
                                    [[a, *(f"{per[a].get(i, math.nan):.3f}" for i in instances)]
                                     for a in order if a in per]))
    return lines


def _summary_markdown(rows: list[dict[str, Any]], aggregate: list[dict[str, Any]], config: BenchmarkConfig,
                      payloads_by_algo: dict[str, dict[str, list[dict[str, Any]]]] | None = None) -> str:
    payloads_by_algo = payloads_by_algo or {}
    pct = f"{config.confidence:.0%}"
    lines = [f"# Benchmark `{config.name}`", "",
             f"Held-out evaluation of the final policy (deterministic; {config.eval_episodes} evaluation instance(s) "
             f"per run, unseen in training). Point estimates with {pct} stratified-bootstrap percentile CIs "
             f"({config.bootstrap_reps} resamples) over runs (seeds); IQM = interquartile mean. "
             f"P(> {REFERENCE_ALGO}) = probability that a run of the algorithm has a higher test metric than a "
             f"run of {REFERENCE_ALGO} (ties count half).", ""]
    lines += [f"Paired diff = mean over seeds of (algorithm - {config.baseline}) test metric, each seed's runs "
              f"scored on the same held-out episodes, with a {pct} t interval over seeds; wins = seeds won.", ""]
    header = ["algorithm", "mode", "runs", "train eps", "test mean", "test IQM", f"paired diff vs {config.baseline}",
              "wins", "return mean", "return IQM", f"P(> {REFERENCE_ALGO})", "s/run"]
    envs = list(dict.fromkeys(r["env"] for r in rows))
    for env_id in envs:
        env_rows = sorted((r for r in rows if r["env"] == env_id), key=lambda r: -r["test_iqm"])
        metric = env_rows[0]["metric_name"]
        lines += [f"## {env_id} (test metric: {metric})", ""]
        table = [[r["algorithm"], r["action_mode"], r["runs"], r["train_episodes"], _fmt(r, "test_mean"),
                  _fmt(r, "test_iqm"), _fmt(r, "diff_vs_baseline", 4),
                  "—" if not math.isfinite(r["diff_wins"]) else f"{int(r['diff_wins'])}/{r['runs']}",
                  _fmt(r, "return_mean"), _fmt(r, "return_iqm"), _fmt(r, "poi_vs_random_hard", 2),
                  f"{r['seconds_per_run']:.1f}"] for r in env_rows]
        lines.append(markdown_table(header, table))
    lines += _per_instance_markdown(rows, payloads_by_algo)
    if aggregate:
        lines += ["## All envs (test metric, stratified by env)", ""]
        table = [[r["algorithm"], r["runs"], _fmt(r, "test_mean"), _fmt(r, "test_iqm"), _fmt(r, "poi_vs_random_hard", 2)]
                 for r in sorted(aggregate, key=lambda r: -r["test_iqm"])]
        lines.append(markdown_table(["algorithm", "runs", "test mean", "test IQM", f"P(> {REFERENCE_ALGO})"], table))
    return "\n".join(lines)


def _plots(run_dir: Path, by_env: dict[str, dict[str, list[Cell]]], payloads: dict[Cell, dict[str, Any]]) -> None:
    folder = run_dir / "plots"
    for env_id, algos in by_env.items():
        slug = env_slug(env_id)
        curves: dict[str, dict[str, Any]] = {}
        frequencies: dict[str, np.ndarray] = {}
        knowledge: list[str] = []
        for algo, algo_cells in algos.items():
            arrays = [payloads[c]["arrays"] for c in algo_cells]
            knowledge = payloads[algo_cells[0]]["result"]["knowledge"]
            curves[algo] = {
                "timesteps": arrays[0]["timesteps"],
                "return": [a["results"].mean(axis=1) for a in arrays if len(a["timesteps"]) == len(arrays[0]["timesteps"])],
                "test": [a["test_metrics"].mean(axis=1) for a in arrays if len(a["timesteps"]) == len(arrays[0]["timesteps"])],
                "learns": algo_cells[0].learns,
            }
            actions = np.concatenate([a["final_actions"] for a in arrays])  # (runs * episodes, phases, K)
            heat = np.nanmean(actions, axis=0).T  # (K, phases)
            frequencies[algo] = np.nanmean(heat, axis=1)
            plot_heatmap(np.nan_to_num(heat), knowledge, folder / f"{slug}-selection-{_slug(algo)}.png",
                         f"{algo} on {env_id}: final policy's knowledge selection per phase "
                         f"({len(algo_cells)} seeds x {actions.shape[0] // len(algo_cells)} held-out episodes)")
        plot_learning_curves(curves, folder / f"{slug}-learning_curves.png", f"{env_id}: held-out evaluation")
        plot_selection_bars(frequencies, knowledge, folder / f"{slug}-selection.png",
                            f"{env_id}: how often each knowledge type is selected (final policy, held-out)")


# ============================================================================================
# CLI
# ============================================================================================


def _csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> BenchmarkConfig:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark",
                                description="Benchmark RL algorithms on the knowledge-selection envs "
                                            "(algorithms x seeds x envs; resumable).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--name", default="default", help="run folder: <out>/benchmark-<name>")
    p.add_argument("--algos", type=_csv_list, default=list(DEFAULT_ALGOS), help="comma-separated agent names")
    p.add_argument("--envs", type=_csv_list, default=list(DEFAULT_ENVS), help="comma-separated env ids")
    p.add_argument("--seeds", type=parse_seeds, default=list(range(DEFAULT_SEEDS)),
                   help=f"training {SEEDS_HELP}")
    p.add_argument("--episodes", type=int, default=None,
                   help="training episodes of every learner (default: each config's 'episodes')")
    p.add_argument("--eval-every", type=int, default=DEFAULT_EVAL_EVERY, help="evaluate every N training episodes")
    p.add_argument("--eval-episodes", type=int, default=DEFAULT_EVAL_EPISODES,
                   help="held-out episodes per evaluation")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="ALGO.KEY=VALUE",
                   help="override a config value, e.g. ppo.learning_rate=1.0e-3, ac.episodes=30, "
                        "sac.env_kwargs.reward=dev_metric_delta (repeatable)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="parallel processes (spawned)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--out", default="runs", help="parent folder of the run folder")
    p.add_argument("--baseline", default="vanilla_kd",
                   help="fixed policy the summary compares every algorithm with, paired by seed (default %(default)s)")
    p.add_argument("--config-dir", default=str(CONFIG_DIR), help="folder of <algo>.yml configs")
    p.add_argument("--fresh", action="store_true", help="rerun finished cells too")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.add_argument("--bootstrap-reps", type=int, default=2000)
    a = p.parse_args(argv)
    return BenchmarkConfig(name=a.name, algos=a.algos, envs=a.envs, seeds=a.seeds, episodes=a.episodes,
                           eval_every=a.eval_every, eval_episodes=a.eval_episodes, overrides=a.overrides,
                           workers=a.workers, threads=a.threads, executor=a.executor, address=a.address, out=a.out,
                           config_dir=a.config_dir, fresh=a.fresh, plots=a.plots, bootstrap_reps=a.bootstrap_reps,
                           baseline=a.baseline)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        result = run_benchmark(config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.failed:
        print(f"{len(result.failed)} cell(s) failed: {sorted(result.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
