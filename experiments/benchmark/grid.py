"""The benchmark's grid: the settings of each algorithm (YAML per algorithm, ``--set``
overrides), the cells (algorithm x env x seed) and the checks that run before any cell does.

Config errors (unknown keys, wrong types, bad values) are :class:`ConfigError`: the grid is
checked statically (types through :func:`kd_env.checks.check_types`, hyperparameters against
what each agent declared at registration, :func:`agents.base.agent_hyperparameters`), then
:func:`check_grid` builds every (algorithm, env) once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import yaml

from kd_env.checks import check_known, check_types, matches

#: the default grid: the instance env, where the right knowledge differs between situations (the
#: headroom tool measured +7.6 points for an instance-aware choice there, about 0 on DigitsKD-v0)
DEFAULT_ALGOS = ("ac", "ac_q", "ppo", "dqn", "vanilla_kd", "dynamic_kd", "random_hard")
DEFAULT_ENVS = ("kd_env/DigitsKD-Instances-v0",)
DEFAULT_SEEDS = 5
DEFAULT_EVAL_EVERY = 100
DEFAULT_EVAL_EPISODES = 3
DEFAULT_WORKERS = 2
REFERENCE_ALGO = "random_hard"
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ENTRY_KEYS = ("action_mode", "episodes", "env_kwargs", "hyperparams")
ACTION_MODES = ("mask", "weights")
EXECUTORS = ("local", "ray")
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

    def describe(self) -> dict[str, Any]:
        """The JSON-able definition of the cell (what its numbers depend on)."""
        out = {"format": CELL_FORMAT, "settings": self.settings.to_dict(), "seed": self.seed,
               "eval_every": self.eval_every, "eval_episodes": self.eval_episodes}
        if self.eval_split != "test":  # absent for test, so that runs made before it keep their fingerprints
            out["eval_split"] = self.eval_split
        return out

    def fingerprint(self) -> str:
        text = json.dumps(self.describe(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def train_seeds(self, count: int) -> list[int]:
        return [self.seed * TRAIN_SEED_STRIDE + k for k in range(count)]

    def eval_seeds(self) -> list[int]:
        base = EVAL_SEED_BASE if self.eval_split == "test" else SELECTION_SEED_BASE
        return [base + self.seed * MAX_EVAL_EPISODES + j for j in range(self.eval_episodes)]

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


def check_hyperparameter_types(settings: AlgoSettings) -> None:
    """Unknown hyperparameters and values of the wrong type, against what the agent declared
    where it is registered (agents that declare nothing are left to the dry run)."""
    from agents import agent_hyperparameters

    annotations = agent_hyperparameters(settings.algo)
    if annotations is None:
        return
    where = f"{settings.algo} on {settings.env_id}"
    check_known(settings.hyperparams, annotations, where, "hyperparameter", ConfigError)
    check_types(settings.hyperparams, annotations, where, error=ConfigError,
                message="{where}: hyperparameter {name}={value} has type {type}, expected {kinds}{hint}")


def build_grid(algos: Sequence[str], envs: Sequence[str], seeds: Sequence[int], eval_every: int, eval_episodes: int,
               overrides: Sequence[str] = (), episodes: int | None = None,
               config_dir: str | Path = CONFIG_DIR, eval_split: str = "test") -> list[Cell]:
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
    eval_split: str = "test"
    """``test``: score the held-out instances' test split (what to report); ``dev`` / ``held-out-dev``:
    the train / held-out instances' dev split on selection seeds (what to choose settings on);
    see :data:`EVAL_SPLITS`"""
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
