"""The whole glue_ac pipeline, resumable: teacher, selector, students, report."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from agents import make_agent
from kd_env import DistillConfig
from kd_env.data import DataUnavailableError
from kd_env.io import FolderError, atomic_write_json, check_cache_root
from kd_env.runtime import resolve_threads, usable_cpus
from kd_env.teacher import evaluate_model
from kd_env.teacher_check import fine_tune_record, sanity_warning

from ..cli import load_plugins
from ..logs import get_logger
from ..report import json_safe
from ..runlock import RunLock, RunLockedError
from .config import LEARNED, SELECTOR, TRANSFER, ExperimentConfig, method_agent_name
from .distil import distil_students
from .eta import RUN_CLOCK
from .report import write_report
from .run import Run, make_env, train_selector
from .timing import stage_times
from .transfer import check_inputs, load_transfer

LOGGER = get_logger("glue_ac")


def run_experiment(config: ExperimentConfig, part_of_study: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole pipeline of one situation; returns the summary written to
    results.json.  A config with ``situations`` is a study of several:
    :func:`experiments.glue_ac.situations.run_situations` runs it (``part_of_study``: the whole
    run's clock, :data:`~experiments.glue_ac.eta.RUN_CLOCK`, was started there)."""
    load_plugins(config.plugins)
    if config.situations:
        raise ValueError(f"config has situations {config.situations}: run it with "
                         f"experiments.glue_ac.run_situations (one run per situation)")
    c = config.resolved()
    try:  # the files the config names, before any teacher is fine-tuned
        check_inputs(c)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    run = Run(c)
    run.check()
    distill = c.distill_config()
    try:  # before any work: the run folder and the teacher cache are writable, no other run uses the folder
        run.check_folder()
        check_cache_root(distill.cache_dir)
        lock = RunLock(run.dir, "glue_ac run").acquire()
    except (FolderError, RunLockedError) as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        return _run_locked(c, run, distill, part_of_study)
    finally:
        lock.release()


def _run_locked(c: ExperimentConfig, run: Run, distill: DistillConfig, part_of_study: bool) -> dict[str, Any]:
    """:func:`run_experiment`'s stages, with the run folder checked and locked."""
    t0 = time.perf_counter()
    if not part_of_study:
        RUN_CLOCK.restart(1)
    RUN_CLOCK.begin_situation(c.episodes if SELECTOR in c.methods else 0, len(c.methods) * len(c.seeds), c.workers)
    LOGGER.info(f"glue_ac {c.name}: {resolve_threads(distill.threads)} torch thread(s) ({usable_cpus()} CPU(s) "
                f"usable; distill.threads={distill.threads})")
    where = f" (situation {c.situation} of {c.instance_set})" if c.situation is not None else ""
    LOGGER.info(f"[1/4] teacher: {distill.teacher} on {distill.task}{where} (fine-tuned and cached once)")
    stages: dict[str, float] = {}
    try:  # bad task files, models or knowledge fail here, before the run folder is written
        start = time.perf_counter()
        env = make_env(c, distill)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, DataUnavailableError) as exc:
        raise SystemExit(f"error: {exc}") from None
    d = env.distiller
    run.teacher_key = d.teacher_metrics.get("weights_id")  # units made with another teacher run again
    warning = sanity_warning(d.teacher_metrics)
    if warning is not None:  # the one loud line: the teacher learned nothing its references did not
        print(warning, file=sys.stderr)
    built = getattr(d, "build_seconds", {})
    stages["teacher"] = built.get("teacher", math.nan)
    stages["teacher_cache"] = time.perf_counter() - start - stages["teacher"]  # with data, tokenizer, student
    fine_tuned = stages["teacher"] > 0.5 * float(d.teacher_metrics.get("fine_tune", {}).get("seconds", math.inf))
    RUN_CLOCK.teacher_done(stages["teacher"], fine_tuned)
    labels = None if d.task.label_names is None else {name: i for i, name in enumerate(d.task.label_names)}
    knowledge = list(d.knowledge_names)
    try:  # a baseline that needs knowledge this env lacks fails here too (e.g. eskd without response)
        for method in c.methods:
            if method not in LEARNED:
                make_agent(method_agent_name(method, knowledge), env)
    except ValueError as exc:
        env.close()
        raise SystemExit(f"error: {exc}") from None
    transfer: Any = None
    if TRANSFER in c.methods:  # a checkpoint that does not fit (network shapes) fails here, before the run folder
        try:
            transfer = load_transfer(c, env)
        except SystemExit:
            env.close()
            raise
    recipe = fine_tune_record(d.teacher_metrics)
    run.prepare(labels, recipe)
    teacher_probe = evaluate_model(d.teacher_model, d.dev_data, d.task, d.device, distill.eval_batch_size,
                                   indices=d.probe_indices)
    teacher = {"metric": d.teacher_metrics["test"]["main"], "dev_metric": teacher_probe["main"],
               "parameters": d.teacher_metrics.get("parameters"),
               "fine_tune_seconds": d.teacher_metrics["fine_tune"]["seconds"], "fine_tune": recipe,
               "sanity": d.teacher_metrics.get("sanity"), "warning": warning}
    selector: Any = None
    selector_returns: list[float] = []
    todo = [(m, s) for m in c.methods for s in c.seeds]
    if SELECTOR in c.methods:
        LOGGER.info(f"[2/4] selector: {c.agent}, {c.episodes} episodes x {distill.num_phases} phases")
        start = time.perf_counter()
        selector, selector_returns = train_selector(run, env)
        stages["selector"] = time.perf_counter() - start
        RUN_CLOCK.selector_done()
    start = time.perf_counter()
    missing = [(m, s) for m, s in todo if run.load_unit(m, s) is None]
    workers = min(c.workers, len(missing))
    threads = resolve_threads(distill.threads)
    RUN_CLOCK.students_planned(len(missing), max(1, workers))
    LOGGER.info(f"[3/4] distil: {len(c.methods)} methods x {len(c.seeds)} seeds ({len(todo) - len(missing)} done "
                f"before)" + (f", {workers} workers" if workers > 1 else "") + (" on ray" if c.executor == "ray" else "")
                + f" ({RUN_CLOCK.line()})")
    distil_students(run, env, selector, missing, workers, threads, transfer=transfer)
    stages["students"] = time.perf_counter() - start
    rows = [run.load_unit(m, s) for m, s in todo]
    LOGGER.info(f"[4/4] report ({RUN_CLOCK.line()})")
    start = time.perf_counter()
    summary = write_report(run, rows, teacher, knowledge, selector_returns, distill, labels)
    stages["report"] = time.perf_counter() - start
    summary["wall_seconds_this_invocation"] = time.perf_counter() - t0
    summary["stage_seconds"] = stage_times(stages, summary["wall_seconds_this_invocation"], len(missing), workers)
    atomic_write_json(run.dir / "timing.json", json_safe(summary["stage_seconds"]))
    return summary

