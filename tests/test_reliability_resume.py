"""Reliability, interrupted runs: the main job and the RL benchmark, killed with SIGKILL at random
moments (at least three each) and restarted until they finish, end with the same result files as
an uninterrupted run with the same seeds: row for row, floats within 1e-6, no duplicated or
missing rows.  Only wall-clock fields (seconds, dates) may differ.

Each job is first run uninterrupted to measure its duration D; the kill times are drawn from a
seeded generator, one in each third of [0.2 D, 0.9 D] (measured from each restart), so they land
in different stages: imports and teacher fine-tuning, selector training, the per-seed units, the
report.  A restart that finishes before its kill time completes the job; the next kill times
are then drawn over the (shorter) duration of that rerun, which reads the finished parts back and
rewrites the reports (also a valid interruption point), until three kills have landed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import PYTHON, ROOT, TIMING_KEYS, assert_close, read_csv_rows, read_json, subprocess_env

KILLS = 3
MAX_ATTEMPTS = 8
KILL_WINDOW = (0.2, 0.9)

GLUE_AC = ["-m", "experiments.glue_ac", "--preset", "quick", "--methods", "selector,vanilla_kd,random_hard,only:response",
           "--seeds", "0,1,2", "--episodes", "4", "--name", "run"]
BENCHMARK = ["-m", "experiments.benchmark", "--algos", "ac,dqn,random_hard", "--envs", "kd_env/QuickKD-v0",
             "--seeds", "0-1", "--episodes", "3", "--eval-every", "1", "--eval-episodes", "1", "--workers", "1",
             "--bootstrap-reps", "200", "--no-plots", "--name", "run"]


def _start(args: list[str], out: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The job in its own process group (a kill takes every process it started)."""
    with open(log, "ab") as fh:
        fh.write(f"\n===== start {time.strftime('%H:%M:%S')}\n".encode())
        fh.flush()
        return subprocess.Popen([PYTHON, *args, "--out", str(out)], cwd=ROOT, env=env, start_new_session=True,
                                stdout=fh, stderr=subprocess.STDOUT)


def _tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:]


def run_to_end(args: list[str], out: Path, env: dict[str, str], log: Path, timeout: float = 300) -> float:
    start = time.perf_counter()
    proc = _start(args, out, env, log)
    rc = proc.wait(timeout=timeout)
    assert rc == 0, _tail(log)
    return time.perf_counter() - start


def kill_and_restart(args: list[str], out: Path, env: dict[str, str], log: Path, duration: float, seed: int,
                     progress) -> list[tuple[float, str]]:
    """Start, SIGKILL the whole process group after a random time, restart... until KILLS kills
    have landed; then run to the end.  Returns (kill time, progress when killed) per kill."""
    rng = np.random.default_rng(seed)
    lo, hi = KILL_WINDOW
    third = (hi - lo) / KILLS
    fractions = [rng.uniform(lo + i * third, lo + (i + 1) * third) for i in range(KILLS)]
    kills: list[tuple[float, str]] = []
    attempts = 0
    while len(kills) < KILLS:
        assert attempts < MAX_ATTEMPTS, f"only {len(kills)} kills landed in {attempts} attempts: {kills}"
        fraction = fractions[attempts] if attempts < len(fractions) else rng.uniform(lo, hi)
        attempts += 1
        delay = fraction * duration
        start = time.perf_counter()
        proc = _start(args, out, env, log)
        try:
            rc = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills.append((round(delay, 2), progress()))
            with open(log, "ab") as fh:
                fh.write(f"\n===== SIGKILL after {delay:.2f} s; progress {kills[-1][1]}\n".encode())
        else:
            assert rc == 0, _tail(log)
            # finished before its kill: the job is complete, and a rerun (which reads the finished
            # parts back and rewrites the reports) is what the next kills interrupt
            duration = time.perf_counter() - start
    run_to_end(args, out, env, log)
    return kills


# ---- the main job ----------------------------------------------------------------------------------


def glue_ac_progress(run: Path, cache: Path):
    def progress() -> str:
        teacher = bool(list((cache / "teachers").glob("*/teacher.json"))) if (cache / "teachers").exists() else False
        units = len(list((run / "units").glob("*.json"))) if (run / "units").exists() else 0
        return (f"teacher={'yes' if teacher else 'no'} selector={'done' if (run / 'selector' / 'done.json').exists() else 'no'} "
                f"units={units} report={'yes' if (run / 'results.json').exists() else 'no'}")
    return progress


