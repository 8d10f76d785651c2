"""Where every experiment's units of work run: in this process, in spawned local processes, or on
Ray.  The only module in ``experiments/`` that starts processes or talks to Ray.

An experiment hands :func:`execute` a list of *jobs* (any picklable values) and a *runner*, a
module-level function ``runner(job) -> payload`` (picklable by reference).  Each worker calls
``setup(*setup_args)`` once before its first job (to build an env, load a teacher) and uses
``threads`` torch threads.  Before that it imports the user's plug-in files: ``plugins``, by default
every file this process imported with :func:`experiments.cli.load_plugins` (``--plugin``), so that
what a plug-in registers (an instance set, a knowledge type, an agent...) exists in every worker
(a job is unpickled after that in a spawned process, before it on Ray: a job should hold plain
values, names rather than a plug-in's objects).  ``on_done(job, payload, error)`` is called in
this process as each job ends, in completion order; ``error`` is the job's traceback (``payload``
is then ``None``).  A job that raises is reported and the others go on; what to write, and when to stop,
is the caller's (:mod:`experiments.store` writes each result atomically).

==========  ============================================================================
executor    how
==========  ============================================================================
``local``   ``workers <= 1``: in this process, in order.  Otherwise a pool of ``workers``
            spawned processes (never forked: torch and tokenizers hold threads).  When a
            worker dies (killed, out of memory) the pool is lost: its unfinished jobs run
            again in a new pool, each at most ``retries`` times.
``ray``     one Ray task per job on a local Ray (``num_cpus = workers * threads``) or on an
            existing cluster (``address``).  A task whose worker dies is retried by Ray up to
            ``retries`` times; an exception raised by the job is not retried (it is the job's
            answer, reported as its error).
==========  ============================================================================

A job's numbers must depend only on the job (the experiments reseed per unit), so every
executor gives the same results.
"""

from __future__ import annotations

import os
import pickle
import traceback
from typing import Any, Callable, Sequence, TypeVar

__all__ = ["EXECUTORS", "DEFAULT_RETRIES", "RAY_MISSING", "execute", "check_executor", "init_worker"]

EXECUTORS = ("local", "ray")
#: how many times Ray reruns a job whose worker died
DEFAULT_RETRIES = 3
RAY_MISSING = ("--executor ray needs the optional 'ray' package: pip install 'ray>=2.9' (or pip install -e '.[ray]'; "
               "or use the default local executor with --workers N)")
#: environment variables a Ray worker needs to see the same data, caches and offline switches
RAY_ENV_VARS = ("KD_ENV_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "HF_HOME",
                "OMP_NUM_THREADS")

Job = TypeVar("Job")
OnDone = Callable[[Any, Any, "str | None"], None]

_SETUP_DONE: set[bytes] = set()


