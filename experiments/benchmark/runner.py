"""Run a benchmark: build and check the grid, read back the finished cells, run the others as
units of work on the shared executor (:mod:`experiments.executors`: local processes or Ray),
write each cell as it ends, and summarise.

Resumable: a finished cell whose settings and teachers are unchanged is read back, not rerun;
one whose settings changed, or whose teacher was fine-tuned again into other weights
(:func:`~.cell.read_cell`), is rerun.  ``fresh=True`` reruns everything.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from agents.episode_log import TENSORBOARD_DIR
from experiments.cli import load_plugins
from experiments.executors import execute
from experiments.logs import get_logger
from experiments.runlock import RunLock, RunLockedError
from experiments.store import read_finished
from kd_env.io import FolderError, atomic_write_json, check_cache_root, check_writable_folder

from .cell import batched, read_cell, run_cell, run_cells, write_cell
from .grid import RESULT_FILE, BenchmarkConfig, Cell, _check_algo_names, grid_cells
from .settings import ConfigError, check_grid
from .summary import summarize

LOGGER = get_logger("benchmark")


def units_of_work(cells: Sequence[Cell], workers: int = 1) -> list[list[Cell]]:
    """``cells`` as units of work: the :func:`~.cell.batched` cells of one setting (they differ
    only in their seed) in ``min(workers, n)`` groups trained together, every other cell alone.
    A cell's numbers are the same in any unit (see :func:`~.cell.run_cells`)."""
    groups: list[list[Cell]] = []
    units: list[list[Cell]] = []
    for cell in cells:
        if not batched(cell):
            units.append([cell])
            continue
        for group in groups:
            if group[0].settings == cell.settings:
                group.append(cell)
                break
        else:
            groups.append([cell])
    for group in groups:
        parts = max(1, min(workers, len(group)))
        units.extend([group[i::parts] for i in range(parts)])
    return units


def run_unit(job: tuple[tuple[Cell, ...], int, str | None]) -> list[tuple[dict[str, Any] | None, str | None]]:
    """The executor's runner: one unit of work (cells, torch threads, the run's TensorBoard folder
    or ``None``) -> each cell's ``(payload, error)``; a cell that raises is reported with its
    traceback, the others go on."""
    unit, threads, tensorboard = job
    if len(unit) == 1:
        try:
            return [(run_cell(unit[0], threads, tensorboard=tensorboard), None)]
        except Exception:  # noqa: BLE001 - reported by the driver
            return [(None, traceback.format_exc())]
    outcomes = run_cells(unit, threads, tensorboard=tensorboard)
    return [(None, "".join(traceback.format_exception(o))) if isinstance(o, BaseException) else (o, None)
            for o in outcomes]


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


def check_baseline(baseline: str, algos: Sequence[str], log: Any = print) -> None:
    """``--baseline`` must name an agent (``ConfigError`` listing the valid names otherwise); one
    that is not among ``algos`` gets a note: the summary's paired column then stays empty."""
    try:
        _check_algo_names([baseline])
    except ConfigError as exc:
        raise ConfigError(f"--baseline {baseline!r}: {exc}") from None
    if baseline not in algos:
        log(f"note: --baseline {baseline} is not among --algos {list(algos)}, so the summary's paired-difference "
            f"column stays empty; add it to --algos to compare with it")


def run_benchmark(config: BenchmarkConfig) -> BenchmarkResult:
    """Check the config (:meth:`BenchmarkConfig.validate`, before any file is read), then
    :func:`run_validated`."""
    config.validate()
    return run_validated(config)


def run_validated(config: BenchmarkConfig) -> BenchmarkResult:
    """Run a config :meth:`BenchmarkConfig.validate` passed (the command line's, validated
    once where it was built): load the plug-ins, build and check the grid, run the unfinished
    cells, summarise."""
    start = time.perf_counter()
    log = LOGGER.info if config.verbose else (lambda *_a, **_k: None)
    try:  # first: a plug-in may register the agents, instance sets or knowledge types the grid names
        plugins = load_plugins(config.plugins)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    cells = grid_cells(config.algos, config.envs, config.seeds, config.eval_every, config.eval_episodes,
                       config.overrides, config.episodes, config.config_dir, config.eval_split)
    notes: list[str] = []  # said once the checks below pass: an error is the run's first and only line
    check_baseline(config.baseline, config.algos, notes.append)
    run_dir = config.run_dir
    try:  # before any work: the run folder and the teacher cache are writable, no other run uses the folder
        fix = "pass another --out (or --name), or make it a writable folder"
        if run_dir.exists() or run_dir.is_symlink():
            check_writable_folder(run_dir, "benchmark run folder", fix)
        else:
            check_writable_folder(run_dir.parent, "output folder (--out)", fix)
        check_cache_root()
        lock = RunLock(run_dir, "benchmark run").acquire()
    except (FolderError, RunLockedError) as exc:
        raise ConfigError(str(exc)) from None
    for note in notes:
        log(note)
    try:
        return _run_locked(config, cells, run_dir, start, log, plugins)
    finally:
        lock.release()


def _run_locked(config: BenchmarkConfig, cells: list[Cell], run_dir: Path, start: float, log: Any,
                plugins: Sequence[str] = ()) -> BenchmarkResult:
    """:func:`run_benchmark`'s work, with the run folder checked and locked."""
    payloads: dict[Cell, dict[str, Any]] = {}
    todo: list[Cell] = []
    for cell in cells:
        why: list[str] = []
        done = None if config.fresh else read_cell(run_dir, cell, why)
        if done is not None:
            payloads[cell] = done
        else:
            result_path = run_dir / cell.relative_dir() / RESULT_FILE
            if result_path.exists() and not config.fresh:
                if not why and read_finished(result_path) is None:
                    why.append(f"its {RESULT_FILE} is damaged or unfinished (not a JSON object), recomputing")
                log(f"rerunning {cell.label()}: {why[0] if why else 'its settings changed since it was run'}")
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
        "eval_every": config.eval_every, "eval_episodes": config.eval_episodes, "eval_split": config.eval_split,
        "overrides": config.overrides,
        "cells": {str(c.relative_dir()): c.describe() for c in cells}})
    failed: dict[str, str] = {}
    executed: list[Cell] = []
    counter = {"done": 0}

    def on_cell(cell: Cell, payload: dict[str, Any] | None, error: str | None) -> None:
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
        # a selection run scores a dev split: the line names it, never "test"
        split = "test" if config.eval_split == "test" else f"{config.eval_split} (selection)"
        log(f"{prefix}: {split} {r['metric_name']} {r['test_metric']:.4f}, return {r['return']:+.4f} "
            f"({r['seconds']['total']:.1f} s)")

    def on_done(job: tuple[tuple[Cell, ...], int, str | None], outcomes: list[Any] | None, error: str | None) -> None:
        for k, cell in enumerate(job[0]):
            on_cell(cell, *(outcomes[k] if outcomes is not None else (None, error)))

    tensorboard = str(run_dir / TENSORBOARD_DIR) if config.tensorboard else None  # a run folder per cell
    jobs = [(tuple(unit), config.threads, tensorboard) for unit in units_of_work(todo, config.workers)]
    execute(jobs, run_unit, on_done, config.executor, config.workers, config.threads, config.address,
            plugins=plugins)
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
