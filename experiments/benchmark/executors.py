"""Where the benchmark's cells run: in this process, in spawned local processes, or on Ray.

Every executor calls ``on_done(cell, payload, error)`` in the driver process as each cell ends;
a cell that raises (or a worker that dies) is reported with its traceback and the others go on.
"""

from __future__ import annotations

import os
import traceback
from typing import Any, Callable, Sequence

from .cell import batched, run_cell, run_cells
from .grid import Cell

def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def _run_cell_catching(cell: Cell, threads: int) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return run_cell(cell, threads), None
    except Exception:  # noqa: BLE001 - reported by the driver, the other cells go on
        return None, traceback.format_exc()


def _run_unit_catching(unit: Sequence[Cell], threads: int) -> list[tuple[dict[str, Any] | None, str | None]]:
    """A unit of work: one cell, or batched cells of one setting trained together (``run_cells``)."""
    if len(unit) == 1:
        return [_run_cell_catching(unit[0], threads)]
    try:
        outcomes = run_cells(unit, threads)
    except Exception:  # noqa: BLE001 - every cell of the unit failed with it
        error = traceback.format_exc()
        return [(None, error)] * len(unit)
    return [(None, "".join(traceback.format_exception(o))) if isinstance(o, BaseException) else (o, None)
            for o in outcomes]


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


OnDone = Callable[[Cell, "dict[str, Any] | None", "str | None"], None]


def execute(cells: Sequence[Cell], on_done: OnDone, executor: str = "local", workers: int = 1, threads: int = 1,
            address: str | None = None) -> None:
    """Run ``cells``; ``on_done(cell, payload, error)`` is called in this process as each ends."""
    if not cells:
        return
    if executor == "ray":
        _execute_ray(cells, on_done, workers, threads, address)
    elif workers <= 1:
        for unit in units_of_work(cells, 1):
            for cell, outcome in zip(unit, _run_unit_catching(unit, threads)):
                on_done(cell, *outcome)
    else:
        _execute_processes(cells, on_done, workers, threads)


def _execute_processes(cells: Sequence[Cell], on_done: OnDone, workers: int, threads: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(cells)), mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_run_unit_catching, unit, threads): unit for unit in units_of_work(cells, workers)}
        try:
            for future in as_completed(futures):
                unit = futures[future]
                try:
                    outcomes = future.result()
                except Exception:  # noqa: BLE001 - a worker that died (killed, out of memory)
                    outcomes = [(None, traceback.format_exc())] * len(unit)
                for cell, (payload, error) in zip(unit, outcomes):
                    on_done(cell, payload, error)
        except BaseException:  # Ctrl-C or a failing on_done: drop the queued cells, do not wait for them
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _ray_env_vars() -> dict[str, str]:
    keys = ("KD_ENV_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "HF_HOME")
    return {k: os.environ[k] for k in keys if k in os.environ}


def _execute_ray(cells: Sequence[Cell], on_done: OnDone, workers: int, threads: int, address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise RuntimeError("--executor ray needs the optional 'ray' package: pip install 'ray>=2.9' "
                           "(or use the default local executor with --workers N)") from None
    started_here = not ray.is_initialized()
    if started_here:
        init: dict[str, Any] = {"runtime_env": {"env_vars": _ray_env_vars()}, "include_dashboard": False,
                                "log_to_driver": False}
        if address:
            init["address"] = address
        else:
            init["num_cpus"] = max(1, workers) * threads
        ray.init(**init)
    try:
        remote = ray.remote(num_cpus=threads, max_retries=0)(_run_cell_catching)
        refs = {remote.remote(cell, threads): cell for cell in cells}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    payload, error = ray.get(ref)
                except Exception:  # noqa: BLE001 - a task or worker failure
                    payload, error = None, traceback.format_exc()
                on_done(refs[ref], payload, error)
    finally:
        if started_here:
            ray.shutdown()
