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

Choosing settings: ``--eval-split dev`` scores the *train* instances' dev split and
``--eval-split held-out-dev`` the held-out instances' dev split, on selection seeds of their own
(``SELECTION_SEED_BASE``); with ``--set ALGO.env_kwargs.instances=digits-validation`` the held-out
instances are train instances set aside, so a learner's settings are chosen on situations it
never trained on without touching a test instance (``digits-validation-b`` is a second fold and
``digits-loo-<instance>`` a leave-one-out cross-validation, one run folder per set).
``--eval-split test`` (the default) is what to report.

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

The package, one job per module: :mod:`~experiments.benchmark.settings` (YAML configs,
overrides, config checks), :mod:`~experiments.benchmark.grid` (cells, seeds, the run's config),
:mod:`~experiments.benchmark.cell` (one run and its files), :mod:`~experiments.benchmark.evaluation`
(training resets, evaluation episodes), :mod:`~experiments.benchmark.runner` (units of work on
the shared executor, resume), :mod:`~experiments.benchmark.summary` and
:mod:`~experiments.benchmark.tables` (tables and plots from the cell files;
``python -m experiments.benchmark.summary runs/benchmark-<name>`` regenerates them),
:mod:`~experiments.benchmark.oracle` (per-situation oracle shares) and ``__main__`` (the command
line).  Processes and Ray are :mod:`experiments.executors`' alone.

Resumable: a finished cell whose settings are unchanged is read back, not rerun; one whose
settings changed is rerun.  ``--fresh`` reruns everything.

Execution: ``--workers N`` runs cells in N spawned processes; ``--executor ray`` on Ray (local,
or a cluster with ``--address``; a cell whose Ray worker dies is retried, up to 3 times).  Each
cell runs on ``--threads`` torch threads (default 1:
the envs' models are small, and N workers then use N cores).  A cell's numbers depend only on
its settings and seed (global RNGs are reseeded per cell, evaluation does not disturb the
training RNG streams), so every executor gives the same numbers for the same ``--threads``.

Default budget (no flags): 7 algorithms (ac, ac_q, ppo, dqn; vanilla_kd, dynamic_kd,
random_hard) x 5 seeds x kd_env/DigitsKD-Instances-v0 (15 phases per episode; the instance env,
where the headroom is), 2 worker processes.  The learners train 600 episodes each (9,000 env
steps, the same for every learner: the configs' ``episodes`` for this env) and are evaluated
every 100 episodes on 3 held-out seeds x the 4 held-out instances; the baselines run one such
evaluation.  ``--envs kd_env/DigitsKD-v0`` (12 episodes per learner) is the minutes-scale smoke
benchmark.
"""

from __future__ import annotations

import importlib
from typing import Any

from .cell import read_cell, run_cell, run_cells, write_cell
from .evaluation import _evaluate, _training_instances_wrapper  # noqa: F401 - used by the tests
from .evaluation import evaluation_episodes, seed_everything
from .grid import (
    DEFAULT_ALGOS,
    DEFAULT_ENVS,
    DEFAULT_EVAL_EPISODES,
    DEFAULT_EVAL_EVERY,
    DEFAULT_SEEDS,
    DEFAULT_WORKERS,
    EVAL_SEED_BASE,
    EVAL_SPLITS,
    EXECUTORS,
    MAX_EVAL_EPISODES,
    REFERENCE_ALGO,
    TRAIN_SEED_STRIDE,
    BenchmarkConfig,
    Cell,
    build_grid,
    env_slug,
)
from .settings import (
    ACTION_MODES,
    CONFIG_DIR,
    AlgoSettings,
    ConfigError,
    check_grid,
    check_hyperparameter_types,
    load_algo_config,
    parse_override,
    parse_value,
    resolve_settings,
)

__all__ = [
    "ACTION_MODES", "CONFIG_DIR", "DEFAULT_ALGOS", "DEFAULT_ENVS", "DEFAULT_EVAL_EPISODES", "DEFAULT_EVAL_EVERY",
    "DEFAULT_SEEDS", "DEFAULT_WORKERS", "EVAL_SEED_BASE", "EVAL_SPLITS", "EXECUTORS", "MAX_EVAL_EPISODES", "REFERENCE_ALGO",
    "RUN_COLUMNS", "SUMMARY_COLUMNS", "TRAIN_SEED_STRIDE",
    "AlgoSettings", "BenchmarkConfig", "BenchmarkResult", "Cell", "ConfigError",
    "build_grid", "check_grid", "check_hyperparameter_types", "env_slug", "evaluation_episodes",
    "load_algo_config", "load_run", "parse_override", "parse_value", "read_cell", "resolve_settings", "run_benchmark",
    "run_cell", "run_cells", "run_unit", "seed_everything", "units_of_work", "summarize", "write_cell", "main", "parse_args",
]


#: names from the modules that ``python -m`` runs (``__main__``, ``summary``) and from ``runner``
#: (which imports ``summary``), imported on first use: importing them here would make runpy warn
#: that the module it is about to run is already imported
_LAZY = {"main": "__main__", "parse_args": "__main__", "run_benchmark": "runner", "BenchmarkResult": "runner",
         "run_unit": "runner", "units_of_work": "runner",
         "summarize": "summary", "load_run": "summary", "RUN_COLUMNS": "summary", "SUMMARY_COLUMNS": "summary",
         "_paired_with_baseline": "summary", "_per_instance_markdown": "tables"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
