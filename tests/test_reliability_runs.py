"""Reliability, run folders: output and cache folders are checked before any work, one run per
folder (the run lock), and a killed-and-resumed selector logs each episode once.

* ``--out`` pointing at a file, at a path under a file, at a read-only folder, and an unusable
  ``KD_ENV_CACHE`` each give a one-line ``error: ...`` naming the path, before any teacher is
  built and without a traceback (glue_ac, benchmark, headroom).
* A second run on a locked folder refuses at once, naming the holder's PID and the lock file; a
  stale lock (its PID dead on this host) is taken over with a note.
* A glue_ac selector killed (SIGKILL) mid-training and rerun resumes from its last checkpoint: its
  ``episodes.csv`` has each episode exactly once and the run ends with the uninterrupted run's
  selector returns and student rows.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import PYTHON, ROOT, assert_close, read_json, subprocess_env

from experiments.runlock import LOCK_FILE, RunLock, RunLockedError
from kd_env.io import FolderError, check_cache_root, check_writable_folder

#: the smallest glue_ac run: the quick preset, one student, no selector
GLUE_AC = ["--preset", "quick", "--methods", "finetune", "--seeds", "0", "--episodes", "0", "--name", "r"]
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def no_teacher(monkeypatch):
    """Fail the test if a teacher is loaded or fine-tuned."""
    import kd_env.build as build

    def refuse(*_a, **_k):
        raise AssertionError("a teacher was built before the folder check")

    monkeypatch.setattr(build, "prepare_teacher", refuse)


def _bad_out(tmp_path: Path, kind: str) -> Path:
    """An --out that cannot be used: a file, a path under a file, or a read-only folder."""
    file = tmp_path / "a_file"
    file.write_text("not a folder")
    if kind == "file":
        return file
    if kind == "under_file":
        return file / "runs"
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


OUT_CASES = ["file", "under_file", pytest.param("read_only", marks=pytest.mark.skipif(
    AS_ROOT, reason="root writes read-only folders; the path under a file covers an uncreatable --out"))]


# ---- the helper ------------------------------------------------------------------------------------


def test_check_writable_folder_checks_without_leaving_anything_and_refuses_with_one_line(tmp_path: Path):
    missing = check_writable_folder(tmp_path / "a" / "b", "run folder")
    assert missing == tmp_path / "a" / "b" and not (tmp_path / "a").exists()  # checked, not made
    assert list(tmp_path.iterdir()) == []  # the probe file is removed
    made = tmp_path / "made"
    made.mkdir()
    assert check_writable_folder(made, "run folder") == made and list(made.iterdir()) == []
    file = tmp_path / "f"
    file.write_text("x")
    for path, problem in ((file, "is a file, not a folder"), (file / "sub", f"is under {str(file)!r}, which is a file")):
        with pytest.raises(FolderError) as exc:
            check_writable_folder(path, "run folder", "pick another")
        assert str(exc.value) == f"run folder {str(path)!r} {problem}; pick another"
        assert "\n" not in str(exc.value)


def test_cache_root_check_names_its_source(tmp_path: Path, monkeypatch):
    file = tmp_path / "f"
    file.write_text("x")
    monkeypatch.setenv("KD_ENV_CACHE", str(file))
    with pytest.raises(FolderError, match=r"teacher cache root \(KD_ENV_CACHE\) .* set KD_ENV_CACHE"):
        check_cache_root()
    assert check_cache_root(str(tmp_path / "c")) == tmp_path / "c"


# ---- glue_ac, benchmark, headroom: bad folders fail before any teacher ------------------------------


@pytest.mark.parametrize("kind", OUT_CASES)
def test_glue_ac_bad_out_is_a_one_line_error_before_the_teacher(kind, tmp_path: Path, no_teacher):
    from experiments.glue_ac.cli import main

    out = _bad_out(tmp_path, kind)
    try:
        with pytest.raises(SystemExit) as exc:
            main([*GLUE_AC, "--out", str(out)])
    finally:
        (tmp_path / "read_only").exists() and (tmp_path / "read_only").chmod(0o755)
    message = str(exc.value.code)
    assert message.startswith("error: output folder (--out)") and str(out) in message and "\n" not in message
    assert "pass another --out" in message


def test_glue_ac_unwritable_cache_is_a_one_line_error_before_the_teacher(tmp_path: Path, monkeypatch, no_teacher):
    from experiments.glue_ac.cli import main

    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("KD_ENV_CACHE", str(tmp_path / "a_file" / "cache"))
    with pytest.raises(SystemExit) as exc:
        main([*GLUE_AC, "--out", str(tmp_path / "runs")])
    message = str(exc.value.code)
    assert message.startswith("error: teacher cache root (KD_ENV_CACHE)") and "a_file" in message
    assert not (tmp_path / "runs" / "r").exists()  # no run folder left behind


def test_glue_ac_cli_exits_non_zero_without_a_traceback(tmp_path: Path):
    """The real command line: ``error: ...`` on stderr, a non-zero exit, no traceback, no teacher."""
    out = _bad_out(tmp_path, "file")
    cache = tmp_path / "cache"
    proc = subprocess.run([PYTHON, "-m", "experiments.glue_ac", *GLUE_AC, "--out", str(out)], cwd=ROOT,
                          env=subprocess_env(KD_ENV_CACHE=str(cache)), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: output folder (--out) {str(out)!r} is a file")
    assert "[1/4] teacher" not in proc.stderr and not (cache / "teachers").exists()


@pytest.mark.parametrize("kind", OUT_CASES)
def test_benchmark_bad_out_is_a_one_line_error(kind, tmp_path: Path, capsys, no_teacher):
    from experiments import benchmark

    out = _bad_out(tmp_path, kind)
    try:
        code = benchmark.main(["--name", "x", "--out", str(out), "--algos", "random_hard", "--envs",
                               "kd_env/QuickKD-v0", "--seeds", "0", "--episodes", "1", "--no-plots"])
    finally:
        (tmp_path / "read_only").exists() and (tmp_path / "read_only").chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().startswith("error: output folder (--out)") and len(err.strip().splitlines()) == 1


def test_benchmark_unwritable_cache_is_a_one_line_error(tmp_path: Path, capsys, monkeypatch, no_teacher):
    from experiments import benchmark

    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("KD_ENV_CACHE", str(tmp_path / "a_file"))
    code = benchmark.main(["--name", "x", "--out", str(tmp_path / "runs"), "--algos", "random_hard", "--envs",
                           "kd_env/QuickKD-v0", "--seeds", "0", "--episodes", "1", "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().startswith("error: teacher cache root (KD_ENV_CACHE)")
    assert not (tmp_path / "runs" / "benchmark-x").exists()


@pytest.mark.parametrize("cache", [False, True])
def test_headroom_bad_out_or_cache_is_a_one_line_error(cache, tmp_path: Path, capsys, monkeypatch, no_teacher):
    from experiments.headroom.cli import main

    (tmp_path / "a_file").write_text("x")
    if cache:
        monkeypatch.setenv("KD_ENV_CACHE", str(tmp_path / "a_file"))
        out = tmp_path / "out"
    else:
        out = tmp_path / "a_file" / "out"
    code = main(["--env", "kd_env/QuickKD-v0", "--quick", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: teacher cache root" if cache else "error: headroom output folder (--out)")


# ---- the run lock ----------------------------------------------------------------------------------


def _write_lock(folder: Path, pid: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "token": "other",
                                "started": "2026-01-01T00:00:00Z"}))
    return lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path: Path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _write_lock(tmp_path / "run", holder.pid)
        with pytest.raises(RunLockedError) as exc:
            RunLock(tmp_path / "run", "glue_ac run").acquire()
        assert f"PID {holder.pid} on host {socket.gethostname()}" in str(exc.value) and str(lock) in str(exc.value)
        assert json.loads(lock.read_text())["pid"] == holder.pid  # untouched
    finally:
        holder.kill()
        holder.wait()
    dead = _dead_pid()
    _write_lock(tmp_path / "run", dead)
    with RunLock(tmp_path / "run", "glue_ac run") as taken:
        assert json.loads(lock.read_text())["pid"] == os.getpid() and taken.held
        assert f"took over the stale lock {lock}" in caplog.text  # a warning of the experiments logger
    assert not lock.exists()
    # a folder the lock made and nothing else wrote is removed again
    with RunLock(tmp_path / "new", "run"):
        assert (tmp_path / "new" / LOCK_FILE).exists()
    assert not (tmp_path / "new").exists()


def test_glue_ac_and_benchmark_refuse_a_locked_folder_before_any_work(tmp_path: Path, capsys, no_teacher):
    from experiments import benchmark
    from experiments.glue_ac.cli import main

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _write_lock(tmp_path / "runs" / "r", holder.pid)
        with pytest.raises(SystemExit) as exc:
            main([*GLUE_AC, "--out", str(tmp_path / "runs")])
        message = str(exc.value.code)
        assert message.startswith("error: ") and "in use by another glue_ac run" in message
        assert f"PID {holder.pid}" in message and str(lock) in message
        block = _write_lock(tmp_path / "runs" / "benchmark-x", holder.pid)
        code = benchmark.main(["--name", "x", "--out", str(tmp_path / "runs"), "--algos", "random_hard", "--envs",
                               "kd_env/QuickKD-v0", "--seeds", "0", "--episodes", "1", "--no-plots"])
        err = capsys.readouterr().err
        assert code == 2 and "in use by another benchmark run" in err and str(block) in err
        assert json.loads(block.read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


# ---- killed and resumed: one row per episode ----------------------------------------------------------

SELECTOR = ["-m", "experiments.glue_ac", "--preset", "quick", "--methods", "selector,vanilla_kd", "--seeds", "0",
            "--episodes", "100", "--name", "run"]


def _episodes(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_killed_selector_resumes_takes_the_stale_lock_and_logs_each_episode_once(tmp_path: Path, monkeypatch):
    from experiments.glue_ac.cli import main

    monkeypatch.setenv("KD_ENV_CACHE", str(tmp_path / "cache"))
    env = subprocess_env(KD_ENV_CACHE=str(tmp_path / "cache"))
    ref = subprocess.run([PYTHON, *SELECTOR, "--out", str(tmp_path / "reference")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"
    run = out / "run"
    log = run / "tb" / "selector" / "episodes.csv"
    kills = []
    for least in (15, 45):  # two kills: after 15+ and 45+ logged episodes
        proc = subprocess.Popen([PYTHON, *SELECTOR, "--out", str(out)], cwd=ROOT, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            if log.exists() and len(log.read_text().splitlines()) > least:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before its kill: {proc.stderr.read()[-2000:]}"
        # a second run on the same folder refuses while the first holds it
        with pytest.raises(SystemExit, match=rf"in use by another glue_ac run \(PID {proc.pid} "):
            main([*SELECTOR[2:], "--out", str(out)])
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        kills.append(len(_episodes(log)))
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == proc.pid  # left behind by the kill
    resumed = subprocess.run([PYTHON, *SELECTOR, "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"took over the stale lock {run / LOCK_FILE}" in resumed.stderr
    assert not (run / LOCK_FILE).exists()
    rows = _episodes(log)
    assert [int(r["episode"]) for r in rows] == list(range(1, 101)), kills
    reference = tmp_path / "reference" / "run"
    ref_rows = _episodes(reference / "tb" / "selector" / "episodes.csv")
    for got, want in zip(rows, ref_rows):
        assert {k: v for k, v in got.items() if k != "seconds"} == {k: v for k, v in want.items() if k != "seconds"}
    assert_close(read_json(run / "selector" / "done.json"), read_json(reference / "selector" / "done.json"))
    assert_close(read_json(run / "results.json")["rows"], read_json(reference / "results.json")["rows"])
    assert not list((run / "selector").glob("partial*"))  # the resume checkpoints are gone once it finished


# ---- issue 38's minor items ---------------------------------------------------------------------


def test_a_baseline_that_names_no_agent_is_refused_and_one_not_run_gets_a_note():
    from experiments.benchmark.runner import check_baseline
    from experiments.benchmark.settings import ConfigError

    with pytest.raises(ConfigError, match=r"--baseline 'nosuch': unknown algorithm\(s\) \['nosuch'\]; valid: .*vanilla_kd"):
        check_baseline("nosuch", ["ac"])
    notes: list[str] = []
    check_baseline("vanilla_kd", ["ac"], notes.append)
    assert len(notes) == 1 and "not among --algos ['ac']" in notes[0]
    check_baseline("vanilla_kd", ["ac", "vanilla_kd"], notes.append)
    assert len(notes) == 1


def test_an_override_can_name_an_algorithm_with_dots_in_its_name():
    from experiments.benchmark.settings import parse_override

    algos = ["schedule:my/sched.json", "ac"]
    assert parse_override("schedule:my/sched.json.episodes=3", algos) == ("schedule:my/sched.json", ["episodes"], 3)
    assert parse_override("ac.env_kwargs.reward=dev_metric_delta", algos) == (
        "ac", ["env_kwargs", "reward"], "dev_metric_delta")
    assert parse_override("ppo.learning_rate=1.0e-3") == ("ppo", ["hyperparams", "learning_rate"], 1.0e-3)


def test_reset_options_that_are_not_a_mapping_say_so():
    import gymnasium as gym

    import kd_env  # noqa: F401  (registers the ids)

    env = gym.make("kd_env/QuickKD-v0").unwrapped
    try:
        with pytest.raises(ValueError, match=r"reset options must be a dict or None, got str 'x'; valid keys: "
                                             r"\['config', .*'reward'"):
            env.reset(options="x")
    finally:
        env.close()


def test_glue_ac_config_that_is_a_folder_says_so(tmp_path: Path):
    from experiments.glue_ac.cli import config_from_args

    with pytest.raises(SystemExit, match=r"--config .* is a folder; pass a YAML file"):
        config_from_args(["--config", str(tmp_path)])


def test_a_damaged_cell_result_is_named_as_damaged_when_rerun(tmp_path: Path, caplog):
    from experiments.benchmark import run_benchmark
    from experiments.benchmark.grid import BenchmarkConfig

    config = BenchmarkConfig(name="damaged", algos=["random_hard"], envs=["kd_env/QuickKD-v0"], seeds=[0],
                             episodes=1, eval_every=1, eval_episodes=1, workers=1, out=str(tmp_path),
                             bootstrap_reps=50, verbose=False, plots=False, baseline="random_hard")
    run_benchmark(config)
    result = next((tmp_path / "benchmark-damaged").glob("*/*/result.json"))
    result.write_text('{"cell": ')  # a write cut short
    with caplog.at_level("INFO", logger="experiments"):  # progress lines are logged
        run_benchmark(BenchmarkConfig(**{**config.__dict__, "verbose": True}))
    out = caplog.text
    assert "rerunning" in out and "result.json is damaged or unfinished (not a JSON object), recomputing" in out, out


def test_a_bad_override_key_of_an_agent_that_declares_nothing_is_refused_at_once_with_the_valid_keys(tmp_path):
    from experiments.benchmark.grid import build_grid
    from experiments.benchmark.settings import ConfigError

    with pytest.raises(ConfigError, match=r"random_hard on kd_env/QuickKD-v0: unknown hyperparameter\(s\) "
                                          r"\['nosuch'\]; random_hard accepts \['p', 'seed'\]"):
        build_grid(["random_hard"], ["kd_env/QuickKD-v0"], [0], 1, 1, ["random_hard.nosuch=1"])