def check_executor(executor: str, workers: int, threads: int) -> None:
    """``ValueError`` naming the bad value and the valid ones; for ``ray``, that Ray imports."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    for name, value in (("workers", workers), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError(RAY_MISSING) from None


def init_worker(threads: int, setup: Callable[..., None] | None = None, setup_args: Sequence[Any] = (),
                plugins: Sequence[str] = ()) -> None:
    """What a worker does once: ``threads`` torch threads (one inter-op thread), the plug-in
    files ``plugins``, then ``setup``."""
    import torch

    from .cli import load_plugins

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    load_plugins(plugins)
    if setup is not None:
        setup(*setup_args)


def _catching(runner: Callable[[Any], Any], job: Any) -> tuple[Any, str | None]:
    try:
        return runner(job), None
    except Exception:  # noqa: BLE001 - reported to the driver; the other jobs go on
        return None, traceback.format_exc()


def execute(jobs: Sequence[Job], runner: Callable[[Job], Any], on_done: OnDone, executor: str = "local",
            workers: int = 1, threads: int = 1, address: str | None = None,
            setup: Callable[..., None] | None = None, setup_args: Sequence[Any] = (),
            retries: int = DEFAULT_RETRIES, plugins: Sequence[str] | None = None) -> None:
    """Run ``runner(job)`` for every job; ``on_done(job, payload, error)`` here as each ends.

    ``setup`` is not called in this process for ``local`` with ``workers <= 1``: the caller
    runs in-process jobs with what it already holds.  ``plugins``: the plug-in files every
    worker imports first (``None``: those this process imported, :func:`~experiments.cli.loaded_plugins`;
    in this process they are loaded here too).  Ctrl-C (or an exception from ``on_done``) drops
    the queued jobs and returns at once.
    """
    from .cli import load_plugins, loaded_plugins

    check_executor(executor, workers, threads)
    if not jobs:
        return
    files = tuple(load_plugins(plugins)) if plugins is not None else ()
    files = tuple(dict.fromkeys([*loaded_plugins(), *files]))  # absolute paths: a Ray worker's cwd is not ours
    if executor == "ray":
        _execute_ray(list(jobs), runner, on_done, workers, threads, address, setup, tuple(setup_args), retries, files)
    elif workers <= 1:
        for job in jobs:
            on_done(job, *_catching(runner, job))
    else:
        _execute_processes(list(jobs), runner, on_done, workers, threads, setup, tuple(setup_args), retries, files)


def _execute_processes(jobs: list[Any], runner: Callable[[Any], Any], on_done: OnDone, workers: int, threads: int,
                       setup: Callable[..., None] | None, setup_args: tuple[Any, ...], retries: int,
                       plugins: tuple[str, ...] = ()) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    lost = [0] * len(jobs)  # how many pools died under each job
    todo = list(range(len(jobs)))
    while todo:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context, initializer=init_worker,
                                 initargs=(threads, setup, setup_args, plugins)) as pool:
            futures = {pool.submit(_catching, runner, jobs[i]): i for i in todo}
            todo = []
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        payload, error = future.result()
                    except BrokenProcessPool:
                        # a worker died (killed, out of memory): which job it held is unknown, so
                        # every unfinished job runs again in a new pool, each at most `retries` times
                        lost[i] += 1
                        if lost[i] <= retries:
                            todo.append(i)
                            continue
                        payload, error = None, traceback.format_exc()
                    except Exception:  # noqa: BLE001 - the job could not be sent or its result read
                        payload, error = None, traceback.format_exc()
                    on_done(jobs[i], payload, error)
            except BaseException:  # Ctrl-C or a failing on_done: drop the queued jobs, do not wait
                pool.shutdown(wait=False, cancel_futures=True)
                raise


def _ray_task(runner: Callable[[Any], Any], job: Any, threads: int, setup: Callable[..., None] | None,
              setup_args: tuple[Any, ...], plugins: tuple[str, ...] = ()) -> tuple[Any, str | None]:
    """A Ray task: the worker process is set up once (Ray reuses workers), then runs ``job``."""
    key = pickle.dumps((threads, setup, setup_args, plugins))  # the arguments need not be hashable
    if key not in _SETUP_DONE:
        init_worker(threads, setup, setup_args, plugins)
        _SETUP_DONE.add(key)
    return _catching(runner, job)


def _execute_ray(jobs: list[Any], runner: Callable[[Any], Any], on_done: OnDone, workers: int, threads: int,
                 address: str | None, setup: Callable[..., None] | None, setup_args: tuple[Any, ...],
                 retries: int, plugins: tuple[str, ...] = ()) -> None:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        init: dict[str, Any] = {"runtime_env": {"env_vars": {k: os.environ[k] for k in RAY_ENV_VARS
                                                             if k in os.environ}},
                                "include_dashboard": False, "log_to_driver": False}
        if address:
            init["address"] = address
        else:
            init["num_cpus"] = max(1, workers) * threads
        ray.init(**init)
    try:
        remote = ray.remote(num_cpus=threads, max_retries=retries, retry_exceptions=False)(_ray_task)
        refs = {remote.remote(runner, job, threads, setup, setup_args, plugins): job for job in jobs}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        payload, error = ray.get(ref)
                    except Exception:  # noqa: BLE001 - the task failed after its retries (worker lost)
                        payload, error = None, traceback.format_exc()
                    on_done(refs[ref], payload, error)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started_here:
            ray.shutdown()
