"""The shared executor (experiments.executors): every executor gives the same answers, a job that
raises is reported and the others go on, a worker that dies is replaced and its job rerun (a
bounded number of times), and bad settings are clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments.executors import RAY_MISSING, check_executor, execute
from tests.helpers import hide_ray, ray_or_skip

#: Ray workers import this module as pytest does (``test_executors`` from tests/; it imports tests.helpers)
PATHS = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]


def square(job: int) -> int:
    if job == 3:
        raise ValueError("three is refused")
    return job * job


def die_once(job: tuple[int, str]) -> int:
    """Kills its own worker process the first time job 2 runs (a marker file remembers)."""
    value, marker = job
    if value == 2 and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)  # the worker process dies, as under the OOM killer
    return value * 10


def always_die(job: int) -> int:
    os._exit(1)


def _collect(jobs, runner, **kwargs):
    out = {}
    execute(jobs, runner, lambda job, payload, error: out.__setitem__(job if not isinstance(job, tuple) else job[0],
                                                                      (payload, error)), **kwargs)
    return out


@pytest.fixture(scope="module")
def local_ray():
    ray = ray_or_skip()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([*PATHS, os.environ.get("PYTHONPATH", "")])}})
    yield ray
    ray.shutdown()


def test_serial_and_process_executors_agree_and_report_a_failing_job():
    serial = _collect([1, 2, 3, 4], square)
    processes = _collect([1, 2, 3, 4], square, workers=2)
    for out in (serial, processes):
        assert {k: v[0] for k, v in out.items() if k != 3} == {1: 1, 2: 4, 4: 16}
        assert out[3][0] is None and "three is refused" in out[3][1]


def test_a_dead_local_worker_is_replaced_and_its_job_rerun(tmp_path):
    jobs = [(k, str(tmp_path / "died")) for k in range(5)]
    out = _collect(jobs, die_once, workers=2)
    assert (tmp_path / "died").exists()  # the worker did die
    assert {k: v for k, v in out.items()} == {k: (k * 10, None) for k in range(5)}


def test_a_job_that_always_kills_its_worker_fails_after_the_retries():
    out = _collect([7], always_die, workers=2, retries=1)
    assert out[7][0] is None and "BrokenProcessPool" in out[7][1]


def test_ray_gives_the_same_answers_and_retries_a_dead_worker(local_ray, tmp_path):
    out = _collect([1, 2, 3, 4], square, executor="ray", workers=2)
    assert {k: v[0] for k, v in out.items() if k != 3} == {1: 1, 2: 4, 4: 16}
    assert "three is refused" in out[3][1]  # an exception is the job's answer: not retried
    jobs = [(k, str(tmp_path / "died")) for k in range(4)]
    out = _collect(jobs, die_once, executor="ray", workers=2)
    assert (tmp_path / "died").exists()
    assert out == {k: (k * 10, None) for k in range(4)}


def test_ray_gives_up_on_a_job_after_its_retries(local_ray):
    out = _collect([7], always_die, executor="ray", workers=2, retries=1)
    assert out[7][0] is None and out[7][1]


@pytest.mark.parametrize("executor, workers, threads, message", [
    ("dask", 1, 1, "executor must be one of"),
    ("local", 0, 1, "workers must be a positive integer"),
    ("local", 1, True, "threads must be a positive integer"),
])
def test_bad_settings_are_clear_errors(executor, workers, threads, message):
    with pytest.raises(ValueError, match=message):
        check_executor(executor, workers, threads)
    with pytest.raises(ValueError, match=message):
        execute([1], square, lambda *a: pytest.fail("a job ran"), executor, workers, threads)


def test_ray_missing_names_the_install(monkeypatch):
    hide_ray(monkeypatch)
    with pytest.raises(ValueError) as info:
        check_executor("ray", 1, 1)
    assert str(info.value) == RAY_MISSING and "pip install" in RAY_MISSING
