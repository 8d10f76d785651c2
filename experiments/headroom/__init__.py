"""What is the best any knowledge-selection policy could do on an env?

``python -m experiments.headroom --env kd_env/DigitsKD-Instances-v0`` measures, before any agent
is judged, how much room an env leaves a learned selector:

* **every fixed mask** (2^K) and the **single best fixed mask**, chosen by the mean dev-split
  metric on the *selection seeds* of the *train instances*;
* the **sources of gain** (:mod:`.sources`), each chosen per held-out situation on its selection
  seeds by dev: ``oracle_constant`` (its best fixed mask), ``oracle_schedule`` (its best fixed mask
  or two-stage schedule of its best masks) and their paired difference, *the value of switching*;
  two non-RL baselines on the observable situation (:mod:`kd_env.situation`): ``lookup`` (the best
  mask of the nearest train situation) and ``bandit`` (per mask a ridge regression of dev on the
  situation, fit with full exploration on the train situations); and how often the oracles'
  choices survive a bootstrap of the selection seeds (*choice stability*); CIs resample
  situations, then seeds;
* **two-stage schedules** (mask A for the first k phases, then B), A and B among the best fixed
  masks and k among a few switch points, the best chosen on the selection seeds by dev;
* **greedy oracles** that branch from the env state every phase, try every mask and keep the
  best by the env's reward (``greedy:reward``) or by the dev-probe metric (``greedy:probe``);
* the literature's **dynamic baselines** (``dynamic_kd``, ``eskd``, ``two_stage``, ``anneal``);
* **reward alignment**: over random-mask policies on the train instances, the correlation of an
  episode's return under each registered reward with the final dev and test metric.

Every choice uses selection seeds and the dev split; held-out instances and *test seeds* are
only scored, on the test split.  Results go to ``runs/headroom-<env>/`` (``results.json``,
``results.md``, ``headroom.png``); every finished episode is kept in ``units/`` (one JSON file
each, written atomically as its chunk ends) so an interrupted run resumes where it stopped (a
``units.jsonl`` left by an older run is imported once).  Episodes run in this process, in
``--workers`` local processes or on Ray (``--executor ray``, ``--address``), through
:func:`experiments.executors.execute`.  ``--quick`` finishes within a few minutes on digits.

Modules: :mod:`.settings` (what to measure, policy names, unit keys), :mod:`.worker` (the process
that plays episodes, open-loop ones batched; each record carries its instance's observable
situation), :mod:`.run` (the stages, resume), :mod:`.sources` (the oracles' and baselines'
choices, choice stability), :mod:`.analysis` (the policy table, sources of gain, headroom, reward
alignment), :mod:`.report` (``results.md``, the figure), :mod:`.cli`.
"""

from .analysis import analyse, reward_alignment
from .cli import main
from .report import plot, render_markdown
from .run import LEGACY_UNITS, HeadroomRun
from .settings import DYNAMIC_BASELINES, OPEN_LOOP, HeadroomSettings, all_masks, builtin_rewards, schedule_name, \
    unit_key
from .worker import _Worker, run_chunk, setup_worker

__all__ = ["main", "HeadroomSettings", "HeadroomRun", "LEGACY_UNITS", "DYNAMIC_BASELINES", "OPEN_LOOP", "all_masks",
           "schedule_name", "unit_key", "builtin_rewards", "analyse", "reward_alignment", "render_markdown", "plot",
           "_Worker", "run_chunk", "setup_worker"]