def test_main_job_killed_at_random_points_ends_with_the_uninterrupted_results(tmp_path):
    ref_out, kill_out = tmp_path / "reference", tmp_path / "killed"
    ref_cache, kill_cache = tmp_path / "cache_reference", tmp_path / "cache_killed"
    log = tmp_path / "glue_ac.log"
    # both start from an empty cache: the kills may also hit the teacher's fine-tuning and caching
    duration = run_to_end(GLUE_AC, ref_out, subprocess_env(KD_ENV_CACHE=str(ref_cache)), log)
    run = kill_out / "run"
    kills = kill_and_restart(GLUE_AC, kill_out, subprocess_env(KD_ENV_CACHE=str(kill_cache)), log, duration,
                             seed=7, progress=glue_ac_progress(run, kill_cache))
    print(f"glue_ac: uninterrupted {duration:.1f} s; kills (s after start, progress): {kills}")
    assert len(kills) >= KILLS
    reference = ref_out / "run"
    # results.csv: row for row
    header, rows = read_csv_rows(run / "results.csv")
    ref_header, ref_rows = read_csv_rows(reference / "results.csv")
    assert header == ref_header
    keys = [(r["method"], r["seed"]) for r in rows]
    assert keys == [(r["method"], r["seed"]) for r in ref_rows]
    assert len(set(keys)) == len(keys) == 4 * 3  # no duplicated or missing rows
    assert_close(rows, ref_rows)
    # results.json: every value, rows in the same order
    summary, ref_summary = read_json(run / "results.json"), read_json(reference / "results.json")
    assert [(r["method"], r["seed"]) for r in summary["rows"]] == [(r["method"], r["seed"]) for r in ref_summary["rows"]]
    assert_close(summary, ref_summary)
    # the pieces they are made of
    units = sorted(p.name for p in (run / "units").glob("*.json"))
    assert units == sorted(p.name for p in (reference / "units").glob("*.json")) and len(units) == 12
    for name in units:
        assert_close(read_json(run / "units" / name), read_json(reference / "units" / name))
    assert_close(read_json(run / "selector" / "done.json"), read_json(reference / "selector" / "done.json"))
    visible = lambda folder: sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))  # noqa: E731
    assert visible(run) == visible(reference)  # results.md, plots, config.yaml, tb ...


# ---- the benchmark ---------------------------------------------------------------------------------


def benchmark_progress(run: Path):
    def progress() -> str:
        cells = len(list(run.glob("*/*/result.json"))) if run.exists() else 0
        return f"cells={cells} summary={'yes' if (run / 'summary.csv').exists() else 'no'}"
    return progress


def test_benchmark_killed_at_random_points_ends_with_the_uninterrupted_results(tmp_path):
    ref_out, kill_out = tmp_path / "reference", tmp_path / "killed"
    log = tmp_path / "benchmark.log"
    env = subprocess_env()  # the session's teacher cache: the main-job test covers kills in the teacher stage
    duration = run_to_end(BENCHMARK, ref_out, env, log)
    run = kill_out / "benchmark-run"
    kills = kill_and_restart(BENCHMARK, kill_out, env, log, duration, seed=11, progress=benchmark_progress(run))
    print(f"benchmark: uninterrupted {duration:.1f} s; kills (s after start, progress): {kills}")
    assert len(kills) >= KILLS
    reference = ref_out / "benchmark-run"
    for name in ("runs.csv", "summary.csv"):
        header, rows = read_csv_rows(run / name)
        ref_header, ref_rows = read_csv_rows(reference / name)
        assert header == ref_header, name
        assert len(rows) == len(ref_rows), name
        assert_close(rows, ref_rows, path=name)
    _, rows = read_csv_rows(run / "runs.csv")
    keys = [(r["env"], r["algorithm"], r["seed"]) for r in rows]
    assert len(set(keys)) == len(keys) == 3 * 2  # one row per cell
    assert_close(read_json(run / "benchmark.json"), read_json(reference / "benchmark.json"))
    cells = sorted(str(p.parent.relative_to(run)) for p in run.glob("*/*/result.json"))
    assert cells == sorted(str(p.parent.relative_to(reference)) for p in reference.glob("*/*/result.json"))
    assert len(cells) == 6
    for cell in cells:
        assert_close(read_json(run / cell / "result.json"), read_json(reference / cell / "result.json"),
                     skip=TIMING_KEYS | {"seconds"})
        with np.load(run / cell / "evaluations.npz") as got, np.load(reference / cell / "evaluations.npz") as want:
            assert sorted(got.files) == sorted(want.files)
            for key in want.files:
                if want[key].dtype.kind in "US":  # labels, e.g. the held-out instance of each evaluation episode
                    np.testing.assert_array_equal(got[key], want[key], err_msg=f"{cell}/{key}")
                else:
                    np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6, err_msg=f"{cell}/{key}")


if __name__ == "__main__":  # pragma: no cover - timing the jobs by hand
    pytest.main([__file__, "-s", "-q"])
