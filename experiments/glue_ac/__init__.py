"""The main job: learn which knowledge to distil, then compare with strong KD baselines.

    python -m experiments.glue_ac                       # embedded offline default (rt-polarity)
    python -m experiments.glue_ac --preset quick        # digits, about a minute
    python -m experiments.glue_ac --preset paper --task rte --data-dir /data/glue

Pipeline (resumable: rerun the same command after an interruption):

1. teacher: fine-tune on the task and cache its outputs (kept under ``$KD_ENV_CACHE``);
2. selector: train the knowledge selector (``--agent``, default our actor-critic) over
   ``--episodes`` distillation episodes rewarded on the dev probe;
3. distil a fresh student per seed with the trained selector acting deterministically;
4. the same student budget for every baseline (``--methods``): the fixed masks, the random
   ones, and the literature's dynamic baselines on request (``dynamic_kd``, ``eskd``,
   ``two_stage``, ``anneal``; :mod:`agents.dynamic`);
5. evaluate every student (and the teacher) on the held-out split with the task's metric;
6. write ``runs/<name>/``: results.json/.csv/.md, config.yaml, plots, TensorBoard logs.

The best fixed mask (``best_fixed``, the selector's strongest single-mask rival) is chosen on the
students' dev-probe metric, never on the held-out split.

Students are distilled in this process, in ``--workers`` spawned processes or on Ray
(``--executor ray``, ``--address``), through :func:`experiments.executors.execute`; each finished
student is one file in ``runs/<name>/units/``, written atomically as it ends.

Modules: :mod:`.config` (ExperimentConfig, presets, methods), :mod:`.run` (the run folder, the
selector stage), :mod:`.distil` (the students), :mod:`.pipeline` (run_experiment),
:mod:`.report`, :mod:`.timing`, :mod:`.cli`.
"""

from .cli import build_parser, config_from_args, main
from .config import (
    BASELINES,
    DYNAMIC_BASELINES,
    EXPERIMENT_PRESETS,
    NOT_FIXED,
    RESULT_COLUMNS,
    SELECTOR,
    ExperimentConfig,
    default_methods,
    method_agent_name,
    valid_methods,
)
from .distil import distil_students, distil_unit, setup_worker
from .pipeline import run_experiment
from .report import choose_best_fixed, print_summary, write_report
from .run import NOT_CHECKED, Run, make_env, train_selector
from .timing import INSTALL_SECONDS_FILE, STAGES, install_seconds, print_timing, stage_times

__all__ = ["BASELINES", "DYNAMIC_BASELINES", "EXPERIMENT_PRESETS", "NOT_FIXED", "RESULT_COLUMNS", "SELECTOR",
           "ExperimentConfig", "default_methods", "method_agent_name", "valid_methods", "Run", "NOT_CHECKED",
           "make_env", "train_selector", "distil_students", "distil_unit", "setup_worker", "run_experiment",
           "choose_best_fixed", "write_report", "print_summary", "INSTALL_SECONDS_FILE", "STAGES",
           "install_seconds", "stage_times", "print_timing", "build_parser", "config_from_args", "main"]
