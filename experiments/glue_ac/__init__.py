"""The main job: learn which knowledge to distil, then compare with strong KD baselines.

    python -m experiments.glue_ac                       # make demo: text3, one study per default situation
    python -m experiments.glue_ac --situations none     # one run, rt-polarity as it is (the old demo)
    python -m experiments.glue_ac --situation rt-labels5             # one situation of text3-situations
    python -m experiments.glue_ac --situations rt-clean,rt-labels5   # a study per situation + their report
    python -m experiments.glue_ac --label-fraction 0.1 --label-noise 0.3   # your own situation, one run
    python -m experiments.glue_ac --task my_data/ --situations none --teacher-min-steps 300   # your CSV, more teacher budget
    python -m experiments.glue_ac --preset quick        # digits, about a minute
    python -m experiments.glue_ac --preset quick --instance-set digits-switch --situations labels15-noisy35-weak
    # a selector trained on digits situations (a benchmark cell's agent/ folder) carried to text:
    python -m experiments.glue_ac --situation rt-labels10-weak --observation portable --transfer-checkpoint DIR
    python -m experiments.glue_ac --preset paper --task rte --data-dir /data/glue

Pipeline (resumable: rerun the same command after an interruption):

1. teacher: fine-tune on the task and cache its outputs (kept under ``$KD_ENV_CACHE``); text
   presets: one epoch, at least 150 steps, early-stopped on dev where that floor raises the budget
   (``--teacher-epochs``, ``--teacher-min-steps``, ``--teacher-max-steps``, ``--teacher-patience``);
   a teacher no better on dev than the majority class and a linear probe on the frozen encoder
   gets one ``WARNING:`` line, on the console and at the top of ``results.md``;
2. selector: train the knowledge selector (``--agent``, default our actor-critic) over
   ``--episodes`` distillation episodes rewarded on the dev probe;
3. distil a fresh student per seed with the trained selector acting deterministically;
4. the same student budget for every baseline (``--methods``): the fixed masks, the random
   ones, and the literature's dynamic baselines on request (``dynamic_kd``, ``eskd``,
   ``two_stage``, ``anneal``; :mod:`agents.dynamic`), and ``transfer`` with
   ``--transfer-checkpoint DIR``: an agent checkpoint (e.g. a selector trained only on digits
   situations) acting deterministically with no training episodes on this task, checked against
   the run's ``--observation`` and ``--action-mode`` before any teacher is fine-tuned;
5. evaluate every student (and the teacher) on the held-out split with the task's metric;
6. write ``runs/<name>/``: results.json/.csv/.md, config.yaml, plots (``selection_heatmap.png``,
   ``transfer_heatmap.png``), TensorBoard logs.

The best fixed mask (``best_fixed``, the selector's strongest single-mask rival) is chosen on the
students' dev-probe metric, never on the held-out split.

Situations.  ``--situation NAME`` runs one situation of an instance set (``--instance-set``,
default ``text3-situations``; :mod:`kd_env.instances`): the preset, then the situation's
DistillConfig overrides, then your other settings; a ``--label-fraction``, ``--label-noise``,
``--teacher-train-fraction``, ``--task`` or ``--teacher`` (or a ``distill`` key of the config file)
that contradicts the situation is an error, and so is an unknown name (the valid ones are listed;
nothing is written).  Without ``--preset`` the set's own preset is used.  ``--situations A,B``
runs the whole study (a selector trained on that situation's own episodes, every method x seed)
once per situation, each in its own resumable run folder ``runs/<name>/<situation>/``, then
writes ``runs/<name>/situations.md``, ``situations.json``, ``situations-heatmap.png`` and the
long-format ``scores.csv`` (:mod:`.situations`): per situation every method's mean ± std, the
winner, and the selector's (and transfer's) paired difference against the best fixed mask (chosen
on dev within the situation), vanilla KD and Dynamic KD, with a 95% CI and wins/ties/losses over
seeds (:func:`experiments.stats.compare`).  The text3 preset runs :data:`~.config.DEMO_SITUATIONS` by default (``make demo``), unless
you pass ``--situations none``, ``--situation`` or a situation setting of your own.

Students are distilled in this process, in ``--workers`` spawned processes or on Ray
(``--executor ray``, ``--address``), through :func:`experiments.executors.execute`; each finished
student is one file in ``runs/<name>/units/``, written atomically as it ends.

Modules: :mod:`.config` (ExperimentConfig, presets, methods), :mod:`.run` (the run folder, the
selector stage), :mod:`.distil` (the students), :mod:`.pipeline` (run_experiment),
:mod:`.transfer` (the transfer checkpoint), :mod:`.situations` (run_situations and its report),
:mod:`.report`, :mod:`.timing`, :mod:`.cli`.
"""

from .cli import build_parser, config_from_args, main
from .config import (
    BASELINES,
    DEFAULT_INSTANCE_SET,
    DEMO_SITUATIONS,
    DYNAMIC_BASELINES,
    EXPERIMENT_PRESETS,
    LEARNED,
    NOT_FIXED,
    RESULT_COLUMNS,
    SELECTOR,
    SITUATION_KEYS,
    TRANSFER,
    ExperimentConfig,
    default_methods,
    method_agent_name,
    valid_methods,
)
from .distil import distil_students, distil_unit, setup_worker
from .pipeline import run_experiment
from .report import choose_best_fixed, print_summary, write_report
from .run import NOT_CHECKED, Run, make_env, train_selector
from .situations import print_situations, run_situations, write_situations
from .timing import INSTALL_SECONDS_FILE, STAGES, install_seconds, print_timing, stage_times, sum_stage_times
from .transfer import check_checkpoint, checkpoint_fingerprint, load_transfer

__all__ = ["BASELINES", "DYNAMIC_BASELINES", "EXPERIMENT_PRESETS", "NOT_FIXED", "RESULT_COLUMNS", "SELECTOR",
           "TRANSFER", "LEARNED", "DEFAULT_INSTANCE_SET", "DEMO_SITUATIONS", "SITUATION_KEYS", "run_situations",
           "write_situations", "print_situations", "sum_stage_times", "check_checkpoint", "checkpoint_fingerprint",
           "load_transfer",
           "ExperimentConfig", "default_methods", "method_agent_name", "valid_methods", "Run", "NOT_CHECKED",
           "make_env", "train_selector", "distil_students", "distil_unit", "setup_worker", "run_experiment",
           "choose_best_fixed", "write_report", "print_summary", "INSTALL_SECONDS_FILE", "STAGES",
           "install_seconds", "stage_times", "print_timing", "build_parser", "config_from_args", "main"]
