"""The benchmark's grid: the cells (algorithm x env x seed, each algorithm's settings from
:mod:`~.settings`), their seeds and folders, and the invocation's :class:`BenchmarkConfig`.
Everything wrong with a grid is a :class:`~.settings.ConfigError`, raised before any cell runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from experiments.cli import SEEDS_FORMS, parse_seeds
from experiments.executors import EXECUTORS, check_executor
from kd_env.checks import matches

from .settings import (
    CONFIG_DIR,
    AlgoSettings,
    ConfigError,
    load_algo_config,
    parse_override,
    resolve_settings,
)

#: the default grid: the instance env, where the right knowledge differs between situations (the
#: headroom tool measured +7.6 points for an instance-aware choice there, about 0 on DigitsKD-v0)
DEFAULT_ALGOS = ("ac", "ac_q", "ppo", "dqn", "vanilla_kd", "dynamic_kd", "random_hard")
DEFAULT_ENVS = ("kd_env/DigitsKD-Instances-v0",)
DEFAULT_SEEDS = 5
DEFAULT_EVAL_EVERY = 100
DEFAULT_EVAL_EPISODES = 3
DEFAULT_WORKERS = 2
REFERENCE_ALGO = "random_hard"
#: training resets of seed s use seeds s * TRAIN_SEED_STRIDE + k (k < TRAIN_SEED_STRIDE)
TRAIN_SEED_STRIDE = 100_000
#: evaluation resets of seed s use seeds EVAL_SEED_BASE + s * MAX_EVAL_EPISODES + j
EVAL_SEED_BASE = 1_000_000_000
#: selection evaluations (``eval_split="dev"``) use SELECTION_SEED_BASE + s * MAX_EVAL_EPISODES + j
#: instead: students never met in training nor in the held-out evaluation
SELECTION_SEED_BASE = 2_000_000_000
#: what a cell's evaluation scores: ``test`` (the held-out instances' test split, for reporting);
#: for choosing settings before a test run, ``dev`` (the *train* instances' dev split: how well a
#: policy does where it learnt) or ``held-out-dev`` (the held-out instances' dev split: how well it
#: carries over to situations it never met; with the ``digits-validation`` instance set those are
#: train instances set aside, so that no test instance is touched)
EVAL_SPLITS = ("test", "dev", "held-out-dev")
MAX_EVAL_EPISODES = 1000
MAX_SEED = 9_999
#: bump when a cell's outputs change meaning (finished cells of another format are rerun)
CELL_FORMAT = 2
RESULT_FILE = "result.json"
EVALUATIONS_FILE = "evaluations.npz"


@dataclass(frozen=True)
class Cell:
    """One run of the grid: an algorithm's settings on an env, with one seed."""

    settings: AlgoSettings
    seed: int
    eval_every: int
    eval_episodes: int
    eval_split: str = "test"

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

    def describe(self, teacher: str | None = None) -> dict[str, Any]:
        """The JSON-able definition of the cell (what its numbers depend on).

        Args:
            teacher: the identity of the teachers the cell was run with (:func:`teachers_key`);
                ``None`` leaves it out (the grid's description, and cells finished before teacher
                identities were recorded, whose fingerprints stay what they were).
        """
        out = {"format": CELL_FORMAT, "settings": self.settings.to_dict(), "seed": self.seed,
               "eval_every": self.eval_every, "eval_episodes": self.eval_episodes}
        if self.eval_split != "test":  # absent for test, so that runs made before it keep their fingerprints
            out["eval_split"] = self.eval_split
        if teacher is not None:
            out["teacher"] = teacher
        return out

    def fingerprint(self, teacher: str | None = None) -> str:
        """A short hash of :meth:`describe` (with ``teacher``: a cell run with other teacher
        weights has another fingerprint, so its results are never mixed with this one's)."""
        text = json.dumps(self.describe(teacher), sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def train_seeds(self, count: int) -> list[int]:
        return [self.seed * TRAIN_SEED_STRIDE + k for k in range(count)]

    def eval_seeds(self) -> list[int]:
        base = EVAL_SEED_BASE if self.eval_split == "test" else SELECTION_SEED_BASE
        return [base + self.seed * MAX_EVAL_EPISODES + j for j in range(self.eval_episodes)]

    def label(self) -> str:
        return f"{self.algo} {self.env_id} seed {self.seed}"


def teachers_key(teachers: dict[str, str]) -> str | None:
    """The identity of the teachers a cell used (``{teacher folder: weights_id}``, see
    :func:`kd_env.build.weights_id`): a short hash, or ``None`` when none is known."""
    if not teachers:
        return None
    return hashlib.sha256(json.dumps(teachers, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def env_slug(env_id: str) -> str:
    """``kd_env/DigitsKD-v0`` -> ``kd_env__DigitsKD-v0``."""
    return _slug(env_id.replace("/", "__"))


def build_grid(algos: Sequence[str], envs: Sequence[str], seeds: Sequence[int], eval_every: int, eval_episodes: int,
               overrides: Sequence[str] = (), episodes: int | None = None,
               config_dir: str | Path = CONFIG_DIR, eval_split: str = "test") -> list[Cell]:
    """Every cell of the grid, algorithm-major, from the YAML configs and the overrides: the
    values checked (:func:`check_grid_values`), then :func:`grid_cells`.

    Raises:
        ConfigError: anything wrong with the names, seeds, budget, configs or overrides.
    """
    check_grid_values(algos, envs, seeds, eval_every, eval_episodes, episodes, eval_split)
    return grid_cells(algos, envs, seeds, eval_every, eval_episodes, overrides, episodes, config_dir, eval_split)


def check_grid_values(algos: Sequence[str], envs: Sequence[str], seeds: Sequence[int], eval_every: int,
                      eval_episodes: int, episodes: int | None = None, eval_split: str = "test") -> None:
    """The grid's values on their own (no registry, no file): lists non-empty and distinct,
    seeds, evaluation and budget in range.

    Raises:
        ConfigError: naming the bad value.
    """
    algos, envs, seeds = list(algos), list(envs), list(seeds)
    if not algos:
        raise ConfigError("no algorithms given")
    if not envs:
        raise ConfigError("no envs given")
    for name, values in (("algorithms", algos), ("envs", envs), ("seeds", seeds)):
        if len(set(values)) != len(values):
            raise ConfigError(f"{name} must be distinct, got {values}")
    if not seeds or not all(matches(s, int) and 0 <= s <= MAX_SEED for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers in [0, {MAX_SEED}], got {seeds}")
    if not matches(eval_every, int) or eval_every < 1:
        raise ConfigError(f"eval_every must be a positive integer, got {eval_every!r}")
    if not matches(eval_episodes, int) or not 1 <= eval_episodes <= MAX_EVAL_EPISODES:
        raise ConfigError(f"eval_episodes must be an integer in [1, {MAX_EVAL_EPISODES}], got {eval_episodes!r}")
    if eval_split not in EVAL_SPLITS:
        raise ConfigError(f"eval_split must be one of {list(EVAL_SPLITS)}, got {eval_split!r}")
    if episodes is not None and (not matches(episodes, int) or not 0 < episodes < TRAIN_SEED_STRIDE):
        raise ConfigError(f"episodes must be an integer in [1, {TRAIN_SEED_STRIDE - 1}], got {episodes!r}")


def grid_cells(algos: Sequence[str], envs: Sequence[str], seeds: Sequence[int], eval_every: int, eval_episodes: int,
               overrides: Sequence[str] = (), episodes: int | None = None,
               config_dir: str | Path = CONFIG_DIR, eval_split: str = "test") -> list[Cell]:
    """The cells of values :func:`check_grid_values` passed: the env ids and algorithm names
    against the registries (a plug-in's too), the overrides, each algorithm's YAML read.

    Raises:
        ConfigError: an unknown name, a bad override or config file.
    """
    algos, envs, seeds = list(algos), list(envs), list(seeds)
    _check_env_ids(envs)
    _check_algo_names(algos)
    parsed: dict[str, list[tuple[list[str], Any]]] = {a: [] for a in algos}
    for text in overrides:
        algo, path, value = parse_override(text, algos)
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
                cells.append(Cell(settings=settings, seed=seed, eval_every=eval_every, eval_episodes=eval_episodes,
                                  eval_split=eval_split))
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


@dataclass
class BenchmarkConfig:
    """Everything one invocation needs.  The command line's flags are its fields
    (:func:`experiments.flags.add_config_flags`: name, type, default and help from each field and
    its docstring); tests build it directly.  :meth:`validate` checks the values once, before
    any file is read."""

    name: str = "default"
    """run folder: ``<out>/benchmark-<name>``"""
    algos: list[str] = field(default_factory=lambda: list(DEFAULT_ALGOS))
    """comma-separated agent names: any registered agent (a --plugin's too), fixed:<bits>, schedule:<file>; one
    with no <algo>.yml in --config-dir acts on a mask for 0 episodes (evaluated, never trained; --set
    ALGO.episodes=N trains it)"""
    envs: list[str] = field(default_factory=lambda: list(DEFAULT_ENVS))
    """comma-separated env ids"""
    seeds: list[int] = field(default_factory=lambda: list(range(DEFAULT_SEEDS)),
                             metadata={"type": parse_seeds, "metavar": "SEEDS", "note": SEEDS_FORMS})
    """training seeds"""
    episodes: int | None = None
    """training episodes of every learner (default: each config's ``episodes``)"""
    eval_every: int = DEFAULT_EVAL_EVERY
    """evaluate the learners every this many training episodes (and at the end)"""
    eval_episodes: int = DEFAULT_EVAL_EPISODES
    """held-out episodes per evaluation"""
    eval_split: str = field(default="test", metadata={"choices": EVAL_SPLITS})
    """what evaluations score: test = the held-out instances' test split (report this); dev = the train
    instances' dev split, held-out-dev = the held-out instances' dev split, both on selection seeds (choose
    settings on these, e.g. with --set ac.env_kwargs.instances=digits-validation, then run once on test)"""
    overrides: list[str] = field(default_factory=list,
                                 metadata={"flag": "--set", "repeat": True, "metavar": "ALGO.KEY=VALUE"})
    """override a config value, e.g. ppo.learning_rate=1.0e-3, ac.episodes=30,
    sac.env_kwargs.reward=dev_metric_delta (repeatable)"""
    workers: int = DEFAULT_WORKERS
    """parallel processes (spawned; Ray tasks at a time with --executor ray)"""
    threads: int = 1
    """torch threads per cell"""
    executor: str = field(default="local", metadata={"choices": EXECUTORS})
    """where the cells run: local (this process, or --workers spawned processes) or ray (a local Ray, or the
    cluster at --address)"""
    address: str | None = None
    """Ray cluster address (default: start a local Ray)"""
    out: str = "runs"
    """parent folder of the run folder"""
    config_dir: str = str(CONFIG_DIR)
    """folder of <algo>.yml configs"""
    fresh: bool = False
    """rerun finished cells too"""
    plots: bool = True
    """draw the plots (--no-plots: the tables only)"""
    tensorboard: bool = field(default=True, metadata={"flag": None})  # --no-tensorboard: experiments.cli's
    """write every cell's training episodes and evaluations to TensorBoard, ``<run>/tb/<env>/<algo>_<seed>/``"""
    baseline: str = "vanilla_kd"
    """fixed policy the summary compares every algorithm with, paired by seed (same held-out episodes); vanilla KD
    is the best single fixed mask on DigitsKD-Instances-v0's train instances (dev)"""
    bootstrap_reps: int = 2000
    """bootstrap resamples of the summary's confidence intervals"""
    confidence: float = 0.95
    """level of the summary's confidence intervals"""
    verbose: bool = field(default=True, metadata={"flag": None})  # -q/-v: experiments.logs'
    """log the progress lines (through the ``experiments`` logger, at INFO: ``-q`` hides them)"""
    plugins: list[str] = field(default_factory=list, metadata={"flag": None})  # --plugin: experiments.cli's
    """plug-in files imported first, here and in every worker (``--plugin``)"""

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / f"benchmark-{self.name}"

    def validate(self) -> None:
        """Check every value that needs no registry and no file: the name, the executor and its
        workers and threads, the grid's values (:func:`check_grid_values`), the summary's
        statistics.  The names (algorithms, env ids, baseline) are checked against the
        registries after the plug-ins load, then the YAML configs are read
        (:func:`~.runner.run_validated`).

        Raises:
            ConfigError: naming the bad value.
        """
        if not self.name or _slug(self.name) != self.name:
            raise ConfigError(f"name must be non-empty and use only letters, digits, '-', '_' and '.', got {self.name!r}")
        try:
            check_executor(self.executor, self.workers, self.threads)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        check_grid_values(self.algos, self.envs, self.seeds, self.eval_every, self.eval_episodes, self.episodes,
                          self.eval_split)
        if not matches(self.bootstrap_reps, int) or self.bootstrap_reps < 1:
            raise ConfigError(f"bootstrap_reps must be a positive integer, got {self.bootstrap_reps!r}")
        if not matches(self.confidence, float) or not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be a number in (0, 1), got {self.confidence!r}")
