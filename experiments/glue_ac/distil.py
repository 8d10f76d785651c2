"""The distil stage: one student per (method, seed) unit, on the shared executor
(:func:`experiments.executors.execute`: this process, spawned local processes or Ray), each
unit's row written to the run's store as it ends."""

from __future__ import annotations

import dataclasses
from typing import Any

from agents import load_agent, make_agent
from kd_env import KnowledgeSelectionEnv
from kd_env.io import progress_bar

from ..cli import load_plugins
from ..executors import execute
from ..toolkit import distil_and_test
from .config import SELECTOR, TRANSFER, ExperimentConfig, method_agent_name
from .eta import RUN_CLOCK
from .run import Run, make_env
from .transfer import load_transfer

#: this process's student worker: its env, the trained selector and the transfer agent (or
#: ``None``), its torch threads
_WORKER: dict[str, Any] = {}


def setup_worker(config: dict[str, Any], threads: int) -> None:
    """A spawned (or Ray) worker, once: the user's plug-ins, its own env (teacher and teacher
    cache from the cache root), the trained selector and the transfer checkpoint's agent, if the
    run has them (its torch threads are set by the executor)."""
    c = ExperimentConfig(**config)
    load_plugins(c.plugins)
    env = make_env(c, c.distill_config().replace(threads=threads, progress=False))
    selector = load_agent(str(Run(c).selector_dir / "agent"), env) if SELECTOR in c.methods else None
    transfer = load_transfer(c, env) if TRANSFER in c.methods else None
    _WORKER.update(env=env, selector=selector, transfer=transfer, threads=threads)


def distil_unit(unit: tuple[str, int]) -> dict[str, Any]:
    """The runner: distil a fresh student for ``(method, seed)`` with this worker's env and test
    it; the unit's row."""
    method, seed = unit
    env, threads = _WORKER["env"], _WORKER["threads"]
    knowledge = list(env.unwrapped.distiller.knowledge_names)
    agent = (_WORKER[method] if method in (SELECTOR, TRANSFER)
             else make_agent(method_agent_name(method, knowledge), env, seed=seed))
    teacher = env.unwrapped.distiller.teacher_metrics.get("weights_id")  # the teacher this student learnt from
    return {"method": method, **distil_and_test(env, agent, seed), "threads": threads,
            **({"teacher": teacher} if teacher else {})}


def distil_students(run: Run, env: KnowledgeSelectionEnv, selector: Any, units: list[tuple[str, int]],
                    workers: int, threads: int, transfer: Any = None) -> None:
    """Distil ``units`` on the run's executor, ``workers`` at a time with ``threads`` torch threads
    shared among them.  ``env`` is closed on return: on the local executor with one worker the
    units run in this process with ``env``, ``selector`` and ``transfer`` (the transfer
    checkpoint's agent); otherwise every worker builds its own env and loads both from their
    checkpoints.  Each unit's row is written atomically as it
    ends, so an interrupted run resumes from the finished ones; a unit that fails stops the run
    with its traceback (the ones finished before stay on disk)."""
    c = run.config
    in_process = c.executor == "local" and workers <= 1
    per_worker = max(1, threads // max(1, workers))
    where = "" if in_process else f" ({workers} workers)" if c.executor == "local" else f" (ray, {workers} workers)"
    bar = progress_bar(None, len(units), f"distil students{where}")

    def save(unit: tuple[str, int], row: dict[str, Any] | None, error: str | None) -> None:
        method, seed = unit
        if error is not None:
            raise RuntimeError(f"student {method} seed {seed} failed (the students finished before are saved in "
                               f"{run.units}):\n{error}")
        run.save_unit(row)
        RUN_CLOCK.student_done(float(row.get("wall_seconds", 0.0)))
        note = RUN_CLOCK.note()
        bar.set_postfix(method=method, seed=seed, **({"run": note} if note else {}))
        bar.update(1)

    if in_process:
        _WORKER.update(env=env, selector=selector, transfer=transfer, threads=per_worker)
    else:  # the selector is on disk: every worker builds its own env and loads it
        env.close()
    try:
        execute(units, distil_unit, save, executor=c.executor, workers=max(1, workers), threads=per_worker,
                address=c.address, setup=setup_worker, setup_args=(dataclasses.asdict(c), per_worker))
    finally:
        bar.close()
        if in_process:
            _WORKER.clear()
            env.close()
