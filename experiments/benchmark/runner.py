"""Run a benchmark: build and check the grid, read back the finished cells, run the others on
an executor, write each cell as it ends, and summarise.

Resumable: a finished cell whose settings are unchanged is read back, not rerun; one whose
settings changed is rerun.  ``fresh=True`` reruns everything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_env.checks import matches
from kd_env.io import atomic_write_json

from .cell import read_cell, write_cell
from .executors import execute
from .grid import EXECUTORS, RESULT_FILE, BenchmarkConfig, Cell, ConfigError, _slug, build_grid, check_grid
from .summary import summarize


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
    if not matches(config.workers, int) or config.workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {config.workers!r}")
    if not matches(config.threads, int) or config.threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {config.threads!r}")
    if not config.name or _slug(config.name) != config.name:
        raise ConfigError(f"name must be non-empty and use only letters, digits, '-', '_' and '.', got {config.name!r}")
    cells = build_grid(config.algos, config.envs, config.seeds, config.eval_every, config.eval_episodes,
                       config.overrides, config.episodes, config.config_dir, config.eval_split)
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
        "eval_every": config.eval_every, "eval_episodes": config.eval_episodes, "eval_split": config.eval_split,
        "overrides": config.overrides,
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
        # a selection run scores a dev split: the line names it, never "test"
        split = "test" if config.eval_split == "test" else f"{config.eval_split} (selection)"
        log(f"{prefix}: {split} {r['metric_name']} {r['test_metric']:.4f}, return {r['return']:+.4f} "
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
